"""Card top-ups over real HTTP: Stripe Checkout through a local stand-in for the
remote Stripe API, and webhooks signed with Stripe's scheme and a test secret."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from issuer.topups.card import sign_test_webhook
from ledger.core import transfers as core
from ledger.db.embedded import free_port
from ledger.db.pool import connect
from tests.conftest import ServerThread, Service, service_settings
from tests.helpers import assert_invariants, balance, operator_key_for
from tests.test_api_accounts import assert_problem

WEBHOOK_SECRET = "whsec_test_" + "s" * 32
STRIPE_KEY = "sk_test_" + "k" * 24


class FakeStripe:
    """Answers the one Stripe endpoint the service calls, recording each request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                outer.requests.append(
                    {"path": self.path, "form": form, "auth": self.headers.get("authorization")}
                )
                if self.path != "/v1/checkout/sessions":
                    self._reply(404, {"error": {"type": "invalid_request_error", "message": "no"}})
                    return
                session_id = f"cs_test_{uuid.uuid4().hex}"
                self._reply(200, {
                    "id": session_id,
                    "object": "checkout.session",
                    "url": f"https://checkout.example/pay/{session_id}",
                    "amount_total": int(form["line_items[0][price_data][unit_amount]"]),
                    "currency": "usd",
                    "expires_at": int(time.time()) + 3600,
                    "metadata": {"account_id": form["metadata[account_id]"]},
                    "payment_status": "unpaid",
                })  # fmt: skip

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
async def card_service(dsn: str, fake_stripe: FakeStripe) -> AsyncIterator[Service]:
    operator_key = await operator_key_for(dsn)
    port = free_port()
    settings = service_settings(
        dsn,
        port,
        stripe_secret_key=STRIPE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_webhook_tolerance_s=300,
        stripe_api_base=fake_stripe.url,
    )
    server = ServerThread(settings)
    server.start()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            yield Service(url=url, dsn=dsn, operator_key=operator_key, client=client)
        finally:
            server.stop()


async def new_owner(service: Service, name: str = "alice") -> tuple[uuid.UUID, dict[str, str]]:
    response = await service.client.post(
        "/v1/accounts", json={"name": name}, headers=service.operator
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return uuid.UUID(body["account"]["id"]), service.auth(body["owner_api_key"])


def session_event(
    account_id: uuid.UUID,
    cents: int,
    *,
    event_id: str | None = None,
    payment_intent: str = "pi_1",
    session_id: str = "cs_1",
    payment_status: str = "paid",
    currency: str = "usd",
    event_type: str = "checkout.session.completed",
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {
            "id": session_id, "object": "checkout.session", "amount_total": cents,
            "currency": currency, "payment_status": payment_status,
            "payment_intent": payment_intent, "client_reference_id": str(account_id),
            "metadata": {"account_id": str(account_id)},
        }},
    }  # fmt: skip


def charge_event(
    payment_intent: str, refunded_cents: int, event_type: str = "charge.refunded"
) -> dict[str, Any]:
    obj: dict[str, Any]
    if event_type == "charge.refunded":
        obj = {"id": "ch_1", "object": "charge", "amount_refunded": refunded_cents,
               "currency": "usd", "payment_intent": payment_intent, "refunded": True}  # fmt: skip
    else:
        obj = {"id": f"dp_{uuid.uuid4().hex[:8]}", "object": "dispute", "amount": refunded_cents,
               "currency": "usd", "payment_intent": payment_intent, "charge": "ch_1"}  # fmt: skip
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": event_type,
            "data": {"object": obj}}  # fmt: skip


