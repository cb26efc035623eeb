"""HTTP routes of usage analytics, listings, exports and the operator lists.

Owners see their account, merchants themselves, the operator everything (the role's
scope is applied in `reports.scoped`). Aggregates say when they are complete
through; listings are read from the rows themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from litestar import Controller, Litestar, Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Stream

from ledger import limits
from ledger.access.api_keys import Principal, Role, require_role
from ledger.config import Settings
from ledger.errors import ValidationFailed
from ledger.http.apidoc import problem_responses
from ledger.http.lists import Cursor, Limit
from ledger.http.params import Auth, Pool
from ledger.observability import money
from ledger.usage import export, reports, rollup
from ledger.usage.refusals import RefusalRecorder
from ledger.usage.reports import DIMENSIONS, Filters, ListingPage, UsageQuery, UsageReport

__all__ = ["lifespan", "routes"]

TOOL_LENGTH_MAX = 64
SEARCH_LENGTH_MAX = 200
GroupBy = Annotated[
    str,
    QueryParameter(
        max_length=64,
        pattern=r"^[a-z]+(,[a-z]+)*$",
        description="Comma-separated: any of `bucket`, `token`, `tool`, `merchant`, `account`.",
    ),
]
Bucket = Annotated[
    Literal["hour", "day", "month"], QueryParameter(description="Time bucket (UTC) for `bucket`.")
]
Order = Annotated[
    Literal["bucket", "net_desc"],
    QueryParameter(
        description="`bucket` (then the other groups), or `net_desc`: biggest spend first."
    ),
]
Status = Annotated[
    Literal["pending", "captured", "voided", "expired"] | None,
    QueryParameter(required=False, description="Holds in this state only."),
]
Of = Annotated[
    Literal["usage", "charges", "holds", "refunds", "refusals", "accounts", "merchants"],
    QueryParameter(description="What to export: a usage breakdown or a listing."),
]


# ISO 8601 date-times only (a bare number is not a time); without an offset, UTC.
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"


def _utc(raw: str | None, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(f"`{name}` is not an ISO 8601 date-time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def provide_filters(
    from_: Annotated[
        str | None,
        QueryParameter(
            name="from",
            required=False,
            pattern=TIME_PATTERN,
            description="From this time (inclusive, ISO 8601, e.g. `2026-12-01T00:00:00Z`).",
        ),
    ] = None,
    to: Annotated[
        str | None,
        QueryParameter(
            required=False,
            pattern=TIME_PATTERN,
            description="Until this time (exclusive, ISO 8601).",
        ),
    ] = None,
    account_id: Annotated[uuid.UUID | None, QueryParameter(required=False)] = None,
    merchant_id: Annotated[uuid.UUID | None, QueryParameter(required=False)] = None,
    token_id: Annotated[
        uuid.UUID | None, QueryParameter(required=False, description="A credit token's id (`jti`).")
    ] = None,
    tool: Annotated[str | None, QueryParameter(required=False, max_length=TOOL_LENGTH_MAX)] = None,
) -> Filters:
    filters = Filters(
        from_=_utc(from_, "from"),
        to=_utc(to, "to"),
        account_id=account_id,
        merchant_id=merchant_id,
        token_id=token_id,
        tool=tool,
    )
    if filters.from_ and filters.to and filters.from_ >= filters.to:
        raise ValidationFailed("`from` must be before `to`")
    return filters


def _group_by(raw: str) -> tuple[reports.Dimension, ...]:
    parts = raw.split(",")
    unknown = [p for p in parts if p not in DIMENSIONS]
    if unknown or len(set(parts)) != len(parts):
        raise ValidationFailed(f"`group_by` takes {', '.join(DIMENSIONS)} (each once)")
    return tuple(p for p in DIMENSIONS if p in parts)


def _reader(principal: Principal) -> None:
    require_role(principal, Role.owner, Role.merchant, Role.operator)


_FILTERS = {"filters": Provide(provide_filters)}
FiltersParam = NamedDependency[Filters]
_REFUSALS = problem_responses(401, 403, 404, 422)


class UsageController(Controller):
    path = "/v1/usage"
    tags = ["usage"]
    security = [{"apiKey": []}]
    dependencies = _FILTERS

    @get(
        operation_id="getUsage",
        summary="Spend by time bucket, credit token, tool, merchant and account",
        description=(
            "Aggregates from the usage roll-up: `complete_through` is the time before which "
            "every money movement is counted (usually a second or two ago). Owners see their "
            "account, merchants their own revenue, the operator everything. Times are whole "
            "UTC hours; buckets are UTC. `net_micros` = charged − refunded."
        ),
        responses=_REFUSALS,
    )
    async def usage(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        group_by: GroupBy = "bucket",
        bucket: Bucket = "day",
        order: Order = "bucket",
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> UsageReport:
        _reader(principal)
        query = UsageQuery(
            filters=reports.scoped(principal, filters),
            group_by=_group_by(group_by),
            bucket=bucket,
            order=order,
        )
        async with pool.acquire() as conn:
            fresh = await rollup.freshness(conn)
            return await reports.usage_groups(
                conn, query, limit=limit, cursor=cursor, complete_through=fresh.complete_through
            )

    @get(
        "/charges",
        operation_id="listUsageCharges",
        summary="Charges and captures, newest first",
        description="Read from the charges themselves (always current); the role's scope applies.",
        responses=_REFUSALS,
    )
    async def charges(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> ListingPage:
        return await _listing(principal, pool, "charges", filters, limit, cursor)

    @get(
        "/holds",
        operation_id="listUsageHolds",
        summary="Holds with what was captured, newest first",
        description="Read from the holds themselves (always current): status, amount held and "
        "captured; the role's scope applies.",
        responses=_REFUSALS,
    )
    async def holds(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
        status: Status = None,
    ) -> ListingPage:
        return await _listing(principal, pool, "holds", filters, limit, cursor, status=status)

    @get(
        "/refunds",
        operation_id="listUsageRefunds",
        summary="Refunds, newest first",
        description="Read from the refunds themselves (always current), with the charge each "
        "refunded; the role's scope applies.",
        responses=_REFUSALS,
    )
    async def refunds(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> ListingPage:
        return await _listing(principal, pool, "refunds", filters, limit, cursor)

    @get(
        "/refusals",
        operation_id="listUsageRefusals",
        summary="Refused money requests of the last week, newest first",
        description="What was refused and why: the problem `code`, the `limit` for 402, the "
        "credit token, tool and amount asked. Kept for 7 days.",
        responses=_REFUSALS,
    )
    async def refusals(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> ListingPage:
        return await _listing(principal, pool, "refusals", filters, limit, cursor)

    @get(
        "/export.csv",
        operation_id="exportUsageCsv",
        summary="Export as CSV (streamed)",
        media_type="text/csv",
        responses=_REFUSALS,
        description="Any usage breakdown (`of=usage`, with `group_by`/`bucket`/`order`) or listing, "
        "every row, streamed. Header row first; times ISO 8601; money in micro-USD.",
    )
    async def export_csv(
        self,
        request: Request[Any, Any, Any],
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        of: Of = "usage",
        group_by: GroupBy = "bucket",
        bucket: Bucket = "day",
        order: Order = "bucket",
        status: Status = None,
        q: Annotated[
            str | None, QueryParameter(required=False, max_length=SEARCH_LENGTH_MAX)
        ] = None,
    ) -> Stream:
        source, columns = _export_source(principal, of, filters, group_by, bucket, order)
        rows = _rows(pool, source, reports.scoped(principal, filters), status=status, q=q)
        return Stream(
            export.csv_lines(rows, columns),
            media_type=export.EXPORT_MEDIA_TYPES["csv"],
            headers=_download_headers(of, "csv"),
        )

    @get(
        "/export.ndjson",
        operation_id="exportUsageNdjson",
        summary="Export as NDJSON (streamed)",
        media_type="application/x-ndjson",
        responses=_REFUSALS,
        description="The same rows as the CSV export, one JSON object per line.",
    )
    async def export_ndjson(
        self,
        principal: Auth,
        pool: Pool,
        filters: FiltersParam,
        of: Of = "usage",
        group_by: GroupBy = "bucket",
        bucket: Bucket = "day",
        order: Order = "bucket",
        status: Status = None,
        q: Annotated[
            str | None, QueryParameter(required=False, max_length=SEARCH_LENGTH_MAX)
        ] = None,
    ) -> Stream:
        source, _ = _export_source(principal, of, filters, group_by, bucket, order)
        rows = _rows(pool, source, reports.scoped(principal, filters), status=status, q=q)
        return Stream(
            export.ndjson_lines(rows),
            media_type=export.EXPORT_MEDIA_TYPES["ndjson"],
            headers=_download_headers(of, "ndjson"),
        )


def _download_headers(of: str, suffix: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{of}.{suffix}"'}


def _export_source(
    principal: Principal,
    of: str,
    filters: FiltersParam,
    group_by: str,
    bucket: reports.BucketUnit,
    order: reports.Ordering,
) -> tuple[UsageQuery | reports.Listing, list[str]]:
    _reader(principal)
    if of in ("accounts", "merchants"):
        require_role(principal, Role.operator)
    if of != "usage":
        listing = reports.listing_named(of)
        return listing, reports.listing_columns(listing)
    dims = _group_by(group_by)
    query = UsageQuery(
        filters=reports.scoped(principal, filters), group_by=dims, bucket=bucket, order=order
    )
    reports.check_range(query)
    return query, export.columns_for(dims)


async def _rows(
    pool: asyncpg.Pool, source: UsageQuery | reports.Listing, filters: FiltersParam, **extra: Any
) -> AsyncIterator[dict[str, Any]]:
    async with pool.acquire() as conn:
        async for row in reports.stream_rows(conn, source, filters, extra):
            yield row


async def _listing(
    principal: Principal,
    pool: asyncpg.Pool,
    listing: reports.Listing,
    filters: FiltersParam,
    limit: int,
    cursor: str | None,
    **extra: Any,
) -> ListingPage:
    _reader(principal)
    async with pool.acquire() as conn:
        return await reports.list_rows(
            conn,
            listing,
            reports.scoped(principal, filters),
            limit=limit,
            cursor=cursor,
            extra=extra,
        )


Search = Annotated[
    str | None,
    QueryParameter(
        required=False,
        max_length=SEARCH_LENGTH_MAX,
        description="Case-insensitive part of the name.",
    ),
]
Kind = Annotated[
    Literal[
        "customer_wallet",
        "merchant_revenue",
        "card_clearing",
        "usdc_clearing",
        "adjustment_clearing",
    ]
    | None,
    QueryParameter(required=False),
]


@get(
    "/v1/accounts",
    operation_id="listAccounts",
    summary="Accounts with balances (operator)",
    description="Paged by name, searchable; `kind` narrows to one kind of account.",
    tags=["accounts"],
    security=[{"apiKey": []}],
    responses=problem_responses(401, 403, 422),
)
async def list_accounts(
    principal: Auth,
    pool: Pool,
    q: Search = None,
    kind: Kind = None,
    limit: Limit = limits.PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> ListingPage:
    require_role(principal, Role.operator)
    async with pool.acquire() as conn:
        return await reports.list_rows(
            conn, "accounts", Filters(), limit=limit, cursor=cursor, extra={"q": q, "kind": kind}
        )


@get(
    "/v1/merchants",
    operation_id="listMerchants",
    summary="Merchants with revenue (operator)",
    description="The merchants (operator), paged by name, searchable by name.",
    tags=["merchants"],
    security=[{"apiKey": []}],
    responses=problem_responses(401, 403, 422),
)
async def list_merchants(
    principal: Auth,
    pool: Pool,
    q: Search = None,
    limit: Limit = limits.PAGE_SIZE_DEFAULT,
    cursor: Cursor = None,
) -> ListingPage:
    require_role(principal, Role.operator)
    async with pool.acquire() as conn:
        return await reports.list_rows(
            conn, "merchants", Filters(), limit=limit, cursor=cursor, extra={"q": q}
        )


routes: list[Any] = [UsageController, list_accounts, list_merchants]


@contextlib.asynccontextmanager
async def _roller(app: Litestar) -> AsyncIterator[None]:
    """Every worker runs the roll-up loop; the state row's lock lets one write at a time."""
    settings: Settings = app.state.settings
    recorder = RefusalRecorder(app.state.pool)
    remove_sink = money.add_refusal_sink(recorder)
    tasks = [
        asyncio.create_task(rollup.run_roller(app.state.pool, settings.usage_rollup_interval_s)),
        asyncio.create_task(recorder.run()),
    ]
    app.state.metric_sources = [*getattr(app.state, "metric_sources", ()), rollup.lag_samples]
    try:
        yield
    finally:
        remove_sink()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


lifespan = [_roller]
