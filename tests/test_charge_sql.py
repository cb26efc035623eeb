"""The verify-and-debit SQL (ledger_charge_batch and friends) under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.db.pool import connect
from tests.charge_fixtures import charge_request, new_merchant, new_token, wallet_with_token
from tests.helpers import assert_invariants, balance, new_wallet
from verifier.charges.batcher import ChargeBatcher, run_batch


@pytest.fixture
async def batcher(pool: asyncpg.Pool) -> AsyncIterator[ChargeBatcher]:
    b = ChargeBatcher(pool)
    b.start()
    yield b
    await b.stop()


async def test_200_concurrent_charges_on_a_token_capped_at_50(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=10_000, cap=50)
    results = await asyncio.gather(
        *(batcher.submit(charge_request(merchant, jti, 1)) for _ in range(200))
    )
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"created": 50, "token_cap": 150}
    assert {r["available"] for r in results if r["outcome"] == "token_cap"} == {0}
    async with pool.acquire() as conn:
        assert await balance(conn, wallet) == 10_000 - 50
        assert await balance(conn, merchant[1]) == 50
        assert (
            await conn.fetchval("SELECT spent_micros FROM credit_tokens WHERE jti = $1", jti) == 50
        )
        await assert_invariants(conn)


async def test_200_concurrent_charges_on_a_balance_of_50(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=50, cap=1_000_000)
    results = await asyncio.gather(
        *(batcher.submit(charge_request(merchant, jti, 1)) for _ in range(200))
    )
    assert Counter(r["outcome"] for r in results) == {"created": 50, "account_balance": 150}
    async with pool.acquire() as conn:
        assert await balance(conn, wallet) == 0
        await assert_invariants(conn)


async def test_delegated_children_together_never_exceed_the_parent(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, parent = await wallet_with_token(conn, funds=10_000, cap=30)
        children = [await new_token(conn, wallet, cap=20, parent=parent, depth=1) for _ in range(3)]
        grandchild = await new_token(conn, wallet, cap=20, parent=children[0], depth=2)
    tokens = [*children, grandchild]
    results = await asyncio.gather(
        *(batcher.submit(charge_request(merchant, tokens[i % 4], 1)) for i in range(200))
    )
    created = [r for r in results if r["outcome"] == "created"]
    assert len(created) == 30
    assert {r["outcome"] for r in results} <= {"created", "token_cap", "ancestor_cap"}
    async with pool.acquire() as conn:
        spent = await conn.fetchval("SELECT spent_micros FROM credit_tokens WHERE jti = $1", parent)
        assert spent == 30
        assert await balance(conn, wallet) == 10_000 - 30
        await assert_invariants(conn)


async def test_50_concurrent_retries_of_one_key_debit_once(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=1_000, cap=1_000)
    request = charge_request(merchant, jti, 7, key="same-key")
    results = await asyncio.gather(*(batcher.submit(request) for _ in range(50)))
    assert Counter(r["outcome"] for r in results) == {"created": 1, "exists": 49}
    assert (
        len(
            {
                (r["id"], r["receipt_id"], r["token_remaining"], r["account_balance"])
                for r in results
            }
        )
        == 1
    )
    conflicting = charge_request(merchant, jti, 8, key="same-key")
    assert (await batcher.submit(conflicting))["outcome"] == "idempotency_conflict"
    async with pool.acquire() as conn:
        assert await balance(conn, wallet) == 993
        await assert_invariants(conn)


async def test_same_key_across_processes_debits_once(pool: asyncpg.Pool) -> None:
    """Two batchers (as two worker processes) racing on one key: one debit."""
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=1_000, cap=1_000)
    batchers = [ChargeBatcher(pool), ChargeBatcher(pool)]
    for b in batchers:
        b.start()
    try:
        request = charge_request(merchant, jti, 5, key="k")
        results = await asyncio.gather(*(batchers[i % 2].submit(request) for i in range(40)))
    finally:
        for b in batchers:
            await b.stop()
    assert Counter(r["outcome"] for r in results) == {"created": 1, "exists": 39}
    async with pool.acquire() as conn:
        assert await balance(conn, wallet) == 995
        await assert_invariants(conn)


async def test_revoked_ancestor_and_max_per_call_refuse_without_writes(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet = await new_wallet(conn, funds=1_000)
        parent = await new_token(conn, wallet, cap=500, max_per_call=10)
        child = await new_token(conn, wallet, cap=100, parent=parent, depth=1)
    assert (await batcher.submit(charge_request(merchant, parent, 11)))["outcome"] == "max_per_call"
    async with pool.acquire() as conn:
        await conn.execute("UPDATE credit_tokens SET revoked_at = now() WHERE jti = $1", parent)
    assert (await batcher.submit(charge_request(merchant, child, 1)))["outcome"] == "token_revoked"
    unknown = charge_request(merchant, uuid.uuid4(), 1)
    assert (await batcher.submit(unknown))["outcome"] == "token_unknown"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM charges") == 0
        assert await balance(conn, wallet) == 1_000
        await assert_invariants(conn)


async def test_hold_capture_void_refund_and_expiry(
    pool: asyncpg.Pool, batcher: ChargeBatcher
) -> None:
    async with pool.acquire() as conn:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=1_000, cap=500)
    hold = await batcher.submit(charge_request(merchant, jti, 300, kind="hold"))
    assert hold["outcome"] == "created"
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT held_micros FROM credit_tokens WHERE jti = $1", jti) == 300
        )
        # The wallet's and the token's budgets both count the hold.
        over = await batcher.submit(charge_request(merchant, jti, 201))
        assert over["outcome"] == "token_cap" and over["available"] == 200
        charge_id, receipt_id = uuid.uuid4(), uuid.uuid4()
        args = (hold["id"], merchant[0], 120, charge_id, receipt_id, "k4.pid.test-kid")
        captured = await conn.fetchval("SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6)", *args)
        assert captured["outcome"] == "created" and captured["amount_micros"] == 120
        again = await conn.fetchval("SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6)", *args)
        assert again["outcome"] == "exists" and again["id"] == captured["id"]
        other = await conn.fetchval(
            "SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6)",
            hold["id"], merchant[0], 121, uuid.uuid4(), uuid.uuid4(), "k",
        )  # fmt: skip
        assert other["outcome"] == "hold_not_pending"
        void = await conn.fetchval(
            "SELECT ledger_void_hold($1, $2, 'voided')", hold["id"], merchant[0]
        )
        assert void["outcome"] == "hold_not_pending"
        assert await balance(conn, wallet) == 880
        token = await conn.fetchrow(
            "SELECT spent_micros, held_micros FROM credit_tokens WHERE jti = $1", jti
        )
        assert token is not None and tuple(token) == (120, 0)

        refund = (uuid.uuid4(), charge_id, merchant[0], "r1", b"h", 100, uuid.uuid4(), "k", None)
        first = await conn.fetchval(
            "SELECT ledger_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)", *refund
        )
        assert first["outcome"] == "created" and first["refunded_total_micros"] == 100
        replay = await conn.fetchval(
            "SELECT ledger_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)", *refund
        )
        assert replay["outcome"] == "exists"
        too_much = (uuid.uuid4(), charge_id, merchant[0], "r2", b"h", 21, uuid.uuid4(), "k", None)
        refused = await conn.fetchval(
            "SELECT ledger_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)", *too_much
        )
        assert refused["outcome"] == "exceeds_charge" and refused["available"] == 20
        assert await balance(conn, wallet) == 980
        assert (
            await conn.fetchval("SELECT spent_micros FROM credit_tokens WHERE jti = $1", jti) == 20
        )
        await assert_invariants(conn)

    short = await batcher.submit(charge_request(merchant, jti, 50, kind="hold", timeout_s=1))
    await asyncio.sleep(1.1)
    async with pool.acquire() as conn:
        late = await conn.fetchval(
            "SELECT ledger_capture_hold($1, $2, $3, $4, $5, $6)",
            short["id"], merchant[0], 10, uuid.uuid4(), uuid.uuid4(), "k",
        )  # fmt: skip
        assert late["outcome"] == "hold_expired"
        expired = await conn.fetchval("SELECT ledger_void_hold($1, NULL, 'expired')", short["id"])
        assert expired["outcome"] == "created"
        assert await conn.fetchval("SELECT held_micros FROM credit_tokens WHERE jti = $1", jti) == 0
        await assert_invariants(conn)


async def test_a_long_lived_session_keeps_probing_the_idempotency_index(dsn: str) -> None:
    # The batcher keeps its connections for the life of the process. Plans that a
    # session made while `charges` was empty must not stay in use once the
    # merchant has thousands of charges: the idempotency lookup has to stay a
    # probe of the unique (merchant, key) index, never a walk of the merchant's
    # charges (which made every batch slower than the one before).
    conn = await connect(dsn)
    try:
        merchant = await new_merchant(conn)
        wallet, jti = await wallet_with_token(conn, funds=10_000_000, cap=10_000_000)
        for _ in range(8):  # past the point where PostgreSQL settles on a generic plan
            await run_batch(conn, [charge_request(merchant, jti, 1)])
        for _ in range(10):
            await run_batch(conn, [charge_request(merchant, jti, 1) for _ in range(250)])
        plans: list[str] = []
        conn.add_log_listener(lambda _conn, message: plans.append(str(message)))
        await conn.execute("LOAD 'auto_explain'")
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
            await conn.execute(f"SET auto_explain.{setting}")
        await run_batch(conn, [charge_request(merchant, jti, 1)])
    finally:
        await conn.close()
    lookups = [plan for plan in plans if "JOIN charges c" in plan]
    assert lookups, plans
    for plan in lookups:
        assert "charges_idempotency_key" in plan, plan
        assert "charges_merchant" not in plan, plan
    conn = await connect(dsn)
    try:
        assert await balance(conn, wallet) == 10_000_000 - 8 - 2_500 - 1
        await assert_invariants(conn)
    finally:
        await conn.close()
