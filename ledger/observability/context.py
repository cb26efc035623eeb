"""The request in flight, as a context variable set by the HTTP layer.

The money path fills in what it learns (merchant, tool, amount, credit token id,
account) as it goes, so that whichever place ends the request — a receipt or a
refusal raised anywhere below — logs one complete line.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import time

__all__ = ["REQUEST_ID_HEADER", "RequestContext", "accept_request_id", "current", "new_request_id"]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_LENGTH_MAX = 128
# A caller's request id is kept only if it is short and plain (it lands in logs).
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._:\-]{{1,{REQUEST_ID_LENGTH_MAX}}}$")


class RequestContext:
    """What one request is doing; mutable, owned by its task."""

    __slots__ = (
        "account_id",
        "amount_micros",
        "logged",
        "merchant_id",
        "money",
        "request_id",
        "started",
        "token_id",
        "tool",
    )

    def __init__(self, request_id: str, money: str | None = None) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.money = money  # the kind of money movement this route makes, if any
        self.merchant_id: object = None
        self.account_id: object = None
        self.token_id: object = None
        self.tool: str | None = None
        self.amount_micros: int | None = None
        self.logged = False  # one money line per request

    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "ledger_request", default=None
)


def current() -> RequestContext | None:
    return _current.get()


def enter(context: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _current.set(context)


def leave(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def new_request_id() -> str:
    return secrets.token_hex(8)


def accept_request_id(raw: bytes | None) -> str:
    """The caller's `X-Request-Id` when it is plain enough to log, else a new one."""
    if raw:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return new_request_id()
        if _REQUEST_ID.match(text):
            return text
    return new_request_id()
