"""Merchants: paid tools (MCP servers, HTTP APIs) that charge credit tokens.

Registering a merchant creates its revenue account and its merchant API key
(shown once, stored as a hash) in one transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from ledger import limits
from ledger.access.api_keys import Role, create_api_key
from ledger.core import transfers as core
from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import NotFound

__all__ = [
    "Merchant",
    "MerchantCache",
    "MerchantCreate",
    "MerchantCreated",
    "MerchantView",
    "read_own_merchant",
    "register_merchant",
]

queries = load_queries("verifier.charges", "charges.sql")


class MerchantCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: limits.Name


class Merchant(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    revenue_account_id: uuid.UUID
    created_at: datetime


class MerchantCreated(msgspec.Struct, frozen=True):
    merchant: Merchant
    merchant_api_key: str


class MerchantView(msgspec.Struct, frozen=True, kw_only=True):
    """A merchant as it sees itself, with its revenue account's balances."""

    id: uuid.UUID
    name: str
    revenue_account_id: uuid.UUID
    created_at: datetime
    revenue_balance_micros: int
    revenue_pending_micros: int
    unit: Literal["micro_usd"] = "micro_usd"


async def register_merchant(conn: Conn, name: str) -> MerchantCreated:
    async with conn.transaction():
        revenue = await core.create_account(
            conn,
            kind=core.AccountKind.merchant_revenue,
            name=f"revenue: {name}"[: limits.NAME_LENGTH_MAX],
        )
        row = await conn.fetchrow(queries["insert_merchant"], uuid.uuid4(), name, revenue.id)
        assert row is not None
        merchant = Merchant(**dict(row.items()))
        key = await create_api_key(conn, Role.merchant, merchant.id)
    return MerchantCreated(merchant=merchant, merchant_api_key=key)


async def read_own_merchant(pool: asyncpg.Pool, merchant_id: uuid.UUID) -> MerchantView:
    """The merchant and its revenue, read fresh (never from the merchant cache)."""
    row = await pool.fetchrow(queries["merchant_with_revenue"], merchant_id)
    if row is None:
        raise NotFound("no such merchant")
    return MerchantView(**dict(row.items()))


# Merchants are immutable once registered; a process keeps the ones it has seen.
MERCHANT_CACHE_SIZE_MAX = 10_000


class MerchantCache:
    def __init__(self) -> None:
        self._by_id: dict[uuid.UUID, Merchant] = {}

    async def get(self, pool: asyncpg.Pool, merchant_id: uuid.UUID) -> Merchant:
        merchant = self._by_id.get(merchant_id)
        if merchant is not None:
            return merchant
        row = await pool.fetchrow(queries["get_merchant"], merchant_id)
        if row is None:
            raise NotFound("no such merchant")
        merchant = Merchant(**dict(row.items()))
        if len(self._by_id) >= MERCHANT_CACHE_SIZE_MAX:
            self._by_id.clear()
        self._by_id[merchant_id] = merchant
        return merchant
