"""Signing keys: Ed25519 seeds in `signing_keys`, one active key per purpose.

Purposes are `credit_token` and `receipt`; a key signs for one purpose only, so
a receipt can never pass as a credit token. Life of a key:

    active ──rotate──▶ verify_only ──retire──▶ retired
    (signs new)        (still verifies)         (verifies nothing)

Seeds never leave this module except into `verifier.paseto.sign`; `Signer`'s
repr hides them and nothing here logs key material.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias, get_args

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from ledger.db.queries import load_queries
from verifier import paseto
from verifier.tokens import Executor, KeyPurpose

__all__ = [
    "PURPOSES",
    "Executor",
    "RetireOutcome",
    "Signer",
    "SigningKeyInfo",
    "active_signer",
    "ensure_signing_keys",
    "list_signing_keys",
    "retire_signing_key",
    "rotate_signing_key",
]

queries = load_queries("issuer", "keys.sql")

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

PURPOSES: tuple[KeyPurpose, ...] = get_args(KeyPurpose)


class Signer:
    """The active signing key of one purpose. Holds the seed; never prints it."""

    __slots__ = ("_seed", "kid", "public_key", "purpose")

    def __init__(self, *, kid: str, purpose: KeyPurpose, seed: bytes) -> None:
        self._seed = seed
        self.public_key = paseto.public_key_of(seed)
        self.kid = kid
        self.purpose = purpose
        assert kid == paseto.paserk_pid(self.public_key), "kid must be the key's k4.pid"

    def sign(self, message: bytes, *, footer: bytes, implicit_assertion: bytes = b"") -> str:
        return paseto.sign(
            message, self._seed, footer=footer, implicit_assertion=implicit_assertion
        )

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r}, purpose={self.purpose!r})"


class SigningKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What operators see of a signing key (no secret)."""

    kid: str
    purpose: KeyPurpose
    state: str
    created_at: datetime
    retired_at: datetime | None


class RetireOutcome(StrEnum):
    retired = "retired"
    not_found = "not_found"
    key_is_active = "key_is_active"
    already_retired = "already_retired"


def _new_key(purpose: KeyPurpose) -> tuple[str, KeyPurpose, bytes, bytes]:
    seed = secrets.token_bytes(paseto.SEED_BYTES)
    public_key = paseto.public_key_of(seed)
    return paseto.paserk_pid(public_key), purpose, public_key, seed


async def ensure_signing_keys(conn: Executor) -> list[str]:
    """Create an active key for each purpose that has none; return the new kids.

    Safe to run from every worker at once: the partial unique index on the active
    key decides, and the losers' fresh seeds are simply dropped.
    """
    created: list[str] = []
    for purpose in PURPOSES:
        kid = await conn.fetchval(queries["insert_active_key_if_missing"], *_new_key(purpose))
        if kid is not None:
            created.append(kid)
    return created


async def active_signer(conn_or_pool: Executor, purpose: KeyPurpose) -> Signer:
    """The active signer of `purpose`, creating the keys on first use."""
    assert purpose in PURPOSES
    row = await conn_or_pool.fetchrow(queries["active_key"], purpose)
    if row is None:
        await ensure_signing_keys(conn_or_pool)
        row = await conn_or_pool.fetchrow(queries["active_key"], purpose)
    assert row is not None, "ensure_signing_keys creates an active key per purpose"
    return Signer(kid=row["kid"], purpose=row["purpose"], seed=bytes(row["secret_seed"]))


async def rotate_signing_key(conn: Connection, purpose: KeyPurpose) -> str:
    """Make a new active key for `purpose`; the old one becomes verify-only."""
    assert purpose in PURPOSES
    async with conn.transaction():
        await conn.execute(queries["lock_signing_keys"])
        await conn.execute(queries["demote_active_key"], purpose)
        kid, _, public_key, seed = _new_key(purpose)
        await conn.execute(queries["insert_active_key"], kid, purpose, public_key, seed)
    return kid


async def retire_signing_key(conn: Connection, kid: str) -> RetireOutcome:
    """Stop a verify-only key from verifying anything (tokens it signed die with it)."""
    async with conn.transaction():
        await conn.execute(queries["lock_signing_keys"])
        if await conn.fetchval(queries["retire_key"], kid) is not None:
            return RetireOutcome.retired
        state = await conn.fetchval(queries["key_state"], kid)
    if state is None:
        return RetireOutcome.not_found
    if state == "active":
        return RetireOutcome.key_is_active
    return RetireOutcome.already_retired


async def list_signing_keys(conn: Executor) -> list[SigningKeyInfo]:
    rows = await conn.fetch(queries["list_keys"])
    return [SigningKeyInfo(**dict(row.items())) for row in rows]
