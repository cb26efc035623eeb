"""HTTP controllers of the core: health and accounts. Decode, call a service, encode."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, TypeVar

import asyncpg
import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from ledger import limits
from ledger.accounts import (
    AccountCreate,
    AccountCreated,
    AccountView,
    JournalPage,
    create_customer_account,
    read_account,
    read_journal,
    require_role,
)
from ledger.apidoc import problem_responses
from ledger.auth import AuthCache, Principal, Role
from ledger.errors import DatabaseUnavailable, ValidationFailed
from ledger.guard import refuse_deep_json

__all__ = ["AccountController", "Auth", "HealthController", "Pool", "dependencies", "strict_body"]

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


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]
    database: Literal["ok"]


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        operation_id="health",
        summary="Liveness and database reachability",
        responses=problem_responses(503),
    )
    async def health(self, pool: Pool) -> Health:
        try:
            await pool.fetchval("SELECT 1", timeout=2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable() from exc
        return Health(status="ok", database="ok")


class AccountController(Controller):
    path = "/v1/accounts"
    tags = ["accounts"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createAccount",
        summary="Create a customer wallet (operator)",
        responses=problem_responses(403),
    )
    async def create_account(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[AccountCreate],
        principal: Auth,
        pool: Pool,
    ) -> AccountCreated:
        require_role(principal, Role.operator)
        data = await strict_body(request, AccountCreate)
        return await create_customer_account(pool, data.name)

    @get(
        "/{account_id:uuid}",
        operation_id="getAccount",
        summary="Balance of an account",
        responses=problem_responses(404),
    )
    async def get_account(
        self, account_id: FromPath[uuid.UUID], principal: Auth, pool: Pool
    ) -> AccountView:
        return await read_account(pool, principal, account_id)

    @get(
        "/{account_id:uuid}/transfers",
        operation_id="listAccountTransfers",
        summary="Journal page",
        responses=problem_responses(404),
    )
    async def list_transfers(
        self,
        account_id: FromPath[uuid.UUID],
        principal: Auth,
        pool: Pool,
        limit: Annotated[
            int, QueryParameter(ge=1, le=limits.PAGE_SIZE_MAX, description="Entries per page")
        ] = limits.PAGE_SIZE_DEFAULT,
        after: Annotated[
            int, QueryParameter(ge=0, le=2**62, description="Cursor: `next_after` of the last page")
        ] = 0,
    ) -> JournalPage:
        return await read_journal(pool, principal, account_id, after=after, limit=limit)