async def deliver(
    service: Service,
    event: dict[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    header: str | None = None,
) -> httpx.Response:
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    signature = header if header is not None else sign_test_webhook(payload, secret, timestamp)
    return await service.client.post(
        "/v1/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


async def card_journal(dsn: str, account_id: uuid.UUID) -> list[tuple[str, int, str]]:
    """(code, signed amount, counterparty) of each of the wallet's transfers."""
    conn = await connect(dsn)
    try:
        transfers = await core.list_account_transfers(conn, account_id, after_seq=0, limit=100)
    finally:
        await conn.close()
    out = []
    for t in transfers:
        incoming = t.credit_account_id == account_id
        other = t.debit_account_id if incoming else t.credit_account_id
        out.append((t.code, t.amount if incoming else -t.amount, str(other)))
    return out


CARD = str(core.CARD_CLEARING_ID)


async def test_owner_starts_checkout_with_account_and_amount(
    card_service: Service, fake_stripe: FakeStripe
) -> None:
    account_id, owner = await new_owner(card_service)
    response = await card_service.client.post(
        "/v1/topups/card", json={"amount_micros": 25_000_000}, headers=owner
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["url"].startswith("https://checkout.example/pay/cs_test_")
    assert (body["amount_micros"], body["account_id"], body["unit"]) == (
        25_000_000,
        str(account_id),
        "micro_usd",
    )
    [request] = fake_stripe.requests
    form = request["form"]
    assert request["auth"] == f"Bearer {STRIPE_KEY}"
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "2500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["metadata[account_id]"] == str(account_id)
    assert form["payment_intent_data[metadata][account_id]"] == str(account_id)
    # Starting a checkout moves no money.
    assert await card_journal(card_service.dsn, account_id) == []


async def test_checkout_bounds_and_roles(card_service: Service, fake_stripe: FakeStripe) -> None:
    _, owner = await new_owner(card_service)
    for amount in (999_999, 1_000_000_001, 1_000_001, 0, -5):
        response = await card_service.client.post(
            "/v1/topups/card", json={"amount_micros": amount}, headers=owner
        )
        assert_problem(response, 422, "validation_failed")
    response = await card_service.client.post(
        "/v1/topups/card", json={"amount_micros": 1_000_000}, headers=card_service.operator
    )
    assert_problem(response, 403, "forbidden")
    assert_problem(
        await card_service.client.post("/v1/topups/card", json={"amount_micros": 1_000_000}),
        401,
        "unauthenticated",
    )
    assert fake_stripe.requests == []


async def test_without_stripe_configured_is_503(service: Service) -> None:
    account_id, owner = await new_owner(service)
    response = await service.client.post(
        "/v1/topups/card", json={"amount_micros": 5_000_000}, headers=owner
    )
    body = assert_problem(response, 503, "card_topups_unavailable")
    assert "STRIPE_SECRET_KEY" in str(body["detail"])
    hook = await deliver(service, session_event(account_id, 500))
    assert_problem(hook, 503, "card_topups_unavailable")
    assert await card_journal(service.dsn, account_id) == []


async def test_paid_session_credits_once_despite_replays_and_duplicates(
    card_service: Service,
) -> None:
    account_id, owner = await new_owner(card_service)
    event = session_event(account_id, 2_500, event_id="evt_paid_1")
    first = await deliver(card_service, event)
    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "event_id": "evt_paid_1", "outcome": "credited"}
    # The same event again (a retry), re-signed later, and concurrently.
    assert (await deliver(card_service, event)).json()["outcome"] == "duplicate_event"
    results = await asyncio.gather(*(deliver(card_service, event) for _ in range(5)))
    assert {r.json()["outcome"] for r in results} == {"duplicate_event"}
    # A different event for the same payment (e.g. async_payment_succeeded).
    again = session_event(account_id, 2_500, event_type="checkout.session.async_payment_succeeded")
    assert (await deliver(card_service, again)).json()["outcome"] == "already_credited"
    # Concurrent first deliveries of one new payment credit it once.
    events = [
        session_event(account_id, 100, payment_intent="pi_2", session_id="cs_2") for _ in range(6)
    ]
    outcomes = [
        r.json()["outcome"]
        for r in await asyncio.gather(*(deliver(card_service, e) for e in events))
    ]
    assert sorted(outcomes).count("credited") == 1
    assert set(outcomes) == {"credited", "already_credited"}

    account = (await card_service.client.get(f"/v1/accounts/{account_id}", headers=owner)).json()
    assert account["balance_micros"] == 25_000_000 + 1_000_000
    journal = await card_journal(card_service.dsn, account_id)
    assert journal == [("topup_card", 25_000_000, CARD), ("topup_card", 1_000_000, CARD)]
    await assert_invariants(card_service.dsn)


async def test_unverified_payloads_credit_nothing(card_service: Service) -> None:
    account_id, _ = await new_owner(card_service)
    event = session_event(account_id, 10_000)
    payload = json.dumps(event).encode()
    tampered = payload.replace(b"10000", b"99999")
    assert tampered != payload
    cases = [
        await deliver(card_service, event, secret="whsec_wrong"),
        await deliver(card_service, tampered, header=sign_test_webhook(payload, WEBHOOK_SECRET)),
        await deliver(card_service, event, timestamp=int(time.time()) - 301),
        await deliver(card_service, event, header=""),
        await deliver(card_service, event, header="t=abc,v1=def"),
        await deliver(
            card_service,
            event,
            header=sign_test_webhook(payload, WEBHOOK_SECRET).replace("v1=", "v0="),
        ),
    ]
    for response in cases:
        body = assert_problem(response, 400, "webhook_signature_invalid")
        assert WEBHOOK_SECRET not in response.text and "whsec_wrong" not in response.text
        assert body["detail"]
    # Correctly signed but not a Stripe event.
    bad_object = {"id": "cs", "amount_total": "lots"}
    bad_event = {
        "id": "evt_y",
        "type": "checkout.session.completed",
        "data": {"object": bad_object},
    }
    for malformed in (
        b"{not json",
        b"[1, 2]",
        b'{"id": "evt_x"}',
        b"\xff\xfe",
        json.dumps(bad_event).encode(),
        # Deep enough to overflow the decoder's stack if it ever saw it.
        b'{"id": "evt_d", "data": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    ):
        assert_problem(await deliver(card_service, malformed), 400, "webhook_payload_invalid")
    assert await card_journal(card_service.dsn, account_id) == []
    # Only verified events are remembered.
    conn = await connect(card_service.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM stripe_events") == 0
    finally:
        await conn.close()
    # The genuine event still credits after all that.
    assert (await deliver(card_service, event)).json()["outcome"] == "credited"
    await assert_invariants(card_service.dsn)


async def test_events_that_must_not_credit(card_service: Service) -> None:
    account_id, _ = await new_owner(card_service)
    cases = {
        "ignored": {
            "id": "evt_other",
            "type": "customer.created",
            "data": {"object": {"id": "cus_1"}},
        },
        "not_paid": session_event(account_id, 500, payment_status="unpaid", payment_intent="pi_u"),
        "unsupported_currency": session_event(
            account_id, 500, currency="eur", payment_intent="pi_e"
        ),
        "unknown_account": session_event(uuid.uuid4(), 500, payment_intent="pi_x"),
        "payment_unknown": charge_event("pi_never", 100),
    }
    for outcome, event in cases.items():
        response = await deliver(card_service, event)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == outcome
    # Money goes to the account the verified event names, not to the operator's clearing.
    assert await card_journal(card_service.dsn, account_id) == []
    await assert_invariants(card_service.dsn)


async def test_refunds_claw_back_and_shortfall_is_recorded(card_service: Service) -> None:
    account_id, owner = await new_owner(card_service)
    assert (
        await deliver(card_service, session_event(account_id, 1_000, payment_intent="pi_r"))
    ).json()["outcome"] == "credited"
    # A partial refund (3 USD) is taken back.
    refund = charge_event("pi_r", 300)
    assert (await deliver(card_service, refund)).json()["outcome"] == "refund_recovered"
    assert (await deliver(card_service, refund)).json()["outcome"] == "duplicate_event"
    conn = await connect(card_service.dsn)
    try:
        assert await balance(conn, account_id) == 7_000_000
        # The wallet spends 6 of its 7 USD elsewhere.
        shop = await core.create_account(conn, kind=core.AccountKind.merchant_revenue, name="shop")
        spent = await core.create_transfer(
            conn, transfer_id=uuid.uuid4(), debit_account_id=account_id,
            credit_account_id=shop.id, amount=6_000_000, code="spend",
        )  # fmt: skip
        assert spent is core.TransferOutcome.created
    finally:
        await conn.close()
    # Then the whole payment is refunded: 7 USD more are due, only 1 USD remains.
    assert (await deliver(card_service, charge_event("pi_r", 1_000))).json()[
        "outcome"
    ] == "refund_shortfall"
    # A later dispute over the same payment claims nothing beyond the paid amount.
    dispute = charge_event("pi_r", 1_000, event_type="charge.dispute.created")
    assert (await deliver(card_service, dispute)).json()["outcome"] == "nothing_to_reverse"

    account = (await card_service.client.get(f"/v1/accounts/{account_id}", headers=owner)).json()
    assert account["balance_micros"] == 0
    assert await card_journal(card_service.dsn, account_id) == [
        ("topup_card", 10_000_000, CARD),
        ("topup_card_refund", -3_000_000, CARD),
        ("spend", -6_000_000, str(shop.id)),
        ("topup_card_refund", -1_000_000, CARD),
    ]
    listing = await card_service.client.get(
        "/v1/topups/card/shortfalls", headers=card_service.operator
    )
    assert listing.status_code == 200, listing.text
    [shortfall] = listing.json()["data"]
    assert (shortfall["payment_id"], shortfall["account_id"]) == ("pi_r", str(account_id))
    assert (shortfall["recovered_micros"], shortfall["shortfall_micros"]) == (1_000_000, 6_000_000)
    assert_problem(
        await card_service.client.get("/v1/topups/card/shortfalls", headers=owner), 403, "forbidden"
    )
    await assert_invariants(card_service.dsn)


async def test_dispute_with_empty_wallet_is_all_shortfall(card_service: Service) -> None:
    account_id, _ = await new_owner(card_service)
    await deliver(card_service, session_event(account_id, 500, payment_intent="pi_d"))
    conn = await connect(card_service.dsn)
    try:
        shop = await core.create_account(conn, kind=core.AccountKind.merchant_revenue, name="shop")
        await core.create_transfer(
            conn, transfer_id=uuid.uuid4(), debit_account_id=account_id,
            credit_account_id=shop.id, amount=5_000_000, code="spend",
        )  # fmt: skip
        dispute = charge_event("pi_d", 500, event_type="charge.dispute.created")
        assert (await deliver(card_service, dispute)).json()["outcome"] == "dispute_shortfall"
        assert await balance(conn, account_id) == 0
        row = await conn.fetchrow(
            "SELECT recovered_micros, shortfall_micros FROM card_payments WHERE payment_id = 'pi_d'"
        )
        assert row is not None and tuple(row) == (0, 5_000_000)
    finally:
        await conn.close()
    await assert_invariants(card_service.dsn)


def test_settings_read_topup_configuration_and_hide_secrets() -> None:
    from ledger.config import ConfigError, Settings

    env = {
        "STRIPE_SECRET_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_WEBHOOK_TOLERANCE_S": "60",
        "CARD_TOPUP_MIN_MICROS": "5000000",
        "USDC_CONTRACT": "0x" + "ab" * 20,
        "USDC_CONFIRMATIONS": "20",
    }
    settings = Settings.from_env(env)
    assert (settings.stripe_webhook_tolerance_s, settings.card_topup_min_micros) == (60, 5_000_000)
    assert settings.usdc_confirmations == 20 and not settings.usdc_configured
    assert STRIPE_KEY not in repr(settings) and WEBHOOK_SECRET not in repr(settings)
    bad = [
        {"CARD_TOPUP_MIN_MICROS": "9000000", "CARD_TOPUP_MAX_MICROS": "8000000"},
        {"USDC_TREASURY": "0x1234"},
        {"STRIPE_WEBHOOK_TOLERANCE_S": "0"},
        {"USDC_CONFIRMATIONS": "zero"},
    ]
    for case in bad:
        with pytest.raises(ConfigError):
            Settings.from_env(case)
