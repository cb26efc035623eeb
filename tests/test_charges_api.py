"""Verify-and-debit over real HTTP: charges, idempotency, 402s, holds, refunds, receipts."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ledger.db.pool import connect
from tests.conftest import Service
from tests.helpers import assert_invariants, fund
from tests.test_api_accounts import assert_problem


@dataclass
class Market:
    service: Service
    merchant_id: str
    merchant_key: str
    account_id: str
    owner_key: str

    @property
    def client(self) -> httpx.AsyncClient:
        return self.service.client

    @property
    def merchant(self) -> dict[str, str]:
        return self.service.auth(self.merchant_key)

    async def mint(self, **scope: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "cap_micros": 1_000,
            "max_per_call_micros": 1_000,
            "audiences": [self.merchant_id],
            "tools": ["*"],
        }
        body.update(scope)
        if "max_per_call_micros" not in scope:
            body["max_per_call_micros"] = min(1_000, body["cap_micros"])
        response = await self.client.post(
            "/v1/tokens", json=body, headers=self.service.auth(self.owner_key)
        )
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    async def charge(
        self, token: str, amount: int, *, tool: str = "search", key: str | None = None
    ) -> httpx.Response:
        body = {
            "credit_token": token,
            "amount_micros": amount,
            "tool": tool,
            "idempotency_key": key or uuid.uuid4().hex,
        }
        return await self.client.post("/v1/charges", json=body, headers=self.merchant)

    async def account(self) -> dict[str, Any]:
        response = await self.client.get(
            f"/v1/accounts/{self.account_id}", headers=self.service.auth(self.owner_key)
        )
        return response.json()  # type: ignore[no-any-return]


async def new_market(service: Service, *, funds: int = 100_000, name: str = "shop") -> Market:
    merchant = await service.client.post(
        "/v1/merchants", json={"name": name}, headers=service.operator
    )
    assert merchant.status_code == 201, merchant.text
    account = await service.client.post(
        "/v1/accounts", json={"name": "agent-owner"}, headers=service.operator
    )
    created = account.json()
    if funds:
        conn = await connect(service.dsn)
        try:
            await fund(conn, uuid.UUID(created["account"]["id"]), funds)
        finally:
            await conn.close()
    return Market(
        service=service,
        merchant_id=merchant.json()["merchant"]["id"],
        merchant_key=merchant.json()["merchant_api_key"],
        account_id=created["account"]["id"],
        owner_key=created["owner_api_key"],
    )


@pytest.fixture
async def market(service: Service) -> Market:
    return await new_market(service)


async def test_charge_returns_a_signed_receipt_and_replays_it(market: Market) -> None:
    token = (await market.mint())["token"]
    first = await market.charge(token, 250, key="order-1")
    assert first.status_code == 201, first.text
    body = first.json()
    receipt = body["receipt"]
    assert receipt["kind"] == "charge"
    assert receipt["amount_micros"] == 250
    assert receipt["tool"] == "search"
    assert receipt["merchant_id"] == market.merchant_id
    assert receipt["account_id"] == market.account_id
    assert receipt["token_remaining_micros"] == 750
    assert receipt["account_balance_micros"] == 100_000 - 250
    assert receipt["unit"] == "micro_usd"
    assert body["signed_receipt"].startswith("v4.public.")

    replay = await market.charge(token, 250, key="order-1")
    assert replay.status_code == 200
    assert replay.json() == body, "a replay returns the original receipt, byte for byte"

    conflict = await market.charge(token, 251, key="order-1")
    assert_problem(conflict, 409, "idempotency_conflict")
    assert (await market.account())["balance_micros"] == 100_000 - 250
    await assert_invariants(market.service.dsn)


async def test_200_concurrent_http_charges_on_a_cap_of_50(market: Market) -> None:
    token = await market.mint(cap_micros=50)
    responses = await asyncio.gather(*(market.charge(token["token"], 1) for _ in range(200)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 50, 402: 150}
    refusal = next(r for r in responses if r.status_code == 402)
    problem = assert_problem(refusal, 402, "budget_exhausted")
    assert problem["limit"] == "token_cap"
    assert problem["required"] == 1
    assert problem["available"] == 0
    assert problem["unit"] == "micro_usd"
    assert problem["token_id"] == token["jti"]
    assert problem["account_id"] == market.account_id
    # A spent credit token is not helped by a top-up: no top-up is offered.
    assert "topup" not in problem and problem["action"] == "new_credit_token"
    assert problem["detail"].endswith("Ask the owner for a new credit token")
    assert problem["type"] == f"{market.service.url}/problems/budget_exhausted"
    assert (await market.account())["balance_micros"] == 100_000 - 50
    await assert_invariants(market.service.dsn)


async def test_200_concurrent_http_charges_on_a_balance_of_50(service: Service) -> None:
    market = await new_market(service, funds=50)
    token = (await market.mint(cap_micros=100_000))["token"]
    responses = await asyncio.gather(*(market.charge(token, 1) for _ in range(200)))
    assert Counter(r.status_code for r in responses) == {201: 50, 402: 150}
    limits = {r.json()["limit"] for r in responses if r.status_code == 402}
    assert limits == {"account_balance"}
    assert (await market.account())["balance_micros"] == 0
    await assert_invariants(service.dsn)


async def test_50_concurrent_retries_debit_once_with_identical_receipts(market: Market) -> None:
    token = (await market.mint())["token"]
    responses = await asyncio.gather(*(market.charge(token, 9, key="retry-me") for _ in range(50)))
    assert {r.status_code for r in responses} <= {200, 201}
    assert Counter(r.status_code for r in responses)[201] == 1
    assert len({r.content for r in responses}) == 1, "50 identical receipts"
    assert (await market.account())["balance_micros"] == 100_000 - 9
    await assert_invariants(market.service.dsn)


async def test_delegated_children_together_never_exceed_the_parent(market: Market) -> None:
    parent = await market.mint(cap_micros=30)
    children = []
    for _ in range(3):
        child = await market.client.post(
            "/v1/tokens/delegate",
            json={"cap_micros": 20},
            headers=market.service.auth(parent["token"]),
        )
        assert child.status_code == 201, child.text
        children.append(child.json()["token"])
    responses = await asyncio.gather(*(market.charge(children[i % 3], 1) for i in range(120)))
    assert Counter(r.status_code for r in responses)[201] == 30
    assert {r.json()["limit"] for r in responses if r.status_code == 402} <= {
        "token_cap",
        "ancestor_cap",
    }
    assert (await market.account())["balance_micros"] == 100_000 - 30
    await assert_invariants(market.service.dsn)


async def test_max_per_call_scope_and_revocation_refusals(market: Market) -> None:
    token = await market.mint(max_per_call_micros=10, tools=["search", "image.*"])
    over = await market.charge(token["token"], 11)
    problem = assert_problem(over, 402, "budget_exhausted")
    assert (problem["limit"], problem["required"], problem["available"]) == ("max_per_call", 11, 10)
    assert_problem(await market.charge(token["token"], 1, tool="translate"), 403, "scope_denied")
    assert (await market.charge(token["token"], 1, tool="image.generate")).status_code == 201
    other = await new_market(market.service, name="other-shop")
    foreign = await other.charge(token["token"], 1)
    assert_problem(foreign, 403, "scope_denied")
    revoke = await market.client.post(
        f"/v1/tokens/{token['jti']}/revoke", headers=market.service.auth(market.owner_key)
    )
    assert revoke.status_code == 200, revoke.text
    assert_problem(await market.charge(token["token"], 1), 401, "token_revoked")
    assert_problem(await market.charge("v4.public.garbage", 1), 401, "token_invalid")
    assert (await market.account())["balance_micros"] == 100_000 - 1
    await assert_invariants(market.service.dsn)


async def test_receipts_verify_offline_and_tampering_is_detected(market: Market) -> None:
    from verifier.receipts import verify_receipt
    from verifier.tokens import KeyRing

    token = (await market.mint())["token"]
    body = (await market.charge(token, 42)).json()
    keys = (await market.client.get("/v1/keys")).json()
    keyring = KeyRing.from_published(keys)
    facts = verify_receipt(body["signed_receipt"], keyring)
    assert facts == body["receipt"]
    _prefix, _, _rest = body["signed_receipt"].rpartition(".")
    signed = body["signed_receipt"]
    tampered = signed[:20] + ("A" if signed[20] != "A" else "B") + signed[21:]
    from verifier.errors import TokenInvalid

    with pytest.raises(TokenInvalid):
        verify_receipt(tampered, keyring)


async def test_hold_capture_releases_the_rest_and_is_idempotent(market: Market) -> None:
    token = await market.mint()
    hold = await market.client.post(
        "/v1/holds",
        json={
            "credit_token": token["token"],
            "amount_micros": 400,
            "tool": "llm",
            "idempotency_key": "h1",
        },
        headers=market.merchant,
    )
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["hold_id"]
    assert hold.json()["status"] == "pending"
    account = await market.account()
    assert (account["balance_micros"], account["available_micros"]) == (100_000, 99_600)

    capture = await market.client.post(
        f"/v1/holds/{hold_id}/capture", json={"amount_micros": 123}, headers=market.merchant
    )
    assert capture.status_code == 200, capture.text
    result = capture.json()
    assert (result["captured_micros"], result["released_micros"]) == (123, 277)
    assert result["receipt"]["kind"] == "capture"
    again = await market.client.post(
        f"/v1/holds/{hold_id}/capture", json={"amount_micros": 123}, headers=market.merchant
    )
    assert again.status_code == 200 and again.json() == result
    different = await market.client.post(
        f"/v1/holds/{hold_id}/capture", json={"amount_micros": 124}, headers=market.merchant
    )
    assert_problem(different, 409, "hold_not_pending")
    void = await market.client.post(f"/v1/holds/{hold_id}/void", headers=market.merchant)
    assert_problem(void, 409, "hold_not_pending")
    account = await market.account()
    assert (account["balance_micros"], account["available_micros"]) == (
        100_000 - 123,
        100_000 - 123,
    )
    await assert_invariants(market.service.dsn)


async def test_void_and_automatic_expiry_release_holds(market: Market) -> None:
    token = await market.mint()

    async def hold(key: str, expires_in_s: int = 300) -> str:
        response = await market.client.post(
            "/v1/holds",
            json={
                "credit_token": token["token"],
                "amount_micros": 100,
                "tool": "llm",
                "idempotency_key": key,
                "expires_in_s": expires_in_s,
            },
            headers=market.merchant,
        )
        assert response.status_code == 201, response.text
        return response.json()["hold_id"]  # type: ignore[no-any-return]

    voided = await hold("v")
    for _ in range(2):
        response = await market.client.post(f"/v1/holds/{voided}/void", headers=market.merchant)
        assert response.status_code == 200 and response.json() == {
            "hold_id": voided,
            "status": "voided",
        }
    await hold("e", expires_in_s=1)
    # No request touches the hold: the sweeper alone releases it.
    for _ in range(100):
        if (await market.account())["available_micros"] == 100_000:
            break
        await asyncio.sleep(0.1)
    assert (await market.account())["available_micros"] == 100_000
    me = await market.client.get("/v1/tokens/self", headers=market.service.auth(token["token"]))
    assert me.json()["held_micros"] == 0
    await assert_invariants(market.service.dsn)


async def test_refunds_return_money_to_wallet_and_token_but_never_exceed(market: Market) -> None:
    token = await market.mint(cap_micros=1_000)
    charge = (await market.charge(token["token"], 300)).json()
    charge_id = charge["charge_id"]

    async def refund(amount: int, key: str) -> httpx.Response:
        return await market.client.post(
            f"/v1/charges/{charge_id}/refunds",
            json={"amount_micros": amount, "idempotency_key": key},
            headers=market.merchant,
        )

    first = await refund(100, "r1")
    assert first.status_code == 201, first.text
    assert first.json()["refunded_total_micros"] == 100
    assert first.json()["receipt"]["kind"] == "refund"
    assert (await refund(100, "r1")).json() == first.json()
    problem = assert_problem(await refund(201, "r2"), 409, "refund_exceeds_charge")
    assert problem["available"] == 200
    assert (await refund(200, "r3")).status_code == 201
    assert_problem(await refund(1, "r4"), 409, "refund_exceeds_charge")
    assert (await market.account())["balance_micros"] == 100_000
    me = await market.client.get("/v1/tokens/self", headers=market.service.auth(token["token"]))
    assert me.json()["spent_micros"] == 0
    await assert_invariants(market.service.dsn)


async def test_merchants_cannot_touch_each_others_charges_and_holds(market: Market) -> None:
    token = await market.mint(audiences=["*"])
    charge_id = (await market.charge(token["token"], 10)).json()["charge_id"]
    hold = await market.client.post(
        "/v1/holds",
        json={
            "credit_token": token["token"],
            "amount_micros": 10,
            "tool": "llm",
            "idempotency_key": "k",
        },
        headers=market.merchant,
    )
    hold_id = hold.json()["hold_id"]
    other = await new_market(market.service, name="other")
    refund = await other.client.post(
        f"/v1/charges/{charge_id}/refunds",
        json={"amount_micros": 1, "idempotency_key": "x"},
        headers=other.merchant,
    )
    assert_problem(refund, 404, "not_found")
    capture = await other.client.post(
        f"/v1/holds/{hold_id}/capture", json={"amount_micros": 1}, headers=other.merchant
    )
    assert_problem(capture, 404, "not_found")
    assert_problem(
        await other.client.post(f"/v1/holds/{hold_id}/void", headers=other.merchant),
        404,
        "not_found",
    )
    # The same idempotency key at another merchant is a different request space.
    mine = await market.charge(token["token"], 5, key="shared-key")
    theirs = await other.charge(token["token"], 6, key="shared-key")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    # An owner API key is not a merchant API key.
    owner = await market.client.post(
        "/v1/charges",
        json={
            "credit_token": token["token"],
            "amount_micros": 1,
            "tool": "t",
            "idempotency_key": "o",
        },
        headers=market.service.auth(market.owner_key),
    )
    assert_problem(owner, 403, "forbidden")
    await assert_invariants(market.service.dsn)


async def test_bad_charge_input_is_422_and_changes_nothing(market: Market) -> None:
    token = (await market.mint())["token"]
    base = {"credit_token": token, "amount_micros": 1, "tool": "t", "idempotency_key": "k"}
    cases = [
        {**base, "amount_micros": 0},
        {**base, "amount_micros": -5},
        {**base, "amount_micros": 10**30},
        {**base, "amount_micros": 1.5},
        {**base, "amount_micros": "1"},
        {**base, "idempotency_key": ""},
        {**base, "idempotency_key": "has space"},
        {**base, "tool": ""},
        {**base, "tool": "x" * 129},
        {**base, "unknown": 1},
        {k: v for k, v in base.items() if k != "tool"},
    ]
    for body in cases:
        response = await market.client.post("/v1/charges", json=body, headers=market.merchant)
        assert_problem(response, 422, "validation_failed")
    assert (await market.account())["balance_micros"] == 100_000
