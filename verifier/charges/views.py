"""What a merchant reads back: its charges (newest first, paged), one charge, one hold.

Every read is scoped to the calling merchant in SQL; another merchant's charge or
hold answers exactly like a missing one (`not_found`), so ids leak nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from ledger.db.queries import load_queries
from ledger.errors import NotFound
from ledger.http.lists import Page, decode_cursor, page_of
from verifier.charges.merchants import Merchant

__all__ = ["ChargeView", "HoldView", "list_charges", "read_charge", "read_hold"]

queries = load_queries("verifier.charges", "charges.sql")

HoldStatus = Literal["pending", "captured", "voided", "expired"]


class ChargeView(msgspec.Struct, frozen=True, kw_only=True):
    """One charge as its merchant sees it; `kind` is `capture` when it settled a hold."""

    charge_id: uuid.UUID
    kind: Literal["charge", "capture"]
    hold_id: uuid.UUID | None
    amount_micros: int
    refunded_micros: int
    tool: str
    token_id: uuid.UUID
    account_id: uuid.UUID
    receipt_id: uuid.UUID
    metadata: dict[str, str]
    created_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


class HoldView(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: uuid.UUID
    status: HoldStatus
    amount_micros: int
    captured_micros: int | None
    charge_id: uuid.UUID | None
    token_id: uuid.UUID
    account_id: uuid.UUID
    merchant_id: uuid.UUID
    tool: str
    metadata: dict[str, str]
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None
    unit: Literal["micro_usd"] = "micro_usd"


def _charge_view(row: Any) -> ChargeView:
    return ChargeView(
        charge_id=row["id"],
        kind="charge" if row["hold_id"] is None else "capture",
        hold_id=row["hold_id"],
        amount_micros=row["amount_micros"],
        refunded_micros=row["refunded_micros"],
        tool=row["tool"],
        token_id=row["token_jti"],
        account_id=row["account_id"],
        receipt_id=row["receipt_id"],
        metadata=row["metadata"],
        created_at=row["created_at"],
    )


async def list_charges(
    pool: asyncpg.Pool, merchant: Merchant, *, cursor: str | None, limit: int
) -> Page[ChargeView]:
    """One page of the merchant's charges, newest first."""
    before = decode_cursor("charges", cursor, uuid.UUID)
    rows = await pool.fetch(queries["list_merchant_charges"], merchant.id, before, limit + 1)
    return page_of([_charge_view(r) for r in rows], limit, "charges", lambda c: c.charge_id)


async def read_charge(pool: asyncpg.Pool, merchant: Merchant, charge_id: uuid.UUID) -> ChargeView:
    row = await pool.fetchrow(queries["get_merchant_charge"], charge_id, merchant.id)
    if row is None:
        raise NotFound("no such charge")
    return _charge_view(row)


async def read_hold(pool: asyncpg.Pool, merchant: Merchant, hold_id: uuid.UUID) -> HoldView:
    row = await pool.fetchrow(queries["get_merchant_hold"], hold_id, merchant.id)
    if row is None:
        raise NotFound("no such hold")
    return HoldView(
        hold_id=row["id"],
        status=row["status"],
        amount_micros=row["amount_micros"],
        captured_micros=row["captured_micros"],
        charge_id=row["charge_id"],
        token_id=row["token_jti"],
        account_id=row["account_id"],
        merchant_id=merchant.id,
        tool=row["tool"],
        metadata=row["metadata"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        resolved_at=row["resolved_at"],
    )
