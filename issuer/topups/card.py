"""Card top-ups through Stripe Checkout, credited exactly once from verified webhooks.

Protocol:
1. `POST /v1/topups/card` (owner API key) creates a Checkout Session with the
   account and amount in its metadata and returns the session URL.
2. Stripe calls `POST /v1/webhooks/stripe` with a `Stripe-Signature` header,
   `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, which the official
   library checks (signature and timestamp tolerance) before anything is read.
3. `checkout.session.completed` (or `checkout.session.async_payment_succeeded`)
   with `payment_status = "paid"` credits `amount_total` (cents, USD; from the
   verified event, never from metadata alone) from the card clearing account.
   The transfer id is a uuid5 of the payment intent, the event id and the payment
   are UNIQUE rows, and all of it is one transaction: replays, retries and a second
   event for the same payment credit nothing more.
4. `charge.refunded` / `charge.dispute.created` claw back what was refunded or
   disputed, as far as the wallet still holds it (never a negative wallet); the
   rest is recorded as a shortfall, listed for the operator and logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

import asyncpg
import msgspec
import stripe
from msgspec import Meta

from ledger import limits
from ledger.config import Settings
from ledger.core import transfers as core
from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import LedgerError, ServiceUnavailable, ValidationFailed
from ledger.http.jsondepth import nests_deeper_than
from ledger.http.lists import Page, decode_cursor, page_of

__all__ = [
    "CardShortfall",
    "CardTopupCreate",
    "CardTopupCreated",
    "CardTopupsUnavailable",
    "PaymentProviderError",
    "WebhookAck",
    "WebhookPayloadInvalid",
    "WebhookSignatureInvalid",
    "create_card_topup",
    "handle_stripe_webhook",
    "list_card_shortfalls",
    "payment_transfer_id",
    "sign_test_webhook",
]

log = logging.getLogger("issuer.topups.card")
queries = load_queries("issuer.topups", "card.sql")

MICROS_PER_CENT = 10_000
STRIPE_TIMEOUT_S = 20.0
STRIPE_NETWORK_RETRIES_MAX = 2
EVENT_ID_LENGTH_MAX = 255
# Namespace of every deterministic card transfer id.
CARD_NAMESPACE = uuid.UUID("5e0c6a2e-3c2f-4a53-9b1e-7a1d3c0f0c01")
CREDIT_EVENT_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)

EventId = Annotated[str, Meta(min_length=1, max_length=EVENT_ID_LENGTH_MAX)]


class CardTopupsUnavailable(ServiceUnavailable):
    code = "card_topups_unavailable"
    title = "Card top-ups are not configured on this service"


class PaymentProviderError(LedgerError):
    code = "payment_provider_error"
    status = 502
    title = "The payment provider did not accept the request"


class WebhookSignatureInvalid(LedgerError):
    code = "webhook_signature_invalid"
    status = 400
    title = "The webhook signature is missing, wrong, or too old"


class WebhookPayloadInvalid(LedgerError):
    code = "webhook_payload_invalid"
    status = 400
    title = "The webhook body is not a Stripe event"


# --- HTTP shapes ---------------------------------------------------------------


class CardTopupCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_micros: limits.Amount
    # Passed to Stripe, so a retried request answers with the same session.
    idempotency_key: limits.IdempotencyKey | None = None


class CardTopupCreated(msgspec.Struct, frozen=True):
    session_id: str
    url: str
    account_id: uuid.UUID
    amount_micros: int
    expires_at: datetime | None
    unit: Literal["micro_usd"] = "micro_usd"


class WebhookAck(msgspec.Struct, frozen=True):
    received: bool
    event_id: str
    outcome: str


class CardShortfall(msgspec.Struct, frozen=True):
    id: uuid.UUID
    payment_id: str
    account_id: uuid.UUID
    event_id: str
    reason: str
    recovered_micros: int
    shortfall_micros: int
    created_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


# --- Stripe event shapes (only the fields we read; Stripe adds fields freely) --


class _Session(msgspec.Struct):
    id: str
    payment_status: str | None = None
    amount_total: int | None = None
    currency: str | None = None
    payment_intent: str | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] | None = None


class _Charge(msgspec.Struct):
    id: str
    amount_refunded: int
    currency: str
    payment_intent: str | None = None


class _Dispute(msgspec.Struct):
    id: str
    amount: int
    currency: str
    payment_intent: str | None = None


class _EventData(msgspec.Struct):
    object: msgspec.Raw


class _Event(msgspec.Struct):
    id: EventId
    type: str
    data: _EventData


_event_decoder = msgspec.json.Decoder(_Event)


# --- creating a Checkout Session ----------------------------------------------


def _check_amount(settings: Settings, amount_micros: int) -> int:
    """The amount in cents, or a 422 naming the configured bounds."""
    lo, hi = settings.card_topup_min_micros, settings.card_topup_max_micros
    if not lo <= amount_micros <= hi:
        raise ValidationFailed(
            f"a card top-up is between {lo} and {hi} micro-USD",
            amount_min_micros=lo,
            amount_max_micros=hi,
        )
    if amount_micros % MICROS_PER_CENT:
        raise ValidationFailed("a card top-up is a whole number of cents (10000 micro-USD each)")
    return amount_micros // MICROS_PER_CENT


def _stripe_client(
    settings: Settings, secret_key: str
) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    base: dict[str, str] = {}
    if settings.stripe_api_base:
        base["api"] = settings.stripe_api_base
    # aiohttp (already a web3 dependency): the library's httpx adapter uses an
    # upload style that httpx deprecates.
    http_client = stripe.AIOHTTPClient(timeout=STRIPE_TIMEOUT_S)
    client = stripe.StripeClient(
        secret_key,
        # (the library's own type for this dict differs between its releases)
        base_addresses=cast(Any, base),
        http_client=http_client,
        max_network_retries=STRIPE_NETWORK_RETRIES_MAX,
    )
    return client, http_client


async def create_card_topup(
    settings: Settings, account_id: uuid.UUID, request: CardTopupCreate
) -> CardTopupCreated:
    secret_key = settings.stripe_secret_key
    if not secret_key:
        raise CardTopupsUnavailable("card top-ups need STRIPE_SECRET_KEY to be configured")
    cents = _check_amount(settings, request.amount_micros)
    metadata = {"account_id": str(account_id), "amount_micros": str(request.amount_micros)}
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": cents,
                    "product_data": {"name": "Prepaid ledger credit"},
                },
            }
        ],
        "client_reference_id": str(account_id),
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "success_url": settings.card_success_url or f"{settings.base_url}/topups/card/success",
        "cancel_url": settings.card_cancel_url or f"{settings.base_url}/topups/card/cancel",
    }
    options: dict[str, Any] = {}
    if request.idempotency_key:
        # Hashed: Stripe takes at most 255 characters, and the account makes it ours.
        digest = hashlib.sha256(request.idempotency_key.encode()).hexdigest()
        options["idempotency_key"] = f"topup:{account_id}:{digest}"
    client, http_client = _stripe_client(settings, secret_key)
    try:
        # Plain dicts: the library's TypedDicts for these change between its releases.
        session = await client.v1.checkout.sessions.create_async(
            cast(Any, params), cast(Any, options)
        )
    except stripe.StripeError as exc:
        # The library's messages never contain the secret key; its class and code say enough.
        log.warning("stripe refused checkout session: %s (%s)", type(exc).__name__, exc.code)
        raise PaymentProviderError(
            "Stripe did not create the checkout session; retry later"
        ) from exc
    finally:
        await cast(Any, http_client).close_async()  # untyped in some releases
    expires = getattr(session, "expires_at", None)
    return CardTopupCreated(
        session_id=str(session.id),
        url=str(session.url),
        account_id=account_id,
        amount_micros=request.amount_micros,
        expires_at=None if expires is None else datetime.fromtimestamp(int(expires), UTC),
    )


# --- webhooks ---------------------------------------------------------------------


def sign_test_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value for `payload`, exactly as Stripe signs it.

    For tests and the local demo: `t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<payload>")>`.
    """
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def payment_transfer_id(payment_id: str) -> uuid.UUID:
    """The credit transfer's id: one payment, one credit."""
    return uuid.uuid5(CARD_NAMESPACE, f"payment:{payment_id}")


