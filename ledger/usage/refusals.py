"""Recent refusals, kept for a week so that owners can see what was refused and why.

The money path never waits for this: a refusal's fields go into a bounded queue in
memory, and a background task writes them in batches (and prunes old rows). Under a
flood of refusals past the queue's bound, the newest are dropped (and counted in
the log), never the request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import Any

import asyncpg

from ledger.db.pool import CONNECTION_ERRORS
from ledger.db.queries import load_queries

__all__ = ["REFUSALS_QUEUE_MAX", "RefusalRecorder"]

log = logging.getLogger("ledger.usage.refusals")
queries = load_queries("ledger.usage", "usage.sql")

REFUSALS_QUEUE_MAX = 10_000
FLUSH_INTERVAL_S = 0.5
PRUNE_INTERVAL_S = 600.0


def _uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class RefusalRecorder:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self.dropped = 0
        self._last_prune = 0.0

    def __call__(self, fields: dict[str, Any]) -> None:
        account = _uuid(fields.get("account_id"))
        if account is None:
            return  # nothing an owner could be shown
        if len(self.queue) >= REFUSALS_QUEUE_MAX:
            self.dropped += 1
            return
        amount = fields.get("amount_micros")
        self.queue.append(
            (
                account,
                _uuid(fields.get("merchant_id")),
                _uuid(fields.get("token_id")),
                str(fields.get("event")),
                fields.get("tool"),
                amount if isinstance(amount, int) else None,
                str(fields.get("code")),
                fields.get("limit") if isinstance(fields.get("limit"), str) else None,
                int(fields.get("status") or 0),
            )
        )

    async def flush(self) -> int:
        batch = [self.queue.popleft() for _ in range(len(self.queue))]
        if batch:
            columns = [list(c) for c in zip(*batch, strict=True)]
            await self.pool.execute(queries["insert_refusals"], *columns)
        if self.dropped:
            log.warning("recent refusals: %d dropped (queue full)", self.dropped)
            self.dropped = 0
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
            await self.pool.execute(queries["prune_refusals"])
            self._last_prune = time.monotonic()
        return len(batch)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL_S)
                try:
                    await self.flush()
                except CONNECTION_ERRORS:
                    log.warning("recent refusals not written: database unavailable")
                except asyncpg.PostgresError as exc:
                    log.error("recent refusals not written: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
