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
from ledger.http.guard import refuse_deep_json, refuse_non_json
from ledger.http.jsonkeys import holds_duplicate_keys

__all__ = [
    "BOUND_POOL_STATE_KEY",
    "Auth",
    "Pool",
    "dependencies",
    "strict_body",
]

T = TypeVar("T")

_any_json = msgspec.json.Decoder()

# Where an idempotent request leaves the connection its handler must use.
BOUND_POOL_STATE_KEY = "ledger.idempotency.pool"


async def strict_body(request: Request[Any, Any, Any], body_type: type[T]) -> T:
    """The request body decoded strictly, or a refusal that writes nothing.

    - Not sent as JSON (`text/plain`, a form, no content type): 415
      `unsupported_media_type`. What a merchant's stack parsed as something else
      must not be charged as JSON here.
    - An object with the same key twice, at any depth: 422 `validation_failed`.
      Parsers disagree on which one wins (first, last, error), so a body a
      merchant validated with one value could be charged with the other.
    - `"1"` or `1.0` where an integer is expected: 422. The framework's own
      decoding is lenient; money fields must arrive as JSON integers, so
      handlers re-decode the (already buffered) body with msgspec's strict rules.
    """
    refuse_non_json(request)
    body = await request.body()
    refuse_deep_json(body)
    try:
        value = msgspec.json.decode(body, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc), errors=[{"message": str(exc), "key": "data"}]) from None
    except msgspec.DecodeError:
        raise ValidationFailed("the request body is not valid JSON") from None
    if holds_duplicate_keys(body, _any_json.decode(body)):
        raise ValidationFailed(
            "the JSON body has an object with the same key twice",
            errors=[{"message": "duplicate object key", "key": "data"}],
        )
    return value


# Handler parameters that come from `dependencies` below, named explicitly.
Pool = NamedDependency[asyncpg.Pool]
Auth = NamedDependency[Principal]


async def provide_pool(request: Request[Any, Any, Any]) -> asyncpg.Pool:
    # Inside an idempotent request the handler works on the connection whose
    # transaction also records the response (`ledger.http.idempotency`).
    bound: asyncpg.Pool | None = request.scope["state"].get(BOUND_POOL_STATE_KEY)
    if bound is not None:
        return bound
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def provide_principal(request: Request[Any, Any, Any], pool: Pool) -> Principal:
    cache: AuthCache = request.app.state.auth_cache
    return await cache.authenticate(pool, request.headers.get("authorization"))


dependencies = {
    "pool": Provide(provide_pool),
    "principal": Provide(provide_principal),
}