def _verify(settings: Settings, payload: bytes, signature: str | None) -> _Event:
    secret = settings.stripe_webhook_secret
    if not secret:
        raise CardTopupsUnavailable("Stripe webhooks need STRIPE_WEBHOOK_SECRET to be configured")
    if nests_deeper_than(payload):
        # Stripe's events nest a few levels; the decoders must never see deeper.
        raise WebhookPayloadInvalid("the event nests deeper than any Stripe event")
    try:
        stripe.Webhook.construct_event(
            payload, signature, secret, tolerance=settings.stripe_webhook_tolerance_s
        )
    except stripe.SignatureVerificationError:
        raise WebhookSignatureInvalid() from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise WebhookPayloadInvalid() from None
    try:
        return _event_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WebhookPayloadInvalid(f"the event is not usable: {exc}") from None


async def handle_stripe_webhook(
    pool: asyncpg.Pool, settings: Settings, payload: bytes, signature: str | None
) -> WebhookAck:
    event = _verify(settings, payload, signature)
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(queries["record_event"], event.id, event.type[:100]) is None:
            return WebhookAck(received=True, event_id=event.id, outcome="duplicate_event")
        outcome = await _dispatch(conn, event)
        await conn.execute(queries["set_event_outcome"], event.id, outcome)
    log.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return WebhookAck(received=True, event_id=event.id, outcome=outcome)


