"""Merchant SDK: an async client for charges, holds and refunds over HTTP.

    async with MerchantClient("https://ledger.example", api_key="lk_mer_…") as ledger:
        charge = await ledger.charge(credit_token, 2_000, tool="search")
        charge.signed_receipt          # give this to the agent

What it does for the caller:
- generates an idempotency key per call (or takes one) and reuses it on every
  retry, so a retry after a lost response never debits twice;
- retries transient failures (connection errors, timeouts, 429/502/503/504)
  a bounded number of times with exponential backoff and jitter;
- verifies the credit token offline first (signature, time window, audience,
  tool) with the published keys from `GET /v1/keys`, cached and refreshed when
  a token names an unknown kid, so a malformed or expired credit token never
  costs a round trip;
- verifies signed receipts offline;
- raises typed exceptions that mirror the problem `code`s:

    LedgerClientError                 transport failures after the last retry
    └── LedgerProblem                 any problem+json refusal: .status .code .problem
        ├── TokenRefused              401 token_invalid | token_expired | token_not_yet_valid | token_revoked
        ├── ScopeDenied               403 scope_denied
        ├── BudgetExhausted           402 budget_exhausted: .limit .required .available .topup
        ├── IdempotencyConflict       409 idempotency_conflict
        ├── NotFound                  404 not_found
        ├── Conflict                  409 conflict | hold_not_pending | refund_exceeds_charge
        ├── ValidationFailed          422 validation_failed
        ├── Unauthenticated           401 unauthenticated | 403 forbidden (the API key)
        ├── RateLimited               429 rate_limited (after the last retry)
        └── LedgerUnavailable         5xx (after the last retry)

Credit tokens and API keys never appear in exceptions or logs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import msgspec

from ledger import limits
from ledger.errors import LedgerError
from verifier import errors as server_errors
from verifier.receipts import verify_receipt
from verifier.tokens import (
    CreditTokenClaims,
    KeyRing,
    check_scope,
    token_kid,
    verify_credit_token,
)

__all__ = [
    "ATTEMPTS_MAX",
    "CREDIT_TOKEN_META_KEY",
    "DEFAULT_TIMEOUT_S",
    "IDEMPOTENCY_META_KEY",
    "PRICE_META_KEY",
    "RECEIPT_META_KEY",
    "BudgetExhausted",
    "Capture",
    "Charge",
    "Conflict",
    "Hold",
    "IdempotencyConflict",
    "KeyCache",
    "LedgerClientError",
    "LedgerProblem",
    "LedgerUnavailable",
    "MerchantClient",
    "NotFound",
    "RateLimited",
    "Refund",
    "ScopeDenied",
    "TokenRefused",
    "Unauthenticated",
    "ValidationFailed",
    "Void",
    "error_from_response",
    "new_idempotency_key",
    "problem_error",
    "send_with_retries",
]

log = logging.getLogger("verifier.sdk.merchant")

DEFAULT_TIMEOUT_S = 10.0
# One call is tried at most this many times (the first try included).
ATTEMPTS_MAX = 4
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
RETRY_AFTER_MAX_S = 5.0
# Published keys are trusted this long; an unknown kid reloads them sooner, but
# at most this often (so garbage kids cannot turn into a flood of requests).
KEYS_TTL_S = 300.0
KEYS_RELOAD_MIN_S = 1.0
# Keys of MCP `_meta` (one namespace for everything the ledger puts there).
META_NAMESPACE = "credit-ledger.dev"
CREDIT_TOKEN_META_KEY = f"{META_NAMESPACE}/credit_token"
IDEMPOTENCY_META_KEY = f"{META_NAMESPACE}/idempotency_key"
RECEIPT_META_KEY = f"{META_NAMESPACE}/receipt"
PRICE_META_KEY = f"{META_NAMESPACE}/price"
_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


# ---- Errors ---------------------------------------------------------------------


class LedgerClientError(Exception):
    """The ledger could not be reached (after the last retry) or answered nonsense."""


class LedgerProblem(LedgerClientError):
    """A refusal from the ledger: the problem+json body is in `.problem`."""

    codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, problem: Mapping[str, Any]) -> None:
        self.problem: dict[str, Any] = dict(problem)
        self.status: int = int(self.problem.get("status", 0))
        self.code: str = str(self.problem.get("code", "error"))
        self.detail: str = str(self.problem.get("detail") or self.problem.get("title") or self.code)
        super().__init__(f"{self.code}: {self.detail}")


class TokenRefused(LedgerProblem):
    codes = frozenset({"token_invalid", "token_expired", "token_not_yet_valid", "token_revoked"})


class ScopeDenied(LedgerProblem):
    codes = frozenset({"scope_denied"})


class BudgetExhausted(LedgerProblem):
    """HTTP 402: which limit was hit, what was needed, what is left, how to top up."""

    codes = frozenset({"budget_exhausted"})

    @property
    def limit(self) -> str:
        return str(self.problem.get("limit", ""))

    @property
    def required(self) -> int:
        return int(self.problem.get("required", 0))

    @property
    def available(self) -> int:
        return int(self.problem.get("available", 0))

    @property
    def topup(self) -> dict[str, Any]:
        topup = self.problem.get("topup")
        return dict(topup) if isinstance(topup, Mapping) else {}


class IdempotencyConflict(LedgerProblem):
    codes = frozenset({"idempotency_conflict"})


class NotFound(LedgerProblem):
    codes = frozenset({"not_found"})


class RateLimited(LedgerProblem):
    codes = frozenset({"rate_limited"})


class Unauthenticated(LedgerProblem):
    """The API key is missing, wrong, or may not do this (a configuration error)."""

    codes = frozenset({"unauthenticated", "forbidden"})


class Conflict(LedgerProblem):
    codes = frozenset({"conflict", "hold_not_pending", "refund_exceeds_charge"})


class ValidationFailed(LedgerProblem):
    codes = frozenset({"validation_failed"})


class LedgerUnavailable(LedgerProblem):
    codes = frozenset({"service_unavailable", "database_unavailable", "internal_error"})


_BY_CODE: dict[str, type[LedgerProblem]] = {
    code: cls
    for cls in (
        TokenRefused,
        ScopeDenied,
        BudgetExhausted,
        IdempotencyConflict,
        NotFound,
        RateLimited,
        Unauthenticated,
        Conflict,
        ValidationFailed,
        LedgerUnavailable,
    )
    for code in cls.codes
}


def problem_error(problem: Mapping[str, Any]) -> LedgerProblem:
    """The typed exception for a problem object (unknown codes: `LedgerProblem`)."""
    cls = _BY_CODE.get(str(problem.get("code", "")))
    if cls is None and int(problem.get("status", 0)) >= 500:
        cls = LedgerUnavailable
    return (cls or LedgerProblem)(problem)


def _local_problem(exc: LedgerError) -> LedgerProblem:
    # Offline refusals look exactly like the ledger's own.
    return problem_error(exc.problem())


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


# ---- Results --------------------------------------------------------------------


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    charge_id: str
    receipt: dict[str, Any]
    signed_receipt: str
    idempotency_key: str
    replayed: bool = False


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: str
    status: str
    amount_micros: int
    expires_at: str
    token_id: str
    account_id: str
    merchant_id: str
    tool: str
    idempotency_key: str


class Capture(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: str
    charge_id: str
    captured_micros: int
    released_micros: int
    receipt: dict[str, Any]
    signed_receipt: str


class Void(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: str
    status: str


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    charge_id: str
    amount_micros: int
    refunded_total_micros: int
    receipt: dict[str, Any]
    signed_receipt: str


# ---- Published keys ---------------------------------------------------------------


class KeyCache:
    """The ledger's public keys (`GET /v1/keys`), cached; reloaded early on an unknown kid."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl_s: float = KEYS_TTL_S,
        reload_min_s: float = KEYS_RELOAD_MIN_S,
    ) -> None:
        assert 0 <= reload_min_s <= ttl_s
        self._http = http
        self._ttl_s = ttl_s
        self._reload_min_s = reload_min_s
        self._keyring: KeyRing | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, *, kid: str | None = None) -> KeyRing:
        """The key ring; pass a kid to reload early when it is unknown."""
        if self._stale(kid):
            async with self._lock:
                if self._stale(kid):
                    await self._load()
        assert self._keyring is not None
        return self._keyring

    def _stale(self, kid: str | None) -> bool:
        if self._keyring is None:
            return True
        age = time.monotonic() - self._loaded_at
        if age >= self._ttl_s:
            return True
        return kid is not None and kid not in self._keyring and age >= self._reload_min_s

    async def _load(self) -> None:
        response = await send_with_retries(self._http, "GET", "/v1/keys", json=None, headers={})
        if response.status_code != 200:
            raise error_from_response(response)
        self._keyring = KeyRing.from_published(response.content)
        self._loaded_at = time.monotonic()

    async def verify_credit_token(self, credit_token: str) -> CreditTokenClaims:
        """Offline: format, known kid, signature, claims, time window."""
        try:
            kid = token_kid(credit_token)
            return verify_credit_token(credit_token, await self.get(kid=kid))
        except server_errors.TokenError as exc:
            raise _local_problem(exc) from None

    async def verify_receipt(self, signed_receipt: str) -> dict[str, Any]:
        """The facts of a signed receipt, checked offline; raises `TokenRefused` if forged."""
        try:
            kid = token_kid(signed_receipt)
            return verify_receipt(signed_receipt, await self.get(kid=kid))
        except server_errors.TokenError as exc:
            raise _local_problem(exc) from None


