"""A merchant sees its own charges, holds and revenue, over real HTTP; nobody else's."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest

from ledger.db.pool import connect
from tests.charge_fixtures import charge_request
from tests.conftest import Service
from tests.helpers import assert_invariants
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market
from verifier.charges.batcher import run_batch


@pytest.fixture
async def market(service: Service) -> Market:
    return await new_market(service)


async def _hold(market: Market, token: str, amount: int, key: str) -> dict[str, Any]:
    response = await market.client.post(
        "/v1/holds",
        json={
            "credit_token": token,
            "amount_micros": amount,
            "tool": "llm",
            "idempotency_key": key,
        },
        headers=market.merchant,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def _all_pages(market: Market, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        response = await market.client.get("/v1/charges", params=params, headers=market.merchant)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        seen += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return seen
        assert len(page["data"]) == limit
        params["cursor"] = page["next_cursor"]
    raise AssertionError("pagination did not end")


def _assert_newest_first(charges: list[dict[str, Any]]) -> None:
    # created_at is ISO-8601 in UTC from one encoder, so strings order like times.
    keys = [(c["created_at"], uuid.UUID(c["charge_id"])) for c in charges]
    assert keys == sorted(keys, reverse=True)


async def test_a_merchant_lists_its_own_charges_newest_first_in_pages(service: Service) -> None:
    market = await new_market(service)
    other = await new_market(service, name="other-shop")
    token = await market.mint(audiences=["*"], cap_micros=100_000, max_per_call_micros=10_000)
    made = []
    for amount in (11, 12, 13, 14, 15):
        response = await market.charge(token["token"], amount, tool=f"tool-{amount}")
        assert response.status_code == 201, response.text
        made.append(response.json())
    # Concurrent charges may share one batch and therefore one created_at.
    made += [
        r.json()
        for r in await asyncio.gather(*(market.charge(token["token"], 1) for _ in range(12)))
    ]
    hold = await _hold(market, token["token"], 500, "h1")
    capture = await market.client.post(
        f"/v1/holds/{hold['hold_id']}/capture", json={"amount_micros": 321}, headers=market.merchant
    )
    assert capture.status_code == 200, capture.text
    refund = await market.client.post(
        f"/v1/charges/{made[0]['charge_id']}/refunds",
        json={"amount_micros": 5, "idempotency_key": "r1"},
        headers=market.merchant,
    )
    assert refund.status_code == 201, refund.text
    for _ in range(3):
        assert (await other.charge(token["token"], 7)).status_code == 201

    listed = await _all_pages(market, limit=4)
    assert len(listed) == len(made) + 1
    assert len({c["charge_id"] for c in listed}) == len(listed), "no charge twice"
    _assert_newest_first(listed)
    by_id = {c["charge_id"]: c for c in listed}
    for charge in made:
        view, receipt = by_id[charge["charge_id"]], charge["receipt"]
        assert view["kind"] == "charge" and view["hold_id"] is None
        assert view["amount_micros"] == receipt["amount_micros"]
        assert view["tool"] == receipt["tool"]
        assert view["token_id"] == token["jti"]
        assert view["account_id"] == market.account_id
        assert view["receipt_id"] == receipt["receipt_id"]
        assert view["created_at"] == receipt["created_at"]
        assert view["unit"] == "micro_usd"
    assert by_id[made[0]["charge_id"]]["refunded_micros"] == 5
    assert by_id[made[1]["charge_id"]]["refunded_micros"] == 0
    captured = by_id[capture.json()["charge_id"]]
    assert (captured["kind"], captured["hold_id"], captured["amount_micros"]) == (
        "capture",
        hold["hold_id"],
        321,
    )
    assert captured["receipt_id"] == capture.json()["receipt"]["receipt_id"]
    assert len(await _all_pages(other, limit=500)) == 3
    await assert_invariants(service.dsn)


async def test_pages_split_charges_that_share_one_time(service: Service) -> None:
    market = await new_market(service)
    token = await market.mint(cap_micros=100_000)
    me = (await market.client.get("/v1/merchants/me", headers=market.merchant)).json()
    merchant = (uuid.UUID(market.merchant_id), uuid.UUID(me["revenue_account_id"]))
    jti = uuid.UUID(token["jti"])
    conn = await connect(service.dsn)
    try:
        # One batch: every charge in it gets the same created_at.
        rows = await run_batch(conn, [charge_request(merchant, jti, 2) for _ in range(7)])
    finally:
        await conn.close()
    assert {r["outcome"] for r in rows} == {"created"}
    assert len({r["created_at"] for r in rows}) == 1
    for limit in (1, 2, 3, 7, 8):
        listed = await _all_pages(market, limit=limit)
        assert [c["charge_id"] for c in listed] == sorted(
            (str(r["id"]) for r in rows), key=uuid.UUID, reverse=True
        )
    await assert_invariants(service.dsn)


async def test_one_charge_and_one_hold_are_visible_to_their_merchant_only(
    market: Market,
) -> None:
    token = await market.mint(audiences=["*"])
    charge = (await market.charge(token["token"], 40, tool="search")).json()
    path = f"/v1/charges/{charge['charge_id']}"
    mine = await market.client.get(path, headers=market.merchant)
    assert mine.status_code == 200, mine.text
    assert mine.json() == {
        "charge_id": charge["charge_id"],
        "kind": "charge",
        "hold_id": None,
        "amount_micros": 40,
        "refunded_micros": 0,
        "tool": "search",
        "token_id": token["jti"],
        "account_id": market.account_id,
        "receipt_id": charge["receipt"]["receipt_id"],
        "metadata": {},
        "created_at": charge["receipt"]["created_at"],
        "unit": "micro_usd",
    }
    hold = await _hold(market, token["token"], 100, "h1")
    hold_path = f"/v1/holds/{hold['hold_id']}"
    view = (await market.client.get(hold_path, headers=market.merchant)).json()
    assert (view["status"], view["amount_micros"], view["captured_micros"]) == (
        "pending",
        100,
        None,
    )
    assert (view["token_id"], view["account_id"]) == (token["jti"], market.account_id)
    assert view["merchant_id"] == market.merchant_id
    expires_at = datetime.fromisoformat(view["expires_at"])
    assert expires_at == datetime.fromisoformat(hold["expires_at"])

    other = await new_market(market.service, name="other")
    missing_charge = f"/v1/charges/{uuid.uuid4()}"
    missing_hold = f"/v1/holds/{uuid.uuid4()}"
    for theirs, missing in ((path, missing_charge), (hold_path, missing_hold)):
        foreign = assert_problem(
            await other.client.get(theirs, headers=other.merchant), 404, "not_found"
        )
        absent = assert_problem(
            await other.client.get(missing, headers=other.merchant), 404, "not_found"
        )
        del foreign["instance"], absent["instance"]
        assert foreign == absent, "another merchant's id answers exactly like a missing one"
        owner = market.service.auth(market.owner_key)
        assert_problem(await market.client.get(theirs, headers=owner), 403, "forbidden")
        assert_problem(await market.client.get(theirs), 401, "unauthenticated")
    assert_problem(
        await market.client.get("/v1/charges/not-a-uuid", headers=market.merchant), 404, "not_found"
    )


async def test_a_hold_reads_back_captured_and_voided(market: Market) -> None:
    token = await market.mint()
    captured = await _hold(market, token["token"], 300, "c")
    voided = await _hold(market, token["token"], 200, "v")
    capture = await market.client.post(
        f"/v1/holds/{captured['hold_id']}/capture",
        json={"amount_micros": 120},
        headers=market.merchant,
    )
    assert capture.status_code == 200, capture.text
    void = await market.client.post(f"/v1/holds/{voided['hold_id']}/void", headers=market.merchant)
    assert void.status_code == 200, void.text
    view = (
        await market.client.get(f"/v1/holds/{captured['hold_id']}", headers=market.merchant)
    ).json()
    assert (view["status"], view["captured_micros"], view["charge_id"]) == (
        "captured",
        120,
        capture.json()["charge_id"],
    )
    assert view["resolved_at"] is not None
    view = (
        await market.client.get(f"/v1/holds/{voided['hold_id']}", headers=market.merchant)
    ).json()
    assert (view["status"], view["captured_micros"], view["charge_id"]) == ("voided", None, None)
    assert view["resolved_at"] is not None
    await assert_invariants(market.service.dsn)


async def test_merchants_me_shows_revenue_in_micros(market: Market) -> None:
    async def me() -> dict[str, Any]:
        response = await market.client.get("/v1/merchants/me", headers=market.merchant)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    start = await me()
    assert start["id"] == market.merchant_id
    assert start["name"] == "shop"
    assert (start["revenue_balance_micros"], start["revenue_pending_micros"]) == (0, 0)
    assert start["unit"] == "micro_usd"
    token = await market.mint(cap_micros=10_000)
    charge = (await market.charge(token["token"], 300)).json()
    hold = await _hold(market, token["token"], 100, "h")
    assert ((await me())["revenue_balance_micros"], (await me())["revenue_pending_micros"]) == (
        300,
        100,
    )
    capture = await market.client.post(
        f"/v1/holds/{hold['hold_id']}/capture", json={"amount_micros": 40}, headers=market.merchant
    )
    assert capture.status_code == 200, capture.text
    refund = await market.client.post(
        f"/v1/charges/{charge['charge_id']}/refunds",
        json={"amount_micros": 50, "idempotency_key": "r"},
        headers=market.merchant,
    )
    assert refund.status_code == 201, refund.text
    after = await me()
    assert (after["revenue_balance_micros"], after["revenue_pending_micros"]) == (290, 0)
    assert (await market.account())["balance_micros"] == 100_000 - 290
    assert_problem(
        await market.client.get("/v1/merchants/me", headers=market.service.operator),
        403,
        "forbidden",
    )
    await assert_invariants(market.service.dsn)


async def test_bad_listing_parameters_are_422(market: Market) -> None:
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"cursor": "not-a-cursor"}):
        response = await market.client.get("/v1/charges", params=params, headers=market.merchant)
        assert_problem(response, 422, "validation_failed")
    empty = await market.client.get("/v1/charges", headers=market.merchant)
    assert empty.json() == {"data": [], "has_more": False, "next_cursor": None}
