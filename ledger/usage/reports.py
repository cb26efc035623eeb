"""Usage answers and listings, scoped by role: an owner sees its account, a merchant
itself, the operator everything. Aggregates come from the roll-up (complete through
`complete_through`); listings read the rows themselves (always current).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

import msgspec

from ledger import limits
from ledger.access.api_keys import Principal, Role
from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import NotFound, ValidationFailed

__all__ = [
    "DIMENSIONS",
    "Filters",
    "ListingPage",
    "UsageQuery",
    "UsageReport",
    "check_range",
    "list_rows",
    "scoped",
    "stream_rows",
    "usage_groups",
]

queries = load_queries("ledger.usage", "usage.sql")

BucketUnit = Literal["hour", "day", "month"]
Dimension = Literal["bucket", "token", "tool", "merchant", "account"]
DIMENSIONS: tuple[Dimension, ...] = ("bucket", "token", "tool", "merchant", "account")
Ordering = Literal["bucket", "net_desc"]
Listing = Literal["charges", "holds", "refunds", "refusals", "accounts", "merchants"]
# Rows a streamed export reads from the database at a time.
EXPORT_PREFETCH = 1_000


@dataclass(frozen=True, kw_only=True)
class Filters:
    """What every usage answer and listing can be narrowed by ([from, to) in time)."""

    from_: datetime | None = None
    to: datetime | None = None
    account_id: uuid.UUID | None = None
    merchant_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None
    tool: str | None = None

    def args(self) -> tuple[Any, ...]:
        return (self.from_, self.to, self.account_id, self.merchant_id, self.token_id, self.tool)


@dataclass(frozen=True, kw_only=True)
class UsageQuery:
    filters: Filters
    group_by: tuple[Dimension, ...] = ("bucket",)
    bucket: BucketUnit = "day"
    order: Ordering = "bucket"


class ListingPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a listing, in the shared list shape (money in micro-USD)."""

    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """One page of usage groups (the list shape), and the time the roll-up is complete
    through: every money movement committed before it is counted."""

    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None
    complete_through: datetime | None
    unit: Literal["micro_usd"] = "micro_usd"


def scoped(principal: Principal, filters: Filters) -> Filters:
    """The filters as this role may see them. Asking for another account or merchant
    answers like one that does not exist."""
    if principal.role is Role.operator:
        return filters
    if principal.role is Role.owner:
        if filters.account_id not in (None, principal.subject_id):
            raise NotFound("no such account")
        return replace(filters, account_id=principal.subject_id)
    if filters.merchant_id not in (None, principal.subject_id):
        raise NotFound("no such merchant")
    return replace(filters, merchant_id=principal.subject_id)


def _aligned(value: datetime | None, unit: BucketUnit) -> bool:
    if value is None:
        return True
    value = value.astimezone(UTC)
    return (value.minute, value.second, value.microsecond) == (0, 0, 0) and (
        unit == "hour" or value.hour == 0
    )


def _group_args(q: UsageQuery) -> tuple[str, tuple[Any, ...]]:
    """The query (hourly buckets when hours matter, daily otherwise) and its arguments."""
    f = q.filters
    hourly = q.bucket == "hour" or not (_aligned(f.from_, "day") and _aligned(f.to, "day"))
    if not (_aligned(f.from_, "hour") and _aligned(f.to, "hour")):
        raise ValidationFailed("`from` and `to` must be whole UTC hours (usage is kept per hour)")
    flags = tuple(d in q.group_by for d in ("token", "tool", "merchant", "account"))
    unit = q.bucket if "bucket" in q.group_by else None
    name = "groups_hourly" if hourly else "groups_daily"
    return name, (*f.args(), unit, *flags, q.order == "net_desc")


def check_range(q: UsageQuery) -> None:
    """Refuse a range the buckets cannot answer (before an export starts streaming)."""
    _group_args(q)


def _group_row(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in ("bucket", "account_id", "merchant_id", "token_id", "tool")}
    out = {k: v for k, v in out.items() if v is not None}
    out.update(
        charges=row["charges"],
        charged_micros=row["charged_micros"],
        refunds=row["refunds"],
        refunded_micros=row["refunded_micros"],
        net_micros=row["charged_micros"] - row["refunded_micros"],
    )
    return out


