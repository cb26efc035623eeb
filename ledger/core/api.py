"""HTTP controller of the core: accounts. Decode, call a service, encode."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from ledger import limits
from ledger.access.api_keys import Role, require_role
from ledger.core.accounts import (
    AccountCreate,
    AccountCreated,
    AccountView,
    JournalPage,
    create_customer_account,
    read_account,
    read_journal,
)
from ledger.http.apidoc import problem_responses
from ledger.http.params import Auth, Pool, strict_body

__all__ = ["AccountController"]


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
