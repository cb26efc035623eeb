"""Request parameters every controller shares: the strict body decoder and the
named dependencies (the pool, the authenticated principal)."""

from __future__ import annotations

from typing import Any, TypeVar

import asyncpg
import msgspec
from litestar import Request
from litestar.di import NamedDependency, Provide

from ledger.access.api_keys import AuthCache, Principal
from ledger.errors import ValidationFailed
from ledger.http.guard import refuse_deep_json

__all__ = ["Auth", "Pool", "dependencies", "strict_body"]

T = TypeVar("T")


async def strict_body(request: Request[Any, Any, Any], body_type: type[T]) -> T:
    """The request body decoded strictly: `"1"` or `1.0` is not an amount.

    The framework's own decoding is lenient (it converts strings and integral
    floats to integers); money fields must arrive as JSON integers, so handlers
    that take money re-decode the (already buffered) body with msgspec's strict
    rules and refuse anything else as `validation_failed`.
    """
    body = await request.body()
    refuse_deep_json(body)
    try:
        return msgspec.json.decode(body, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc), errors=[{"message": str(exc), "key": "data"}]) from None
    except msgspec.DecodeError:
        raise ValidationFailed("the request body is not valid JSON") from None


# Handler parameters that come from `dependencies` below, named explicitly.
Pool = NamedDependency[asyncpg.Pool]
Auth = NamedDependency[Principal]


async def provide_pool(request: Request[Any, Any, Any]) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def provide_principal(request: Request[Any, Any, Any], pool: Pool) -> Principal:
    cache: AuthCache = request.app.state.auth_cache
    return await cache.authenticate(pool, request.headers.get("authorization"))


dependencies = {
    "pool": Provide(provide_pool),
    "principal": Provide(provide_principal),
}
