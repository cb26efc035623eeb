"""No secret in any log line or error body, along the whole money path.

Credit tokens, API keys (operator, owner, merchant, and a made-up one) and
signing-key seeds are presented, refused, replayed and rotated through every
route that moves or reports money, with every logger (ours, uvicorn's including
its access log, Litestar's) captured at DEBUG in the server's thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import httpx
import msgspec

from issuer.keys import retire_signing_key, rotate_signing_key
from ledger.db.pool import connect
from tests.conftest import Service
from tests.helpers import assert_invariants, assert_no_secrets_logged, capture_all_logs
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market
from tests.test_receipt_rotation import second_process
from verifier import paseto
from verifier.tokens import parse_footer


class Exchanges:
    """Every response the client sees; the error bodies (and headers) kept as text."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.errors: list[str] = []
        self.statuses: list[int] = []
        client.event_hooks["response"].append(self._record)

    async def _record(self, response: httpx.Response) -> None:
        await response.aread()
        self.statuses.append(response.status_code)
        if response.status_code >= 400:
            self.errors.append(f"{response.headers!r} {response.text}")


def _tampered(token: str) -> str:
    # Flip one character near the end of the body: the signature no longer holds.
    i = len(token) - 30
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


def _body(token: str, **fields: Any) -> dict[str, Any]:
    body = {"credit_token": token, "amount_micros": 1, "tool": "search", "idempotency_key": "k"}
    body.update(fields)
    return body


async def _tokens(market: Market, poor: Market) -> dict[str, str]:
    tokens = {
        "root": (await market.mint(cap_micros=2_000, max_per_call_micros=500, audiences=["*"]))[
            "token"
        ],
        "small": (await market.mint(cap_micros=5))["token"],
        "parent": (await market.mint(cap_micros=30))["token"],
        "poor": (await poor.mint(cap_micros=1_000))["token"],
    }
    child = await market.client.post(
        "/v1/tokens/delegate",
        json={"cap_micros": 20},
        headers=market.service.auth(tokens["parent"]),
    )
    assert child.status_code == 201, child.text
    tokens["child"] = child.json()["token"]
    return tokens


async def _verify_and_charge(market: Market, poor: Market, tokens: dict[str, str]) -> str:
    client, root = market.client, tokens["root"]
    for token in tokens.values():
        assert (await client.get("/v1/tokens/self", headers=market.service.auth(token))).is_success
    for bearer in (_tampered(root), market.merchant_key, root + "x"):
        me = await client.get("/v1/tokens/self", headers=market.service.auth(bearer))
        assert me.status_code == 401, me.text
    first = await market.charge(root, 100, key="c1")
    assert first.status_code == 201, first.text
    assert (await market.charge(root, 100, key="c1")).status_code == 200
    assert_problem(await market.charge(root, 101, key="c1"), 409, "idempotency_conflict")
    # Every 402.
    assert_problem(await market.charge(root, 501), 402, "budget_exhausted")
    assert_problem(await market.charge(tokens["small"], 6), 402, "budget_exhausted")
    assert (await market.charge(tokens["parent"], 25)).status_code == 201
    problem = assert_problem(await market.charge(tokens["child"], 10), 402, "budget_exhausted")
    assert problem["limit"] == "ancestor_cap"
    problem = assert_problem(await poor.charge(tokens["poor"], 11), 402, "budget_exhausted")
    assert problem["limit"] == "account_balance"
    return str(first.json()["charge_id"])


