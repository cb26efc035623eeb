"""`GET /metrics` (Prometheus) and `GET /health/ready` (database and migrations).

`/metrics` is open to loopback clients and to the operator API key by default
(`LEDGER_METRICS_ACCESS`): a scraper on the same host needs nothing, one elsewhere
sends the operator API key. Behind a proxy on the same host every client looks
local; set `operator` there.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

import asyncpg
import msgspec
from litestar import MediaType, Request, Response, get

from ledger.access.api_keys import AuthCache, Role, require_role
from ledger.config import Settings
from ledger.db.migrate import MigrationError, pending_migrations
from ledger.db.queries import load_queries
from ledger.errors import DatabaseUnavailable, ServiceUnavailable
from ledger.http.apidoc import problem_responses
from ledger.http.params import Pool
from ledger.observability import metrics

__all__ = ["metrics_endpoint", "readiness"]

queries = load_queries("ledger.app", "monitoring.sql")
PROBE_TIMEOUT_S = 2.0
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _may_scrape(request: Request[Any, Any, Any], pool: asyncpg.Pool) -> None:
    settings: Settings = request.app.state.settings
    if settings.metrics_access == "open":
        return
    client = request.client.host if request.client else None
    has_key = request.headers.get("authorization") is not None
    if settings.metrics_access == "loopback" and _is_loopback(client) and not has_key:
        return
    cache: AuthCache = request.app.state.auth_cache
    principal = await cache.authenticate(pool, request.headers.get("authorization"))
    require_role(principal, Role.operator)


async def _samples(request: Request[Any, Any, Any], pool: asyncpg.Pool) -> list[metrics.Sample]:
    samples: list[metrics.Sample] = []
    try:
        row = await pool.fetchrow(queries["scrape_gauges"], timeout=PROBE_TIMEOUT_S)
        watchers = await pool.fetch(queries["usdc_watchers"], timeout=PROBE_TIMEOUT_S)
    except _DB_ERRORS:
        return [("ledger_database_up", "Whether the scrape reached the database.", 0, {})]
    assert row is not None
    samples.append(("ledger_database_up", "Whether the scrape reached the database.", 1, {}))
    samples.append(("ledger_holds_pending", "Holds not yet captured or released.",
                    row["holds_pending"], {}))  # fmt: skip
    samples.append(
        (
            "ledger_holds_expired_backlog",
            "Pending holds past their expiry, not yet released (the sweeper's backlog).",
            row["holds_expired_backlog"],
            {},
        )
    )
    for w in watchers:
        labels = {"chain_id": str(w["chain_id"])}
        samples.append(("ledger_usdc_watcher_next_block", "Next block the USDC watcher scans.",
                        w["next_block"], labels))  # fmt: skip
        samples.append(("ledger_usdc_watcher_halted", "1 when a deep reorg paused the watcher.",
                        int(w["halted"]), labels))  # fmt: skip
        samples.append(
            (
                "ledger_usdc_watcher_seconds_since_progress",
                "Seconds since the USDC watcher last moved its cursor.",
                w["seconds_since_progress"],
                labels,
            )
        )
    for extra in getattr(request.app.state, "metric_sources", ()):
        samples.extend(await extra(pool))
    return samples


@get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description=(
        "Prometheus text exposition format (OpenMetrics when the scraper asks for it), "
        "aggregated over every worker process. Open to loopback clients and to the "
        "operator API key by default (`LEDGER_METRICS_ACCESS`)."
    ),
    tags=["health"],
    media_type=MediaType.TEXT,
    responses=problem_responses(401, 403),
    # Anonymous (from loopback, by default) or the operator API key.
    security=[{}, {"apiKey": []}],
)
async def metrics_endpoint(request: Request[Any, Any, Any], pool: Pool) -> Response[bytes]:
    await _may_scrape(request, pool)
    body, content_type = metrics.render(
        request.headers.get("accept", ""), await _samples(request, pool)
    )
    # The content type verbatim: a media_type would get a second charset appended.
    return Response(body, headers={"Content-Type": content_type})


class Readiness(msgspec.Struct, frozen=True):
    status: Literal["ready"]
    database: Literal["ok"]
    migrations: Literal["current"]


class NotReady(ServiceUnavailable):
    """`GET /health/ready`: this process cannot serve yet (the database does not
    answer, or its migrations are not the ones this code expects). A load balancer
    sends traffic elsewhere until it is ready."""

    code = "not_ready"
    title = "Not ready to serve"


@get(
    "/health/ready",
    operation_id="readiness",
    summary="Ready: database reachable and migrations current",
    description=(
        "200 when the database answers and every migration this code ships is applied "
        "(unchanged); otherwise 503 with `database_unavailable` or `not_ready` "
        "(`pending_migrations` lists what is missing). For load balancers and orchestrators; "
        "`/health/live` answers without the database."
    ),
    tags=["health"],
    responses=problem_responses(503),
)
async def readiness(pool: Pool) -> Readiness:
    try:
        async with pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
            pending = await pending_migrations(conn)
    except MigrationError as exc:
        raise NotReady(str(exc)) from None
    except _DB_ERRORS as exc:
        raise DatabaseUnavailable() from exc
    if pending:
        raise NotReady("migrations are not applied", pending_migrations=pending)
    return Readiness(status="ready", database="ok", migrations="current")
