"""Per request: an id (`X-Request-Id`, accepted or made), latency metrics per route,
and an optional access log line.

Runs after routing, so the route template labels the metrics (never the raw path,
which holds ids), and a route marked `opt={"money": kind}` makes its refusals
money lines (see `ledger.observability.money`).
"""

from __future__ import annotations

import logging

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ledger.config import Settings
from ledger.observability import context, metrics

__all__ = ["ACCESS_LOGGER", "RequestObserver"]

ACCESS_LOGGER = "ledger.access_log"
access_log = logging.getLogger(ACCESS_LOGGER)
_HEADER = context.REQUEST_ID_HEADER.encode()


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers") or ():
        if name == _HEADER:
            return context.accept_request_id(value)
    return context.new_request_id()


class RequestObserver(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.access_log = settings.access_log

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        money = handler.opt.get("money") if handler is not None else None
        ctx = context.RequestContext(_request_id(scope), money)
        header = (_HEADER, ctx.request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = context.enter(ctx)
        try:
            await next_app(scope, receive, send_with_id)
        finally:
            context.leave(token)
            self._done(scope, ctx, status)

    def _done(self, scope: Scope, ctx: context.RequestContext, status: int) -> None:
        route = str(scope.get("path_template") or "unmatched")
        method = str(scope.get("method", ""))
        latency_ms = ctx.latency_ms()
        metrics.observe_request(route, method, status, latency_ms / 1000)
        if self.access_log:
            fields = {
                "request_id": ctx.request_id,
                "method": method,
                "route": route,
                "status": status,
                "latency_ms": latency_ms,
            }
            access_log.info("%s %s %d", method, route, status, extra={"fields": fields})
