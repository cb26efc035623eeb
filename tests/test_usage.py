"""Usage analytics: the roll-up equals the journal, whatever the workload and the
commit order; the API scopes by role, pages, exports (CSV, NDJSON) round-trip.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.db.pool import Conn
from ledger.usage import rollup
from tests.charge_fixtures import TEST_KID, charge_request, new_merchant, new_token
from tests.conftest import Service
from tests.helpers import assert_invariants, new_wallet
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market
from tests.test_cli import run_cli
from verifier.charges.batcher import run_batch

DIMS = ("account_id", "merchant_id", "token_jti", "tool")


async def _journal_truth(conn: Conn, unit: str) -> Counter[tuple[Any, ...]]:
    """Usage computed from the charges and refunds rows themselves (the slow way)."""
    truth: Counter[tuple[Any, ...]] = Counter()
    rows = await conn.fetch(
        f"""SELECT c.account_id, c.merchant_id, c.token_jti, c.tool,
                   date_trunc('{unit}', c.created_at, 'UTC') AS b, count(*) AS n,
                   sum(c.amount_micros) AS charged
              FROM charges c GROUP BY 1, 2, 3, 4, 5"""
    )
    for r in rows:
        key = (*(r[d] for d in DIMS), r["b"])
        truth[(*key, "charges")] += r["n"]
        truth[(*key, "charged")] += r["charged"]
    rows = await conn.fetch(
        f"""SELECT c.account_id, c.merchant_id, c.token_jti, c.tool,
                   date_trunc('{unit}', f.created_at, 'UTC') AS b, count(*) AS n,
                   sum(f.amount_micros) AS refunded
              FROM refunds f JOIN charges c ON c.id = f.charge_id GROUP BY 1, 2, 3, 4, 5"""
    )
    for r in rows:
        key = (*(r[d] for d in DIMS), r["b"])
        truth[(*key, "refunds")] += r["n"]
        truth[(*key, "refunded")] += r["refunded"]
    return +truth


async def _rolled(conn: Conn, table: str) -> Counter[tuple[Any, ...]]:
    rolled: Counter[tuple[Any, ...]] = Counter()
    for r in await conn.fetch(f"SELECT * FROM {table}"):
        key = (*(r[d] for d in DIMS), r["bucket"])
        for name, column in (
            ("charges", "charges"),
            ("charged", "charged_micros"),
            ("refunds", "refunds"),
            ("refunded", "refunded_micros"),
        ):
            rolled[(*key, name)] += r[column]
    return +rolled


async def assert_rollup_equals_journal(conn: Conn) -> None:
    await rollup.roll_up_all(conn)
    assert await _rolled(conn, "usage_hourly") == await _journal_truth(conn, "hour")
    assert await _rolled(conn, "usage_daily") == await _journal_truth(conn, "day")


async def _refund(conn: Conn, merchant: uuid.UUID, charge_id: uuid.UUID, amount: int) -> str:
    result = await conn.fetchval(
        "SELECT ledger_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        uuid.uuid4(),
        charge_id,
        merchant,
        uuid.uuid4().hex,
        hashlib.sha256(b"r").digest(),
        amount,
        uuid.uuid4(),
        TEST_KID,
        None,
    )
    return str(result["outcome"])


async def _capture(conn: Conn, merchant: uuid.UUID, hold_id: uuid.UUID, amount: int) -> str:
    result = await conn.fetchval(
        "SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6)",
        hold_id,
        merchant,
        amount,
        uuid.uuid4(),
        uuid.uuid4(),
        TEST_KID,
    )
    return str(result["outcome"])


OPERATION = st.tuples(
    st.sampled_from(["charge", "charge", "hold_capture", "refund", "rollup"]),
    st.integers(0, 5),  # which credit token
    st.sampled_from(["search", "llm", "fetch"]),
    st.integers(1, 5_000),
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=st.lists(OPERATION, min_size=1, max_size=30))
async def test_rollup_equals_the_journal_for_random_workloads(
    pool: asyncpg.Pool, operations: list[tuple[str, int, str, int]]
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE usage_hourly, usage_daily")
        await conn.execute("UPDATE usage_rollup_state SET cursor_seq = 0, horizon_seq = NULL")
        shops = [await new_merchant(conn, f"shop-{i}") for i in range(2)]
        wallets = [await new_wallet(conn, funds=50_000) for _ in range(3)]
        tokens = [await new_token(conn, wallets[i % 3], cap=40_000) for i in range(6)]
        charged: list[tuple[uuid.UUID, uuid.UUID, int]] = []
        for op, t, tool, amount in operations:
            shop = shops[t % 2]
            if op == "rollup":
                await rollup.roll_up(conn)
            elif op == "charge":
                (row,) = await run_batch(conn, [charge_request(shop, tokens[t], amount, tool=tool)])
                if row["outcome"] == "created":
                    charged.append((shop[0], row["id"], amount))
            elif op == "hold_capture":
                request = charge_request(shop, tokens[t], amount, kind="hold", tool=tool)
                (row,) = await run_batch(conn, [request])
                if row["outcome"] == "created":
                    await _capture(conn, shop[0], row["id"], max(1, amount // 2))
            elif charged:
                merchant, charge_id, paid = charged[amount % len(charged)]
                await _refund(conn, merchant, charge_id, max(1, paid // 3))
        await assert_rollup_equals_journal(conn)
        await assert_invariants(conn)


async def test_a_movement_committed_out_of_order_is_counted_once(pool: asyncpg.Pool) -> None:
    """A transaction takes a journal seq, then waits; later ones commit and are rolled
    up; the cursor must not pass the open one, and counts it once it commits."""
    async with pool.acquire() as conn, pool.acquire() as slow:
        shop = await new_merchant(conn)
        wallet = await new_wallet(conn, funds=10_000)
        jti = await new_token(conn, wallet, cap=10_000)
        await run_batch(conn, [charge_request(shop, jti, 1)])
        late = slow.transaction()
        await late.start()
        await run_batch(slow, [charge_request(shop, jti, 100)])  # seq taken, not committed
        jti2 = await new_token(conn, await new_wallet(conn, funds=10_000), cap=10_000)
        # A later seq, committed (another merchant: the open one holds its revenue row).
        await run_batch(conn, [charge_request(await new_merchant(conn, "b"), jti2, 10)])
        for _ in range(4):
            await rollup.roll_up(conn)
        counted = await conn.fetchval("SELECT sum(charged_micros) FROM usage_daily")
        assert counted == 1, "only the charge before the open transaction's seq"
        blocked = await rollup.freshness(conn)
        assert blocked.complete_through is None, "not complete through any time yet"
        await late.commit()
        await rollup.roll_up_all(conn)
        assert await conn.fetchval("SELECT sum(charged_micros) FROM usage_daily") == 111
        assert (await rollup.freshness(conn)).complete_through is not None
        await assert_rollup_equals_journal(conn)


async def _usage(market: Market, key: str, **params: Any) -> dict[str, Any]:
    response = await market.client.get("/v1/usage", params=params, headers=market.service.auth(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"data", "has_more", "next_cursor", "complete_through"}
    return body


async def _spend(market: Market) -> tuple[str, str]:
    """Two credit tokens, charges on two tools, a refund; returns the tokens' ids."""
    first = await market.mint(cap_micros=10_000, max_per_call_micros=1_000)
    second = await market.mint(cap_micros=10_000, max_per_call_micros=1_000)
    charges = [await market.charge(first["token"], 100, tool="search") for _ in range(3)]
    charges += [await market.charge(second["token"], 250, tool="llm") for _ in range(2)]
    assert all(c.status_code == 201 for c in charges)
    refund = await market.client.post(
        f"/v1/charges/{charges[0].json()['charge_id']}/refunds",
        json={"amount_micros": 40, "idempotency_key": "r"},
        headers=market.merchant,
    )
    assert refund.status_code == 201, refund.text
    return first["jti"], second["jti"]


