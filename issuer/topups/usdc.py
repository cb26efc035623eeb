"""USDC deposits: recorded once per log, credited to the linked account or kept
unattributed until an operator assigns them.

The deposit's id is a uuid5 of (chain id, tx hash, log index) and is also the id
of its credit transfer (USDC clearing -> wallet), so recording a log twice or
assigning a deposit twice answers `exists` and credits nothing more. USDC has 6
decimals: one base unit is one micro-USD.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from ledger import limits
from ledger.core import transfers as core
from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import Conflict, NotFound, ValidationFailed
from ledger.http.lists import Page, decode_cursor, page_of

__all__ = [
    "USDC_NAMESPACE",
    "Deposit",
    "DepositAssign",
    "DepositView",
    "ReorgAlert",
    "assign_deposit",
    "deposit_id",
    "list_deposits",
    "list_reorg_alerts",
    "record_deposit",
]

queries = load_queries("issuer.topups", "usdc.sql")

USDC_NAMESPACE = uuid.UUID("5e0c6a2e-3c2f-4a53-9b1e-7a1d3c0f0c02")
TOPUP_CODE = "topup_usdc"


class Deposit(msgspec.Struct, frozen=True, kw_only=True):
    """A confirmed `Transfer` log to the treasury, as read from the chain."""

    chain_id: int
    tx_hash: str  # 0x + 64 lower-case hex
    log_index: int
    block_number: int
    block_hash: str
    from_address: str  # 0x + 40 lower-case hex
    amount: int  # base units = micro-USD


class DepositView(msgspec.Struct, frozen=True):
    id: uuid.UUID
    chain_id: int
    tx_hash: str
    log_index: int
    block_number: int
    from_address: str
    amount_micros: int
    status: Literal["credited", "unattributed"]
    account_id: uuid.UUID | None
    created_at: datetime
    credited_at: datetime | None
    unit: Literal["micro_usd"] = "micro_usd"


class DepositAssign(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    account_id: uuid.UUID


class ReorgAlert(msgspec.Struct, frozen=True):
    id: int
    chain_id: int
    block_number: int
    expected_hash: str
    found_hash: str | None
    affected_deposits: list[str]
    detected_at: datetime


def deposit_id(chain_id: int, tx_hash: str, log_index: int) -> uuid.UUID:
    return uuid.uuid5(USDC_NAMESPACE, f"{chain_id}:{tx_hash.lower()}:{log_index}")


def _view(row: asyncpg.Record) -> DepositView:
    return DepositView(
        id=row["id"],
        chain_id=row["chain_id"],
        tx_hash=row["tx_hash"],
        log_index=row["log_index"],
        block_number=row["block_number"],
        from_address=row["from_address"],
        amount_micros=row["amount_micros"],
        status=row["status"],
        account_id=row["account_id"],
        created_at=row["created_at"],
        credited_at=row["credited_at"],
    )


async def _credit(conn: Conn, dep_id: uuid.UUID, account_id: uuid.UUID, amount: int) -> None:
    outcome = await core.create_transfer(
        conn,
        transfer_id=dep_id,
        debit_account_id=core.USDC_CLEARING_ID,
        credit_account_id=account_id,
        amount=amount,
        code=TOPUP_CODE,
        metadata={"deposit_id": str(dep_id)},
    )
    assert outcome.ok, outcome


async def record_deposit(conn: Conn, deposit: Deposit) -> str:
    """Record one confirmed log (inside the caller's transaction); return what happened."""
    assert deposit.amount > 0
    dep_id = deposit_id(deposit.chain_id, deposit.tx_hash, deposit.log_index)
    account_id = await conn.fetchval(queries["linked_account"], deposit.from_address)
    # Beyond one transfer's bound the operator decides (it is recorded, never lost).
    if deposit.amount > limits.AMOUNT_MAX:
        account_id = None
    status = "unattributed" if account_id is None else "credited"
    inserted = await conn.fetchval(
        queries["insert_deposit"],
        dep_id,
        deposit.chain_id,
        deposit.tx_hash,
        deposit.log_index,
        deposit.block_number,
        deposit.block_hash,
        deposit.from_address,
        deposit.amount,
        account_id,
        status,
    )
    if inserted is None:
        return "exists"
    if account_id is not None:
        await _credit(conn, dep_id, account_id, deposit.amount)
    return status


async def assign_deposit(
    pool: asyncpg.Pool, dep_id: uuid.UUID, request: DepositAssign
) -> DepositView:
    """Credit an unattributed deposit to an account (operator); repeating it is harmless."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(queries["lock_deposit"], dep_id)
        if row is None:
            raise NotFound("no such deposit")
        if row["status"] == "credited":
            if row["account_id"] != request.account_id:
                raise Conflict("the deposit is already credited to another account")
            return _view(row)
        if await conn.fetchval(queries["account_kind"], request.account_id) != "customer_wallet":
            raise NotFound("no such customer account")
        if row["amount_micros"] > limits.AMOUNT_MAX:
            raise ValidationFailed("the deposit exceeds one transfer's maximum; split it by hand")
        updated = await conn.fetchrow(queries["assign_deposit"], dep_id, request.account_id)
        assert updated is not None
        await _credit(conn, dep_id, request.account_id, row["amount_micros"])
    return _view(updated)


async def list_deposits(
    pool: asyncpg.Pool, *, status: str | None, cursor: str | None, limit: int
) -> Page[DepositView]:
    """Deposits, newest first."""
    after = decode_cursor("usdc_deposits", cursor, uuid.UUID)
    rows = await pool.fetch(queries["list_deposits"], status, after, limit + 1)
    return page_of([_view(r) for r in rows], limit, "usdc_deposits", lambda d: d.id)


async def list_reorg_alerts(
    pool: asyncpg.Pool, *, cursor: str | None, limit: int
) -> Page[ReorgAlert]:
    """Deep reorgs found, newest first."""
    after = decode_cursor("usdc_reorg_alerts", cursor, int)
    rows = await pool.fetch(queries["list_reorg_alerts"], after, limit + 1)
    alerts = [ReorgAlert(**dict(r.items())) for r in rows]
    return page_of(alerts, limit, "usdc_reorg_alerts", lambda a: a.id)
