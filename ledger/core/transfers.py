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
    "get_account",
    "get_transfer",
    "list_account_transfers",
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
    metadata: dict[str, Any] | None = None,
) -> TransferOutcome:
    """Move `amount` from debit to credit account. (Holds are the charge path's:
    `verifier.charges`, on the same SQL functions.)"""
    assert amount > 0, "amounts are validated at the boundary"
    outcome = await conn.fetchval(
        queries["create_transfer"],
        transfer_id,
        debit_account_id,
        credit_account_id,
        amount,
        code,
        False,
        None,
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


async def list_account_transfers(
    conn: Conn, account_id: uuid.UUID, *, after_seq: int, limit: int
) -> list[Transfer]:
    rows = await conn.fetch(queries["list_account_transfers"], account_id, after_seq, limit)
    return [_transfer(row) for row in rows]