# ---- Transport ------------------------------------------------------------------------


def _backoff_s(attempt: int) -> float:
    # Full jitter: spreads retries of many clients after one outage.
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


def _retry_after_s(response: httpx.Response, attempt: int) -> float:
    raw = response.headers.get("retry-after", "")
    if raw.isdigit():
        return min(float(raw), RETRY_AFTER_MAX_S)
    return _backoff_s(attempt)


def error_from_response(response: httpx.Response) -> LedgerProblem:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        body = {
            "status": response.status_code,
            "code": "service_unavailable" if response.status_code >= 500 else "error",
            "detail": f"unexpected HTTP {response.status_code} from the ledger",
        }
    return problem_error(body)


async def send_with_retries(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json: Any,
    headers: Mapping[str, str],
    attempts_max: int = ATTEMPTS_MAX,
) -> httpx.Response:
    """Send one request, retrying transient failures. Only idempotent requests come here:
    every POST carries an idempotency key or is idempotent by its path (capture, void)."""
    assert attempts_max >= 1
    for attempt in range(attempts_max):
        last = attempt == attempts_max - 1
        try:
            response = await http.request(method, path, json=json, headers=dict(headers))
        except httpx.TransportError as exc:
            if last:
                raise LedgerClientError(
                    f"the ledger is unreachable: {type(exc).__name__}"
                ) from None
            log.info("%s %s: %s; retrying", method, path, type(exc).__name__)
            await asyncio.sleep(_backoff_s(attempt))
            continue
        if response.status_code in _TRANSIENT_STATUSES and not last:
            log.info("%s %s: HTTP %d; retrying", method, path, response.status_code)
            await asyncio.sleep(_retry_after_s(response, attempt))
            continue
        return response
    raise AssertionError("unreachable")


