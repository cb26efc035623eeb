"""Property test: random sequences of transfers, holds, posts and voids keep every
invariant, and every refused operation changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core import transfers as core
from ledger.core.transfers import TransferOutcome as O
from ledger.db.pool import Conn
from tests.helpers import assert_invariants, create_transfer_or_hold, post_pending, void_pending

N_WALLETS = 4
# A wallet index, or -1 for the adjustment clearing account (which may go negative).
account_index = st.integers(min_value=-1, max_value=N_WALLETS - 1)
amounts = st.integers(min_value=1, max_value=500)

operation = st.one_of(
    st.tuples(st.just("transfer"), account_index, account_index, amounts),
    st.tuples(st.just("hold"), account_index, account_index, amounts),
    st.tuples(st.just("post"), st.integers(0, 50), st.one_of(st.none(), amounts)),
    st.tuples(st.just("void"), st.integers(0, 50)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
)


async def _snapshot(conn: Conn) -> list[Any]:
    rows = await conn.fetch(
        "SELECT id, debits_posted, credits_posted, debits_pending, credits_pending"
        " FROM accounts ORDER BY id"
    )
    count = await conn.fetchval("SELECT count(*) FROM transfers")
    return [tuple(r) for r in rows] + [count]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(operation, min_size=1, max_size=40))
async def test_random_operations_keep_invariants(
    pool: asyncpg.Pool, ops: list[tuple[Any, ...]]
) -> None:
    async with pool.acquire() as conn:
        # Everything below is rolled back at the end so examples stay independent.
        tx = conn.transaction()
        await tx.start()
        try:
            await _run(conn, ops)
        finally:
            await tx.rollback()


async def _run(conn: Conn, ops: list[tuple[Any, ...]]) -> None:
    wallets = [
        (await core.create_account(conn, kind=core.AccountKind.customer_wallet, name=f"w{i}")).id
        for i in range(N_WALLETS)
    ]

    def account(i: int) -> uuid.UUID:
        return core.ADJUSTMENT_CLEARING_ID if i < 0 else wallets[i]

    holds: list[uuid.UUID] = []
    done: list[tuple[str, dict[str, Any]]] = []
    for op in ops:
        before = await _snapshot(conn)
        kind = op[0]
        if kind in ("transfer", "hold"):
            tid = uuid.uuid4()
            args = dict(
                transfer_id=tid, debit_account_id=account(op[1]), credit_account_id=account(op[2]),
                amount=op[3], code="prop", pending=kind == "hold",
            )  # fmt: skip
            outcome = await create_transfer_or_hold(conn, **args)
            if kind == "hold" and outcome is O.created:
                holds.append(tid)
            if outcome is O.created:
                done.append(("create", args))
        elif kind in ("post", "void") and holds:
            pending_id = holds[op[1] % len(holds)]
            if kind == "post":
                pargs = dict(
                    transfer_id=uuid.uuid4(), pending_id=pending_id, amount=op[2], code="prop"
                )
                outcome = await post_pending(conn, **pargs)
                if outcome is O.created:
                    done.append(("post", pargs))
            else:
                vargs = dict(transfer_id=uuid.uuid4(), pending_id=pending_id, code="prop")
                outcome = await void_pending(conn, **vargs)
                if outcome is O.created:
                    done.append(("void", vargs))
        elif kind == "replay" and done:
            what, args = done[op[1] % len(done)]
            fn = {
                "create": create_transfer_or_hold,
                "post": post_pending,
                "void": void_pending,
            }[what]
            outcome = await fn(conn, **args)  # type: ignore[operator]
            assert outcome is not O.created, "a replayed id never moves money again"
        else:
            continue
        if outcome is not O.created:
            assert await _snapshot(conn) == before, f"refused {op} ({outcome}) changed state"
        await assert_invariants(conn)
