"""Dashboard sessions: an API key, checked once at sign-in, exchanged for a cookie.

The cookie holds 256 random bits; the database holds their SHA-256, the API key's
id and an expiry. The API key itself is never stored, never set in a cookie, never
put in a URL or a page. A session ends at its expiry, at sign-out, or as soon as
its API key is revoked (every request re-checks the key).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg
import msgspec

from ledger.access.api_keys import Principal, Role
from ledger.db.queries import load_queries

__all__ = ["COOKIE", "Session", "end_session", "find_session", "start_session"]

queries = load_queries("ledger.dashboard", "dashboard.sql")
COOKIE = "ledger_session"
SESSION_ID_LENGTH_MAX = 64


class Session(msgspec.Struct, frozen=True):
    principal: Principal
    csrf_token: str


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def start_session(pool: asyncpg.Pool, principal: Principal, ttl_s: int) -> tuple[str, str]:
    """A new session for `principal`; returns (session id for the cookie, CSRF token)."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    await pool.execute(queries["insert_session"], _hash(session_id), principal.key_id, csrf, ttl_s)
    await pool.execute(queries["prune_sessions"])
    return session_id, csrf


async def find_session(pool: asyncpg.Pool, session_id: str | None) -> Session | None:
    if not session_id or len(session_id) > SESSION_ID_LENGTH_MAX:
        return None
    row = await pool.fetchrow(queries["find_session"], _hash(session_id))
    if row is None:
        return None
    principal = Principal(
        role=Role(row["role"]), subject_id=row["subject_id"], key_id=uuid.UUID(str(row["key_id"]))
    )
    return Session(principal=principal, csrf_token=row["csrf_token"])


async def end_session(pool: asyncpg.Pool, session_id: str | None) -> None:
    if session_id and len(session_id) <= SESSION_ID_LENGTH_MAX:
        await pool.execute(queries["delete_session"], _hash(session_id))
