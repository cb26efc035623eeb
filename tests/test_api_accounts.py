"""Accounts over real HTTP: operator creates, owners read only their own."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from ledger.db.pool import connect
from tests.conftest import Service
from tests.helpers import assert_invariants, fund


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"].endswith("/" + code)
    return body


async def test_health_checks_the_database(service: Service) -> None:
    response = await service.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_operator_creates_account_and_owner_reads_it(service: Service) -> None:
    response = await service.client.post(
        "/v1/accounts", json={"name": "alice"}, headers=service.operator
    )
    assert response.status_code == 201, response.text
    body = response.json()
    account, owner_key = body["account"], body["owner_api_key"]
    assert owner_key.startswith("lk_own_")
    assert account["kind"] == "customer_wallet"
    assert (account["balance_micros"], account["available_micros"], account["unit"]) == (
        0,
        0,
        "micro_usd",
    )

    read = await service.client.get(
        f"/v1/accounts/{account['id']}", headers=service.auth(owner_key)
    )
    assert read.status_code == 200
    assert read.json()["id"] == account["id"]

    # Only a hash is stored.
    conn = await connect(service.dsn)
    try:
        stored = await conn.fetch("SELECT key_hash, key_prefix FROM api_keys WHERE role = 'owner'")
        assert len(stored) == 1
        assert owner_key.encode() not in bytes(stored[0]["key_hash"])
        assert len(stored[0]["key_prefix"]) < 16
    finally:
        await conn.close()


async def test_owner_cannot_see_other_accounts(service: Service) -> None:
    a = (
        await service.client.post("/v1/accounts", json={"name": "a"}, headers=service.operator)
    ).json()
    b = (
        await service.client.post("/v1/accounts", json={"name": "b"}, headers=service.operator)
    ).json()
    other = await service.client.get(
        f"/v1/accounts/{b['account']['id']}", headers=service.auth(a["owner_api_key"])
    )
    missing = await service.client.get(
        f"/v1/accounts/{uuid.uuid4()}", headers=service.auth(a["owner_api_key"])
    )
    # Indistinguishable: no existence leak.
    assert_problem(other, 404, "not_found")
    assert_problem(missing, 404, "not_found")
    assert other.json()["detail"] == missing.json()["detail"]
    journal = await service.client.get(
        f"/v1/accounts/{b['account']['id']}/transfers", headers=service.auth(a["owner_api_key"])
    )
    assert_problem(journal, 404, "not_found")


async def test_owner_cannot_create_accounts(service: Service) -> None:
    a = (
        await service.client.post("/v1/accounts", json={"name": "a"}, headers=service.operator)
    ).json()
    response = await service.client.post(
        "/v1/accounts", json={"name": "x"}, headers=service.auth(a["owner_api_key"])
    )
    assert_problem(response, 403, "forbidden")


async def test_missing_or_wrong_api_key_is_401(service: Service) -> None:
    for headers in ({}, {"Authorization": "Bearer lk_op_wrong"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer " + "x" * 5000}):  # fmt: skip
        response = await service.client.post("/v1/accounts", json={"name": "a"}, headers=headers)
        body = assert_problem(response, 401, "unauthenticated")
        assert "lk_op_wrong" not in str(body)


async def test_bad_input_is_422_and_changes_nothing(service: Service) -> None:
    cases = [
        b'{"name": ',                       # invalid JSON
        b'{"name": "a", "extra": 1}',       # unknown field
        b'{"name": ""}',                    # too short
        b'{"name": 12}',                    # wrong type
        b'{}',                              # missing field
        b'[1, 2]',                          # not an object
        ('{"name": "' + "x" * 201 + '"}').encode(),
    ]  # fmt: skip
    for body in cases:
        response = await service.client.post(
            "/v1/accounts",
            content=body,
            headers={**service.operator, "Content-Type": "application/json"},
        )
        assert_problem(response, 422, "validation_failed")
    conn = await connect(service.dsn)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM accounts WHERE kind = 'customer_wallet'") == 0
        )
    finally:
        await conn.close()


async def test_bad_path_and_query_parameters_are_422(service: Service) -> None:
    created = (
        await service.client.post("/v1/accounts", json={"name": "a"}, headers=service.operator)
    ).json()
    key = service.auth(created["owner_api_key"])
    account_id = created["account"]["id"]
    # A path that is not a UUID names no resource at all.
    assert_problem(
        await service.client.get("/v1/accounts/not-a-uuid", headers=key), 404, "not_found"
    )
    for query in ("limit=0", "limit=501", "limit=abc", "cursor=%21", "cursor=abc", "after=1"):
        response = await service.client.get(
            f"/v1/accounts/{account_id}/transfers?{query}", headers=key
        )
        assert_problem(response, 422, "validation_failed")


async def test_journal_pages_through_every_entry(service: Service) -> None:
    created = (
        await service.client.post("/v1/accounts", json={"name": "a"}, headers=service.operator)
    ).json()
    account_id = uuid.UUID(created["account"]["id"])
    conn = await connect(service.dsn)
    try:
        for amount in range(1, 8):
            await fund(conn, account_id, amount)
    finally:
        await conn.close()
    key = service.auth(created["owner_api_key"])
    seen: list[int] = []
    params = {"limit": 3}
    while True:
        page = (
            await service.client.get(
                f"/v1/accounts/{account_id}/transfers", params=params, headers=key
            )
        ).json()
        assert set(page) == {"data", "has_more", "next_cursor"}
        seen.extend(e["amount_micros"] for e in page["data"])
        assert all(e["direction"] == "credit" for e in page["data"])
        assert page["has_more"] is (page["next_cursor"] is not None)
        if not page["has_more"]:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(range(1, 8))
    account = (await service.client.get(f"/v1/accounts/{account_id}", headers=key)).json()
    assert account["balance_micros"] == sum(range(1, 8))
    await assert_invariants(service.dsn)


async def test_unknown_route_and_method_are_problems(service: Service) -> None:
    assert_problem(await service.client.get("/v1/nothing"), 404, "not_found")
    assert_problem(
        await service.client.delete("/v1/accounts", headers=service.operator),
        405,
        "method_not_allowed",
    )
