"""One shape for every list: `{"data": [...], "has_more": bool, "next_cursor": str | null}`.

A list route takes `limit` (1..`PAGE_SIZE_MAX`, default `PAGE_SIZE_DEFAULT`) and
`cursor` (the previous page's `next_cursor`), fetches `limit + 1` rows after the
cursor's position, and answers `page_of(rows, limit, ...)`:

    @get("/v1/things", operation_id="listThings", ...)
    async def list_things(self, pool: Pool, limit: Limit = PAGE_SIZE_DEFAULT,
                          cursor: Cursor = None) -> Page[ThingView]:
        after = decode_cursor("things", cursor, int)          # None on the first page
        rows = await pool.fetch(queries["list_things"], after, limit + 1)
        return page_of([view(r) for r in rows], limit, "things", lambda t: t.seq)

A cursor is opaque to clients (base64url of the list's name and a position: a
sequence number or an id); one from another list, or not one of ours, is 422.
Unknown query parameters are 422 on every route (`refuse_unknown_query`, run by
the request guard), so a misspelt `limt=5` is not silently the default.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import parse_qsl

import msgspec
from litestar.params import QueryParameter
from litestar.types import Scope

from ledger import limits
from ledger.errors import ValidationFailed

__all__ = [
    "CURSOR_LENGTH_MAX",
    "Cursor",
    "Limit",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "page_of",
    "refuse_unknown_query",
]

T = TypeVar("T")
Position = TypeVar("Position", int, str, uuid.UUID)

CURSOR_LENGTH_MAX = 200


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of a list; `next_cursor` (with `has_more`) asks for the next one."""

    data: list[T]
    has_more: bool
    next_cursor: str | None


Limit = Annotated[
    int,
    QueryParameter(
        ge=1, le=limits.PAGE_SIZE_MAX, description="Items per page (default 50, at most 500)."
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        required=False,
        min_length=1,
        max_length=CURSOR_LENGTH_MAX,
        pattern="^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page; omit for the first page.",
    ),
]


def encode_cursor(list_name: str, position: int | str | uuid.UUID) -> str:
    raw = msgspec.json.encode([list_name, str(position)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(list_name: str, cursor: str | None, kind: type[Position]) -> Position | None:
    """The position a cursor of list `list_name` holds; None for the first page."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, position = msgspec.json.decode(raw, type=tuple[str, str])
        if name == list_name:
            return kind(position)
    except (binascii.Error, msgspec.DecodeError, ValueError):
        pass
    raise ValidationFailed(
        "the cursor is not one this list gave out",
        errors=[{"message": "unknown cursor", "key": "cursor"}],
    )


def page_of(
    rows: Sequence[T], limit: int, list_name: str, position: Callable[[T], int | str | uuid.UUID]
) -> Page[T]:
    """The page for `rows`, fetched as up to `limit + 1` items after the cursor."""
    assert limit >= 1
    data = list(rows[:limit])
    has_more = len(rows) > limit
    next_cursor = encode_cursor(list_name, position(data[-1])) if has_more else None
    return Page(data=data, has_more=has_more, next_cursor=next_cursor)


QUERY_PARAMETERS_STATE_KEY = "query_parameters"


def refuse_unknown_query(scope: Scope) -> None:
    """422 for a query parameter the route does not document (see the module docstring)."""
    query = scope.get("query_string")
    if not query:
        return
    known: dict[tuple[str, str], frozenset[str]] = scope["app"].state.get(
        QUERY_PARAMETERS_STATE_KEY, {}
    )
    allowed = known.get((str(scope.get("method")), str(scope.get("path_template"))), frozenset())
    names = {name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
    unknown = sorted(names - allowed)
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter {unknown[0]!r}"
            + (f"; this route takes {', '.join(sorted(allowed))}" if allowed else ""),
            errors=[{"message": "unknown query parameter", "key": name} for name in unknown],
        )


def query_parameters_of(document: Any) -> dict[tuple[str, str], frozenset[str]]:
    """(method, path) → the query parameters the OpenAPI document gives it."""
    table: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in (document.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is not None:
                names = [
                    p.name
                    for p in operation.parameters or ()
                    if getattr(p, "param_in", "") == "query"
                ]
                table[(method.upper(), path)] = frozenset(names)
    return table
