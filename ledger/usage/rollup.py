"""The usage roll-up: one writer folds new charges and refunds into usage buckets.

Nothing on the hot path writes usage: a charge is a row in `charges` and a transfer
in the journal, as before. A roller reads the journal after its cursor (`seq`) and
adds each charge, capture and refund to hourly and daily buckets (SQL in
`sql/rollup.sql`). Every worker of every host runs the loop; the state row's lock
(`FOR UPDATE SKIP LOCKED`) makes exactly one of them the writer of a pass.

Why not simply "seq > cursor": `seq` is taken inside a transaction, before it
commits, so a transaction that took seq 10 may commit after one that took seq 11.
The roller therefore passes seqs in two steps. Pass k records a *horizon*: the last
seq handed out so far (H), then the xmax of a snapshot taken after that read (X).
Every transaction that holds a seq <= H had its xid before taking it (every money
movement locks its rows first, which assigns the xid), so its xid is < X. A later
pass, once the oldest running transaction is no older than X, knows that all of
them have ended: every seq <= H is now either visible or never will be, and it
rolls them up and moves the cursor to H. Meanwhile, an unbroken run of committed
seqs right after the cursor is safe at once (no seq inside it is missing), so
without gaps a movement is counted on the next pass. So a movement is counted
once, never skipped, whatever the commit order; and usage is complete through the
time H was read. Staleness: about two roll-up intervals (`LEDGER_USAGE_ROLLUP_INTERVAL_MS`,
1 s by default), longer only while a transaction that moves money stays open.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from ledger.db.pool import CONNECTION_ERRORS, Conn
from ledger.db.queries import load_queries
from ledger.observability import metrics

__all__ = ["ROLLUP_BATCH_MAX", "Freshness", "PassResult", "freshness", "roll_up", "run_roller"]

log = logging.getLogger("ledger.usage.rollup")
queries = load_queries("ledger.usage", "rollup.sql")

# Journal entries folded per transaction: bounded work per pass, so a backlog (a new
# install on a large ledger) is caught up in short transactions.
ROLLUP_BATCH_MAX = 50_000


class PassResult(msgspec.Struct, frozen=True):
    rolled: bool  # False: another roller holds the lock
    advanced: bool = False  # the cursor moved: there may be more to fold at once
    movements: int = 0
    cursor_seq: int = 0
    caught_up: bool = True


class Freshness(msgspec.Struct, frozen=True):
    complete_through: datetime | None
    lag_s: float | None


async def roll_up(conn: Conn, *, batch_max: int = ROLLUP_BATCH_MAX) -> PassResult:
    """One pass, in one transaction: fold what is safe to fold, then move the horizon."""
    async with conn.transaction():
        state = await conn.fetchrow(queries["lock_state"])
        if state is None:
            return PassResult(rolled=False)
        start: int = state["cursor_seq"]
        horizon, horizon_xmax = state["horizon_seq"], state["horizon_xmax"]
        horizon_at, complete_through = state["horizon_at"], state["complete_through"]
        end = await _safe_end(conn, start, horizon, horizon_xmax, batch_max)
        movements = 0
        if end > start:
            done = await conn.fetchrow(queries["roll_up"], start, end)
            assert done is not None
            movements = done["movements"]
        if horizon is None or end >= horizon:
            if horizon is not None:
                complete_through = horizon_at
            handed_out = await conn.fetchrow(queries["last_seq_handed_out"])
            assert handed_out is not None
            horizon, horizon_at = handed_out["seq"], handed_out["at"]
            horizon_xmax = await conn.fetchval(queries["next_xid"])
            if horizon <= end:
                complete_through = horizon_at  # nothing newer: complete up to now
        await conn.execute(
            queries["save_state"], end, horizon, horizon_xmax, horizon_at, complete_through
        )
    return PassResult(
        rolled=True,
        advanced=end > start,
        movements=movements,
        cursor_seq=end,
        caught_up=end >= horizon,
    )


async def _safe_end(
    conn: Conn, cursor: int, horizon: int | None, horizon_xmax: Any, batch_max: int
) -> int:
    """How far the cursor may move now: through the horizon once every transaction
    that could hold a seq below it has ended; else through the unbroken run of
    committed seqs after the cursor (the common case: no transaction in flight)."""
    if horizon is not None and cursor < horizon:
        oldest = await conn.fetchval(queries["oldest_running_xid"])
        if int(oldest) >= int(horizon_xmax):
            end = await conn.fetchval(queries["batch_end"], cursor, horizon, batch_max)
            return horizon if end is None else int(end)
    end = await conn.fetchval(queries["contiguous_end"], cursor, batch_max)
    return cursor if end is None else int(end)


async def roll_up_all(conn: Conn, *, passes_max: int = 1_000_000) -> None:
    """Pass until everything committed before the call is counted (tests, tooling)."""
    started = await conn.fetchval("SELECT clock_timestamp()")
    for _ in range(passes_max):
        result = await roll_up(conn)
        fresh = await freshness(conn)
        if (
            result.rolled
            and fresh.complete_through is not None
            and (fresh.complete_through >= started and result.caught_up)
        ):
            return
        await asyncio.sleep(0.001 if result.rolled else 0.05)
    raise AssertionError("the usage roll-up did not catch up")


async def freshness(conn: Conn | asyncpg.Pool) -> Freshness:
    row = await conn.fetchrow(queries["freshness"])
    assert row is not None
    return Freshness(complete_through=row["complete_through"], lag_s=row["lag_s"])


async def run_roller(pool: asyncpg.Pool, interval_s: float) -> None:
    """The loop every worker runs; at most one of them writes at a time."""
    while True:
        try:
            async with pool.acquire() as conn:
                result = await roll_up(conn)
            if result.rolled and result.movements:
                log.debug(
                    "usage roll-up: %d movements, cursor %d", result.movements, result.cursor_seq
                )
            if result.advanced and not result.caught_up:
                continue  # a backlog: keep folding
        except CONNECTION_ERRORS:
            log.warning("usage roll-up skipped: database unavailable")
        except asyncpg.PostgresError as exc:
            log.error("usage roll-up failed: %s", exc)
        await asyncio.sleep(interval_s)


async def lag_samples(pool: asyncpg.Pool) -> list[metrics.Sample]:
    """For /metrics: how far usage answers lag behind the journal."""
    fresh = await freshness(pool)
    if fresh.lag_s is None:
        return []
    return [
        (
            "ledger_usage_rollup_lag_seconds",
            "Seconds since the time usage roll-ups are complete through.",
            fresh.lag_s,
            {},
        )
    ]