async def _bad_credit_tokens(market: Market, poor: Market, tokens: dict[str, str]) -> None:
    root, service = tokens["root"], market.service
    body = root.split(".")[2]
    refused = [
        _tampered(root),
        root[:-10],
        root + "x",
        root + ".e30",
        "v4.local." + body,
        "v4.public.garbage",
        market.merchant_key,
        service.operator_key,
    ]
    for token in refused:
        response = await market.charge(token, 1)
        assert response.status_code == 401, (token[:12], response.text)
    assert_problem(await poor.charge(tokens["small"], 1), 403, "scope_denied")
    revoked = await market.client.post(
        f"/v1/tokens/{_jti(tokens['small'])}/revoke", headers=service.auth(market.owner_key)
    )
    assert revoked.status_code == 200, revoked.text
    assert_problem(await market.charge(tokens["small"], 1), 401, "token_revoked")
    # Secrets in the wrong fields, or too long, or in broken JSON: 422, never echoed.
    for fields in (
        {"credit_token": root * 20},
        {"tool": root},
        {"idempotency_key": root},
        {"amount_micros": root},
        {"metadata": {root: "x"}},
        {"metadata": {"note": root * 2}},
        {"extra": root},
    ):
        response = await market.client.post(
            "/v1/charges", json=_body(root, **fields), headers=market.merchant
        )
        assert_problem(response, 422, "validation_failed")
    broken = ('{"credit_token": "' + root + '", "amount_micros": 1').encode()
    response = await market.client.post(
        "/v1/charges",
        content=broken,
        headers={**market.merchant, "content-type": "application/json"},
    )
    assert_problem(response, 422, "validation_failed")


async def _bad_api_keys(market: Market, root: str, made_up_key: str) -> None:
    client = market.client
    for headers, status in (
        ({}, 401),
        ({"Authorization": f"Bearer {made_up_key}"}, 401),
        ({"Authorization": f"Bearer {root}"}, 401),
        ({"Authorization": f"Basic {market.merchant_key}"}, 401),
        ({"Authorization": f"Bearer {market.merchant_key}x"}, 401),
        (market.service.auth(market.owner_key), 403),
    ):
        response = await client.post("/v1/charges", json=_body(root), headers=headers)
        assert response.status_code == status, response.text
        response = await client.get("/v1/charges", headers=headers)
        assert response.status_code == status, response.text


async def _holds_refunds_and_reads(market: Market, root: str, charge_id: str) -> None:
    client, merchant = market.client, market.merchant

    async def hold(key: str, amount: int = 200) -> httpx.Response:
        return await client.post(
            "/v1/holds",
            json=_body(root, amount_micros=amount, tool="llm", idempotency_key=key),
            headers=merchant,
        )

    held = (await hold("h1")).json()["hold_id"]
    assert (await hold("h1")).status_code == 200
    assert_problem(await hold("h-big", 501), 402, "budget_exhausted")
    assert_problem(
        await client.post("/v1/holds", json=_body(_tampered(root)), headers=merchant),
        401,
        "token_invalid",
    )
    for amount, status in ((50, 200), (50, 200), (51, 409)):
        response = await client.post(
            f"/v1/holds/{held}/capture", json={"amount_micros": amount}, headers=merchant
        )
        assert response.status_code == status, response.text
    assert (await client.post(f"/v1/holds/{held}/void", headers=merchant)).status_code == 409
    released = (await hold("h2")).json()["hold_id"]
    for _ in range(2):
        assert (await client.post(f"/v1/holds/{released}/void", headers=merchant)).is_success
    for amount, key, status in ((30, "r1", 201), (30, "r1", 200), (1_000, "r2", 409)):
        response = await client.post(
            f"/v1/charges/{charge_id}/refunds",
            json={"amount_micros": amount, "idempotency_key": key},
            headers=merchant,
        )
        assert response.status_code == status, response.text
    for path in (
        "/v1/charges",
        f"/v1/charges/{charge_id}",
        f"/v1/holds/{held}",
        "/v1/merchants/me",
    ):
        assert (await client.get(path, headers=merchant)).status_code == 200
    assert (
        await client.get(
            f"/v1/accounts/{market.account_id}", headers=market.service.auth(market.owner_key)
        )
    ).is_success


async def _rotate_and_retire(market: Market) -> str:
    """Rotate both signing keys and retire the old receipt key; this process picks up
    the new credit-token key when a credit token signed with it arrives. Returns the
    retired receipt key's kid."""
    conn = await connect(market.service.dsn)
    try:
        old_receipt_kid = await conn.fetchval(
            "SELECT kid FROM signing_keys WHERE purpose = 'receipt' AND state = 'active'"
        )
        await rotate_signing_key(conn, "receipt")
        await rotate_signing_key(conn, "credit_token")
        assert (await retire_signing_key(conn, old_receipt_kid)).value == "retired"
    finally:
        await conn.close()
    fresh = (await market.mint(cap_micros=100))["token"]
    for _ in range(100):  # an unknown kid reloads keys at most about once a second
        if (await market.charge(fresh, 1, key="fresh")).status_code == 201:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the service never picked up the rotated credit-token key")
    return str(old_receipt_kid)