def _encode_cursor(*parts: object) -> str:
    raw = msgspec.json.encode([str(p) for p in parts])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None, size: int) -> list[str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = msgspec.json.decode(raw, type=list[str])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ValidationFailed("`cursor` is not a cursor this service handed out") from None
    if len(parts) != size:
        raise ValidationFailed("`cursor` is not a cursor this service handed out")
    return parts


async def _custom_plans(conn: Conn) -> None:
    # The optional filters fold away only in a plan made for the actual values.
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


async def usage_groups(
    conn: Conn, q: UsageQuery, *, limit: int, cursor: str | None, complete_through: datetime | None
) -> UsageReport:
    name, args = _group_args(q)
    offset = int((_decode_cursor(cursor, 1) or ["0"])[0])
    if not 0 <= offset <= limits.USAGE_OFFSET_MAX:
        raise ValidationFailed("`cursor` is not a cursor this service handed out")
    async with conn.transaction(readonly=True):
        await _custom_plans(conn)
        rows = await conn.fetch(queries[name], *args, limit + 1, offset)
    data = [_group_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return UsageReport(
        data=data,
        has_more=more,
        next_cursor=_encode_cursor(offset + limit) if more else None,
        complete_through=complete_through,
    )


_ROW_FIELDS: dict[Listing, Sequence[str]] = {
    "charges": (
        "id",
        "hold_id",
        "account_id",
        "merchant_id",
        "token_jti",
        "tool",
        "amount_micros",
        "refunded_micros",
        "receipt_id",
        "metadata",
        "created_at",
    ),
    "holds": (
        "id",
        "status",
        "account_id",
        "merchant_id",
        "token_jti",
        "tool",
        "amount_micros",
        "captured_micros",
        "charge_id",
        "expires_at",
        "created_at",
        "resolved_at",
    ),
    "refunds": (
        "id",
        "charge_id",
        "account_id",
        "merchant_id",
        "token_jti",
        "tool",
        "amount_micros",
        "reason",
        "created_at",
    ),
    "refusals": (
        "id",
        "account_id",
        "merchant_id",
        "token_jti",
        "kind",
        "tool",
        "amount_micros",
        "code",
        "limit",
        "status",
        "created_at",
    ),
    "accounts": (
        "id",
        "kind",
        "name",
        "balance_micros",
        "available_micros",
        "pending_debits_micros",
        "created_at",
    ),
    "merchants": (
        "id",
        "name",
        "revenue_account_id",
        "revenue_balance_micros",
        "revenue_pending_micros",
        "created_at",
    ),
}


def listing_named(name: str) -> Listing:
    for listing in get_args(Listing):
        if listing == name:
            return cast(Listing, listing)
    raise ValidationFailed(f"no listing {name!r}")


def listing_columns(listing: Listing) -> list[str]:
    return [("token_id" if c == "token_jti" else c) for c in _ROW_FIELDS[listing]]


def listing_row(listing: Listing, row: Any) -> dict[str, Any]:
    out = {("token_id" if k == "token_jti" else k): row[k] for k in _ROW_FIELDS[listing]}
    if listing == "charges":
        out["kind"] = "charge" if out["hold_id"] is None else "capture"
    return out


def _listing_args(
    listing: Listing, filters: Filters, keyset: list[str] | None, extra: Any
) -> tuple[Any, ...]:
    if listing in ("accounts", "merchants"):
        after = (keyset[0], uuid.UUID(keyset[1])) if keyset else (None, None)
        return (extra.get("q"), extra.get("kind"), *after)
    after_at = datetime.fromisoformat(keyset[0]) if keyset else None
    after_id: Any = None
    if keyset:
        after_id = int(keyset[1]) if listing == "refusals" else uuid.UUID(keyset[1])
    args: tuple[Any, ...] = (*filters.args(), after_at, after_id)
    return args


def _keyset(listing: Listing, row: Any) -> str:
    if listing in ("accounts", "merchants"):
        return _encode_cursor(row["name"].lower(), row["id"])
    return _encode_cursor(row["created_at"].isoformat(), row["id"])


async def list_rows(
    conn: Conn,
    listing: Listing,
    filters: Filters,
    *,
    limit: int,
    cursor: str | None,
    extra: dict[str, Any] | None = None,
) -> ListingPage:
    """One page of a listing, newest first (accounts and merchants: by name)."""
    extra = extra or {}
    try:
        keyset = _decode_cursor(cursor, 2)
        args = _listing_args(listing, filters, keyset, extra)
    except ValueError:
        raise ValidationFailed("`cursor` is not a cursor this service handed out") from None
    tail: tuple[Any, ...] = (extra.get("status"),) if listing == "holds" else ()
    async with conn.transaction(readonly=True):
        await _custom_plans(conn)
        rows = await conn.fetch(queries[f"list_{listing}"], *args, limit + 1, *tail)
    more = len(rows) > limit
    return ListingPage(
        data=[listing_row(listing, r) for r in rows[:limit]],
        has_more=more,
        next_cursor=_keyset(listing, rows[limit - 1]) if more else None,
    )


async def stream_rows(
    conn: Conn,
    source: UsageQuery | Listing,
    filters: Filters | None = None,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every row of a usage answer or listing, read through a server-side cursor."""
    if isinstance(source, UsageQuery):
        name, args = _group_args(source)
        args = (*args, None, 0)
        shape: Any = _group_row
    else:
        assert filters is not None
        extra = extra or {}
        name = f"list_{source}"
        args = (*_listing_args(source, filters, None, extra), None)
        if source == "holds":
            args = (*args, extra.get("status"))

        def shape(row: Any) -> dict[str, Any]:
            return listing_row(source, row)

    async with conn.transaction(readonly=True):
        await _custom_plans(conn)
        async for row in conn.cursor(queries[name], *args, prefetch=EXPORT_PREFETCH):
            yield shape(row)
