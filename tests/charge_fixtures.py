"""Rows for charge-path tests at the SQL level (tokens inserted directly)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from ledger.core import transfers as core
from ledger.db.pool import Conn
from tests.helpers import new_wallet

TEST_KID = "k4.pid.test-kid"


async def ensure_test_key(conn: Conn) -> str:
    await conn.execute(
        "INSERT INTO signing_keys (kid, purpose, public_key, secret_seed, state)"
        " VALUES ($1, 'credit_token', $2, $3, 'verify_only') ON CONFLICT DO NOTHING",
        TEST_KID,
        b"\x01" * 32,
        b"\x02" * 32,
    )
    return TEST_KID


async def new_merchant(conn: Conn, name: str = "shop") -> tuple[uuid.UUID, uuid.UUID]:
    revenue = await core.create_account(conn, kind=core.AccountKind.merchant_revenue, name=name)
    merchant_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO merchants (id, name, revenue_account_id) VALUES ($1, $2, $3)",
        merchant_id,
        name,
        revenue.id,
    )
    return merchant_id, revenue.id


async def new_token(
    conn: Conn,
    account_id: uuid.UUID,
    *,
    cap: int,
    max_per_call: int = 1_000_000,
    parent: uuid.UUID | None = None,
    depth: int = 0,
) -> uuid.UUID:
    kid = await ensure_test_key(conn)
    jti = uuid.uuid4()
    now = datetime.now(UTC)
    await conn.execute(
        """INSERT INTO credit_tokens (jti, account_id, parent_jti, depth, kid, audiences, tools,
               max_per_call_micros, cap_micros, not_before, expires_at)
           VALUES ($1, $2, $3, $4, $5, '{*}', '{*}', $6, $7, $8, $9)""",
        jti,
        account_id,
        parent,
        depth,
        kid,
        max_per_call,
        cap,
        now - timedelta(minutes=1),
        now + timedelta(hours=1),
    )
    return jti


def charge_request(
    merchant: tuple[uuid.UUID, uuid.UUID],
    jti: uuid.UUID,
    amount: int,
    *,
    key: str | None = None,
    kind: str = "charge",
    tool: str = "search",
    timeout_s: int = 300,
) -> tuple[object, ...]:
    key = key or uuid.uuid4().hex
    request_hash = hashlib.sha256(f"{kind}|{jti}|{amount}|{tool}".encode()).digest()
    return (
        uuid.uuid4(), kind, merchant[0], merchant[1], key, request_hash, jti, tool, amount,
        uuid.uuid4(), TEST_KID, timeout_s, {},
    )  # fmt: skip


async def wallet_with_token(conn: Conn, *, funds: int, cap: int) -> tuple[uuid.UUID, uuid.UUID]:
    wallet = await new_wallet(conn, funds=funds)
    return wallet, await new_token(conn, wallet, cap=cap)