# ---- The merchant client -------------------------------------------------------------


class MerchantClient:
    """Charges, holds and refunds for one merchant (its merchant API key)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts_max: int = ATTEMPTS_MAX,
        precheck: bool = True,
    ) -> None:
        assert api_key, "a merchant API key is required"
        assert 1 <= attempts_max <= 10
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._attempts_max = attempts_max
        self._precheck = precheck
        self._merchant_id: str | None = None
        self.keys = KeyCache(self._http)

    async def __aenter__(self) -> MerchantClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _post(self, path: str, body: Any, *, expect: tuple[int, ...]) -> dict[str, Any]:
        out, _ = await self._post_status(path, body, expect=expect)
        return out

    async def _post_status(
        self, path: str, body: Any, *, expect: tuple[int, ...]
    ) -> tuple[dict[str, Any], int]:
        response = await send_with_retries(
            self._http, "POST", path, json=body, headers=self._auth, attempts_max=self._attempts_max
        )
        return self._decode(response, expect), response.status_code

    @staticmethod
    def _decode(response: httpx.Response, expect: tuple[int, ...]) -> dict[str, Any]:
        if response.status_code not in expect:
            raise error_from_response(response)
        body = response.json()
        if not isinstance(body, dict):
            raise LedgerClientError("the ledger answered with something other than an object")
        return body

    async def merchant_id(self) -> str:
        """This merchant's id (`GET /v1/merchants/me`), read once."""
        if self._merchant_id is None:
            response = await send_with_retries(
                self._http, "GET", "/v1/merchants/me", json=None, headers=self._auth
            )
            self._merchant_id = str(self._decode(response, (200,))["id"])
        return self._merchant_id

    async def check_credit_token(self, credit_token: str, *, tool: str) -> CreditTokenClaims:
        """Everything about a credit token that can be known offline; raises like the ledger."""
        claims = await self.keys.verify_credit_token(credit_token)
        try:
            check_scope(claims, merchant_id=await self.merchant_id(), tool=tool)
        except server_errors.ScopeDenied as exc:
            raise _local_problem(exc) from None
        return claims

    async def charge(
        self,
        credit_token: str,
        amount_micros: int,
        *,
        tool: str,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Charge:
        """Verify and debit. Retries reuse the key: at most one debit, ever."""
        key = _key(idempotency_key)
        if self._precheck:
            await self.check_credit_token(credit_token, tool=tool)
        body: dict[str, Any] = {
            "credit_token": credit_token,
            "amount_micros": amount_micros,
            "tool": tool,
            "idempotency_key": key,
        }
        if metadata:
            body["metadata"] = dict(metadata)
        out, status = await self._post_status("/v1/charges", body, expect=(200, 201))
        return Charge(
            charge_id=str(out["charge_id"]),
            receipt=out["receipt"],
            signed_receipt=out["signed_receipt"],
            idempotency_key=key,
            replayed=status == 200,
        )

    async def get_charge(self, charge_id: str) -> dict[str, Any]:
        """One of this merchant's charges as the ledger holds it now (`refunded_micros`, …)."""
        response = await send_with_retries(
            self._http, "GET", f"/v1/charges/{charge_id}", json=None, headers=self._auth
        )
        return self._decode(response, (200,))

    async def authorize(
        self,
        credit_token: str,
        amount_micros: int,
        *,
        tool: str,
        idempotency_key: str | None = None,
        expires_in_s: int | None = None,
    ) -> Hold:
        """Hold up to `amount_micros`; capture the actual amount later, or void."""
        key = _key(idempotency_key)
        if self._precheck:
            await self.check_credit_token(credit_token, tool=tool)
        body: dict[str, Any] = {
            "credit_token": credit_token,
            "amount_micros": amount_micros,
            "tool": tool,
            "idempotency_key": key,
        }
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        out = await self._post("/v1/holds", body, expect=(200, 201))
        return Hold(
            hold_id=str(out["hold_id"]),
            status=out["status"],
            amount_micros=int(out["amount_micros"]),
            expires_at=str(out["expires_at"]),
            token_id=str(out["token_id"]),
            account_id=str(out["account_id"]),
            merchant_id=str(out["merchant_id"]),
            tool=str(out["tool"]),
            idempotency_key=key,
        )

    async def capture(self, hold_id: str, amount_micros: int) -> Capture:
        """Capture `amount_micros` (≤ held) and release the rest; a repeat is a replay."""
        out = await self._post(
            f"/v1/holds/{hold_id}/capture", {"amount_micros": amount_micros}, expect=(200,)
        )
        return Capture(
            hold_id=str(out["hold_id"]),
            charge_id=str(out["charge_id"]),
            captured_micros=int(out["captured_micros"]),
            released_micros=int(out["released_micros"]),
            receipt=out["receipt"],
            signed_receipt=out["signed_receipt"],
        )

    async def void(self, hold_id: str) -> Void:
        out = await self._post(f"/v1/holds/{hold_id}/void", None, expect=(200,))
        return Void(hold_id=str(out["hold_id"]), status=str(out["status"]))

    async def refund(
        self,
        charge_id: str,
        amount_micros: int,
        *,
        idempotency_key: str | None = None,
        reason: str | None = None,
    ) -> Refund:
        body: dict[str, Any] = {
            "amount_micros": amount_micros,
            "idempotency_key": _key(idempotency_key),
        }
        if reason is not None:
            body["reason"] = reason
        out = await self._post(f"/v1/charges/{charge_id}/refunds", body, expect=(200, 201))
        return Refund(
            refund_id=str(out["refund_id"]),
            charge_id=str(out["charge_id"]),
            amount_micros=int(out["amount_micros"]),
            refunded_total_micros=int(out["refunded_total_micros"]),
            receipt=out["receipt"],
            signed_receipt=out["signed_receipt"],
        )

    async def verify_receipt(self, signed_receipt: str) -> dict[str, Any]:
        return await self.keys.verify_receipt(signed_receipt)


def _key(idempotency_key: str | None) -> str:
    key = idempotency_key or new_idempotency_key()
    if len(key) > limits.IDEMPOTENCY_KEY_LENGTH_MAX or not limits.IDEMPOTENCY_KEY_RE.match(key):
        raise ValueError(
            f"idempotency keys are 1-{limits.IDEMPOTENCY_KEY_LENGTH_MAX} of A-Z a-z 0-9 . _ : -"
        )
    return key
