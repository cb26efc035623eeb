"""CSV and NDJSON exports of any usage answer or listing, streamed row by row.

The rows come through a server-side cursor (`reports.stream_rows`) and leave as
they come, so an export of millions of rows holds a few thousand in memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = ["EXPORT_MEDIA_TYPES", "columns_for", "csv_lines", "ndjson_lines"]

ExportFormat = Literal["csv", "ndjson"]
EXPORT_MEDIA_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
# Rows per chunk written to the socket.
EXPORT_CHUNK_ROWS = 500
_encoder = msgspec.json.Encoder()
USAGE_METRICS = ("charges", "charged_micros", "refunds", "refunded_micros", "net_micros")


def columns_for(group_by: Sequence[str]) -> list[str]:
    names = {
        "bucket": "bucket",
        "account": "account_id",
        "merchant": "merchant_id",
        "token": "token_id",
        "tool": "tool",
    }
    dims = [names[d] for d in ("bucket", "account", "merchant", "token", "tool") if d in group_by]
    return [*dims, *USAGE_METRICS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | dict):  # as the JSON answers write them
        return (
            _encoder.encode(value).decode().strip('"')
            if isinstance(value, datetime)
            else (_encoder.encode(value).decode())
        )
    if isinstance(value, dict):
        return _encoder.encode(value).decode()
    text = str(value)
    # A spreadsheet would run a cell that starts like a formula: keep it text.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    return text.lstrip("-").isdigit()


async def csv_lines(rows: AsyncIterator[dict[str, Any]], columns: list[str]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    async for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
        count += 1
        if count % EXPORT_CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


async def ndjson_lines(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    chunk: list[bytes] = []
    async for row in rows:
        chunk.append(_encoder.encode(row))
        if len(chunk) >= EXPORT_CHUNK_ROWS:
            yield b"\n".join(chunk) + b"\n"
            chunk = []
    if chunk:
        yield b"\n".join(chunk) + b"\n"
