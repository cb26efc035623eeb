"""Database outages under a running service: 503 problems with Retry-After while
PostgreSQL is down or saturated (never a hang, never a 500), and recovery by
itself, without a restart, when it returns.

Each test runs its own embedded PostgreSQL (its own data folder), since it is
stopped and started under the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger.app.runtime import prepare_database
from ledger.config import DEFAULT_DATABASE_NAME, Settings
from ledger.db.embedded import EmbeddedPostgres, free_port
from ledger.db.pool import connect, ensure_database
from tests.helpers import assert_invariants, fund, operator_key_for, serving

# Bounded waits: a request that hangs fails on the client timeout instead.
CLIENT_TIMEOUT_S = 60
RECOVERY_POLLS_MAX = 600
POLL_INTERVAL_S = 0.1


@dataclass
class Cluster:
    server: EmbeddedPostgres
    port: int
    dsn: str

    def stop(self, mode: str) -> None:
        self.server.stop(mode=mode)
        assert self.server.running_port() is None

    def start(self) -> None:
        # Same folder, same port: the service's DSN stays valid.
        self.server = EmbeddedPostgres(self.server.data_dir, fsync=True, port=self.port)
        self.server.start()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    server = EmbeddedPostgres(tmp_path / "outage", fsync=True)
    port = server.start()
    try:
        await ensure_database(server.dsn("postgres"), DEFAULT_DATABASE_NAME)
        dsn = server.dsn(DEFAULT_DATABASE_NAME)
        await prepare_database(dsn)
        yield Cluster(server=server, port=port, dsn=dsn)
    finally:
        EmbeddedPostgres(tmp_path / "outage").stop(mode="immediate")


def _settings(dsn: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=dsn,
        host="127.0.0.1",
        port=free_port(),
        data_dir=Path("/nonexistent"),
        pool_acquire_timeout_s=1.0,
        expiry_sweep_interval_s=0.2,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def assert_unavailable(response: httpx.Response, code: str = "database_unavailable") -> None:
    assert response.status_code == 503, response.text[:300]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert int(response.headers["retry-after"]) >= 1


async def _wait_healthy(client: httpx.AsyncClient) -> int:
    """Poll /health until it answers 200; return how many 503s came first."""
    for unavailable in range(RECOVERY_POLLS_MAX):
        response = await client.get("/health")
        if response.status_code == 200:
            return unavailable
        assert_unavailable(response)
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError("the service did not recover after the database returned")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_outage_is_503_and_recovers_without_restart(cluster: Cluster, mode: str) -> None:
    operator = {"Authorization": f"Bearer {await operator_key_for(cluster.dsn)}"}
    with serving(_settings(cluster.dsn)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            created = await client.post("/v1/accounts", json={"name": "a"}, headers=operator)
            assert created.status_code == 201
            account_id = created.json()["account"]["id"]
            owner = {"Authorization": f"Bearer {created.json()['owner_api_key']}"}
            conn = await connect(cluster.dsn)
            try:
                await fund(conn, uuid.UUID(account_id), 700)
            finally:
                await conn.close()

            cluster.stop(mode)
            for _ in range(3):
                assert_unavailable(await client.get("/health"))
                assert_unavailable(
                    await client.post("/v1/accounts", json={"name": "b"}, headers=operator)
                )
                assert_unavailable(await client.get(f"/v1/accounts/{account_id}", headers=owner))
                journal = await client.get(f"/v1/accounts/{account_id}/transfers", headers=owner)
                assert_unavailable(journal)

            cluster.start()
            await _wait_healthy(client)
            read = await client.get(f"/v1/accounts/{account_id}", headers=owner)
            assert read.status_code == 200, read.text
            assert read.json()["balance_micros"] == 700
            again = await client.post("/v1/accounts", json={"name": "c"}, headers=operator)
            assert again.status_code == 201, again.text
    await assert_invariants(cluster.dsn)


async def test_saturated_pool_is_503_not_a_hang(cluster: Cluster) -> None:
    operator_key = await operator_key_for(cluster.dsn)
    settings = _settings(cluster.dsn, pool_size_max=2, pool_acquire_timeout_s=0.5)
    with serving(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            created = await client.post(
                "/v1/accounts",
                json={"name": "a"},
                headers={"Authorization": f"Bearer {operator_key}"},
            )
            owner = {"Authorization": f"Bearer {created.json()['owner_api_key']}"}
            path = f"/v1/accounts/{created.json()['account']['id']}"
            # Every request authenticates against `api_keys`; lock it so the two
            # pooled connections block inside their queries and the rest of the
            # requests wait for a connection that never comes.
            locker = await asyncpg.connect(cluster.dsn)
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
                requests = [asyncio.create_task(client.get(path, headers=owner)) for _ in range(6)]
                for refused, finished in enumerate(asyncio.as_completed(requests), start=1):
                    assert_unavailable(await finished)
                    if refused == len(requests) - 2:
                        break
                await tx.rollback()
            finally:
                await locker.close()
            # The two blocked requests complete once the lock is gone.
            statuses = [(await task).status_code for task in requests]
            assert statuses.count(200) >= 2, statuses
            assert (await client.get(path, headers=owner)).status_code == 200
