"""HTTP controllers for signing keys and credit tokens. Decode, call a service, encode."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from issuer.tokens import (
    DelegateRequest,
    MintedToken,
    MintRequest,
    RevokedToken,
    SelfView,
    TokenPage,
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
from ledger.http.params import Auth, Pool, strict_body
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
        security=[{"apiKey": []}],
    )
    async def mint(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[MintRequest],
        principal: Auth,
        pool: Pool,
        settings: AppSettings,
    ) -> MintedToken:
        data = await strict_body(request, MintRequest)
        return await mint_token(pool, principal, data, issuer=settings.base_url)

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
        after: Annotated[
            uuid.UUID | None, QueryParameter(required=False, description="Cursor: `next_after`")
        ] = None,
        limit: Annotated[
            int, QueryParameter(ge=1, le=limits.PAGE_SIZE_MAX, description="Tokens per page")
        ] = limits.PAGE_SIZE_DEFAULT,
    ) -> TokenPage:
        return await list_tokens(pool, principal, account_id=account_id, after=after, limit=limit)

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
        responses=problem_responses(402),
        summary="Mint a narrower child of the presented credit token",
        security=[{"creditToken": []}],
    )
    async def delegate(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[DelegateRequest],
        pool: Pool,
        settings: AppSettings,
        authorization: CreditTokenHeader = None,
    ) -> MintedToken:
        data = await strict_body(request, DelegateRequest)
        topup_url = f"{settings.base_url}/v1/topups/card"
        return await delegate_token(
            pool, authorization, data, issuer=settings.base_url, topup_url=topup_url
        )

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
