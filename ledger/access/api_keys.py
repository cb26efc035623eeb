"""API keys: operator, account owner, merchant.

A key is `<prefix><43 chars of base64url>` (256 random bits); only its SHA-256 is
stored. The prefix names the role so a leaked key is recognisable in a scan, and
its first characters (`key_prefix`) identify it in listings without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from enum import StrEnum

import asyncpg
import msgspec

from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import Forbidden, Unauthenticated

__all__ = [
    "AuthCache",
    "Principal",
    "Role",
    "authenticate",
    "bearer_credential",
    "create_api_key",
    "ensure_operator_key",
    "hash_api_key",
    "require_role",
    "rotate_operator_key",
]

queries = load_queries("ledger.access", "auth.sql")

API_KEY_LENGTH_MAX = 200


class Role(StrEnum):
    operator = "operator"
    owner = "owner"
    merchant = "merchant"


_PREFIX = {Role.operator: "lk_op_", Role.owner: "lk_own_", Role.merchant: "lk_mer_"}


class Principal(msgspec.Struct, frozen=True):
    role: Role
    subject_id: uuid.UUID | None
    key_id: uuid.UUID


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_credential(header: str | None) -> str | None:
    """The credential from an `Authorization: Bearer …` header, or None."""
    if not header:
        return None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    return credential or None


async def create_api_key(conn: Conn, role: Role, subject_id: uuid.UUID | None) -> str:
    """Create a key and return it; this is the only time it exists in clear."""
    key = _PREFIX[role] + secrets.token_urlsafe(32)
    await conn.execute(
        queries["insert_api_key"],
        uuid.uuid4(),
        role.value,
        subject_id,
        hash_api_key(key),
        key[: len(_PREFIX[role]) + 4],
    )
    return key


def _key_hash(header: str | None) -> bytes:
    key = bearer_credential(header)
    if key is None or len(key) > API_KEY_LENGTH_MAX or not key.startswith("lk_"):
        raise Unauthenticated("send an API key as `Authorization: Bearer <key>`")
    return hash_api_key(key)


async def _lookup(conn: Conn | asyncpg.Pool, key_hash: bytes) -> Principal:
    row = await conn.fetchrow(queries["find_api_key"], key_hash)
    if row is None:
        raise Unauthenticated("the API key is not valid")
    return Principal(role=Role(row["role"]), subject_id=row["subject_id"], key_id=row["id"])


async def authenticate(conn: Conn | asyncpg.Pool, header: str | None) -> Principal:
    return await _lookup(conn, _key_hash(header))


# A process remembers a valid API key for a few seconds so the hot path does not
# pay a lookup per request; a revoked key stops working within this time.
AUTH_CACHE_TTL_S = 5.0
AUTH_CACHE_SIZE_MAX = 10_000


class AuthCache:
    def __init__(self, *, ttl_s: float = AUTH_CACHE_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    async def authenticate(self, pool: asyncpg.Pool, header: str | None) -> Principal:
        key_hash = _key_hash(header)
        now = time.monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None and entry[0] > now:
            return entry[1]
        principal = await _lookup(pool, key_hash)
        if len(self._entries) >= AUTH_CACHE_SIZE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (now + self._ttl_s, principal)
        return principal


async def ensure_operator_key(conn: Conn) -> str | None:
    """Create the operator key on first start; return it then, None afterwards."""
    async with conn.transaction():
        await conn.execute(queries["lock_operator_keys"])
        if await conn.fetchval(queries["count_operator_keys"]):
            return None
        return await create_api_key(conn, Role.operator, None)


async def rotate_operator_key(conn: Conn) -> str:
    """Revoke every operator key and return a new one."""
    async with conn.transaction():
        await conn.execute(queries["lock_operator_keys"])
        await conn.execute(queries["revoke_operator_keys"])
        return await create_api_key(conn, Role.operator, None)


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise Forbidden(f"this operation needs a {' or '.join(r.value for r in roles)} API key")