async def _dispatch(conn: Conn, event: _Event) -> str:
    try:
        if event.type in CREDIT_EVENT_TYPES:
            return await _credit(conn, msgspec.json.decode(event.data.object, type=_Session))
        if event.type == "charge.refunded":
            return await _refund(
                conn, event.id, msgspec.json.decode(event.data.object, type=_Charge)
            )
        if event.type == "charge.dispute.created":
            dispute = msgspec.json.decode(event.data.object, type=_Dispute)
            return await _dispute(conn, event.id, dispute)
    except msgspec.ValidationError as exc:
        raise WebhookPayloadInvalid(f"the event object is not usable: {exc}") from None
    return "ignored"


def _account_of(session: _Session) -> uuid.UUID | None:
    raw = (session.metadata or {}).get("account_id") or session.client_reference_id
    try:
        return uuid.UUID(raw) if raw else None
    except ValueError:
        return None


async def _credit(conn: Conn, session: _Session) -> str:
    if session.payment_status != "paid":
        return "not_paid"
    if (session.currency or "").lower() != "usd":
        return "unsupported_currency"
    cents = session.amount_total or 0
    if not 1 <= cents * MICROS_PER_CENT <= limits.AMOUNT_MAX:
        return "amount_out_of_range"
    account_id = _account_of(session)
    if (
        account_id is None
        or await conn.fetchval(queries["wallet_kind"], account_id) != "customer_wallet"
    ):
        log.warning("paid checkout session %s names no customer wallet", session.id)
        return "unknown_account"
    payment_id = session.payment_intent or session.id
    if await conn.fetchval(queries["payment_seen"], payment_id, session.id):
        return "already_credited"
    transfer_id = payment_transfer_id(payment_id)
    amount = cents * MICROS_PER_CENT
    outcome = await core.create_transfer(
        conn,
        transfer_id=transfer_id,
        debit_account_id=core.CARD_CLEARING_ID,
        credit_account_id=account_id,
        amount=amount,
        code="topup_card",
        metadata={"payment_id": payment_id, "session_id": session.id},
    )
    if outcome is core.TransferOutcome.exists:
        return "already_credited"
    if outcome is core.TransferOutcome.exists_with_different_fields:
        log.warning("payment %s was credited before with other fields; not credited", payment_id)
        return "payment_conflict"
    assert outcome is core.TransferOutcome.created, outcome
    inserted = await conn.fetchval(
        queries["insert_payment"], payment_id, session.id, account_id, amount, transfer_id
    )
    assert inserted is not None, "a new credit transfer means a new payment row"
    return "credited"


