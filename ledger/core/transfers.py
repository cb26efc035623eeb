"""The double-entry core: accounts and an immutable journal of transfers.

Vocabulary (one meaning per word): an account has debits and credits, each
*posted* or *pending*. A transfer is *single* (posted at once) or *pending* (a
hold), and a pending transfer ends *posted* (any amount up to the held one; the
rest is released) or *voided* (released by request or by expiry).

Every write is one call of a PL/pgSQL function (see migrations/0001) returning a
named outcome; nothing is written unless the outcome is `created`.

Transfer codes `charge`, `capture` and `refund` belong to the verify-and-debit
path: the audit matches each such transfer to its row in `charges`/`refunds`, so
other callers use their own codes (`adjustment`, `topup_card`, …).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
import msgspec

from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.observability import money

__all__ = [
    "ADJUSTMENT_CLEARING_ID",
    "CARD_CLEARING_ID",
    "USDC_CLEARING_ID",
    "Account",
    "AccountKind",
    "Transfer",
    "TransferOutcome",
    "create_account",
    "create_transfer",
    "expire_pending",
    "get_account",
    "get_transfer",
    "list_account_transfers",
    "post_pending",
    "void_pending",
]

queries = load_queries("ledger.core", "ledger.sql")

CARD_CLEARING_ID = uuid.UUID("00000000-0000-0000-0000-00000000c001")
USDC_CLEARING_ID = uuid.UUID("00000000-0000-0000-0000-00000000c002")
ADJUSTMENT_CLEARING_ID = uuid.UUID("00000000-0000-0000-0000-00000000c003")
_CLEARING = frozenset({CARD_CLEARING_ID, USDC_CLEARING_ID, ADJUSTMENT_CLEARING_ID})


class AccountKind(StrEnum):
    customer_wallet = "customer_wallet"
    merchant_revenue = "merchant_revenue"
    card_clearing = "card_clearing"
    usdc_clearing = "usdc_clearing"
    adjustment_clearing = "adjustment_clearing"


# Which kinds may never spend more than they hold (TigerBeetle's
# `debits_must_not_exceed_credits`). Clearing accounts mirror outside money
# and go negative as money enters the ledger.
_MUST_NOT_GO_NEGATIVE = {
    AccountKind.customer_wallet: True,
    AccountKind.merchant_revenue: True,
    AccountKind.card_clearing: False,
    AccountKind.usdc_clearing: False,
    AccountKind.adjustment_clearing: False,
}


class TransferOutcome(StrEnum):
    created = "created"
    exists = "exists"
    exists_with_different_fields = "exists_with_different_fields"
    accounts_must_be_different = "accounts_must_be_different"
    debit_account_not_found = "debit_account_not_found"
    credit_account_not_found = "credit_account_not_found"
    exceeds_credits = "exceeds_credits"
    pending_transfer_not_found = "pending_transfer_not_found"
    pending_transfer_not_pending = "pending_transfer_not_pending"
    pending_transfer_already_posted = "pending_transfer_already_posted"
    pending_transfer_already_voided = "pending_transfer_already_voided"
    pending_transfer_expired = "pending_transfer_expired"
    exceeds_pending_transfer_amount = "exceeds_pending_transfer_amount"

    @property
    def ok(self) -> bool:
        return self in (TransferOutcome.created, TransferOutcome.exists)


class Account(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    kind: AccountKind
    name: str
    debits_must_not_exceed_credits: bool
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    created_at: datetime

    @property
    def balance(self) -> int:
        """Posted balance (credit-normal): what the account holds."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """Balance less what is held by pending debits."""
        return self.balance - self.debits_pending


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    seq: int
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount: int
    code: str
    kind: str
    pending_id: uuid.UUID | None
    expires_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime


def _account(row: asyncpg.Record) -> Account:
    return Account(**dict(row.items()))


def _transfer(row: asyncpg.Record) -> Transfer:
    return Transfer(**dict(row.items()))


async def create_account(
    conn: Conn,
    *,
    kind: AccountKind,
    name: str,
    account_id: uuid.UUID | None = None,
) -> Account:
    row = await conn.fetchrow(
        queries["insert_account"],
        account_id or uuid.uuid4(),
        kind.value,
        name,
        _MUST_NOT_GO_NEGATIVE[kind],
    )
    assert row is not None
    return _account(row)


async def get_account(conn: Conn, account_id: uuid.UUID) -> Account | None:
    row = await conn.fetchrow(queries["get_account"], account_id)
    return None if row is None else _account(row)


async def get_transfer(conn: Conn, transfer_id: uuid.UUID) -> Transfer | None:
    row = await conn.fetchrow(queries["get_transfer"], transfer_id)
    return None if row is None else _transfer(row)


async def create_transfer(
    conn: Conn,
    *,
    transfer_id: uuid.UUID,
    debit_account_id: uuid.UUID,
    credit_account_id: uuid.UUID,
    amount: int,
    code: str,
    pending: bool = False,
    timeout_s: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> TransferOutcome:
    """Move `amount` (or hold it, if `pending`) from debit to credit account."""
    assert amount > 0, "amounts are validated at the boundary"
    assert timeout_s is None or pending, "only pending transfers expire"
    outcome = await conn.fetchval(
        queries["create_transfer"],
        transfer_id,
        debit_account_id,
        credit_account_id,
        amount,
        code,
        pending,
        timeout_s,
        metadata or {},
    )
    if outcome in ("created", "exists"):
        # Top-ups, claw-backs and adjustments: the wallet is whichever side is not clearing.
        money.moved(
            code,
            outcome,
            id=transfer_id,
            account_id=credit_account_id if debit_account_id in _CLEARING else debit_account_id,
            amount_micros=amount,
        )
    return TransferOutcome(outcome)


async def post_pending(
    conn: Conn,
    *,
    transfer_id: uuid.UUID,
    pending_id: uuid.UUID,
    code: str,
    amount: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> TransferOutcome:
    """Post `amount` (default: all) of a hold; the remainder is released."""
    assert amount is None or amount > 0, "a zero capture is a void"
    outcome = await conn.fetchval(
        queries["resolve_pending"],
        transfer_id,
        pending_id,
        True,
        amount,
        code,
        metadata or {},
        False,
    )
    return TransferOutcome(outcome)


async def void_pending(
    conn: Conn,
    *,
    transfer_id: uuid.UUID,
    pending_id: uuid.UUID,
    code: str,
    metadata: dict[str, Any] | None = None,
    allow_expired: bool = False,
) -> TransferOutcome:
    outcome = await conn.fetchval(
        queries["resolve_pending"],
        transfer_id,
        pending_id,
        False,
        None,
        code,
        metadata or {},
        allow_expired,
    )
    return TransferOutcome(outcome)


async def list_account_transfers(
    conn: Conn, account_id: uuid.UUID, *, after_seq: int, limit: int
) -> list[Transfer]:
    rows = await conn.fetch(queries["list_account_transfers"], account_id, after_seq, limit)
    return [_transfer(row) for row in rows]


# Holds the sweeper releases per pass; bounded so one pass is short.
EXPIRE_BATCH_SIZE_MAX = 500


async def expire_pending(pool: asyncpg.Pool, *, batch_size: int = EXPIRE_BATCH_SIZE_MAX) -> int:
    """Void every hold past its expiry (one short transaction each); return how many."""
    ids = [row["id"] for row in await pool.fetch(queries["expired_pending_ids"], batch_size)]
    voided = 0
    for pending_id in ids:
        # The void's id derives from the hold's, so concurrent sweepers (one per
        # worker process) collide on "exists" instead of racing.
        void_id = uuid.uuid5(pending_id, "expired")
        async with pool.acquire() as conn:
            outcome = await void_pending(
                conn,
                transfer_id=void_id,
                pending_id=pending_id,
                code="pending_expired",
                allow_expired=True,
            )
        voided += outcome is TransferOutcome.created
    return voided
