"""Shared fixtures: one real embedded PostgreSQL per test session, a migrated
template database cloned per test, and the real app served by uvicorn over HTTP.

Set `DATABASE_URL` (a server where we may create databases) to run against an
external PostgreSQL instead of the embedded one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import uvicorn

from ledger.app.factory import create_app
from ledger.config import Settings
from ledger.db.embedded import EmbeddedPostgres, free_port
from ledger.db.migrate import apply_migrations
from ledger.db.pool import Conn, create_pool
from tests.helpers import operator_key_for

TEMPLATE_DB = "ledger_template"


def _with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a maintenance database on the session's PostgreSQL server."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield _with_database(external, "postgres")
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), fsync=False)
    server.start()
    try:
        yield server.dsn("postgres")
    finally:
        server.stop(mode="immediate")


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> str:
    async def build() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_with_database(pg_admin_dsn, TEMPLATE_DB))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return _with_database(pg_admin_dsn, TEMPLATE_DB)


@pytest.fixture
async def dsn(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (a clone of the template)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    finally:
        await admin.close()
    yield _with_database(pg_admin_dsn, name)
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dsn, min_size=1, max_size=20)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    async with pool.acquire() as c:
        yield c


@dataclass
class Service:
    """The real app behind uvicorn on a loopback port, for one test."""

    url: str
    dsn: str
    operator_key: str
    client: httpx.AsyncClient

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    @property
    def operator(self) -> dict[str, str]:
        return self.auth(self.operator_key)


class ServerThread:
    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        raise RuntimeError("uvicorn did not start in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def service_settings(dsn: str, port: int, **overrides: object) -> Settings:
    return Settings(
        database_url=dsn,
        host="127.0.0.1",
        port=port,
        data_dir=Path("/nonexistent"),
        expiry_sweep_interval_s=0.2,
        **{"access_log": True, **overrides},  # type: ignore[arg-type]
    )


@pytest.fixture
async def service(dsn: str) -> AsyncIterator[Service]:
    operator_key = await operator_key_for(dsn)
    port = free_port()
    server = ServerThread(service_settings(dsn, port))
    server.start()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            yield Service(url=url, dsn=dsn, operator_key=operator_key, client=client)
        finally:
            server.stop()


@pytest.fixture
async def service_dsn_and_key(dsn: str) -> tuple[str, str]:
    """A migrated database with its first operator key."""
    key = await operator_key_for(dsn)
    return dsn, key