async def _rolled_up(service: Service) -> None:
    conn = await asyncpg.connect(service.dsn)
    try:
        await rollup.roll_up_all(conn)
    finally:
        await conn.close()


async def test_owner_merchant_and_operator_see_their_usage(service: Service) -> None:
    market = await new_market(service)
    other = await new_market(service, name="other")
    first, second = await _spend(market)
    await _spend(other)
    await _rolled_up(service)
    owner = market.owner_key
    by_token = await _usage(market, owner, group_by="token,tool")
    assert sorted(
        (r["token_id"], r["tool"], r["charges"], r["net_micros"]) for r in by_token["data"]
    ) == sorted([(first, "search", 3, 260), (second, "llm", 2, 500)])
    total = (await _usage(market, owner, group_by="bucket", bucket="month"))["data"]
    assert [(r["charged_micros"], r["refunded_micros"], r["net_micros"]) for r in total] == [
        (800, 40, 760)
    ]
    assert total[0]["bucket"].endswith("-01T00:00:00Z")
    # Another account's usage answers like a missing one.
    assert_problem(
        await market.client.get(
            "/v1/usage", params={"account_id": other.account_id}, headers=service.auth(owner)
        ),
        404,
        "not_found",
    )
    # The merchant: its revenue by tool, and its top accounts.
    tools = await _usage(market, market.merchant_key, group_by="tool")
    assert {r["tool"]: r["net_micros"] for r in tools["data"]} == {"search": 260, "llm": 500}
    top = await _usage(market, market.merchant_key, group_by="account", order="net_desc")
    assert [r["account_id"] for r in top["data"]] == [market.account_id]
    # The operator: totals per merchant.
    merchants = await _usage(market, service.operator_key, group_by="merchant")
    assert {r["merchant_id"]: r["net_micros"] for r in merchants["data"]} == {
        market.merchant_id: 760,
        other.merchant_id: 760,
    }
    # Filters.
    only_llm = await _usage(market, owner, group_by="tool", tool="llm")
    assert [r["tool"] for r in only_llm["data"]] == ["llm"]
    future = (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    assert (await _usage(market, owner, **{"from": future.isoformat()}))["data"] == []
    await assert_invariants(service.dsn)


async def _all_pages(market: Market, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = await market.client.get(
            path,
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=market.service.auth(key),
        )
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["data"]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return rows
        cursor = body["next_cursor"]
    raise AssertionError("paging did not end")


async def test_listings_page_and_exports_round_trip(service: Service) -> None:
    market = await new_market(service)
    await _spend(market)
    charges = await _all_pages(market, "/v1/usage/charges", market.owner_key, limit=2)
    assert len(charges) == 5 and len({c["id"] for c in charges}) == 5
    assert [c["created_at"] for c in charges] == sorted(
        (c["created_at"] for c in charges), reverse=True
    )
    llm = await _all_pages(market, "/v1/usage/charges", market.merchant_key, tool="llm")
    assert {c["amount_micros"] for c in llm} == {250} and len(llm) == 2
    refunds = await _all_pages(market, "/v1/usage/refunds", market.owner_key)
    assert [(r["amount_micros"], r["tool"]) for r in refunds] == [(40, "search")]
    bad = await market.client.get(
        "/v1/usage/charges", params={"cursor": "nope"}, headers=market.merchant
    )
    assert_problem(bad, 422, "validation_failed")
    await _rolled_up(service)
    params = {"group_by": "token,tool"}
    json_rows = (await _usage(market, market.owner_key, **params))["data"]
    auth = service.auth(market.owner_key)
    exported = await market.client.get("/v1/usage/export.csv", params=params, headers=auth)
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    csv_rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [
        {k: (int(v) if v.isdigit() else v) for k, v in row.items()} for row in csv_rows
    ] == json_rows
    lines = await market.client.get(
        "/v1/usage/export.ndjson", params={"of": "charges"}, headers=auth
    )
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in lines.text.splitlines()] == charges


async def test_operator_lists_accounts_and_merchants(service: Service) -> None:
    markets = [await new_market(service, name=f"shop-{i}") for i in range(3)]
    accounts = await _all_pages(
        markets[0], "/v1/accounts", service.operator_key, limit=2, kind="customer_wallet"
    )
    assert {a["id"] for a in accounts} == {m.account_id for m in markets}
    assert all(a["balance_micros"] == 100_000 for a in accounts)
    shops = await _all_pages(markets[0], "/v1/merchants", service.operator_key, limit=1, q="SHOP-")
    assert [m["name"] for m in shops] == ["shop-0", "shop-1", "shop-2"]
    one = await _all_pages(markets[0], "/v1/merchants", service.operator_key, q="p-1")
    assert [m["id"] for m in one] == [markets[1].merchant_id]
    owner = service.auth(markets[0].owner_key)
    assert_problem(await service.client.get("/v1/accounts", headers=owner), 403, "forbidden")


async def test_cli_lists_accounts_and_merchants(service: Service) -> None:
    markets = [await new_market(service, name=f"cli-shop-{i}") for i in range(2)]
    done = await asyncio.to_thread(
        run_cli,
        "merchants",
        "list",
        "--search",
        "cli-shop",
        "--limit",
        "1",
        "--json",
        dsn=service.dsn,
    )
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert [m["id"] for m in page["data"]] == [markets[0].merchant_id] and page["has_more"]
    nxt = await asyncio.to_thread(
        run_cli,
        "merchants",
        "list",
        "--search",
        "cli-shop",
        "--cursor",
        page["next_cursor"],
        dsn=service.dsn,
    )
    assert markets[1].merchant_id in nxt.stdout and "cli-shop-1" in nxt.stdout
    accounts = await asyncio.to_thread(
        run_cli, "accounts", "list", "--kind", "customer_wallet", dsn=service.dsn
    )
    assert accounts.returncode == 0, accounts.stderr
    for market in markets:
        assert f"{market.account_id}  customer_wallet" in accounts.stdout
    assert "100,000 µUSD  agent-owner" in accounts.stdout
