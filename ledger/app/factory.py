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
from ledger.app.examples import EXAMPLES
from ledger.app.health import HealthController, liveness
from ledger.app.monitoring import metrics_endpoint, readiness
from ledger.app.pages import docs_config, page_handlers
from ledger.config import ConfigError, Settings
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
from verifier.errors import TopupAdvice, TopupMethod

__all__ = ["API_VERSION", "create_app", "openapi_document"]

log = logging.getLogger("ledger.app.factory")

API_VERSION = "0.1.0"
API_DESCRIPTION = """Prepaid credit-token ledger for AI agents.

- **Money** is integer micro-USD (`1 USD = 1_000_000`) in every field named `*_micros`,
  never a float; JSON integers only (`"1"` and `1.0` are refused).
- **Errors** are RFC 9457 `application/problem+json` with a stable snake_case `code`; each
  problem's `type` is a page of this service (`/problems/<code>`) describing the code, and
  the `Problem` schema documents every extension member.
- **Bodies** are JSON (`Content-Type: application/json`, else 415); a key twice in an
  object, an unknown field or an unknown query parameter is 422.
- **Idempotency**: every POST that creates something takes an `Idempotency-Key` header
  (kept 24 hours, per API key subject or credit token): the same key and request answer
  the original response; a different request is 409 `idempotency_conflict`.
- **Lists** answer `{"data": [...], "has_more": bool, "next_cursor": str|null}`; pass
  `next_cursor` as `?cursor=`; `?limit=` is 1 to 500 (default 50).
- A creation is 201 with `Location`; a 401 carries `WWW-Authenticate: Bearer`.
- **Credentials**: an operator, owner or merchant API key (`lk_…`), or a credit token
  (`v4.public.…`, PASETO), as `Authorization: Bearer …`.
"""


async def _idempotency_sweeper(app: Litestar, interval_s: float) -> None:
    """Forget idempotency keys past their retention, whether or not any request
    arrives. (Expired holds are released by the charge context's own sweeper.)"""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await purge_expired_keys(app.state.pool)
        except CONNECTION_ERRORS:
            log.warning("idempotency sweep skipped: database unavailable")


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
    sweeper = asyncio.create_task(_idempotency_sweeper(app, settings.expiry_sweep_interval_s))
    sampler = asyncio.create_task(_sample_pool(app))
    from verifier.charges.context import ChargeContext

    app.state.charge_context = await ChargeContext.start(
        app.state.pool,
        topup=app.state.topup,
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
    config: OpenAPIConfig = docs_config(
        title="Credit-token ledger",
        version=API_VERSION,
        description=API_DESCRIPTION,
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
    return config


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
        *page_handlers(),
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


def topup_advice(settings: Settings) -> TopupAdvice:
    """The top-up methods this service has configured, for 402 advice."""
    methods: list[TopupMethod] = []
    if settings.stripe_secret_key and settings.stripe_webhook_secret:
        methods.append("card")
    if settings.usdc_configured:
        methods.append("usdc")
    return TopupAdvice(base_url=settings.base_url, methods=tuple(methods))


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
        state=State(
            {"settings": settings, "auth_cache": AuthCache(), "topup": topup_advice(settings)}
        ),
        debug=False,
    )
    app = Litestar.from_config(config)
    # Built once here, so the served document and `openapi_document()` are the same.
    complete_openapi(app, examples=EXAMPLES)
    for module in _FEATURE_API_MODULES:
        extra = getattr(importlib.import_module(module), "query_parameters", {})
        app.state[QUERY_PARAMETERS_STATE_KEY].update(extra)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, exactly as the app serves it at /docs/openapi.json."""
    app = create_app(Settings(database_url="postgresql://unused/unused"))
    return app.openapi_schema.to_schema()
