"""HTTP controllers for top-ups: card (Stripe) and USDC wallets. Decode, call, encode."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from litestar import Controller, Litestar, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from issuer.topups import card as topups_card
from issuer.topups import siwe, usdc
from ledger import limits
from ledger.access.api_keys import Principal, Role, require_role
from ledger.config import Settings
from ledger.http.apidoc import problem_responses
from ledger.http.params import Auth, Pool, strict_body

__all__ = [
    "CardTopupController",
    "StripeWebhookController",
    "UsdcDepositController",
    "WalletController",
    "lifespan",
    "routes",
]


async def provide_settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = NamedDependency[Settings]
_settings_dependency = {"settings": Provide(provide_settings)}

PageLimit = Annotated[
    int, QueryParameter(ge=1, le=limits.PAGE_SIZE_MAX, description="Entries per page")
]


def owner_account(principal: Principal) -> uuid.UUID:
    require_role(principal, Role.owner)
    assert principal.subject_id is not None, "an owner API key names its account"
    return principal.subject_id


class CardTopupController(Controller):
    path = "/v1/topups/card"
    tags = ("top-ups",)
    security = ({"apiKey": []},)
    dependencies = _settings_dependency

    @post(
        operation_id="createCardTopup",
        summary="Start a card top-up (Stripe Checkout)",
        responses=problem_responses(502, 503),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[topups_card.CardTopupCreate],
        principal: Auth,
        settings: AppSettings,
    ) -> topups_card.CardTopupCreated:
        data = await strict_body(request, topups_card.CardTopupCreate)
        return await topups_card.create_card_topup(settings, owner_account(principal), data)

    @get("/shortfalls", operation_id="listCardShortfalls", summary="Unrecovered claw-backs")
    async def shortfalls(
        self, principal: Auth, pool: Pool, limit: PageLimit = limits.PAGE_SIZE_DEFAULT
    ) -> list[topups_card.CardShortfall]:
        require_role(principal, Role.operator)
        return await topups_card.list_card_shortfalls(pool, limit=limit)


class StripeWebhookController(Controller):
    path = "/v1/webhooks/stripe"
    tags = ("top-ups",)
    dependencies = _settings_dependency

    @post(
        operation_id="stripeWebhook",
        opt={"money": "topup_card"},
        summary="Stripe events (signed)",
        status_code=200,
        responses=problem_responses(400, 503),
    )
    async def receive(
        self, request: Request[Any, Any, Any], pool: Pool, settings: AppSettings
    ) -> topups_card.WebhookAck:
        payload = await request.body()
        signature = request.headers.get("stripe-signature")
        return await topups_card.handle_stripe_webhook(pool, settings, payload, signature)


class WalletController(Controller):
    path = "/v1/wallets"
    tags = ("top-ups",)
    security = ({"apiKey": []},)
    dependencies = _settings_dependency

    @post("/challenge", operation_id="createWalletChallenge", summary="EIP-4361 message to sign")
    async def challenge(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[siwe.WalletChallengeCreate],
        principal: Auth,
        pool: Pool,
        settings: AppSettings,
    ) -> siwe.WalletChallenge:
        data = await strict_body(request, siwe.WalletChallengeCreate)
        return await siwe.create_challenge(pool, settings, owner_account(principal), data)

    @post(operation_id="linkWallet", summary="Link an EVM address with a signed challenge")
    async def link(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[siwe.WalletLink],
        principal: Auth,
        pool: Pool,
    ) -> siwe.LinkedWallet:
        data = await strict_body(request, siwe.WalletLink)
        return await siwe.link_wallet(pool, owner_account(principal), data)

    @get(operation_id="listWallets", summary="Addresses linked to the owner's account")
    async def list_wallets(self, principal: Auth, pool: Pool) -> list[siwe.LinkedWallet]:
        return await siwe.list_wallets(pool, owner_account(principal))


class UsdcDepositController(Controller):
    path = "/v1/usdc"
    tags = ("top-ups",)
    security = ({"apiKey": []},)

    @get("/deposits", operation_id="listUsdcDeposits", summary="USDC deposits (operator)")
    async def deposits(
        self,
        principal: Auth,
        pool: Pool,
        status: Annotated[
            Literal["credited", "unattributed"] | None,
            QueryParameter(description="Only deposits with this status"),
        ] = None,
        limit: PageLimit = limits.PAGE_SIZE_DEFAULT,
    ) -> list[usdc.DepositView]:
        require_role(principal, Role.operator)
        return await usdc.list_deposits(pool, status=status, limit=limit)

    @post(
        "/deposits/{deposit_id:uuid}/assign",
        operation_id="assignUsdcDeposit",
        opt={"money": "topup_usdc"},
        summary="Credit an unattributed deposit to an account (operator)",
        status_code=200,
    )
    async def assign(
        self,
        request: Request[Any, Any, Any],
        deposit_id: FromPath[uuid.UUID],
        data: JSONBody[usdc.DepositAssign],
        principal: Auth,
        pool: Pool,
    ) -> usdc.DepositView:
        require_role(principal, Role.operator)
        data = await strict_body(request, usdc.DepositAssign)
        return await usdc.assign_deposit(pool, deposit_id, data)

    @get("/reorg-alerts", operation_id="listUsdcReorgAlerts", summary="Deep reorgs found")
    async def reorg_alerts(
        self, principal: Auth, pool: Pool, limit: PageLimit = limits.PAGE_SIZE_DEFAULT
    ) -> list[usdc.ReorgAlert]:
        require_role(principal, Role.operator)
        return await usdc.list_reorg_alerts(pool, limit=limit)


routes: list[Any] = [
    CardTopupController,
    StripeWebhookController,
    WalletController,
    UsdcDepositController,
]


@contextlib.asynccontextmanager
async def usdc_watcher_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Run the deposit watcher beside the API when USDC_* is configured."""
    settings: Settings = app.state.settings
    if not settings.usdc_configured:
        yield
        return
    from issuer.topups.usdc_watcher import run_watcher_forever

    assert settings.database_url is not None
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_watcher_forever(app.state.pool, settings.database_url, settings, stop)
    )
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)


# Entered after the database lifespan (the pool exists), left before it.
lifespan: list[Any] = [usdc_watcher_lifespan]
