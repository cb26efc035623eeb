"""Where the database comes from: `DATABASE_URL`, or the embedded PostgreSQL.

Every command goes through `database_dsn`, so `ledger serve` on the embedded
server and on an external one run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import asyncpg

from ledger import limits
from ledger.config import DEFAULT_DATABASE_NAME, Settings
from ledger.db.embedded import EmbeddedPostgres
from ledger.db.migrate import apply_migrations
from ledger.db.pool import ensure_database, mask_dsn

__all__ = ["database_dsn", "prepare_database"]

log = logging.getLogger("ledger.app.runtime")


@contextlib.contextmanager
def database_dsn(settings: Settings, *, own_server: bool = False) -> Iterator[str]:
    """Yield a DSN for the ledger database.

    With `DATABASE_URL` that is it. Otherwise the embedded server in the data
    folder is started if it is not running; it is stopped on exit if we started it,
    or always when `own_server` (the server process owns its database).
    """
    if settings.database_url:
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.data_dir)
    was_running = server.running_port() is not None
    server.start()
    log.info("embedded PostgreSQL data folder: %s", server.pgdata)
    try:
        asyncio.run(ensure_database(server.dsn("postgres"), DEFAULT_DATABASE_NAME))
        yield server.dsn(DEFAULT_DATABASE_NAME)
    finally:
        if own_server or not was_running:
            server.stop()
            log.info("embedded PostgreSQL stopped")


async def prepare_database(dsn: str) -> list[str]:
    """Apply pending migrations; return what was applied."""
    conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_S)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    for name in applied:
        log.info("applied migration %s", name)
    log.info("database %s is migrated", mask_dsn(dsn))
    return applied
