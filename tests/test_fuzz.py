"""Schema-driven fuzzing (schemathesis) of the running service against the committed
OpenAPI document, with valid and invalid credentials.

Every operation in `openapi/openapi.json` becomes one test, so routes added later
are fuzzed as soon as the document is regenerated. For each generated request
(valid and invalid by the schema) and each credential: no 500, every error is
`application/problem+json` with a `code`, and the response conforms to the
document (status documented, body matching its schema). Examples are bounded
and derandomized so the run is short and repeatable in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis import checks as schemathesis_checks
from schemathesis.checks import CheckContext
from schemathesis.core.failures import Failure

from ledger.config import Settings
from ledger.db.embedded import free_port
from ledger.db.pool import connect
from ledger.http.problems import PROBLEM_MEDIA_TYPE
from tests.helpers import fund, operator_key_for, serving
from tests.test_topups_card import STRIPE_KEY, WEBHOOK_SECRET, FakeStripe

DOCUMENT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
EXAMPLES_PER_OPERATION = 20
VALID_CREDENTIALS = ("operator", "owner", "merchant", "agent")
# Strings that break storage, logs or naive code; put in place of every string in
# generated bodies, in turn.
# Rules between fields that JSON Schema cannot state: a schema-valid body may
# break them and be refused (422 `validation_failed`), so "valid data is
# accepted" does not apply to these operations; every other check does.
CROSS_FIELD_RULES = {
    "GET /v1/tokens": "an operator API key must name the account (?account_id=)",
    "POST /v1/tokens": "max_per_call_micros may not exceed cap_micros",
    "POST /v1/tokens/delegate": "a child's cap and scope stay within its parent's",
    "POST /v1/wallets": "the message must be one the service issued, signed by its address",
    "POST /v1/topups/card": "whole cents within the configured CARD_TOPUP_MIN/MAX_MICROS",
    "POST /v1/webhooks/stripe": "the body must carry a valid Stripe-Signature",
    **{
        f"GET {path}": "a cursor must be one the service handed out; `from` before `to`, in "
        "whole UTC hours for usage"
        for path in (
            "/v1/accounts",
            "/v1/merchants",
            "/v1/usage",
            "/v1/usage/charges",
            "/v1/usage/holds",
            "/v1/usage/refunds",
            "/v1/usage/refusals",
            "/v1/usage/export.csv",
            "/v1/usage/export.ndjson",
        )
    },
}
# A key is required in the `Idempotency-Key` header or the body's `idempotency_key`
# (JSON Schema cannot say "one of a header and a field"): valid cases send one.
KEY_IN_HEADER_OR_BODY = {
    "POST /v1/charges",
    "POST /v1/holds",
    "POST /v1/charges/{charge_id}/refunds",
}
HOSTILE_STRINGS = (
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\ufeff",
    "🚀" * 300,
    "' OR 1=1 --",
    "%s%n%x",
    "\\u0000",
    "Ω" * 5000,
)

schema = schemathesis.openapi.from_path(DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    # PostgreSQL text cannot hold NUL: generated, so its refusal is fuzzed too.
    allow_x00=True,
    # Credentials are ours to choose (below), valid and invalid alike.
    with_security_parameters=False,
)
# Valid input may still be refused for want of money: 402 `budget_exhausted` is
# an answer about the world, not about the request's shape.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    *schema.config.checks.positive_data_acceptance.expected_statuses,
    "402",
]


@dataclass
class Live:
    url: str
    credentials: dict[str, dict[str, str]]
    # Real ids a generated request may be pointed at (path parameters by name).
    path_values: dict[str, str]


def _real_resources(
    url: str, operator: dict[str, str], dsn: str
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """An owner, a funded wallet, a merchant, a credit token, a charge and a hold:
    real ids and credentials for generated requests to reach past the lookups."""
    created = httpx.post(f"{url}/v1/accounts", json={"name": "fuzz"}, headers=operator).json()
    account_id, owner_key = created["account"]["id"], created["owner_api_key"]
    owner = {"Authorization": f"Bearer {owner_key}"}
    asyncio.run(_fund(dsn, uuid.UUID(account_id), 10_000_000))
    merchant = httpx.post(f"{url}/v1/merchants", json={"name": "fuzz"}, headers=operator).json()
    merchant_auth = {"Authorization": f"Bearer {merchant['merchant_api_key']}"}
    mint = {"cap_micros": 5_000_000, "max_per_call_micros": 5_000_000}
    token = httpx.post(f"{url}/v1/tokens", json=mint, headers=owner).json()
    base = {"credit_token": token["token"], "amount_micros": 5, "tool": "fuzz"}
    charge = httpx.post(
        f"{url}/v1/charges", json={**base, "idempotency_key": "c"}, headers=merchant_auth
    ).json()
    hold = httpx.post(
        f"{url}/v1/holds", json={**base, "idempotency_key": "h"}, headers=merchant_auth
    ).json()
    credentials = {
        "operator": operator,
        "owner": owner,
        "merchant": merchant_auth,
        "agent": {"Authorization": f"Bearer {token['token']}"},
        "wrong key": {"Authorization": "Bearer lk_op_" + "A" * 43},
        "not bearer": {"Authorization": "Basic " + "QQ==" * 4},
        "none": {},
    }
    values = {
        "account_id": account_id,
        "jti": token["jti"],
        "charge_id": charge["charge_id"],
        "hold_id": hold["hold_id"],
        "credit_token": token["token"],
    }
    return credentials, values


async def _fund(dsn: str, account_id: uuid.UUID, amount: int) -> None:
    conn = await connect(dsn)
    try:
        await fund(conn, account_id, amount)
    finally:
        await conn.close()


@pytest.fixture
def live(dsn: str) -> Iterator[Live]:
    operator_key = asyncio.run(operator_key_for(dsn))
    stripe = FakeStripe()  # the remote Stripe API, stood in for on loopback
    settings_ = Settings(
        database_url=dsn,
        host="127.0.0.1",
        port=free_port(),
        data_dir=Path("/nonexistent"),
        stripe_secret_key=STRIPE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_api_base=stripe.url,
    )
    with contextlib.closing(stripe), serving(settings_) as url:
        operator = {"Authorization": f"Bearer {operator_key}"}
        credentials, values = _real_resources(url, operator, dsn)
        yield Live(url=url, credentials=credentials, path_values=values)


@schemathesis.check
def refusals_are_problems(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Every error is RFC 9457 problem+json with a stable snake_case `code`."""
    if response.status_code < 400:
        return None
    media_type = response.headers.get("content-type", [""])[0].split(";")[0]
    if media_type != PROBLEM_MEDIA_TYPE:
        raise Failure(
            operation=case.operation.label,
            title="Refusal is not problem+json",
            message=f"{response.status_code} answered with content-type {media_type!r}",
        )
    body = response.json()
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code.replace("_", "").isalpha() or not code.islower():
        raise Failure(
            operation=case.operation.label,
            title="Problem without a code",
            message=f"{response.status_code} problem has code {code!r}",
        )
    if body.get("status") != response.status_code:
        raise Failure(
            operation=case.operation.label,
            title="Problem status differs from the HTTP status",
            message=f"HTTP {response.status_code}, problem status {body.get('status')!r}",
        )
    return True


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_paths(item, (*path, index))


