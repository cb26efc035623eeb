"""Agent SDK: what an agent holding a credit token needs.

    agent = AgentClient("https://ledger.example", credit_token)
    budget = await agent.budget()                   # GET /v1/tokens/self
    child = await agent.delegate(cap_micros=5_000, tools=["search"])   # for a sub-agent

    async with agent.mcp("https://tools.example/mcp") as tools:   # official MCP client,
        result = await tools.call_tool("search", {"query": "…"})  # Bearer credit token
        if (refusal := budget_exhausted(result)) is not None:
            ...  # refusal.limit, .required, .available, .topup_url: top up, or ask for more
        facts = await agent.verify_receipt(signed_receipt_of(result))

`budget_exhausted(...)` recognises the refusal whatever carried it: an MCP tool
result, an HTTP response (402), a problem dict, or a `verifier.sdk.BudgetExhausted`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import msgspec

from verifier.sdk.merchant import (
    CREDIT_TOKEN_META_KEY,
    DEFAULT_TIMEOUT_S,
    IDEMPOTENCY_META_KEY,
    RECEIPT_META_KEY,
    KeyCache,
    LedgerProblem,
    error_from_response,
    send_with_retries,
)

__all__ = [
    "AgentClient",
    "Budget",
    "BudgetRefusal",
    "Delegated",
    "budget_exhausted",
    "problem_of",
    "receipt_of",
    "signed_receipt_of",
]


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    """The presented credit token's budget (`GET /v1/tokens/self`)."""

    jti: str
    account_id: str
    cap_micros: int
    spent_micros: int
    held_micros: int
    remaining_micros: int
    account_available_micros: int
    spendable_micros: int
    expires_at: str
    scope: dict[str, Any]
    unit: str = "micro_usd"


class Delegated(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    jti: str
    cap_micros: int
    scope: dict[str, Any]
    expires_at: str


class BudgetRefusal(msgspec.Struct, frozen=True, kw_only=True):
    """A budget_exhausted problem, typed: what ran out, and how to get more."""

    limit: str
    required: int
    available: int
    token_id: str
    account_id: str
    # What helps: "top_up" (then topup_url/topup_methods are set), "new_credit_token"
    # (ask the owner), or "cheaper_call".
    action: str
    topup_url: str
    topup_methods: list[str]
    detail: str
    unit: str = "micro_usd"


# ---- Recognising results ---------------------------------------------------------------


def problem_of(outcome: object) -> dict[str, Any] | None:
    """The problem object inside an HTTP response, MCP tool result, exception or dict."""
    if isinstance(outcome, LedgerProblem):
        return outcome.problem
    if isinstance(outcome, httpx.Response):
        if outcome.status_code < 400:
            return None
        try:
            body = outcome.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) and "code" in body else None
    if isinstance(outcome, Mapping):
        return dict(outcome) if "code" in outcome and "status" in outcome else None
    # An MCP CallToolResult (duck-typed: no import of the client needed).
    if getattr(outcome, "is_error", False):
        structured = getattr(outcome, "structured_content", None)
        if isinstance(structured, Mapping) and "code" in structured:
            return dict(structured)
    return None


def budget_exhausted(outcome: object) -> BudgetRefusal | None:
    """The budget refusal carried by `outcome`, or None if it is something else."""
    problem = problem_of(outcome)
    if problem is None or problem.get("code") != "budget_exhausted":
        return None
    topup = problem.get("topup") if isinstance(problem.get("topup"), Mapping) else {}
    assert isinstance(topup, Mapping)
    return BudgetRefusal(
        limit=str(problem.get("limit", "")),
        required=int(problem.get("required", 0)),
        available=int(problem.get("available", 0)),
        token_id=str(problem.get("token_id", "")),
        account_id=str(problem.get("account_id", "")),
        action=str(problem.get("action", "")),
        topup_url=str(topup.get("url", "")),
        topup_methods=[str(m) for m in topup.get("methods", [])],
        detail=str(problem.get("detail", "")),
        unit=str(problem.get("unit", "micro_usd")),
    )


