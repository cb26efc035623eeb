"""The API's shared conventions, over real HTTP: strict JSON bodies (duplicate keys,
content types), the `Idempotency-Key` header, one list shape, `WWW-Authenticate`
on 401 and `Location` on 201.

Where a convention applies to "every route of a kind", the routes are read from the
committed OpenAPI document, so a route added later is covered too (or this fails
naming it).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.access.api_keys import Role, create_api_key
from ledger.db.pool import connect
from ledger.limits import IDEMPOTENCY_KEY_RETENTION_S
from tests.conftest import Service
from tests.helpers import assert_invariants, row_counts
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market
from tests.test_hostile_money import _bases

DOCUMENT = json.loads(
    (Path(__file__).resolve().parents[1] / "openapi" / "openapi.json").read_text()
)
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def market(service: Service) -> Market:
    return await new_market(service)


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    ]


async def _count(service: Service, table: str) -> int:
    conn = await connect(service.dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


# ---- strict bodies ------------------------------------------------------------


def _duplicated(body: dict[str, Any], name: str, first: Any) -> bytes:
    """`body` as JSON with `name` sent twice: `first`, then the body's own value."""
    text = json.dumps(body)
    assert text.startswith("{")
    return ("{" + json.dumps(name) + ": " + json.dumps(first) + ", " + text[1:]).encode()


async def test_duplicate_keys_are_422_on_every_money_route_and_write_nothing(
    market: Market,
) -> None:
    token = (await market.mint(cap_micros=10_000, max_per_call_micros=10_000))["token"]
    bases = await _bases(market, token)
    before = await row_counts(market.service.dsn)
    for operation, (path, body, credentials) in bases.items():
        # The parser differential of the issue: one parser reads 2000, another the last.
        raw = _duplicated(body, "amount_micros", 2000)
        response = await market.client.post(path, content=raw, headers={**credentials, **JSON})
        assert response.status_code == 422, (operation, response.text)
        assert_problem(response, 422, "validation_failed")
    nested = {**bases["POST /v1/charges"][1], "metadata": {"a": "1"}}
    raw = json.dumps(nested).replace('{"a": "1"}', '{"a": "1", "a": "2"}').encode()
    response = await market.client.post(
        "/v1/charges", content=raw, headers={**market.merchant, **JSON}
    )
    assert_problem(response, 422, "validation_failed")
    escaped = json.dumps({"name": "x"}).replace("}", ', "\\u006eame": "y"}').encode()
    response = await market.client.post(
        "/v1/accounts", content=escaped, headers={**market.service.operator, **JSON}
    )
    assert_problem(response, 422, "validation_failed")
    assert await row_counts(market.service.dsn) == before
    await assert_invariants(market.service.dsn)


async def test_colons_inside_strings_are_not_duplicate_keys(market: Market) -> None:
    token = (await market.mint())["token"]
    body = {
        "credit_token": token,
        "amount_micros": 1,
        "tool": "search",
        "idempotency_key": "a:b:c",
        "metadata": {"k:1": "v:2", "k:2": "\u003a"},
    }
    response = await market.client.post("/v1/charges", json=body, headers=market.merchant)
    assert response.status_code == 201, response.text


async def test_bodies_not_sent_as_json_are_415_and_write_nothing(market: Market) -> None:
    token = (await market.mint())["token"]
    body = {"credit_token": token, "amount_micros": 7, "tool": "search", "idempotency_key": "m"}
    before = await row_counts(market.service.dsn)
    raw = json.dumps(body).encode()
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded",
                         "application/json; charset=latin-1", "application/jsonx"):  # fmt: skip
        headers = dict(market.merchant)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await market.client.post("/v1/charges", content=raw, headers=headers)
        problem = assert_problem(response, 415, "unsupported_media_type")
        assert problem["accepted"] == ["application/json"]
    form = await market.client.post(
        "/v1/accounts", data={"name": "alice"}, headers=market.service.operator
    )
    assert_problem(form, 415, "unsupported_media_type")
    assert await row_counts(market.service.dsn) == before
    for n, accepted in enumerate(
        ("application/json; charset=UTF-8", "application/merge-patch+json")
    ):
        response = await market.client.post(
            "/v1/charges",
            content=json.dumps({**body, "idempotency_key": f"ok-{n}"}).encode(),
            headers={**market.merchant, "Content-Type": accepted},
        )
        assert response.status_code == 201, (accepted, response.text)
    await assert_invariants(market.service.dsn)


# ---- Idempotency-Key ----------------------------------------------------------

