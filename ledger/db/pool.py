"""The asyncpg pool and the database's failure modes.

The pool is created in the app's lifespan with explicit limits. Connection-level
failures (PostgreSQL down, restarting, or unreachable) become `DatabaseUnavailable`
(503) at the edge; the pool reconnects by itself when the database returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

if TYPE_CHECKING:
    from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from ledger import limits
from ledger.errors import DatabaseUnavailable

__all__ = [
    "CONNECTION_ERRORS",
    "BoundedPool",
    "Conn",
    "connect",
    "create_pool",
    "ensure_database",
    "mask_dsn",
    "translate_connection_errors",
]

# A connection, whether acquired from the pool or opened directly.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# What a lost or refused database connection looks like from asyncpg.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionFailureError,
)


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by `***`, safe to log."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + msgspec.json.encode(value)


def _decode_jsonb(data: bytes) -> Any:
    assert data[:1] == _JSONB_VERSION, "unknown jsonb wire version"
    return msgspec.json.decode(data[1:])


_JSONB_VERSION = b"\x01"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary format, so composite types with jsonb fields can be sent too.
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection configured like the pool's (jsonb as Python values)."""
    conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_S)
    await _init_connection(conn)
    return conn


if TYPE_CHECKING:
    _PoolBase = asyncpg.Pool[asyncpg.Record]
else:  # not subscriptable at run time
    _PoolBase = asyncpg.Pool


class BoundedPool(_PoolBase):
    """A pool whose every acquire is bounded in time.

    With the database down or every connection busy, a request waits at most
    `acquire_timeout_s` for a connection (connecting included), then fails with a
    timeout that the edge answers as 503: no request hangs on the pool.
    """

    __slots__ = ("_acquire_timeout_s",)

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        self._acquire_timeout_s = acquire_timeout_s
        super().__init__(*args, **kwargs)

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[asyncpg.Record]:
        return super().acquire(timeout=self._acquire_timeout_s if timeout is None else timeout)

    def waiting(self) -> int:
        """Acquires waiting for a connection (for the metrics). asyncpg keeps its free
        connections in an asyncio queue and has no public count of its waiters."""
        getters = getattr(getattr(self, "_queue", None), "_getters", None)
        return len(getters) if getters is not None else 0


async def create_pool(
    dsn: str,
    *,
    min_size: int = limits.POOL_SIZE_MIN,
    max_size: int = limits.POOL_SIZE_MAX,
    acquire_timeout_s: float = limits.POOL_ACQUIRE_TIMEOUT_S,
) -> asyncpg.Pool:
    # What `asyncpg.create_pool` does, with the bounded pool class.
    pool = BoundedPool(
        dsn,
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=limits.POOL_QUERIES_MAX,
        max_inactive_connection_lifetime=limits.POOL_CONNECTION_IDLE_S_MAX,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        timeout=limits.DB_CONNECT_TIMEOUT_S,
        command_timeout=limits.DB_COMMAND_TIMEOUT_S,
        init=_init_connection,
        server_settings={
            "statement_timeout": str(limits.STATEMENT_TIMEOUT_MS),
            "application_name": "ledger",
        },
    )
    return await pool


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database `name` on the server behind `admin_dsn` if it is missing."""
    conn = await asyncpg.connect(admin_dsn, timeout=limits.DB_CONNECT_TIMEOUT_S)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.exceptions.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def translate_connection_errors() -> AsyncIterator[None]:
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable() from exc