def _receipt_entry(result: object) -> Mapping[str, Any] | None:
    meta = getattr(result, "meta", None)
    if not isinstance(meta, Mapping):
        return None
    entry = meta.get(RECEIPT_META_KEY)
    return entry if isinstance(entry, Mapping) else None


def signed_receipt_of(result: object) -> str | None:
    """The signed receipt an MCP tool result carries in `_meta` (verify it before trusting it)."""
    entry = _receipt_entry(result)
    signed = entry.get("signed_receipt") if entry is not None else None
    return signed if isinstance(signed, str) else None


def receipt_of(result: object) -> dict[str, Any] | None:
    """The receipt facts as sent (unverified; `AgentClient.verify_receipt` checks them)."""
    entry = _receipt_entry(result)
    facts = entry.get("receipt") if entry is not None else None
    return dict(facts) if isinstance(facts, Mapping) else None


# ---- The agent client -----------------------------------------------------------------


class AgentClient:
    """Budget, delegation and receipts for the holder of one credit token."""

    def __init__(
        self,
        base_url: str,
        credit_token: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        assert credit_token, "a credit token is required"
        self.credit_token = credit_token
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self.keys = KeyCache(self._http)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    @property
    def headers(self) -> dict[str, str]:
        """What to send a paid HTTP tool (or an MCP server over streamable HTTP)."""
        return {"Authorization": f"Bearer {self.credit_token}"}

    def mcp_meta(self, idempotency_key: str | None = None) -> dict[str, Any]:
        """`_meta` for a tools/call on a transport without headers (stdio)."""
        meta: dict[str, Any] = {CREDIT_TOKEN_META_KEY: self.credit_token}
        if idempotency_key is not None:
            meta[IDEMPOTENCY_META_KEY] = idempotency_key
        return meta

    async def budget(self) -> Budget:
        response = await send_with_retries(
            self._http, "GET", "/v1/tokens/self", json=None, headers=self.headers
        )
        if response.status_code != 200:
            raise error_from_response(response)
        body = response.json()
        return Budget(
            jti=str(body["jti"]),
            account_id=str(body["account_id"]),
            cap_micros=int(body["cap_micros"]),
            spent_micros=int(body["spent_micros"]),
            held_micros=int(body["held_micros"]),
            remaining_micros=int(body["remaining_micros"]),
            account_available_micros=int(body["account_available_micros"]),
            spendable_micros=int(
                body.get(
                    "spendable_micros",
                    min(body["remaining_micros"], body["account_available_micros"]),
                )
            ),
            expires_at=str(body["expires_at"]),
            scope=dict(body.get("scope") or {}),
        )

    async def delegate(
        self,
        *,
        cap_micros: int,
        tools: list[str] | None = None,
        audiences: list[str] | None = None,
        max_per_call_micros: int | None = None,
        expires_in_s: int | None = None,
        description: str | None = None,
    ) -> Delegated:
        """A child credit token for a sub-agent: narrower scope, smaller cap; its
        spending also counts against this token."""
        body: dict[str, Any] = {"cap_micros": cap_micros}
        optional = {
            "tools": tools,
            "audiences": audiences,
            "max_per_call_micros": max_per_call_micros,
            "expires_in_s": expires_in_s,
            "description": description,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        # Not retried: a lost response would leave an unused (capped, harmless) child.
        response = await self._http.post("/v1/tokens/delegate", json=body, headers=self.headers)
        if response.status_code not in (200, 201):
            raise error_from_response(response)
        out = response.json()
        return Delegated(
            token=out["token"],
            jti=str(out["jti"]),
            cap_micros=int(out["cap_micros"]),
            scope=dict(out.get("scope") or {}),
            expires_at=str(out["expires_at"]),
        )

    async def verify_receipt(self, signed_receipt: str) -> dict[str, Any]:
        """The receipt's facts, checked offline against the ledger's published keys."""
        return await self.keys.verify_receipt(signed_receipt)

    @contextlib.asynccontextmanager
    async def mcp(self, url: str) -> AsyncIterator[Any]:
        """An official `mcp.Client` on streamable HTTP that presents this credit token."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async with (
            httpx2.AsyncClient(headers=self.headers, timeout=httpx2.Timeout(30, read=300)) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client
