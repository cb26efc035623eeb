"""Hostile input on the money paths, over real HTTP: every refusal has the right
problem code and moves nothing (row counts of every table are unchanged).

The amount cases run on every operation of the OpenAPI document whose body has
an `amount_micros`, so a money route added later is covered (and must be given a
valid base request below, or this test fails naming it).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import limits
from tests.conftest import Service
from tests.helpers import assert_invariants, row_counts
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market


@pytest.fixture
async def market(service: Service) -> Market:
    return await new_market(service)


DOCUMENT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"

HOSTILE_AMOUNTS: list[bytes] = [
    b"0",
    b"-1",
    b"-9223372036854775808",
    b"9223372036854775808",
    str(limits.AMOUNT_MAX + 1).encode(),
    b"1" + b"0" * 400,
    b"1e400",
    b"1.5",
    b"1.0",
    b'"1"',
    b"true",
    b"null",
    b"[1]",
    b'{"a": 1}',
    b"[" * 5000 + b"]" * 5000,
]


def _money_operations() -> list[str]:
    document = json.loads(DOCUMENT.read_text())
    schemas = document["components"]["schemas"]
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            body = schemas.get(ref.rsplit("/", 1)[-1], {})
            if "amount_micros" in body.get("properties", {}):
                found.append(f"{method.upper()} {path}")
    return found


async def _bases(
    market: Market, token: str
) -> dict[str, tuple[str, dict[str, Any], dict[str, str]]]:
    """A valid request for each money route: (concrete path, body, credentials)."""
    charge = await market.charge(token, 10)
    assert charge.status_code == 201, charge.text
    hold = await market.client.post(
        "/v1/holds",
        json={"credit_token": token, "amount_micros": 10, "tool": "llm", "idempotency_key": "h"},
        headers=market.merchant,
    )
    assert hold.status_code == 201, hold.text
    charge_id, hold_id = charge.json()["charge_id"], hold.json()["hold_id"]
    fresh = {"credit_token": token, "amount_micros": 1, "tool": "search"}
    merchant, owner = market.merchant, market.service.auth(market.owner_key)
    return {
        "POST /v1/charges": ("/v1/charges", {**fresh, "idempotency_key": "c2"}, merchant),
        "POST /v1/holds": ("/v1/holds", {**fresh, "idempotency_key": "h2"}, merchant),
        "POST /v1/holds/{hold_id}/capture": (
            f"/v1/holds/{hold_id}/capture",
            {"amount_micros": 1},
            merchant,
        ),
        "POST /v1/charges/{charge_id}/refunds": (
            f"/v1/charges/{charge_id}/refunds",
            {"amount_micros": 1, "idempotency_key": "r"},
            merchant,
        ),
        # The owner's card top-up: the amount is refused before Stripe is asked.
        "POST /v1/topups/card": ("/v1/topups/card", {"amount_micros": 5_000_000}, owner),
    }


def _with_amount(body: dict[str, Any], raw: bytes) -> bytes:
    marker = "__AMOUNT__"
    text = json.dumps({**body, "amount_micros": marker})
    return text.replace(f'"{marker}"', raw.decode()).encode()


async def _unchanged(market: Market, refusals: Callable[[], Awaitable[None]]) -> None:
    before = await row_counts(market.service.dsn)
    await refusals()
    assert await row_counts(market.service.dsn) == before
    await assert_invariants(market.service.dsn)


async def test_hostile_amounts_are_422_on_every_money_route(service: Service) -> None:
    market = await new_market(service)
    token = (await market.mint(cap_micros=10_000, max_per_call_micros=10_000))["token"]
    bases = await _bases(market, token)
    operations = _money_operations()
    assert operations, "the document lists no money route"
    missing = [op for op in operations if op not in bases]
    assert not missing, f"give these money routes a valid base request: {missing}"

    async def refusals() -> None:
        for operation in operations:
            path, body, credentials = bases[operation]
            headers = {**credentials, "Content-Type": "application/json"}
            for raw in HOSTILE_AMOUNTS:
                response = await market.client.post(
                    path, content=_with_amount(body, raw), headers=headers
                )
                assert response.status_code == 422, (operation, raw[:40], response.text[:200])
                assert_problem(response, 422, "validation_failed")

    await _unchanged(market, refusals)


async def test_hostile_strings_in_charge_fields_are_422(market: Market) -> None:
    token = (await market.mint())["token"]
    base = {"credit_token": token, "amount_micros": 1, "tool": "search", "idempotency_key": "k"}
    cases: list[dict[str, Any]] = [
        *({**base, "tool": tool} for tool in ("wéb", "🚀", "a\x00b", "a b", "../etc", "\u202ex")),
        *(
            {**base, "idempotency_key": k}
            for k in ("ключ", "a\x00b", "🔑", "x" * (limits.IDEMPOTENCY_KEY_LENGTH_MAX + 1))
        ),
        {**base, "metadata": {"k": "a\x00b"}},
        {**base, "metadata": {"a\x00": "v"}},
        {**base, "metadata": {"": "v"}},
        {**base, "metadata": {f"k{i}": "v" for i in range(limits.METADATA_KEYS_MAX + 1)}},
        {**base, "metadata": {"k": {"nested": "v"}}},
        {**base, "credit_token": "v4.public." + "\x00" * 10},
    ]

    async def refusals() -> None:
        for body in cases:
            response = await market.client.post("/v1/charges", json=body, headers=market.merchant)
            code = response.json().get("code")
            assert response.status_code in (401, 422), (body, response.text[:200])
            assert code in ("validation_failed", "token_invalid"), (body, code)

    await _unchanged(market, refusals)


async def test_a_hostile_request_does_not_fail_the_others_in_its_batch(market: Market) -> None:
    # Charges are applied in batches; a request PostgreSQL cannot store (NUL in
    # metadata) must be refused alone, never take concurrent good ones with it.
    token = (await market.mint(cap_micros=10_000, max_per_call_micros=10))["token"]
    good = [
        {"credit_token": token, "amount_micros": 1, "tool": "t", "idempotency_key": f"g{i}"}
        for i in range(20)
    ]
    bad = [
        {**body, "idempotency_key": f"b{i}", "metadata": {"k": "a\x00b"}}
        for i, body in enumerate(good[:5])
    ]
    responses = await asyncio.gather(
        *(market.client.post("/v1/charges", json=b, headers=market.merchant) for b in good + bad)
    )
    assert [r.status_code for r in responses[: len(good)]] == [201] * len(good)
    for response in responses[len(good) :]:
        assert_problem(response, 422, "validation_failed")
    assert (await market.account())["balance_micros"] == 100_000 - len(good)
    await assert_invariants(market.service.dsn)


async def test_cross_merchant_replayed_and_foreign_ids_are_refused(market: Market) -> None:
    token = await market.mint()  # audience: this merchant only
    other = await new_market(market.service, name="other")
    first = await market.charge(token["token"], 7, key="once")
    assert first.status_code == 201

    async def refusals() -> None:
        # The credit token presented at a merchant outside its audience.
        assert_problem(await other.charge(token["token"], 7, key="once"), 403, "scope_denied")
        # The same key with a different body: a conflict, not a second debit.
        assert_problem(
            await market.charge(token["token"], 8, key="once"), 409, "idempotency_conflict"
        )
        # An identical replay: the same receipt, no second debit.
        replay = await market.charge(token["token"], 7, key="once")
        assert replay.status_code == 200
        assert replay.json()["receipt"] == first.json()["receipt"]
        # Another owner's account and credit token ids answer like missing ones.
        mine = market.service.auth(market.owner_key)
        theirs = other.service.auth(other.owner_key)
        for path in (f"/v1/accounts/{market.account_id}", f"/v1/tokens/{token['jti']}"):
            assert_problem(await other.client.get(path, headers=theirs), 404, "not_found")
        revoke = await other.client.post(f"/v1/tokens/{token['jti']}/revoke", headers=theirs)
        assert_problem(revoke, 404, "not_found")
        assert (
            await market.client.get(f"/v1/tokens/{token['jti']}", headers=mine)
        ).status_code == 200
        ids = (uuid.uuid4(), uuid.uuid4())
        assert_problem(
            await market.client.post(f"/v1/holds/{ids[0]}/void", headers=market.merchant),
            404,
            "not_found",
        )
        refund = await market.client.post(
            f"/v1/charges/{ids[1]}/refunds",
            json={"amount_micros": 1, "idempotency_key": "r"},
            headers=market.merchant,
        )
        assert_problem(refund, 404, "not_found")

    await _unchanged(market, refusals)
    # Revoked: a replay of the credit token debits nothing.
    revoked = await market.client.post(
        f"/v1/tokens/{token['jti']}/revoke", headers=market.service.auth(market.owner_key)
    )
    assert revoked.status_code == 200, revoked.text
    before = await row_counts(market.service.dsn)
    assert_problem(await market.charge(token["token"], 7, key="after"), 401, "token_revoked")
    assert await row_counts(market.service.dsn) == before
    assert isinstance(market.client, httpx.AsyncClient)


async def test_budget_fields_take_only_json_integers(market: Market) -> None:
    # Token caps are money too: `"1000"` or `1000.0` is refused, never converted.
    token = (await market.mint(cap_micros=10_000))["token"]
    owner = {**market.service.auth(market.owner_key), "Content-Type": "application/json"}
    delegate = {**market.service.auth(token), "Content-Type": "application/json"}
    mint = '{"max_per_call_micros": 10, "audiences": ["*"], "tools": ["*"], "cap_micros": '

    async def refusals() -> None:
        for raw in ("1000.0", '"1000"', "1e3", "true"):
            for path, headers, body in (
                ("/v1/tokens", owner, f"{mint}{raw}}}"),
                ("/v1/tokens/delegate", delegate, f'{{"cap_micros": {raw}}}'),
            ):
                response = await market.client.post(path, content=body, headers=headers)
                assert_problem(response, 422, "validation_failed")

    await _unchanged(market, refusals)
