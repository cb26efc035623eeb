"""HTTP controllers for top-ups: card (Stripe) and USDC wallets. Decode, call, encode."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from litestar import Controller, Litestar, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter

from issuer.topups import card as topups_card
from issuer.topups import siwe, usdc
from ledger import limits
from ledger.access.api_keys import Principal, Role, require_role
from ledger.config import Settings
from ledger.http.apidoc import problem_responses
from ledger.http.idempotency import IdempotencyKeyHeader, idempotent, keyed
from ledger.http.lists import Cursor, Limit, Page
from ledger.http.params import Auth, Pool, strict_body
from ledger.http.responses import created

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
        description=(
            "Creates a Stripe Checkout session for the owner's account and answers its URL; "
            "the account is credited when Stripe reports the payment (webhook). The "
            "`Idempotency-Key` header (or the body's `idempotency_key`; both must agree) "
            "returns the same session on a retry."
        ),
        responses=problem_responses(409, 502, 503),
        middleware=[idempotent],
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[topups_card.CardTopupCreate],
        principal: Auth,
        settings: AppSettings,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[topups_card.CardTopupCreated]:
        data = await strict_body(request, topups_card.CardTopupCreate)
        if idempotency_key is not None:
            data = keyed(data, idempotency_key)
        session = await topups_card.create_card_topup(settings, owner_account(principal), data)
        # The session's page at Stripe is the resource this created.
        return created(session, session.url)

    @get(
        "/shortfalls",
        operation_id="listCardShortfalls",
        summary="Unrecovered claw-backs (operator)",
        description=(
            "Refunds and disputes whose amount the wallet no longer held: what was taken "
            "back (`recovered_micros`) and what is missing (`shortfall_micros`), newest first."
        ),
    )
    async def shortfalls(
        self,
        principal: Auth,
        pool: Pool,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[topups_card.CardShortfall]:
        require_role(principal, Role.operator)
        return await topups_card.list_card_shortfalls(pool, cursor=cursor, limit=limit)


class StripeWebhookController(Controller):
    path = "/v1/webhooks/stripe"
    tags = ("top-ups",)
    dependencies = _settings_dependency

    @post(
        operation_id="stripeWebhook",
        description=(
            "Stripe's events, verified with the `Stripe-Signature` header and "
            "`STRIPE_WEBHOOK_SECRET`. A paid Checkout session credits the account once per payment,"
            " whatever the replays; refunds and disputes take the money back as far as the wallet "
            "holds it (the rest is a shortfall). Any 4xx tells Stripe not to retry that payload."
        ),
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

    @post(
        "/challenge",
        operation_id="createWalletChallenge",
        summary="EIP-4361 message to sign",
        description=(
            "A Sign-In with Ethereum message naming the address and the owner's account, "
            "valid for a few minutes; sign it with the address and post it to `POST "
            "/v1/wallets`. Nothing is stored that a client reads back, so the answer is 200."
        ),
        status_code=200,
        responses=problem_responses(409),
        middleware=[idempotent],
    )
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

    @post(
        operation_id="linkWallet",
        summary="Link an EVM address with a signed challenge",
        description=(
            "Links the challenged address to the owner's account; USDC it sends to the "
            "treasury is then credited to the account. The challenge is used up by the "
            "attempt, whatever its outcome."
        ),
        responses=problem_responses(409),
        middleware=[idempotent],
    )
    async def link(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[siwe.WalletLink],
        principal: Auth,
        pool: Pool,
    ) -> Response[siwe.LinkedWallet]:
        data = await strict_body(request, siwe.WalletLink)
        wallet = await siwe.link_wallet(pool, owner_account(principal), data)
        return created(wallet, f"/v1/wallets/{wallet.address}")

    @get(
        "/{address:str}",
        operation_id="getWallet",
        summary="One address linked to the owner's account",
        description="Another account's address answers 404, like one that is not linked.",
        responses=problem_responses(404),
    )
    async def get_wallet(
        self,
        principal: Auth,
        pool: Pool,
        address: Annotated[str, PathParameter(pattern=siwe.ADDRESS_PATTERN)],
    ) -> siwe.LinkedWallet:
        return await siwe.read_wallet(pool, owner_account(principal), address)

    @get(
        operation_id="listWallets",
        summary="Addresses linked to the owner's account",
        description="The addresses linked to the owner's account (USDC they send is credited to it), oldest first.",
    )
    async def list_wallets(
        self,
        principal: Auth,
        pool: Pool,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[siwe.LinkedWallet]:
        account = owner_account(principal)
        return await siwe.list_wallets(pool, account, cursor=cursor, limit=limit)


class UsdcDepositController(Controller):
    path = "/v1/usdc"
    tags = ("top-ups",)
    security = ({"apiKey": []},)

    @get(
        "/deposits",
        operation_id="listUsdcDeposits",
        summary="USDC deposits (operator)",
        description="Confirmed transfers to the treasury, newest first.",
    )
    async def deposits(
        self,
        principal: Auth,
        pool: Pool,
        status: Annotated[
            Literal["credited", "unattributed"] | None,
            QueryParameter(description="Only deposits with this status"),
        ] = None,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[usdc.DepositView]:
        require_role(principal, Role.operator)
        return await usdc.list_deposits(pool, status=status, cursor=cursor, limit=limit)

    @post(
        "/deposits/{deposit_id:uuid}/assign",
        operation_id="assignUsdcDeposit",
        opt={"money": "topup_usdc"},
        summary="Credit an unattributed deposit to an account (operator)",
        description=(
            "Credits a deposit from an unlinked address to a customer wallet. Repeating it "
            "for the same account is harmless; another account is 409."
        ),
        status_code=200,
        responses=problem_responses(409),
        middleware=[idempotent],
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

    @get(
        "/reorg-alerts",
        operation_id="listUsdcReorgAlerts",
        summary="Deep reorgs found (operator)",
        description=(
            "Reorganisations deeper than the confirmation depth, newest first; the watcher "
            "pauses at one until `ledger usdc resume --from-block N`."
        ),
    )
    async def reorg_alerts(
        self,
        principal: Auth,
        pool: Pool,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[usdc.ReorgAlert]:
        require_role(principal, Role.operator)
        return await usdc.list_reorg_alerts(pool, cursor=cursor, limit=limit)


routes: list[Any] = [
    CardTopupController,
    StripeWebhookController,
    WalletController,
    UsdcDepositController,
]


@contextlib.asynccontextmanager
async def usdc_watcher_lifespan(app: Litestar) -> AsyncIterator[None]:
    "''Run the deposit watcher beside the API when USDC_* is configured.''"
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
