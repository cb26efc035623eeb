"""Signing keys: first-start creation under concurrency, rotation, retirement, the CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from click.testing import CliRunner, Result

from issuer import keys
from ledger.cli.main import main
from tests.conftest import Service
from tests.test_api_accounts import assert_problem
from tests.test_tokens_api import _account, _keyring, _mint
from verifier import tokens as vt


async def test_concurrent_first_starts_create_one_active_key_per_purpose(
    pool: asyncpg.Pool[Any],
) -> None:
    results = await asyncio.gather(*(keys.ensure_signing_keys(pool) for _ in range(8)))
    assert sum(len(created) for created in results) == 2
    rows = await pool.fetch("SELECT purpose, state FROM signing_keys ORDER BY purpose")
    assert [(r["purpose"], r["state"]) for r in rows] == [
        ("credit_token", "active"),
        ("receipt", "active"),
    ]
    assert await keys.ensure_signing_keys(pool) == []


async def test_signers_sign_for_their_purpose_and_hide_the_seed(pool: asyncpg.Pool[Any]) -> None:
    signer = await keys.active_signer(pool, "receipt")  # creates the keys on first use
    seed = await pool.fetchval("SELECT secret_seed FROM signing_keys WHERE kid = $1", signer.kid)
    assert signer.purpose == "receipt"
    assert bytes(seed).hex() not in repr(signer) and str(bytes(seed)) not in repr(signer)
    ring = await vt.load_keyring(pool)
    assert ring.get(signer.kid, "receipt") is not None
    assert ring.get(signer.kid, "credit_token") is None


async def test_rotation_keeps_old_tokens_verifying_until_retired(
    pool: asyncpg.Pool[Any],
) -> None:
    await keys.ensure_signing_keys(pool)
    old = await keys.active_signer(pool, "credit_token")
    async with pool.acquire() as conn:
        new_kid = await keys.rotate_signing_key(conn, "credit_token")
    assert new_kid != old.kid
    assert (await keys.active_signer(pool, "credit_token")).kid == new_kid
    ring = await vt.load_keyring(pool)
    old_key = ring.get(old.kid, "credit_token")
    assert old_key is not None and old_key.state == "verify_only"

    async with pool.acquire() as conn:
        assert await keys.retire_signing_key(conn, new_kid) is keys.RetireOutcome.key_is_active
        assert await keys.retire_signing_key(conn, "k4.pid.nope") is keys.RetireOutcome.not_found
        assert await keys.retire_signing_key(conn, old.kid) is keys.RetireOutcome.retired
        assert await keys.retire_signing_key(conn, old.kid) is keys.RetireOutcome.already_retired
    assert (await vt.load_keyring(pool)).get(old.kid, "credit_token") is None
    # Receipts' key was untouched.
    assert len([k for k in await vt.load_keyring(pool) if k.purpose == "receipt"]) == 1


def _cli(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": dsn}, catch_exceptions=False)


async def test_cli_rotation_over_http(service: Service) -> None:
    _, owner = await _account(service)
    before = await _mint(service, owner)
    old_kid = vt.verify_credit_token(before["token"], await _keyring(service)).kid

    rotated = await asyncio.to_thread(
        _cli, service.dsn, "keys", "rotate", "--purpose", "credit_token"
    )
    assert rotated.exit_code == 0, rotated.output
    listing = await asyncio.to_thread(_cli, service.dsn, "keys", "list")
    states = {(k["kid"], k["state"]) for k in json.loads(listing.output)}
    assert (old_kid, "verify_only") in states

    after = await _mint(service, owner)
    ring = await _keyring(service)
    assert vt.verify_credit_token(after["token"], ring).kid != old_kid
    assert vt.verify_credit_token(before["token"], ring).kid == old_kid
    self_view = await service.client.get("/v1/tokens/self", headers=service.auth(before["token"]))
    assert self_view.status_code == 200

    retired = await asyncio.to_thread(_cli, service.dsn, "keys", "retire", old_kid)
    assert retired.exit_code == 0, retired.output
    response = await service.client.get("/v1/tokens/self", headers=service.auth(before["token"]))
    assert_problem(response, 401, "token_invalid")
    assert (
        await service.client.get("/v1/tokens/self", headers=service.auth(after["token"]))
    ).status_code == 200
    for output in (rotated.output, listing.output, retired.output):
        assert before["token"] not in output and "secret" not in output


async def test_keyring_cache_reloads_for_an_unknown_kid(pool: asyncpg.Pool[Any]) -> None:
    await keys.ensure_signing_keys(pool)
    eager = vt.KeyRingCache(ttl_s=3600, reload_min_s=0)
    lazy = vt.KeyRingCache(ttl_s=3600, reload_min_s=3600)
    first = await eager.get(pool)
    await lazy.get(pool)
    async with pool.acquire() as conn:
        new_kid = await keys.rotate_signing_key(conn, "credit_token")
    assert new_kid not in first
    assert await eager.get(pool) is first  # within its TTL nothing is re-read
    assert new_kid in await eager.get(pool, kid=new_kid)
    # Reloads for unknown kids are rate-limited.
    assert new_kid not in await lazy.get(pool, kid=new_kid)
