"""Hostile input is refused early, as a problem, and never reaches a 500.

- `RequestGuard` (ASGI middleware, before authentication and body decoding):
  request headers larger than `request_header_bytes_max` in total, or more than
  `request_headers_count_max` of them, are 431 `headers_too_large`; a declared
  `Content-Length` above `request_body_bytes_max` is 413 `payload_too_large`
  without reading the body (a chunked body is cut off by the framework at the
  same limit while it is read).
- `LedgerRequest`: a body not sent as JSON (`text/plain`, a form, no content
  type) is 415 `unsupported_media_type` before it is parsed; a JSON body nested deeper than `JSON_DEPTH_MAX` (measured
  before decoding: see `ledger.jsondepth`), or not valid UTF-8, is 422 `validation_failed` rather than an exception the
  framework does not know; so is a string holding U+0000, which PostgreSQL cannot
  store (refused here, alone, before it can fail a batch of other requests).
- A query parameter the route does not take is 422 (`ledger.http.lists`).

The server's own header limit (`server_options`) is set well above ours, so a
client between the two limits gets our problem rather than a bare 400.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from ledger.config import Settings
from ledger.errors import LedgerError, PayloadTooLarge, ValidationFailed
from ledger.http.jsondepth import nests_deeper_than
from ledger.http.lists import refuse_unknown_query
from ledger.limits import JSON_DEPTH_MAX

__all__ = [
    "HeadersTooLarge",
    "LedgerRequest",
    "RequestGuard",
    "UnsupportedMediaType",
    "is_json_media_type",
    "refuse_deep_json",
    "refuse_non_json",
    "server_options",
]

# uvicorn (h11) refuses an incomplete header block larger than this with a plain
# 400 and closes; it must stay above our own limit for ours to be the one seen.
SERVER_HEADER_BYTES_FACTOR = 4
SERVER_HEADER_BYTES_MIN = 64 * 1024


class HeadersTooLarge(LedgerError):
    code = "headers_too_large"
    status = 431
    title = "Request headers too large"


class RequestGuard(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self._allow: dict[str, str] | None = None
        self.header_bytes_max = settings.request_header_bytes_max
        self.headers_count_max = settings.request_headers_count_max
        self.body_bytes_max = settings.request_body_bytes_max

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        if len(headers) > self.headers_count_max:
            raise HeadersTooLarge(f"at most {self.headers_count_max} request headers are accepted")
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) for name, value in headers)
        if size > self.header_bytes_max:
            raise HeadersTooLarge(
                f"the request line and headers may total at most {self.header_bytes_max} bytes"
            )
        declared = _content_length(headers)
        if declared is not None and declared > self.body_bytes_max:
            raise PayloadTooLarge(f"the request body may be at most {self.body_bytes_max} bytes")
        if scope.get("method") == "OPTIONS":
            await self._options(scope, send)
            return
        refuse_unknown_query(scope)
        await next_app(scope, receive, send)

    async def _options(self, scope: Scope, send: Send) -> None:
        # The framework's automatic OPTIONS answer lists only the methods of the
        # first handler registered on a path; answer from the full route table.
        if self._allow is None:
            self._allow = {
                route.path_format: ", ".join(sorted(route.methods))
                for route in scope["app"].routes
                if hasattr(route, "methods")
            }
        allow = self._allow.get(str(scope.get("path_template")), "OPTIONS")
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", allow.encode())],
        }
        await send(start)
        body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": b"",
            "more_body": False,
        }
        await send(body)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            # The HTTP server has already refused a malformed Content-Length.
            return int(value) if value.strip().isdigit() else None
    return None


class UnsupportedMediaType(LedgerError):
    code = "unsupported_media_type"
    status = 415
    title = "The request body must be JSON"


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/*+json`, any parameters but a charset
    other than UTF-8 (JSON is UTF-8: RFC 8259)."""
    if not content_type:
        return False
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return False
    if "charset" in params.lower():
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8",
                "utf8",
            ):
                return False
    return True


def refuse_non_json(request: Request[Any, Any, Any]) -> None:
    """415 for a body not sent as JSON, before anything parses it."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "send the body as JSON with `Content-Type: application/json`",
            accepted=["application/json"],
        )


class LedgerRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        # The framework parses a handler's `data` as JSON whatever the content type.
        refuse_non_json(self)
        refuse_deep_json(await self.body())
        try:
            value = await super().json()
        except UnicodeDecodeError:
            raise ValidationFailed("the request body is not valid UTF-8") from None
        # Raw JSON can carry NUL only escaped; look closer only when it might.
        if b"\\u0000" in await self.body() and _holds_nul(value):
            raise ValidationFailed("the request contains a character that cannot be stored (NUL)")
        return value


DEEP_JSON = f"the JSON body nests arrays and objects more than {JSON_DEPTH_MAX} deep"


def refuse_deep_json(body: bytes) -> None:
    """422 for a body nested deeper than any request needs, before it is decoded."""
    if nests_deeper_than(body):
        raise ValidationFailed(DEEP_JSON)


def _holds_nul(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options that keep the server's own limits looser than ours."""
    return {
        "h11_max_incomplete_event_size": max(
            SERVER_HEADER_BYTES_MIN, SERVER_HEADER_BYTES_FACTOR * settings.request_header_bytes_max
        ),
    }
