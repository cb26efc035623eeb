"""Account services behind the API and the CLI: create, read, journal."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from ledger import limits
from ledger.access.api_keys import Principal, Role, create_api_key
from ledger.core import transfers as core
from ledger.db.pool import Conn
from ledger.errors import NotFound
from ledger.http.lists import Page, decode_cursor, page_of

__all__ = [
    "AccountCreate",
    "AccountCreated",
    "AccountView",
    "JournalEntry",
    "account_view",
    "create_customer_account",
    "journal_page",
    "read_account",
    "read_journal",
]


class AccountCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: limits.Name


class AccountView(msgspec.Struct, frozen=True):
    id: uuid.UUID
    kind: core.AccountKind
    name: str
    balance_micros: int
    available_micros: int
    pending_debits_micros: int
    created_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


class AccountCreated(msgspec.Struct, frozen=True):
    account: AccountView
    owner_api_key: str = msgspec.field(name="owner_api_key")


class JournalEntry(msgspec.Struct, frozen=True):
    id: uuid.UUID
    seq: int
    kind: str
    code: str
    direction: Literal["debit", "credit"]
    amount_micros: int
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    pending_id: uuid.UUID | None
    expires_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime


def account_view(account: core.Account) -> AccountView:
    return AccountView(
        id=account.id,
        kind=account.kind,
        name=account.name,
        balance_micros=account.balance,
        available_micros=account.available,
        pending_debits_micros=account.debits_pending,
        created_at=account.created_at,
    )


def _may_read(principal: Principal, account_id: uuid.UUID) -> bool:
    if principal.role is Role.operator:
        return True
    return principal.role is Role.owner and principal.subject_id == account_id


async def create_customer_account(pool: asyncpg.Pool, name: str) -> AccountCreated:
    """A customer wallet and its owner API key, created together or not at all."""
    async with pool.acquire() as conn, conn.transaction():
        account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name=name)
        key = await create_api_key(conn, Role.owner, account.id)
    return AccountCreated(account=account_view(account), owner_api_key=key)


async def read_account(
    pool: asyncpg.Pool, principal: Principal, account_id: uuid.UUID
) -> AccountView:
    # Another owner's account answers exactly like a missing one: no existence leak.
    if not _may_read(principal, account_id):
        raise NotFound("no such account")
    async with pool.acquire() as conn:
        account = await core.get_account(conn, account_id)
    if account is None:
        raise NotFound("no such account")
    return account_view(account)


async def read_journal(
    pool: asyncpg.Pool,
    principal: Principal,
    account_id: uuid.UUID,
    *,
    cursor: str | None,
    limit: int,
) -> Page[JournalEntry]:
    """One page of the account's journal, oldest first, if `principal` may read it."""
    await read_account(pool, principal, account_id)
    async with pool.acquire() as conn:
        return await journal_page(conn, account_id, cursor=cursor, limit=limit)


async def journal_page(
    conn: Conn, account_id: uuid.UUID, *, cursor: str | None, limit: int
) -> Page[JournalEntry]:
    """One page of the account's journal, oldest first (the API's and the CLI's)."""
    after = decode_cursor("transfers", cursor, int) or 0
    transfers = await core.list_account_transfers(
        conn, account_id, after_seq=after, limit=limit + 1
    )
    entries = [
        JournalEntry(
            id=t.id,
            seq=t.seq,
            kind=t.kind,
            code=t.code,
            direction="debit" if t.debit_account_id == account_id else "credit",
            amount_micros=t.amount,
            debit_account_id=t.debit_account_id,
            credit_account_id=t.credit_account_id,
            pending_id=t.pending_id,
            expires_at=t.expires_at,
            metadata=t.metadata,
            created_at=t.created_at,
        )
        for t in transfers
    ]
    return page_of(entries, limit, "transfers", lambda entry: entry.seq)
