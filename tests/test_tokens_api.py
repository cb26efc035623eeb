"""Credit tokens over real HTTP: keys, mint, list, revoke (cascading), delegate, self."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pyseto
import pytest

from ledger.db.pool import connect
from tests.conftest import Service
from tests.helpers import assert_invariants, assert_no_secrets_logged, fund
from tests.test_api_accounts import assert_problem
from verifier import paseto
from verifier import tokens as vt


async def _account(service: Service, funds: int = 0) -> tuple[uuid.UUID, dict[str, str]]:
    created = (
        await service.client.post("/v1/accounts", json={"name": "a"}, headers=service.operator)
    ).json()
    account_id = uuid.UUID(created["account"]["id"])
    if funds:
        conn = await connect(service.dsn)
        try:
            await fund(conn, account_id, funds)
        finally:
            await conn.close()
    return account_id, service.auth(created["owner_api_key"])


async def _mint(service: Service, owner: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await service.client.post(
        "/v1/tokens", json={"cap_micros": 10_000, **body}, headers=owner
    )
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    return minted


async def _delegate(service: Service, token: str, **body: Any) -> httpx.Response:
    return await service.client.post("/v1/tokens/delegate", json=body, headers=service.auth(token))


async def _keyring(service: Service) -> vt.KeyRing:
    response = await service.client.get("/v1/keys")
    return vt.KeyRing.from_published(response.content)


async def test_keys_are_published_and_cacheable(service: Service) -> None:
    response = await service.client.get("/v1/keys")
    assert response.status_code == 200
    assert "max-age=" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert sorted(k["purpose"] for k in keys) == ["credit_token", "receipt"]
    for key in keys:
        assert key["state"] == "active"
        assert key["paserk"].startswith("k4.public.")
        assert pyseto.Key.from_paserk(key["paserk"]).to_paserk_id() == key["kid"]
        assert set(key) == {"kid", "paserk", "purpose", "state"}


async def test_mint_returns_a_token_that_verifies_offline_and_with_pyseto(service: Service) -> None:
    account_id, owner = await _account(service)
    merchant = str(uuid.uuid4())
    minted = await _mint(
        service, owner, cap_micros=5_000_000, max_per_call_micros=100_000,
        audiences=[merchant.upper()], tools=["search.*"], expires_in_s=3600,
    )  # fmt: skip
    assert minted["account_id"] == str(account_id)
    assert minted["scope"] == {
        "audiences": [merchant],
        "tools": ["search.*"],
        "max_per_call_micros": 100_000,
    }
    claims = vt.verify_credit_token(minted["token"], await _keyring(service))
    assert (claims.sub, claims.cap, claims.jti) == (account_id, 5_000_000, uuid.UUID(minted["jti"]))
    vt.check_scope(claims, merchant_id=merchant, tool="search.web")

    key = next(
        k
        for k in (await service.client.get("/v1/keys")).json()["keys"]
        if k["purpose"] == "credit_token"
    )
    decoded = pyseto.decode(pyseto.Key.from_paserk(key["paserk"]), minted["token"])
    assert b'"cap":5000000' in decoded.payload

    # Listing and reading never show the token again.
    listing = await service.client.get("/v1/tokens", headers=owner)
    assert listing.status_code == 200
    assert minted["token"] not in listing.text
    [view] = listing.json()["data"]
    assert (view["jti"], view["status"], view["remaining_micros"]) == (
        minted["jti"],
        "active",
        5_000_000,
    )
    read = await service.client.get(f"/v1/tokens/{minted['jti']}", headers=owner)
    assert read.status_code == 200 and minted["token"] not in read.text


async def test_mint_limits_and_permissions(service: Service) -> None:
    _, owner = await _account(service)
    bad_bodies: list[dict[str, Any]] = [
        {"cap_micros": 0},
        {"cap_micros": vt.CAP_MAX + 1},
        {"cap_micros": 10, "max_per_call_micros": 11},
        {"cap_micros": 10, "expires_in_s": vt.LIFETIME_MAX_S + 1},
        {"cap_micros": 10, "audiences": []},
        {"cap_micros": 10, "audiences": ["*", "m1"]},
        {"cap_micros": 10, "tools": ["has space"]},
        {"cap_micros": 10, "tools": ["t"] * (vt.TOOLS_MAX + 1)},
        {"cap_micros": 10, "cap": 5},
        {"cap_micros": 1.5},
    ]
    for body in bad_bodies:
        response = await service.client.post("/v1/tokens", json=body, headers=owner)
        assert_problem(response, 422, "validation_failed")
    assert_problem(
        await service.client.post("/v1/tokens", json={"cap_micros": 1}, headers=service.operator),
        403,
        "forbidden",
    )
    assert_problem(
        await service.client.post("/v1/tokens", json={"cap_micros": 1}), 401, "unauthenticated"
    )


async def test_owners_see_only_their_own_tokens(service: Service) -> None:
    _, alice = await _account(service)
    _, bob = await _account(service)
    minted = await _mint(service, alice)
    assert_problem(
        await service.client.get(f"/v1/tokens/{minted['jti']}", headers=bob), 404, "not_found"
    )
    assert_problem(
        await service.client.post(f"/v1/tokens/{minted['jti']}/revoke", headers=bob),
        404,
        "not_found",
    )
    assert (await service.client.get("/v1/tokens", headers=bob)).json()["data"] == []


async def test_self_reports_budget_and_account_balance(service: Service) -> None:
    account_id, owner = await _account(service, funds=7_000)
    minted = await _mint(service, owner, cap_micros=10_000)
    response = await service.client.get("/v1/tokens/self", headers=service.auth(minted["token"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["jti"] == minted["jti"] and body["account_id"] == str(account_id)
    assert (body["cap_micros"], body["spent_micros"], body["held_micros"]) == (10_000, 0, 0)
    assert (body["remaining_micros"], body["account_available_micros"]) == (10_000, 7_000)
    assert (body["spendable_micros"], body["unit"]) == (7_000, "micro_usd")
    for headers in (
        {},
        {"Authorization": "Bearer v4.public.nope"},
        {"Authorization": "Bearer " + minted["token"][:-2]},
    ):
        assert_problem(
            await service.client.get("/v1/tokens/self", headers=headers), 401, "token_invalid"
        )
    await assert_invariants(service.dsn)


async def test_revocation_cascades_to_descendants(service: Service) -> None:
    _, owner = await _account(service)
    root = await _mint(service, owner, cap_micros=10_000)
    child = (await _delegate(service, root["token"], cap_micros=5_000)).json()
    grandchild = (await _delegate(service, child["token"], cap_micros=1_000)).json()
    sibling = await _mint(service, owner)
    assert grandchild["depth"] == 2 and grandchild["parent_jti"] == child["jti"]

    response = await service.client.post(f"/v1/tokens/{child['jti']}/revoke", headers=owner)
    assert response.status_code == 200, response.text
    assert response.json()["descendants_revoked"] == 1
    for token in (child, grandchild):
        assert_problem(
            await service.client.get("/v1/tokens/self", headers=service.auth(token["token"])),
            401,
            "token_revoked",
        )
        assert_problem(await _delegate(service, token["token"], cap_micros=1), 401, "token_revoked")
    for token in (root, sibling):
        assert (
            await service.client.get("/v1/tokens/self", headers=service.auth(token["token"]))
        ).status_code == 200

    conn = await connect(service.dsn)
    try:
        rows = await conn.fetch("SELECT jti, revoked_at FROM credit_tokens")
        ancestors = await conn.fetchval(
            "SELECT ancestors FROM credit_tokens WHERE jti = $1", uuid.UUID(grandchild["jti"])
        )
    finally:
        await conn.close()
    assert [str(a) for a in ancestors] == [root["jti"], child["jti"]]
    revoked = {str(r["jti"]) for r in rows if r["revoked_at"] is not None}
    assert revoked == {child["jti"], grandchild["jti"]}
    # Idempotent: the first revocation time stands.
    again = await service.client.post(f"/v1/tokens/{child['jti']}/revoke", headers=owner)
    assert again.json()["revoked_at"] == response.json()["revoked_at"]
    listing = (await service.client.get("/v1/tokens", headers=owner)).json()["data"]
    assert sorted(t["status"] for t in listing) == ["active", "active", "revoked", "revoked"]


async def test_delegation_narrows_and_never_widens(service: Service) -> None:
    _, owner = await _account(service)
    m1, m2 = str(uuid.uuid4()), str(uuid.uuid4())
    parent = await _mint(
        service, owner, cap_micros=10_000, max_per_call_micros=500,
        audiences=[m1, m2], tools=["search.*", "fetch"], expires_in_s=3600,
    )  # fmt: skip
    token = parent["token"]
    child = await _delegate(service, token, cap_micros=2_000, audiences=[m1], tools=["search.web"])
    assert child.status_code == 201, child.text
    body = child.json()
    assert body["scope"] == {"audiences": [m1], "tools": ["search.web"], "max_per_call_micros": 500}
    assert body["expires_at"] == parent["expires_at"] and body["parent_jti"] == parent["jti"]
    claims = vt.verify_credit_token(body["token"], await _keyring(service))
    assert claims.parent == uuid.UUID(parent["jti"]) and claims.cap == 2_000

    widening: list[dict[str, Any]] = [
        {"cap_micros": 100, "audiences": ["*"]},
        {"cap_micros": 100, "audiences": [m1, str(uuid.uuid4())]},
        {"cap_micros": 100, "tools": ["*"]},
        {"cap_micros": 100, "tools": ["search*"]},
        {"cap_micros": 100, "tools": ["fetch*"]},
        {"cap_micros": 100, "tools": ["other"]},
        {"cap_micros": 1_000, "max_per_call_micros": 501},
        {"cap_micros": 100, "expires_in_s": 7200},
    ]
    for request in widening:
        assert_problem(await _delegate(service, token, **request), 403, "scope_denied")

    # The cap must fit the parent's remaining budget (10_000 - 2_000 already delegated
    # does not reduce it: delegation reserves nothing, spending does).
    problem = assert_problem(
        await _delegate(service, token, cap_micros=10_001), 402, "budget_exhausted"
    )
    assert (problem["limit"], problem["required"], problem["available"]) == (
        "token_cap",
        10_001,
        10_000,
    )
    assert problem["token_id"] == parent["jti"]
    assert minted_not_leaked(problem, token)


def minted_not_leaked(problem: dict[str, Any], token: str) -> bool:
    return token not in str(problem)


async def test_child_spending_counts_against_ancestors_in_self_view(service: Service) -> None:
    _, owner = await _account(service, funds=1_000_000)
    root = await _mint(service, owner, cap_micros=10_000)
    child = (await _delegate(service, root["token"], cap_micros=8_000)).json()
    # The charge path adds a child's spending to every ancestor's row; do that here.
    conn = await connect(service.dsn)
    try:
        await conn.execute(
            "UPDATE credit_tokens SET spent_micros = spent_micros + 7000"
            " WHERE jti = ANY($1::uuid[])",
            [uuid.UUID(root["jti"]), uuid.UUID(child["jti"])],
        )
        await conn.execute(
            "UPDATE credit_tokens SET spent_micros = spent_micros + 2500 WHERE jti = $1",
            uuid.UUID(root["jti"]),
        )
    finally:
        await conn.close()
    view = (
        await service.client.get("/v1/tokens/self", headers=service.auth(child["token"]))
    ).json()
    # The child has 1_000 left of its own cap, but the root only 500.
    assert (view["remaining_micros"], view["limited_by"]) == (500, "ancestor_cap")
    problem = assert_problem(
        await _delegate(service, child["token"], cap_micros=600), 402, "budget_exhausted"
    )
    assert (problem["limit"], problem["available"]) == ("ancestor_cap", 500)
    assert (await _delegate(service, child["token"], cap_micros=500)).status_code == 201


async def test_depth_is_bounded(service: Service) -> None:
    _, owner = await _account(service)
    token = (await _mint(service, owner, cap_micros=10_000))["token"]
    for depth in range(1, vt.DEPTH_MAX + 1):
        response = await _delegate(service, token, cap_micros=10)
        assert response.status_code == 201, response.text
        assert response.json()["depth"] == depth
        token = response.json()["token"]
    problem = assert_problem(await _delegate(service, token, cap_micros=1), 403, "scope_denied")
    assert problem["reason"] == "depth"


async def test_no_credit_token_or_signing_key_in_any_log_line(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, owner = await _account(service)
    minted = await _mint(service, owner)
    child = (await _delegate(service, minted["token"], cap_micros=10)).json()
    await service.client.get("/v1/tokens/self", headers=service.auth(child["token"]))
    await service.client.get("/v1/tokens/self", headers=service.auth(child["token"] + "x"))
    await service.client.post(f"/v1/tokens/{minted['jti']}/revoke", headers=owner)
    await service.client.get("/v1/tokens/self", headers=service.auth(minted["token"]))
    conn = await connect(service.dsn)
    try:
        seeds = [
            bytes(r["secret_seed"])
            for r in await conn.fetch("SELECT secret_seed FROM signing_keys")
        ]
    finally:
        await conn.close()
    secrets_ = [minted["token"], child["token"], owner["Authorization"].split()[1]]
    for token in (minted["token"], child["token"]):
        secrets_.append(token.split(".")[2][:40])  # any recognisable part of the body
    for seed in seeds:
        secrets_ += [seed.hex(), paseto.b64encode(seed), repr(seed)]
    logging.getLogger("tests").warning("capture probe")
    assert_no_secrets_logged(caplog.records, secrets_)


async def test_revocation_racing_delegation_leaves_no_live_descendant(service: Service) -> None:
    _, owner = await _account(service)
    root = await _mint(service, owner, cap_micros=100_000)
    for _ in range(5):
        middle = (await _delegate(service, root["token"], cap_micros=1_000)).json()
        leaf = (await _delegate(service, middle["token"], cap_micros=100)).json()
        racers = [_delegate(service, leaf["token"], cap_micros=10) for _ in range(4)]
        racers += [_delegate(service, middle["token"], cap_micros=10) for _ in range(2)]
        revoke = service.client.post(f"/v1/tokens/{middle['jti']}/revoke", headers=owner)
        responses = await asyncio.gather(revoke, *racers)
        assert responses[0].status_code == 200
        for response in responses[1:]:
            assert response.status_code in (201, 401), response.text
    conn = await connect(service.dsn)
    try:
        live_under_revoked = await conn.fetchval(
            """
            WITH RECURSIVE under AS (
                SELECT jti FROM credit_tokens WHERE revoked_at IS NOT NULL
                UNION
                SELECT c.jti FROM credit_tokens c JOIN under u ON c.parent_jti = u.jti
            )
            SELECT count(*) FROM credit_tokens
             WHERE jti IN (SELECT jti FROM under) AND revoked_at IS NULL
            """
        )
        total = await conn.fetchval("SELECT count(*) FROM credit_tokens")
    finally:
        await conn.close()
    assert live_under_revoked == 0
    assert total >= 11  # root, 5 middles, 5 leaves (+ whichever racers won)


def test_the_log_check_catches_a_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("tests").warning("capture probe")
    logging.getLogger("tests").debug("presented %s", "v4.public.secretbody")
    with pytest.raises(AssertionError, match="secrets in logs"):
        assert_no_secrets_logged(caplog.records, ["v4.public.secretbody"])