# Every POST that creates something takes the header. Changing this set is a
# decision: a new creating route belongs here.
IDEMPOTENT_OPERATIONS = {
    "createAccount",
    "createMerchant",
    "mintCreditToken",
    "delegateCreditToken",
    "createCharge",
    "createRefund",
    "createHold",
    "captureHold",
    "voidHold",
    "createCardTopup",
    "createWalletChallenge",
    "linkWallet",
    "assignUsdcDeposit",
}


def test_every_creating_post_documents_the_idempotency_key_header() -> None:
    taking = set()
    for method, _, operation in _operations():
        names = {p["name"] for p in operation.get("parameters", [])}
        if "Idempotency-Key" in names:
            assert method == "POST", operation["operationId"]
            assert "409" in operation["responses"], operation["operationId"]
            taking.add(operation["operationId"])
    assert taking == IDEMPOTENT_OPERATIONS
    for method, _, operation in _operations():
        if method == "POST" and "201" in operation["responses"]:
            assert operation["operationId"] in taking, operation["operationId"]


async def test_account_creation_replays_byte_for_byte_and_creates_once(service: Service) -> None:
    before = await _count(service, "accounts")
    headers = {**service.operator, "Idempotency-Key": "acct-1"}
    first = await service.client.post("/v1/accounts", json={"name": "alice"}, headers=headers)
    assert first.status_code == 201, first.text
    # Equal JSON with other spacing and key order is the same request.
    again = await service.client.post(
        "/v1/accounts", content=b'{ "name" :"alice" }', headers={**headers, **JSON}
    )
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _count(service, "accounts") == before + 1
    # The owner API key shown once works, and is the one replayed.
    owner = service.auth(first.json()["owner_api_key"])
    assert (await service.client.get(first.headers["location"], headers=owner)).status_code == 200
    conflict = await service.client.post("/v1/accounts", json={"name": "bob"}, headers=headers)
    problem = assert_problem(conflict, 409, "idempotency_conflict")
    assert problem["idempotency_key"] == "acct-1"
    assert await _count(service, "accounts") == before + 1