async def _refund(conn: Conn, event_id: str, charge: _Charge) -> str:
    if charge.payment_intent is None:
        return "payment_unknown"
    payment = await conn.fetchrow(queries["lock_payment"], charge.payment_intent)
    if payment is None:
        return "payment_unknown"
    refunded = min(max(charge.amount_refunded, 0) * MICROS_PER_CENT, payment["amount_micros"])
    await conn.execute(queries["set_refunded"], payment["payment_id"], refunded)
    return await _reverse(conn, payment["payment_id"], event_id, "refund")


async def _dispute(conn: Conn, event_id: str, dispute: _Dispute) -> str:
    if dispute.payment_intent is None:
        return "payment_unknown"
    payment = await conn.fetchrow(queries["lock_payment"], dispute.payment_intent)
    if payment is None:
        return "payment_unknown"
    amount = min(max(dispute.amount, 0) * MICROS_PER_CENT, payment["amount_micros"])
    if await conn.fetchval(queries["insert_dispute"], dispute.id, payment["payment_id"], amount):
        await conn.execute(queries["add_disputed"], payment["payment_id"], amount)
    return await _reverse(conn, payment["payment_id"], event_id, "dispute")


async def _reverse(
    conn: Conn, payment_id: str, event_id: str, reason: Literal["refund", "dispute"]
) -> str:
    """Debit back what refunds and disputes claim beyond what was settled; record the rest."""
    payment = await conn.fetchrow(queries["lock_payment"], payment_id)
    assert payment is not None
    claimed = min(payment["refunded_micros"] + payment["disputed_micros"], payment["amount_micros"])
    settled = payment["recovered_micros"] + payment["shortfall_micros"]
    due = claimed - settled
    if due <= 0:
        return "nothing_to_reverse"
    account_id = payment["account_id"]
    rows = await conn.fetch(queries["lock_accounts"], account_id, core.CARD_CLEARING_ID)
    available = next(r["available"] for r in rows if r["id"] == account_id)
    recovered = max(0, min(due, available))
    shortfall = due - recovered
    # Deterministic: the n-th settlement step of this payment always has the same id.
    reversal_id = uuid.uuid5(CARD_NAMESPACE, f"reversal:{payment_id}:{settled + due}")
    transfer_id: uuid.UUID | None = None
    if recovered:
        transfer_id = reversal_id
        outcome = await core.create_transfer(
            conn,
            transfer_id=reversal_id,
            debit_account_id=account_id,
            credit_account_id=core.CARD_CLEARING_ID,
            amount=recovered,
            code=f"topup_card_{reason}",
            metadata={"payment_id": payment_id, "event_id": event_id},
        )
        assert outcome is core.TransferOutcome.created, outcome
    await conn.execute(
        queries["insert_reversal"],
        reversal_id,
        payment_id,
        account_id,
        event_id,
        reason,
        recovered,
        shortfall,
        transfer_id,
    )
    await conn.execute(queries["settle_reversal"], payment_id, recovered, shortfall)
    if shortfall:
        log.warning(
            "card %s shortfall: payment %s account %s recovered %d of %d micro-USD",
            reason,
            payment_id,
            account_id,
            recovered,
            due,
        )
        return f"{reason}_shortfall"
    return f"{reason}_recovered"


async def list_card_shortfalls(
    pool: asyncpg.Pool, *, cursor: str | None, limit: int
) -> Page[CardShortfall]:
    """Unrecovered claw-backs, newest first."""
    after = decode_cursor("card_shortfalls", cursor, uuid.UUID)
    rows = await pool.fetch(queries["list_shortfalls"], after, limit + 1)
    shortfalls = [CardShortfall(**dict(row.items())) for row in rows]
    return page_of(shortfalls, limit, "card_shortfalls", lambda s: s.id)
