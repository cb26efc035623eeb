"""Health endpoints: liveness (no database) and database reachability."""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec
from litestar import Controller, get

from ledger.errors import DatabaseUnavailable
from ledger.http.apidoc import problem_responses
from ledger.http.params import Pool

__all__ = ["HealthController", "liveness"]


class Liveness(msgspec.Struct, frozen=True):
    status: str = "ok"


@get(
    "/health/live",
    operation_id="liveness",
    description=(
        "200 while the process serves requests; it does not touch the database, so a load balancer "
        "can tell a live process from a reachable database."
    ),
    summary="Liveness only (no database)",
    tags=["health"],
)
async def liveness() -> Liveness:
    return Liveness()


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]
    database: Literal["ok"]


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        operation_id="health",
        description=(
            "200 `{status: ok, database: ok}` when PostgreSQL answers a query; 503 "
            "`database_unavailable` otherwise."
        ),
        summary="Liveness and database reachability",
        responses=problem_responses(503),
    )
    async def health(self, pool: Pool) -> Health:
        try:
            await pool.fetchval("SELECT 1", timeout=2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable() from exc
        return Health(status="ok", database="ok")
