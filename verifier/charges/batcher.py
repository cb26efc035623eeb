"""Group commit for verify-and-debit.

Concurrent charge and hold requests in one process are queued and sent to
PostgreSQL together as ONE call of `ledger_charge_batch`: one round trip, one
transaction, one WAL flush for the whole batch. This is what lets many agents
share one wallet and one credit token (and every charge credit one merchant)
faster than one-row-per-transaction updates allow: the hot rows are locked once
per batch instead of once per charge.

A batch that fails as a whole (a rare unique-key race between two processes, a
serialization error) is retried item by item, so one bad request never fails
the others. Batches are bounded (`BATCH_SIZE_MAX`) and so is the queue
(`QUEUE_SIZE_MAX`): past it, callers get `rate_limited`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger.db.queries import load_queries
from ledger.errors import RateLimited
from ledger.observability import metrics

__all__ = ["BATCH_SIZE_MAX", "ChargeBatcher", "ChargeRequest", "run_batch"]

log = logging.getLogger("verifier.charges.batcher")
queries = load_queries("verifier.charges", "charges.sql")

BATCH_SIZE_MAX = 256
QUEUE_SIZE_MAX = 20_000
# Batches in flight at once per process: one executes while the next one fills.
BATCHES_IN_FLIGHT_MAX = 2
# Retries of a single request after a transient conflict between processes.
SINGLE_RETRIES_MAX = 3

# Field order of the `charge_request` composite type (migrations/0004).
ChargeRequest = tuple[Any, ...]

_TRANSIENT = (
    asyncpg.exceptions.UniqueViolationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


class ChargeBatcher:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[tuple[ChargeRequest, asyncio.Future[asyncpg.Record]]] = (
            asyncio.Queue(maxsize=QUEUE_SIZE_MAX)
        )
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for _ in range(BATCHES_IN_FLIGHT_MAX):
            self._workers.append(asyncio.create_task(self._run()))

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers.clear()

    async def submit(self, request: ChargeRequest) -> asyncpg.Record:
        """Apply one request as part of the next batch; return its `charge_result`."""
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((request, future))
        except asyncio.QueueFull:
            raise RateLimited("too many charges in flight; retry shortly") from None
        return await future

    async def _run(self) -> None:
        # Each worker keeps one connection for its batches: handing it back to the
        # pool after every batch would cost a reset round trip per batch.
        conn: Any = None
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < BATCH_SIZE_MAX and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                live = [(req, fut) for req, fut in batch if not fut.done()]
                if not live:
                    continue
                if conn is None:
                    try:
                        conn = await self._pool.acquire()
                    except Exception as exc:
                        _fail(live, exc)
                        continue
                if not await self._execute(conn, live):
                    # The connection may be broken: hand it back, take a fresh one next time.
                    await self._release(conn)
                    conn = None
        finally:
            if conn is not None:
                await self._release(conn)

    async def _release(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    async def _execute(self, conn: Any, batch: Sequence[_Item]) -> bool:
        """Apply a batch; False when the connection failed and should be replaced."""
        started = time.perf_counter()
        try:
            rows = await run_batch(conn, [req for req, _ in batch])
            metrics.observe_batch(len(batch), time.perf_counter() - started, self._queue.qsize())
        except _TRANSIENT:
            # Retry one by one so a single conflicting request cannot fail the rest.
            for request, future in batch:
                await _execute_single(conn, request, future)
            return True
        except asyncpg.PostgresError as exc:
            _fail(batch, exc)
            return True
        except Exception as exc:
            _fail(batch, exc)
            return False
        for (_, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)
        return True


_Item = tuple[ChargeRequest, "asyncio.Future[asyncpg.Record]"]


def _fail(batch: Sequence[_Item], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


async def _execute_single(
    conn: Any, request: ChargeRequest, future: asyncio.Future[asyncpg.Record]
) -> None:
    for attempt in range(SINGLE_RETRIES_MAX):
        try:
            rows = await run_batch(conn, [request])
        except _TRANSIENT as exc:
            if attempt + 1 < SINGLE_RETRIES_MAX:
                continue
            _fail([(request, future)], exc)
            return
        except Exception as exc:
            _fail([(request, future)], exc)
            return
        if not future.done():
            future.set_result(rows[0])
        return


async def run_batch(conn: Any, requests: list[ChargeRequest]) -> list[asyncpg.Record]:
    columns = [list(column) for column in zip(*requests, strict=True)]
    rows: list[asyncpg.Record] = await conn.fetch(queries["charge_batch"], *columns)
    assert len(rows) == len(requests), "one result per request"
    return rows
