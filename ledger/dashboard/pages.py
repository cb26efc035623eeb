"""What each role's page shows, gathered through the same services the API uses, so
that every figure on a page is the figure the API answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from issuer.tokens import list_tokens
from issuer.topups.card import list_card_shortfalls
from issuer.topups.usdc import list_deposits, list_reorg_alerts
from ledger.access.api_keys import Principal
from ledger.core.accounts import read_account
from ledger.core.audit import run_audit
from ledger.dashboard.charts import bar_chart
from ledger.usage import reports, rollup
from ledger.usage.reports import Filters, UsageQuery
from verifier.charges.merchants import read_own_merchant

__all__ = ["SERIES_DAYS", "merchant_page", "operator_page", "owner_page", "usd"]

SERIES_DAYS = 30
ROWS_MAX = 20
LIST_ROWS_MAX = 50


def usd(micros: int | None) -> str:
    """Exact: micro-USD as dollars with six decimals (what the browser test compares)."""
    if micros is None:
        return ""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}${whole:,}.{frac:06d}"


def _since() -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=SERIES_DAYS - 1)


async def _groups(conn: Any, principal: Principal, **spec: Any) -> list[dict[str, Any]]:
    filters = reports.scoped(principal, Filters(from_=spec.pop("from_", None)))
    page = await reports.usage_groups(
        conn, UsageQuery(filters=filters, **spec), limit=500, cursor=None, complete_through=None
    )
    return page.data


def _series(rows: list[dict[str, Any]], title: str) -> Any:
    by_day = {r["bucket"].date(): r["net_micros"] for r in rows}
    first = _since().date()
    days = [first + timedelta(days=i) for i in range(SERIES_DAYS)]
    return bar_chart([(d.strftime("%m-%d"), by_day.get(d, 0)) for d in days], title=title)


async def _list(conn: Any, principal: Principal, listing: reports.Listing) -> list[dict[str, Any]]:
    page = await reports.list_rows(
        conn, listing, reports.scoped(principal, Filters()), limit=ROWS_MAX, cursor=None
    )
    return page.data


async def owner_page(pool: asyncpg.Pool, principal: Principal) -> dict[str, Any]:
    assert principal.subject_id is not None
    account = await read_account(pool, principal, principal.subject_id)
    tokens = await list_tokens(pool, principal, account_id=None, cursor=None, limit=LIST_ROWS_MAX)
    async with pool.acquire() as conn:
        daily = await _groups(conn, principal, from_=_since(), group_by=("bucket",))
        return {
            "account": account,
            "chart": _series(daily, "spend"),
            "by_tool": await _groups(conn, principal, group_by=("tool",), order="net_desc"),
            "by_token": await _groups(conn, principal, group_by=("token",), order="net_desc"),
            "tokens": tokens.data,
            "refusals": await _list(conn, principal, "refusals"),
            "fresh": await rollup.freshness(conn),
        }


async def merchant_page(pool: asyncpg.Pool, principal: Principal) -> dict[str, Any]:
    assert principal.subject_id is not None
    merchant = await read_own_merchant(pool, principal.subject_id)
    async with pool.acquire() as conn:
        daily = await _groups(conn, principal, from_=_since(), group_by=("bucket",))
        return {
            "merchant": merchant,
            "chart": _series(daily, "revenue"),
            "by_tool": await _groups(conn, principal, group_by=("tool",), order="net_desc"),
            "top_accounts": (
                await _groups(conn, principal, group_by=("account",), order="net_desc")
            )[:ROWS_MAX],
            "charges": await _list(conn, principal, "charges"),
            "refunds": await _list(conn, principal, "refunds"),
            "fresh": await rollup.freshness(conn),
        }


async def operator_page(
    pool: asyncpg.Pool, principal: Principal, *, search: str | None, audit: bool
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        accounts = await reports.list_rows(
            conn, "accounts", Filters(), limit=LIST_ROWS_MAX, cursor=None, extra={"q": search}
        )
        merchants = await reports.list_rows(
            conn, "merchants", Filters(), limit=LIST_ROWS_MAX, cursor=None, extra={"q": search}
        )
        totals = await _groups(conn, principal, group_by=("merchant",), order="net_desc")
        report = await run_audit(conn) if audit else None
        fresh = await rollup.freshness(conn)
    return {
        "accounts": accounts.data,
        "merchants": merchants.data,
        "totals": {str(r["merchant_id"]): r for r in totals},
        "audit": report,
        "shortfalls": (await list_card_shortfalls(pool, cursor=None, limit=ROWS_MAX)).data,
        "reorg_alerts": (await list_reorg_alerts(pool, cursor=None, limit=ROWS_MAX)).data,
        "unattributed": (
            await list_deposits(pool, status="unattributed", cursor=None, limit=ROWS_MAX)
        ).data,
        "search": search or "",
        "fresh": fresh,
    }
