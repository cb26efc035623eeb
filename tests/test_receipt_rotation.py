"""Receipts across signing-key rotation: a replay returns the original receipt byte
for byte (signed by the key recorded for it, in any process), and old receipts keep
verifying offline with the published keys until their key is retired."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from issuer.keys import active_signer, retire_signing_key, rotate_signing_key
from ledger.db.embedded import free_port
from ledger.db.pool import connect
from tests.conftest import ServerThread, Service, service_settings
from tests.helpers import assert_invariants
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market
from tests.test_cli import run_cli
from verifier import paseto
from verifier.errors import TokenExpired, TokenInvalid
from verifier.receipts import verify_receipt
from verifier.tokens import (
    CreditTokenClaims,
    KeyRing,
    encode_claims,
    encode_footer,
    parse_footer,
    verify_credit_token,
)


def _kid(signed: str) -> str:
    return parse_footer(paseto.split_token(signed).footer)


@asynccontextmanager
async def second_process(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """Another instance of the service on the same database, started now."""
    port = free_port()
    server = ServerThread(service_settings(service.dsn, port))
    server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.stop()


async def _published(client: httpx.AsyncClient) -> tuple[KeyRing, dict[str, str]]:
    document = (await client.get("/v1/keys")).json()
    states = {k["kid"]: k["state"] for k in document["keys"] if k["purpose"] == "receipt"}
    return KeyRing.from_published(document), states


async def _hold_and_capture(market: Market, token: str, key: str) -> httpx.Response:
    hold = await market.client.post(
        "/v1/holds",
        json={"credit_token": token, "amount_micros": 80, "tool": "llm", "idempotency_key": key},
        headers=market.merchant,
    )
    assert hold.status_code == 201, hold.text
    capture = await market.client.post(
        f"/v1/holds/{hold.json()['hold_id']}/capture",
        json={"amount_micros": 30},
        headers=market.merchant,
    )
    assert capture.status_code == 200, capture.text
    return capture


async def _refund(
    client: httpx.AsyncClient, market: Market, charge_id: str, key: str
) -> httpx.Response:
    return await client.post(
        f"/v1/charges/{charge_id}/refunds",
        json={"amount_micros": 10, "idempotency_key": key},
        headers=market.merchant,
    )


async def test_replays_are_byte_identical_after_the_receipt_key_rotates(service: Service) -> None:
    market = await new_market(service)
    token = (await market.mint(cap_micros=10_000))["token"]
    charge = await market.charge(token, 100, key="before")
    assert charge.status_code == 201, charge.text
    capture = await _hold_and_capture(market, token, "hold-before")
    refund = await _refund(market.client, market, charge.json()["charge_id"], "refund-before")
    assert refund.status_code == 201, refund.text
    old_kid = _kid(charge.json()["signed_receipt"])

    rotated = await asyncio.to_thread(
        run_cli, "keys", "rotate", "--purpose", "receipt", dsn=service.dsn
    )
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[-1]
    assert new_kid.startswith("k4.pid.") and new_kid != old_kid

    async with second_process(service) as fresh:
        # The fresh process signs new receipts with the new key ...
        later = await fresh.post(
            "/v1/charges",
            json={
                "credit_token": token,
                "amount_micros": 70,
                "tool": "t",
                "idempotency_key": "after",
            },
            headers=market.merchant,
        )
        assert later.status_code == 201, later.text
        assert _kid(later.json()["signed_receipt"]) == new_kid
        later_refund = await _refund(fresh, market, later.json()["charge_id"], "refund-after")
        assert later_refund.status_code == 201, later_refund.text

        # ... and replays every receipt, in every process, with the key that signed it.
        for client in (market.client, fresh):
            again = await client.post(
                "/v1/charges",
                json={"credit_token": token, "amount_micros": 100, "tool": "search",
                      "idempotency_key": "before"},
                headers=market.merchant,
            )  # fmt: skip
            assert (again.status_code, again.content) == (200, charge.content)
            again = await client.post(
                f"/v1/holds/{capture.json()['hold_id']}/capture",
                json={"amount_micros": 30},
                headers=market.merchant,
            )
            assert (again.status_code, again.content) == (200, capture.content)
            again = await _refund(client, market, charge.json()["charge_id"], "refund-before")
            assert (again.status_code, again.content) == (200, refund.content)
            # The process started before the rotation has never seen the new key.
            again = await client.post(
                "/v1/charges",
                json={"credit_token": token, "amount_micros": 70, "tool": "t",
                      "idempotency_key": "after"},
                headers=market.merchant,
            )  # fmt: skip
            assert (again.status_code, again.content) == (200, later.content)
            again = await _refund(client, market, later.json()["charge_id"], "refund-after")
            assert (again.status_code, again.content) == (200, later_refund.content)

    # Offline, with nothing but the published keys: old and new receipts verify.
    keyring, states = await _published(service.client)
    assert states == {old_kid: "verify_only", new_kid: "active"}
    for response in (charge, capture, refund, later, later_refund):
        body = response.json()
        assert verify_receipt(body["signed_receipt"], keyring) == body["receipt"]
    await assert_invariants(service.dsn)


async def test_receipts_of_a_retired_key_are_re_signed_with_the_active_one(
    service: Service,
) -> None:
    market = await new_market(service)
    token = (await market.mint())["token"]
    charge = await market.charge(token, 25, key="c")
    assert charge.status_code == 201, charge.text
    conn = await connect(service.dsn)
    try:
        old_kid = _kid(charge.json()["signed_receipt"])
        new_kid = await rotate_signing_key(conn, "receipt")
        assert (await retire_signing_key(conn, old_kid)).value == "retired"
    finally:
        await conn.close()
    keyring, states = await _published(service.client)
    assert states == {new_kid: "active"}
    with pytest.raises(TokenInvalid, match="unknown receipt key"):
        verify_receipt(charge.json()["signed_receipt"], keyring)

    async with second_process(service) as fresh:
        again = await fresh.post(
            "/v1/charges",
            json={
                "credit_token": token,
                "amount_micros": 25,
                "tool": "search",
                "idempotency_key": "c",
            },
            headers=market.merchant,
        )
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["receipt"] == charge.json()["receipt"], "the same facts"
    assert _kid(body["signed_receipt"]) == new_kid
    assert verify_receipt(body["signed_receipt"], keyring) == body["receipt"]
    await assert_invariants(service.dsn)


async def _about_to_expire(service: Service, market: Market) -> tuple[str, KeyRing]:
    """A credit token (signed with the service's key, for a minted token's row) whose
    signed `exp` is 27 s ago: within the verifier's 30 s leeway for ~3 s more."""
    minted = await market.mint(cap_micros=1_000)
    now = datetime.now(UTC)
    claims = CreditTokenClaims(
        jti=uuid.UUID(minted["jti"]),
        sub=uuid.UUID(market.account_id),
        iss=service.url,
        iat=now - timedelta(minutes=2),
        nbf=now - timedelta(minutes=2),
        exp=now - timedelta(seconds=27),
        aud=[market.merchant_id],
        tools=["*"],
        max_per_call=1_000,
        cap=1_000,
        parent=None,
        kid="",
    )
    conn = await connect(service.dsn)
    try:
        signer = await active_signer(conn, "credit_token")
    finally:
        await conn.close()
    token = signer.sign(encode_claims(claims), footer=encode_footer(signer.kid))
    keyring, _ = await _published(service.client)
    return token, keyring


async def test_a_replay_after_the_credit_token_expired_returns_the_original(
    service: Service,
) -> None:
    market = await new_market(service)
    token, keyring = await _about_to_expire(service, market)
    first = await market.charge(token, 60, key="late")
    assert first.status_code == 201, first.text
    for _ in range(200):  # until the token is past exp + leeway (a few seconds)
        try:
            verify_credit_token(token, keyring)
        except TokenExpired:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the credit token did not expire")
    conn = await connect(service.dsn)
    try:
        await rotate_signing_key(conn, "receipt")
    finally:
        await conn.close()

    again = await market.charge(token, 60, key="late")
    assert (again.status_code, again.content) == (200, first.content)
    assert_problem(await market.charge(token, 61, key="late"), 401, "token_expired")
    assert_problem(await market.charge(token, 60, key="fresh"), 401, "token_expired")
    assert (await market.account())["balance_micros"] == 100_000 - 60
    await assert_invariants(service.dsn)