def _replaced(body: Any, path: tuple[Any, ...], new: str) -> Any:
    result = copy.deepcopy(body)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return result


_hostile = itertools.cycle(HOSTILE_STRINGS)
VARIANT_CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_schema_conformance,
    refusals_are_problems,
]


def _hostile_variants(case: Any, live: Live, headers: dict[str, str]) -> None:
    """Each string in a generated body replaced by a hostile one: never a 500,
    and every answer documented and, if a refusal, a problem."""
    original = case.body
    if not isinstance(original, dict | list):
        return
    try:
        for path in list(_string_paths(original)) or []:
            if not path:
                continue
            case.body = _replaced(original, path, next(_hostile))
            response = case.call(base_url=live.url, headers=headers)
            case.validate_response(response, headers=headers, checks=VARIANT_CHECKS)
    finally:
        case.body = original


def _json_integers(value: Any) -> Any:
    """JSON Schema counts `1.0` as an integer; our decoder (deliberately) does not:
    amounts are JSON integers. Valid cases send integral numbers as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _json_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_integers(v) for v in value]
    return value


def _call_and_check(case: Any, live: Live, headers: dict[str, str], excluded: list[Any]) -> Any:
    response = case.call(base_url=live.url, headers=headers)
    case.validate_response(
        response,
        headers=headers,
        additional_checks=[refusals_are_problems],
        excluded_checks=excluded,
    )
    return response


def _call_with_real_values(
    case: Any, live: Live, headers: dict[str, str], excluded: list[Any]
) -> None:
    path_before, body_before = dict(case.path_parameters or {}), case.body
    real = live.path_values
    if not any(k in real for k in path_before) and not (
        isinstance(body_before, dict) and "credit_token" in body_before
    ):
        return
    try:
        if case.path_parameters:
            case.path_parameters.update({k: v for k, v in real.items() if k in path_before})
        if isinstance(body_before, dict) and "credit_token" in body_before:
            case.body = {**body_before, "credit_token": real["credit_token"]}
        _call_and_check(case, live, headers, excluded)
    finally:
        if case.path_parameters:
            case.path_parameters.clear()
            case.path_parameters.update(path_before)
        case.body = body_before


def _service_minted_values(case: Any) -> None:
    """Values valid only as the service gave them out, put right in positive cases: a
    list's opaque `cursor` (dropped), and an `Idempotency-Key` header (a fresh one,
    or the body's `idempotency_key`, which it must equal), so a generated key reused
    with another generated body is not the conflict it would rightly be."""
    if isinstance(case.query, dict):
        case.query.pop("cursor", None)
    body_key = case.body.get("idempotency_key") if isinstance(case.body, dict) else None
    if case.headers is not None and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = body_key or uuid.uuid4().hex
    elif case.operation.label in KEY_IN_HEADER_OR_BODY and body_key is None:
        case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}


def _fuzz(case: Any, live: Live) -> None:
    if case.meta.generation.mode.is_positive and case.body is not None:
        case.body = _json_integers(case.body)
    if case.meta.generation.mode.is_positive:
        _service_minted_values(case)
    excluded = []
    if case.operation.label in CROSS_FIELD_RULES:
        excluded.append(schemathesis_checks.positive_data_acceptance)
    for name, headers in live.credentials.items():
        response = _call_and_check(case, live, headers, excluded)
        if case.meta.generation.mode.is_positive:
            # The same request aimed at real resources, so success paths are fuzzed too.
            _call_with_real_values(case, live, headers, excluded)
        if name in VALID_CREDENTIALS and response.status_code not in (401, 403):
            _hostile_variants(case, live, headers)


FUZZ_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_conforms_and_never_fails(case: Any, live: Live) -> None:
    _fuzz(case, live)
