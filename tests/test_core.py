"""The double-entry core on real PostgreSQL: outcomes, holds, immutability, expiry."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from ledger.core import transfers as core
from ledger.core.transfers import TransferOutcome as O
from ledger.db.pool import Conn
from tests.helpers import (
    assert_invariants,
    balance,
    create_transfer_or_hold,
    fund,
    new_wallet,
    post_pending,
    void_pending,
)


async def test_transfer_moves_money_and_journal_matches(conn: Conn) -> None:
    alice = await new_wallet(conn, "alice", funds=1_000)
    bob = await new_wallet(conn, "bob")
    tid = uuid.uuid4()
    outcome = await core.create_transfer(
        conn,
        transfer_id=tid,
        debit_account_id=alice,
        credit_account_id=bob,
        amount=300,
        code="test",
    )
    assert outcome is O.created
    assert await balance(conn, alice) == 700
    assert await balance(conn, bob) == 300
    transfer = await core.get_transfer(conn, tid)
    assert transfer is not None
    assert (transfer.amount, transfer.kind, transfer.code) == (300, "single", "test")
    await assert_invariants(conn)


async def test_same_id_is_exists_and_moves_nothing_twice(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=1_000)
    bob = await new_wallet(conn)
    tid = uuid.uuid4()
    args = dict(transfer_id=tid, debit_account_id=alice, credit_account_id=bob, code="test")
    assert await core.create_transfer(conn, amount=100, **args) is O.created  # type: ignore[arg-type]
    assert await core.create_transfer(conn, amount=100, **args) is O.exists  # type: ignore[arg-type]
    different = await core.create_transfer(conn, amount=101, **args)  # type: ignore[arg-type]
    assert different is O.exists_with_different_fields
    assert await balance(conn, alice) == 900
    await assert_invariants(conn)


async def test_refusals_in_precedence_order_write_nothing(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=50)
    bob = await new_wallet(conn)
    missing = uuid.uuid4()

    async def attempt(debit: uuid.UUID, credit: uuid.UUID, amount: int) -> O:
        return await core.create_transfer(
            conn, transfer_id=uuid.uuid4(), debit_account_id=debit, credit_account_id=credit,
            amount=amount, code="test",
        )  # fmt: skip

    assert await attempt(alice, alice, 1) is O.accounts_must_be_different
    assert await attempt(missing, bob, 1) is O.debit_account_not_found
    assert await attempt(alice, missing, 1) is O.credit_account_not_found
    assert await attempt(alice, bob, 51) is O.exceeds_credits
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'test'") == 0
    assert await balance(conn, alice) == 50
    await assert_invariants(conn)


async def test_clearing_accounts_may_go_negative_wallets_may_not(conn: Conn) -> None:
    wallet = await new_wallet(conn)
    await fund(conn, wallet, 10)
    clearing = await core.get_account(conn, core.ADJUSTMENT_CLEARING_ID)
    assert clearing is not None and clearing.balance == -10
    # The database itself refuses a negative wallet, even past the function.
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await conn.execute("UPDATE accounts SET debits_posted = 11 WHERE id = $1", wallet)
    assert info.value.constraint_name == "accounts_debits_exceed_credits"


async def test_hold_post_partial_releases_rest(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=1_000)
    shop = await new_wallet(conn)
    hold = uuid.uuid4()
    outcome = await create_transfer_or_hold(
        conn, transfer_id=hold, debit_account_id=alice, credit_account_id=shop, amount=400,
        code="hold", pending=True, timeout_s=60,
    )  # fmt: skip
    assert outcome is O.created
    account = await core.get_account(conn, alice)
    assert account is not None and (account.balance, account.available) == (1_000, 600)
    post = uuid.uuid4()
    assert (
        await post_pending(conn, transfer_id=post, pending_id=hold, amount=150, code="post")
        is O.created
    )
    assert (
        await post_pending(conn, transfer_id=post, pending_id=hold, amount=150, code="post")
        is O.exists
    )
    again = await post_pending(conn, transfer_id=uuid.uuid4(), pending_id=hold, code="post")
    assert again is O.pending_transfer_already_posted
    void = await void_pending(conn, transfer_id=uuid.uuid4(), pending_id=hold, code="void")
    assert void is O.pending_transfer_already_posted
    account = await core.get_account(conn, alice)
    assert account is not None and (account.balance, account.available) == (850, 850)
    assert await balance(conn, shop) == 150
    await assert_invariants(conn)


async def test_post_more_than_held_is_refused(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=1_000)
    shop = await new_wallet(conn)
    hold = uuid.uuid4()
    await create_transfer_or_hold(
        conn, transfer_id=hold, debit_account_id=alice, credit_account_id=shop, amount=100,
        code="hold", pending=True,
    )  # fmt: skip
    too_much = await post_pending(
        conn, transfer_id=uuid.uuid4(), pending_id=hold, amount=101, code="c"
    )
    assert too_much is O.exceeds_pending_transfer_amount
    not_pending = await post_pending(
        conn, transfer_id=uuid.uuid4(), pending_id=uuid.uuid4(), code="c"
    )
    assert not_pending is O.pending_transfer_not_found
    assert (
        await void_pending(conn, transfer_id=uuid.uuid4(), pending_id=hold, code="v") is O.created
    )
    account = await core.get_account(conn, alice)
    assert account is not None and (account.balance, account.available) == (1_000, 1_000)
    await assert_invariants(conn)


async def test_holds_count_against_available_balance(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=100)
    shop = await new_wallet(conn)
    hold = await create_transfer_or_hold(
        conn, transfer_id=uuid.uuid4(), debit_account_id=alice, credit_account_id=shop, amount=80,
        code="hold", pending=True,
    )  # fmt: skip
    assert hold is O.created
    spend = await core.create_transfer(
        conn, transfer_id=uuid.uuid4(), debit_account_id=alice, credit_account_id=shop, amount=21,
        code="debit",
    )  # fmt: skip
    assert spend is O.exceeds_credits


async def test_journal_is_immutable(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=100)
    with pytest.raises(asyncpg.RestrictViolationError):
        await conn.execute("UPDATE transfers SET amount = 1 WHERE credit_account_id = $1", alice)
    with pytest.raises(asyncpg.RestrictViolationError):
        await conn.execute("DELETE FROM transfers")
    with pytest.raises(asyncpg.RestrictViolationError):
        await conn.execute("TRUNCATE transfers CASCADE")


async def test_an_expired_hold_cannot_be_posted_only_voided(conn: Conn) -> None:
    alice = await new_wallet(conn, funds=100)
    shop = await new_wallet(conn)
    hold = uuid.uuid4()
    await create_transfer_or_hold(
        conn, transfer_id=hold, debit_account_id=alice, credit_account_id=shop, amount=60,
        code="hold", pending=True, timeout_s=1,
    )  # fmt: skip
    await asyncio.sleep(1.1)
    late = await post_pending(conn, transfer_id=uuid.uuid4(), pending_id=hold, code="c")
    assert late is O.pending_transfer_expired
    void = uuid.uuid5(hold, "expired")
    expired = await void_pending(
        conn, transfer_id=void, pending_id=hold, code="pending_expired", allow_expired=True
    )
    assert expired is O.created
    account = await core.get_account(conn, alice)
    assert account is not None and account.available == 100
    await assert_invariants(conn)


async def test_concurrent_debits_never_overdraw(pool: asyncpg.Pool) -> None:
    """200 simultaneous debits of 1 on a wallet holding 50: exactly 50 succeed."""
    async with pool.acquire() as conn:
        alice = await new_wallet(conn, funds=50)
        shop = await new_wallet(conn)

    async def debit() -> O:
        async with pool.acquire() as c:
            return await core.create_transfer(
                c, transfer_id=uuid.uuid4(), debit_account_id=alice, credit_account_id=shop,
                amount=1, code="debit",
            )  # fmt: skip

    outcomes = await asyncio.gather(*(debit() for _ in range(200)))
    assert outcomes.count(O.created) == 50
    assert outcomes.count(O.exceeds_credits) == 150
    async with pool.acquire() as conn:
        assert await balance(conn, alice) == 0
        assert await balance(conn, shop) == 50
        await assert_invariants(conn)


async def test_concurrent_duplicates_move_money_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        alice = await new_wallet(conn, funds=1_000)
        shop = await new_wallet(conn)
    tid = uuid.uuid4()

    async def debit() -> O:
        async with pool.acquire() as c:
            return await core.create_transfer(
                c, transfer_id=tid, debit_account_id=alice, credit_account_id=shop, amount=7,
                code="debit",
            )  # fmt: skip

    outcomes = await asyncio.gather(*(debit() for _ in range(30)))
    assert outcomes.count(O.created) == 1
    assert outcomes.count(O.exists) == 29
    async with pool.acquire() as conn:
        assert await balance(conn, alice) == 993
        await assert_invariants(conn)


def test_new_ids_are_distinct_version_4_uuids() -> None:
    from ledger.ids import BLOCK_IDS_MAX, new_id

    ids = [new_id() for _ in range(3 * BLOCK_IDS_MAX + 7)]
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