async def _replay_across_processes(
    market: Market, second: httpx.AsyncClient, root: str, retired_kid: str
) -> None:
    """The first process replays a receipt the second signed with the new key (and so
    learns of the retired key), then re-signs a receipt of the retired key with the
    active one and logs that (the kid, nothing secret)."""
    later = await second.post(
        "/v1/charges", json=_body(root, idempotency_key="later"), headers=market.merchant
    )
    assert later.status_code == 201, later.text
    again = await market.client.post(
        "/v1/charges", json=_body(root, idempotency_key="later"), headers=market.merchant
    )
    assert (again.status_code, again.content) == (200, later.content)
    replay = await market.charge(root, 100, key="c1")
    assert replay.status_code == 200, replay.text
    assert _kid(replay.json()["signed_receipt"]) != retired_kid


async def _seeds(dsn: str) -> list[bytes]:
    conn = await connect(dsn)
    try:
        return [
            bytes(r["secret_seed"])
            for r in await conn.fetch("SELECT secret_seed FROM signing_keys")
        ]
    finally:
        await conn.close()


def _kid(signed: str) -> str:
    return parse_footer(paseto.split_token(signed).footer)


def _jti(token: str) -> str:
    return str(msgspec.json.decode(paseto.split_token(token).message)["jti"])


def _secret_forms(tokens: list[str], api_keys: list[str], seeds: list[bytes]) -> list[str]:
    forms = [*tokens, *api_keys]
    forms += [token.split(".")[2][:40] for token in tokens]  # a recognisable part
    forms += [key[len(key) // 2 :] for key in api_keys]  # the secret half of a key
    for seed in seeds:
        forms += [seed.hex(), paseto.b64encode(seed), repr(seed)]
    return forms


async def test_no_secret_in_any_log_line_or_error_body_on_the_money_path(
    service: Service,
) -> None:
    market = await new_market(service)
    poor = await new_market(service, funds=10, name="poor")
    made_up_key = "lk_mer_" + secrets.token_urlsafe(32)
    exchanges = Exchanges(service.client)
    with capture_all_logs() as records:
        tokens = await _tokens(market, poor)
        charge_id = await _verify_and_charge(market, poor, tokens)
        await _bad_credit_tokens(market, poor, tokens)
        await _bad_api_keys(market, tokens["root"], made_up_key)
        await _holds_refunds_and_reads(market, tokens["root"], charge_id)
        retired_kid = await _rotate_and_retire(market)
    # A second process on the same database; starting uvicorn resets its loggers, so
    # the capture is set up again once it runs.
    async with second_process(service) as second:
        with capture_all_logs() as more:
            await _replay_across_processes(market, second, tokens["root"], retired_kid)
            logging.getLogger("tests").warning("capture probe")
    records += more
    seeds = await _seeds(service.dsn)

    api_keys = [service.operator_key, made_up_key]
    api_keys += [m.merchant_key for m in (market, poor)] + [m.owner_key for m in (market, poor)]
    forms = _secret_forms(list(tokens.values()), api_keys, seeds)
    # The capture is live in the server's thread: uvicorn's access log and our own
    # warning about the retired receipt key are both in it.
    names = {r.name for r in records}
    assert "uvicorn.access" in names
    # Our own lines: one per money movement and refusal, and the access log.
    assert {"ledger.money", "ledger.access_log"} <= names
    assert sum(r.name == "ledger.money" for r in records) >= 30
    assert "verifier.charges.context" in names
    assert len(exchanges.errors) >= 40, len(exchanges.errors)
    assert {401, 402, 403, 409, 422} <= set(exchanges.statuses)
    assert_no_secrets_logged(records, forms)
    leaked = [f[:12] + "…" for f in forms if any(f in error for error in exchanges.errors)]
    assert not leaked, f"secrets in error bodies: {leaked}"
    await assert_invariants(service.dsn)
