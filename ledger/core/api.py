"""HTTP controller of the core: accounts. Decode, call a service, encode."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody

from ledger import limits
from ledger.access.api_keys import Role, require_role
from ledger.core.accounts import (
    AccountCreate,
    AccountCreated,
    AccountView,
    JournalEntry,
    create_customer_account,
    read_account,
    read_journal,
)
from ledger.http.apidoc import problem_responses
from ledger.http.idempotency import idempotent
from ledger.http.lists import Cursor, Limit, Page
from ledger.http.params import Auth, Pool, strict_body
from ledger.http.responses import created

__all__ = ["AccountController"]


class AccountController(Controller):
    path = "/v1/accounts"
    tags = ["accounts"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createAccount",
        summary="Create a customer wallet (operator)",
        description=(
            "Creates a customer wallet and its owner API key, which this response shows "
            "once (only its hash is stored). Send an `Idempotency-Key` to make a retry "
            "return the same account and key instead of a second account."
        ),
        responses=problem_responses(403, 409),
        middleware=[idempotent],
    )
    async def create_account(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[AccountCreate],
        principal: Auth,
        pool: Pool,
    ) -> Response[AccountCreated]:
        require_role(principal, Role.operator)
        data = await strict_body(request, AccountCreate)
        result = await create_customer_account(pool, data.name)
        return created(result, f"/v1/accounts/{result.account.id}")

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
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[JournalEntry]:
        return await read_journal(pool, principal, account_id, cursor=cursor, limit=limit)
