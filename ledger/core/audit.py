"""The ledger's invariants, checked against the live database.

1. the sum of all balances is zero (posted and pending);
2. every account's balance equals its journal;
3. no wallet below zero;
4. no pending amount larger than what backs it (and no hold posted beyond its amount);

and, for credit tokens and the charge path: no token's remaining budget below zero,
token counters equal to what was charged/held through them, and every charge,
capture, refund and hold matched one-to-one by the journal (so an idempotency key
can never have moved money twice without the audit seeing an unmatched transfer).

Used by tests after every scenario and by operators as `ledger audit`.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from ledger.db.pool import Conn
from ledger.db.queries import load_queries

__all__ = ["AuditReport", "Violation", "run_audit"]

queries = load_queries("ledger.core", "audit.sql")


class Violation(msgspec.Struct, frozen=True):
    invariant: str
    detail: str
    rows: list[dict[str, Any]] = msgspec.field(default_factory=list)


class AuditReport(msgspec.Struct, frozen=True):
    accounts: int
    transfers: int
    violations: list[Violation]

    @property
    def ok(self) -> bool:
        return not self.violations


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [
        {k: str(v) if k == "id" or k.endswith("_id") else v for k, v in r.items()} for r in records
    ]


async def run_audit(conn: Conn) -> AuditReport:
    """Check every invariant in one repeatable-read snapshot."""
    if conn.is_in_transaction():
        # Inside a caller's transaction (tests): its snapshot is the one to check.
        return await _audit(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _audit(conn)


async def _audit(conn: Conn) -> AuditReport:
    violations: list[Violation] = []
    accounts = await conn.fetchval("SELECT count(*) FROM accounts")
    transfers = await conn.fetchval("SELECT count(*) FROM transfers")
    sums = await conn.fetchrow(queries["sum_of_balances"])
    assert sums is not None
    if sums["posted"] != 0 or sums["pending"] != 0:
        violations.append(
            Violation(
                "sum_of_balances_is_zero",
                f"posted balances sum to {sums['posted']}, pending to {sums['pending']}",
            )
        )
    checks = (
        (
            "balance_matches_journal",
            "balances_not_matching_journal",
            "balance differs from journal",
        ),
        ("no_wallet_below_zero", "wallets_below_zero", "wallet below zero"),
        ("pending_backed", "pending_not_backed", "held more than the balance"),
        ("posted_within_hold", "pending_exceeding_hold", "resolution exceeds its hold"),
        ("no_token_below_zero", "tokens_over_budget", "credit token over budget"),
        ("token_budget_matches_charges", "token_counters_not_matching", "token counters differ"),
        ("charges_match_journal", "charges_not_matching_journal", "charge/refund without journal"),
        ("holds_match_journal", "holds_not_matching_journal", "hold state differs from journal"),
    )
    for invariant, query, detail in checks:
        rows = await conn.fetch(queries[query])
        if rows:
            violations.append(Violation(invariant, f"{len(rows)} × {detail}", _rows(rows)))
    return AuditReport(accounts=accounts, transfers=transfers, violations=violations)