async def test_concurrent_duplicates_create_one_account(service: Service) -> None:
    before = await _count(service, "accounts")
    headers = {**service.operator, "Idempotency-Key": "acct-race"}
    responses = await asyncio.gather(
        *(
            service.client.post("/v1/accounts", json={"name": "race"}, headers=headers)
            for _ in range(12)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 11
    assert await _count(service, "accounts") == before + 1


async def test_minting_twice_under_one_key_gives_one_credit_token(market: Market) -> None:
    owner = {**market.service.auth(market.owner_key), "Idempotency-Key": "mint-1"}
    body = {"cap_micros": 500, "audiences": [market.merchant_id]}
    before = await _count(market.service, "credit_tokens")
    responses = await asyncio.gather(
        *(market.client.post("/v1/tokens", json=body, headers=owner) for _ in range(5))
    )
    assert {r.status_code for r in responses} == {201}
    tokens = {r.json()["token"] for r in responses}
    assert len(tokens) == 1
    assert await _count(market.service, "credit_tokens") == before + 1
    # Neither the credit token nor any owner API key is stored readable.
    conn = await connect(market.service.dsn)
    try:
        stored = b"".join(bytes(r["response"]) for r in await conn.fetch(
            "SELECT response FROM idempotency_keys"))  # fmt: skip
        window = await conn.fetchval("SELECT expires_at - created_at FROM idempotency_keys LIMIT 1")
    finally:
        await conn.close()
    assert stored and tokens.pop().encode() not in stored
    assert market.owner_key.encode() not in stored and b"v4.public." not in stored
    assert window >= timedelta(seconds=IDEMPOTENCY_KEY_RETENTION_S) >= timedelta(hours=24)


async def test_keys_are_per_principal_and_per_credential(market: Market) -> None:
    other = await market.client.post(
        "/v1/accounts", json={"name": "other"}, headers=market.service.operator
    )
    key = {"Idempotency-Key": "shared"}
    body = {"cap_micros": 100}
    mine = await market.client.post(
        "/v1/tokens", json=body, headers={**market.service.auth(market.owner_key), **key}
    )
    theirs = await market.client.post(
        "/v1/tokens",
        json=body,
        headers={**market.service.auth(other.json()["owner_api_key"]), **key},
    )
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["account_id"] != theirs.json()["account_id"]
    # A second API key of the same account finds the key, but cannot open a
    # response that may show a secret once.
    conn = await connect(market.service.dsn)
    try:
        second = await create_api_key(conn, Role.owner, uuid.UUID(market.account_id))
    finally:
        await conn.close()
    replay = await market.client.post(
        "/v1/tokens", json=body, headers={**market.service.auth(second), **key}
    )
    assert_problem(replay, 409, "idempotency_conflict")


async def test_a_refusal_is_not_remembered(market: Market) -> None:
    owner = {**market.service.auth(market.owner_key), "Idempotency-Key": "retry-me"}
    refused = await market.client.post("/v1/tokens", json={"cap_micros": 0}, headers=owner)
    assert_problem(refused, 422, "validation_failed")
    fixed = await market.client.post("/v1/tokens", json={"cap_micros": 10}, headers=owner)
    assert fixed.status_code == 201, fixed.text
    bad = await market.client.post(
        "/v1/tokens", json={"cap_micros": 10}, headers={**owner, "Idempotency-Key": "a b"}
    )
    assert_problem(bad, 422, "validation_failed")


async def test_an_expired_key_is_forgotten(service: Service) -> None:
    headers = {**service.operator, "Idempotency-Key": "old"}
    first = await service.client.post("/v1/accounts", json={"name": "a"}, headers=headers)
    conn = await connect(service.dsn)
    try:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '2 days',"
            " expires_at = now() - interval '1 day'"
        )
    finally:
        await conn.close()
    second = await service.client.post("/v1/accounts", json={"name": "a"}, headers=headers)
    assert second.status_code == 201
    assert second.json()["account"]["id"] != first.json()["account"]["id"]


async def test_merchant_and_delegation_replays(market: Market) -> None:
    key = {"Idempotency-Key": "m-1"}
    operator = {**market.service.operator, **key}
    merchants = [
        await market.client.post("/v1/merchants", json={"name": "m"}, headers=operator)
        for _ in range(2)
    ]
    assert merchants[0].content == merchants[1].content
    assert merchants[0].status_code == merchants[1].status_code == 201
    location = merchants[0].headers["location"]
    assert (await market.client.get(location, headers=market.service.operator)).status_code == 200
    parent = (await market.mint(cap_micros=1_000))["token"]
    agent = {**market.service.auth(parent), **key}
    children = [
        await market.client.post("/v1/tokens/delegate", json={"cap_micros": 10}, headers=agent)
        for _ in range(2)
    ]
    assert children[0].status_code == 201, children[0].text
    assert children[0].content == children[1].content


async def test_charge_header_and_body_key_agree(market: Market) -> None:
    token = (await market.mint())["token"]
    body = {"credit_token": token, "amount_micros": 5, "tool": "search"}
    header = {**market.merchant, "Idempotency-Key": "charge-h"}
    first = await market.client.post("/v1/charges", json=body, headers=header)
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/v1/charges/{first.json()['charge_id']}"
    # The same key in the body is the same charge.
    again = await market.client.post(
        "/v1/charges", json={**body, "idempotency_key": "charge-h"}, headers=market.merchant
    )
    assert again.status_code == 200
    assert again.json()["charge_id"] == first.json()["charge_id"]
    differ = await market.client.post(
        "/v1/charges", json={**body, "idempotency_key": "other"}, headers=header
    )
    assert_problem(differ, 422, "validation_failed")
    neither = await market.client.post("/v1/charges", json=body, headers=market.merchant)
    assert_problem(neither, 422, "validation_failed")
    assert (await market.account())["balance_micros"] == 100_000 - 5
    await assert_invariants(market.service.dsn)


async def test_hold_capture_and_void_under_keys(market: Market) -> None:
    token = (await market.mint())["token"]
    hold = await market.client.post(
        "/v1/holds",
        json={"credit_token": token, "amount_micros": 50, "tool": "llm"},
        headers={**market.merchant, "Idempotency-Key": "hold-1"},
    )
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["hold_id"]
    assert hold.headers["location"] == f"/v1/holds/{hold_id}"
    capture = {**market.merchant, "Idempotency-Key": "cap-1"}
    url = f"/v1/holds/{hold_id}/capture"
    first = await market.client.post(url, json={"amount_micros": 20}, headers=capture)
    again = await market.client.post(url, json={"amount_micros": 20}, headers=capture)
    assert (first.status_code, again.content) == (200, first.content)
    other = await market.client.post(url, json={"amount_micros": 30}, headers=capture)
    assert_problem(other, 409, "idempotency_conflict")
    assert (await market.account())["balance_micros"] == 100_000 - 20
    await assert_invariants(market.service.dsn)


# ---- lists --------------------------------------------------------------------


def _list_operations() -> dict[str, str]:
    found = {}
    for method, path, operation in _operations():
        schema = operation["responses"].get("200", {}).get("content", {})
        ref = schema.get("application/json", {}).get("schema", {}).get("$ref", "")
        if method == "GET" and ref.endswith("Page"):
            found[operation["operationId"]] = path
    return found


async def test_every_list_has_one_shape_and_refuses_unknown_parameters(market: Market) -> None:
    operations = _list_operations()
    owner = market.service.auth(market.owner_key)
    operator, merchant = market.service.operator, market.merchant
    calls = {
        "listAccountTransfers": (f"/v1/accounts/{market.account_id}/transfers", owner),
        "listCreditTokens": ("/v1/tokens", owner),
        "listCharges": ("/v1/charges", merchant),
        "listWallets": ("/v1/wallets", owner),
        "listCardShortfalls": ("/v1/topups/card/shortfalls", operator),
        "listUsdcDeposits": ("/v1/usdc/deposits", operator),
        "listUsdcReorgAlerts": ("/v1/usdc/reorg-alerts", operator),
        "listAccounts": ("/v1/accounts", operator),
        "listMerchants": ("/v1/merchants", operator),
        "listUsageCharges": ("/v1/usage/charges", owner),
        "listUsageHolds": ("/v1/usage/holds", merchant),
        "listUsageRefunds": ("/v1/usage/refunds", merchant),
        "listUsageRefusals": ("/v1/usage/refusals", owner),
    }
    assert set(operations) == set(calls), "give every list route a call here"
    cursors = {}
    for operation_id, (path, credentials) in calls.items():
        page = await market.client.get(path, headers=credentials)
        assert page.status_code == 200, (operation_id, page.text)
        assert set(page.json()) == {"data", "has_more", "next_cursor"}, operation_id
        for params in ({"limt": "5"}, {"cursor": "bm90LW91cnM"}, {"limit": "501"}):
            refused = await market.client.get(path, params=params, headers=credentials)
            assert_problem(refused, 422, "validation_failed")
        cursors[operation_id] = path
    # A cursor of one list is refused by another.
    for _ in range(3):
        await market.mint(cap_micros=10)
    tokens = (await market.client.get("/v1/tokens?limit=1", headers=owner)).json()
    assert tokens["has_more"] is True and isinstance(tokens["next_cursor"], str)
    foreign = await market.client.get(
        f"/v1/accounts/{market.account_id}/transfers",
        params={"cursor": tokens["next_cursor"]},
        headers=owner,
    )
    assert_problem(foreign, 422, "validation_failed")
    seen, params = [], {"limit": "1"}
    while True:
        page = (await market.client.get("/v1/tokens", params=params, headers=owner)).json()
        seen += [t["jti"] for t in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        params["cursor"] = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 3


async def test_unknown_query_parameters_are_422_on_any_route(market: Market) -> None:
    owner = market.service.auth(market.owner_key)
    response = await market.client.get(f"/v1/accounts/{market.account_id}?expand=1", headers=owner)
    problem = assert_problem(response, 422, "validation_failed")
    assert problem["errors"] == [{"message": "unknown query parameter", "key": "expand"}]
    token = (await market.mint())["token"]
    body = {"credit_token": token, "amount_micros": 1, "tool": "search", "idempotency_key": "q"}
    charged = await market.client.post("/v1/charges?dry_run=1", json=body, headers=market.merchant)
    assert_problem(charged, 422, "validation_failed")
    assert (await market.account())["balance_micros"] == 100_000


# ---- 401 and 201 headers ---------------------------------------------------------


async def test_401_names_the_bearer_scheme(service: Service) -> None:
    for headers in ({}, service.auth("lk_own_nope"), {"Authorization": "Basic eDp5"}):
        response = await service.client.get("/v1/tokens", headers=headers)
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = await service.client.get("/v1/tokens/self", headers=service.auth("v4.public.x"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_201_names_where_to_read_the_creation(market: Market) -> None:
    created = await market.client.post(
        "/v1/accounts", json={"name": "c"}, headers=market.service.operator
    )
    location = created.headers["location"]
    assert location == f"/v1/accounts/{created.json()['account']['id']}"
    assert (await market.client.get(location, headers=market.service.operator)).status_code == 200
    minted = await market.client.post(
        "/v1/tokens", json={"cap_micros": 5}, headers=market.service.auth(market.owner_key)
    )
    read = await market.client.get(
        minted.headers["location"], headers=market.service.auth(market.owner_key)
    )
    assert read.json()["jti"] == minted.json()["jti"]
    token = (await market.mint())["token"]
    charge = await market.charge(token, 3)
    read = await market.client.get(charge.headers["location"], headers=market.merchant)
    assert read.json()["amount_micros"] == 3
    for method, _, operation in _operations():
        if "201" in operation["responses"]:
            assert "Location" in operation["responses"]["201"].get("headers", {}), operation[
                "operationId"
            ]
            assert method == "POST"


async def test_replayed_charge_keeps_its_location(market: Market) -> None:
    token = (await market.mint())["token"]
    first = await market.charge(token, 2, key="loc")
    again = await market.charge(token, 2, key="loc")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.headers["location"] == again.headers["location"]
