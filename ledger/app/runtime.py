"""Where the database comes from: `DATABASE_URL`, or the embedded PostgreSQL.

Every command goes through `database_dsn`, so `ledger serve` on the embedded
server and on an external one run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from ledger import limits
from ledger.config import DEFAULT_DATABASE_NAME, ConfigError, Settings
from ledger.db.embedded import EmbeddedPostgres
from ledger.db.migrate import apply_migrations
from ledger.db.pool import ensure_database, mask_dsn

__all__ = ["DataFolderMissing", "DatabaseUnreachable", "database_dsn", "prepare_database"]

log = logging.getLogger("ledger.app.runtime")


class DataFolderMissing(ConfigError):
    """A command that only reads or changes a ledger found no data folder to use."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"no ledger data folder at {data_dir.resolve()}: run this where `ledger serve` "
            "ran, or set LEDGER_DATA_DIR to its data folder (or DATABASE_URL to its database)"
        )


class DatabaseUnreachable(ConfigError):
    """`DATABASE_URL` names a server that does not answer, or refuses us."""


@contextlib.contextmanager
def database_dsn(
    settings: Settings, *, own_server: bool = False, create: bool = False
) -> Iterator[str]:
    """Yield a DSN for the ledger database.

    With `DATABASE_URL` that is it, once it answers. Otherwise the embedded server
    in the data folder is started if it is not running; it is stopped on exit if
    we started it, or always when `own_server` (the server process owns its
    database). Only `create` (serve, migrate) makes a data folder that is missing:
    any other command run in the wrong folder says so rather than reporting on a
    new, empty ledger.
    """
    if settings.database_url:
        asyncio.run(_reachable(settings.database_url))
        yield settings.database_url
        return
    server = EmbeddedPostgres(settings.data_dir)
    if not create and not (server.pgdata / "PG_VERSION").exists():
        raise DataFolderMissing(settings.data_dir)
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


async def _reachable(dsn: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_S)
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        ValueError,
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseUnreachable(
            f"DATABASE_URL: cannot connect to {mask_dsn(dsn)} ({reason}); "
            "expected a reachable PostgreSQL server and an existing database"
        ) from None
    await conn.close()


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
