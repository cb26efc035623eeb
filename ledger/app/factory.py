"""The app factory: all wiring (routes, DI, lifespan, errors, OpenAPI) in one place.

This module and `ledger.cli` are the assembly: the only parts of `ledger` that
import `issuer` and `verifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from ledger.access.api_keys import AuthCache
from ledger.app.health import HealthController, liveness
from ledger.app.monitoring import metrics_endpoint, readiness
from ledger.config import ConfigError, Settings
from ledger.core import transfers as core
from ledger.core.api import AccountController
from ledger.db.pool import CONNECTION_ERRORS, BoundedPool, create_pool
from ledger.http.apidoc import complete_openapi
from ledger.http.guard import LedgerRequest, RequestGuard
from ledger.http.idempotency import purge_expired_keys
from ledger.http.lists import QUERY_PARAMETERS_STATE_KEY
from ledger.http.observe import RequestObserver
from ledger.http.params import dependencies
from ledger.http.problems import exception_handlers
from ledger.observability import metrics

__all__ = ["API_VERSION", "create_app", "openapi_document"]

log = logging.getLogger("ledger.app.factory")

API_VERSION = "0.1.0"


async def _expiry_sweeper(app: Litestar, interval_s: float) -> None:
    """Release holds past their expiry, and forget idempotency keys past their
    retention, whether or not any request arrives."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await core.expire_pending(app.state.pool)
            await purge_expired_keys(app.state.pool)
        except CONNECTION_ERRORS:
            log.warning("expiry sweep skipped: database unavailable")


POOL_SAMPLE_INTERVAL_S = 1.0


async def _sample_pool(app: Litestar) -> None:
    """This worker's pool and charge queue, as gauges (each worker reports its own)."""
    pool = app.state.pool
    while True:
        metrics.observe_pool(
            size=pool.get_size(),
            idle=pool.get_idle_size(),
            size_max=pool.get_max_size(),
            waiting=pool.waiting() if isinstance(pool, BoundedPool) else 0,
        )
        await asyncio.sleep(POOL_SAMPLE_INTERVAL_S)


async def _ensure_signing_keys(app: Litestar) -> None:
    """An active signing key per purpose; idempotent across concurrent workers."""
    from issuer.keys import ensure_signing_keys

    created = await ensure_signing_keys(app.state.pool)
    if created:
        log.info("created %d signing key(s): %s", len(created), ", ".join(created))


@contextlib.asynccontextmanager
async def _database(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set (`ledger serve` sets it for you)")
    app.state.pool = await create_pool(
        settings.database_url,
        max_size=settings.pool_size_max,
        acquire_timeout_s=settings.pool_acquire_timeout_s,
    )
    await _ensure_signing_keys(app)
    sweeper = asyncio.create_task(_expiry_sweeper(app, settings.expiry_sweep_interval_s))
    sampler = asyncio.create_task(_sample_pool(app))
    from verifier.charges.context import ChargeContext

    app.state.charge_context = await ChargeContext.start(
        app.state.pool,
        topup_url=f"{settings.base_url}/v1/topups/card",
        sweep_interval_s=settings.expiry_sweep_interval_s,
    )
    try:
        yield
    finally:
        await app.state.charge_context.stop()
        for task in (sweeper, sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app.state.pool.close()
        metrics.process_exit()


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Credit-token ledger",
        version=API_VERSION,
        description=(
            "Prepaid credit-token ledger for AI agents. Money is integer micro-USD. "
            "Errors are RFC 9457 application/problem+json with a stable `code`."
        ),
        path="/docs",
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="Operator, owner or merchant API key (`lk_…`).",
                ),
                "creditToken": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="PASETO v4.public",
                    description="A credit token (`v4.public.…`).",
                ),
            }
        ),
    )


# Each feature package exposes `routes` (controllers/handlers) from its `api`
# module; the assembly lists them here and nowhere else.
_FEATURE_API_MODULES: tuple[str, ...] = (
    "issuer.api",
    "issuer.topups.api",
    "verifier.charges.api",
    "ledger.usage.api",
    "ledger.dashboard.api",
)


def _route_handlers() -> list[Any]:
    import importlib

    handlers: list[Any] = [
        HealthController,
        liveness,
        readiness,
        metrics_endpoint,
        AccountController,
    ]
    for module in _FEATURE_API_MODULES:
        handlers.extend(importlib.import_module(module).routes)
    return handlers


def _feature_lifespans() -> list[Any]:
    import importlib

    spans: list[Any] = []
    for module in _FEATURE_API_MODULES:
        spans.extend(getattr(importlib.import_module(module), "lifespan", []))
    return spans


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    metrics.setup()
    config = AppConfig(
        route_handlers=_route_handlers(),
        dependencies=dict(dependencies),
        exception_handlers=exception_handlers(),
        lifespan=[_database, *_feature_lifespans()],
        openapi_config=_openapi_config(),
        request_max_body_size=settings.request_body_bytes_max,
        # The guard first: what it refuses never reaches the handlers or the metrics.
        middleware=[RequestGuard(settings), RequestObserver(settings)],
        request_class=LedgerRequest,
        state=State({"settings": settings, "auth_cache": AuthCache()}),
        debug=False,
    )
    app = Litestar.from_config(config)
    # Built once here, so the served document and `openapi_document()` are the same.
    complete_openapi(app)
    for module in _FEATURE_API_MODULES:
        extra = getattr(importlib.import_module(module), "query_parameters", {})
        app.state[QUERY_PARAMETERS_STATE_KEY].update(extra)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, exactly as the app serves it at /docs/openapi.json."""
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    return app.openapi_schema.to_schema()
