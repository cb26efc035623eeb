"""HTTP controllers for signing keys and credit tokens. Decode, call a service, encode."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from issuer.tokens import (
    DelegateRequest,
    MintedToken,
    MintRequest,
    RevokedToken,
    SelfView,
    TokenView,
    delegate_token,
    inspect_token,
    list_tokens,
    mint_token,
    read_token,
    revoke_token,
)
from ledger import limits
from ledger.config import Settings
from ledger.http.apidoc import problem_responses
from ledger.http.idempotency import idempotent
from ledger.http.lists import Cursor, Limit, Page
from ledger.http.params import Auth, Pool, strict_body
from ledger.http.responses import created
from verifier.tokens import PublishedKeys, load_keyring

__all__ = ["KEYS_MAX_AGE_S", "KeysController", "TokenController", "routes"]

# Verifiers may cache the published keys this long; rotation keeps old keys
# verifying far longer than this, so a cached set never rejects a fresh token
# for more than this long.
KEYS_MAX_AGE_S = 300

AppSettings = NamedDependency[Settings]
CreditTokenHeader = Annotated[
    str | None,
    HeaderParameter(name="authorization", required=False, description="`Bearer <credit token>`"),
]


async def provide_settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class KeysController(Controller):
    path = "/v1/keys"
    tags = ("keys",)

    @get(
        operation_id="listPublicKeys",
        summary="Public signing keys (PASERK k4.public) by kid",
        cache_control=CacheControlHeader(max_age=KEYS_MAX_AGE_S, public=True),
    )
    async def list_keys(self, pool: Pool) -> PublishedKeys:
        return (await load_keyring(pool)).published()


class TokenController(Controller):
    path = "/v1/tokens"
    tags = ("credit tokens",)
    dependencies = {"settings": Provide(provide_settings)}

    @post(
        operation_id="mintCreditToken",
        summary="Mint a credit token (owner)",
        description=(
            "Mints a root credit token for the owner's account. The token string is in this "
            'response only. Scope defaults: `audiences` `["*"]` (any merchant), `tools` '
            '`["*"]` (any tool), `max_per_call_micros` = `cap_micros`, `expires_in_s` '
            "86400 (24 h). Send an `Idempotency-Key` so that a retry returns this same "
            "credit token rather than minting a second bearer credential."
        ),
        security=[{"apiKey": []}],
        responses=problem_responses(409),
        middleware=[idempotent],
    )
    async def mint(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[MintRequest],
        principal: Auth,
        pool: Pool,
        settings: AppSettings,
    ) -> Response[MintedToken]:
        data = await strict_body(request, MintRequest)
        minted = await mint_token(pool, principal, data, issuer=settings.base_url)
        return created(minted, f"/v1/tokens/{minted.jti}")

    @get(
        operation_id="listCreditTokens",
        summary="An account's credit tokens",
        security=[{"apiKey": []}],
    )
    async def list(
        self,
        principal: Auth,
        pool: Pool,
        account_id: Annotated[
            uuid.UUID | None, QueryParameter(required=False, description="Operators: whose tokens")
        ] = None,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[TokenView]:
        return await list_tokens(pool, principal, account_id=account_id, cursor=cursor, limit=limit)

    @get(
        "/self",
        operation_id="inspectCreditToken",
        summary="The presented credit token's scope and remaining budget",
        security=[{"creditToken": []}],
    )
    async def inspect(self, pool: Pool, authorization: CreditTokenHeader = None) -> SelfView:
        return await inspect_token(pool, authorization)

    @post(
        "/delegate",
        operation_id="delegateCreditToken",
        responses=problem_responses(402, 409),
        summary="Mint a narrower child of the presented credit token",
        description=(
            "A credit token holder mints a child for a sub-agent: a subset of the audiences "
            "and tools, no higher `max_per_call_micros`, no later expiry, a cap within the "
            "remaining budget. Omitted scope fields inherit the parent's. Send an "
            "`Idempotency-Key` so a retry returns the same child."
        ),
        security=[{"creditToken": []}],
        middleware=[idempotent],
    )
    async def delegate(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[DelegateRequest],
        pool: Pool,
        settings: AppSettings,
        authorization: CreditTokenHeader = None,
    ) -> Response[MintedToken]:
        data = await strict_body(request, DelegateRequest)
        topup_url = f"{settings.base_url}/v1/topups/card"
        child = await delegate_token(
            pool, authorization, data, issuer=settings.base_url, topup_url=topup_url
        )
        return created(child, f"/v1/tokens/{child.jti}")

    @get(
        "/{jti:uuid}",
        operation_id="getCreditToken",
        summary="One credit token (never the token string)",
        security=[{"apiKey": []}],
    )
    async def read(self, jti: FromPath[uuid.UUID], principal: Auth, pool: Pool) -> TokenView:
        return await read_token(pool, principal, jti)

    @post(
        "/{jti:uuid}/revoke",
        operation_id="revokeCreditToken",
        summary="Revoke a credit token and its descendants",
        security=[{"apiKey": []}],
        status_code=200,
    )
    async def revoke(self, jti: FromPath[uuid.UUID], principal: Auth, pool: Pool) -> RevokedToken:
        return await revoke_token(pool, principal, jti)


routes: list[type[Controller]] = [KeysController, TokenController]
