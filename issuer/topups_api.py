"""HTTP controllers for top-ups: card (Stripe) and USDC wallets. Decode, call, encode."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, QueryParameter

from issuer import topups_card
from ledger import limits
from ledger.accounts import require_role
from ledger.api import Auth, Pool
from ledger.auth import Principal, Role
from ledger.config import Settings

__all__ = ["CardTopupController", "StripeWebhookController", "routes"]


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

    @post(operation_id="createCardTopup", summary="Start a card top-up (Stripe Checkout)")
    async def create(
        self,
        data: JSONBody[topups_card.CardTopupCreate],
        principal: Auth,
        settings: AppSettings,
    ) -> topups_card.CardTopupCreated:
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

    @post(operation_id="stripeWebhook", summary="Stripe events (signed)", status_code=200)
    async def receive(
        self, request: Request[Any, Any, Any], pool: Pool, settings: AppSettings
    ) -> topups_card.WebhookAck:
        payload = await request.body()
        signature = request.headers.get("stripe-signature")
        return await topups_card.handle_stripe_webhook(pool, settings, payload, signature)


routes: list[Any] = [CardTopupController, StripeWebhookController]
