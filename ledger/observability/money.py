"""One log line and the metrics for each money movement and each refusal.

The money path calls exactly one function per outcome, in one place each:
`moved` when money moved (or an idempotent replay answered), `refused` when a
request on a money route was refused (a problem of any status). The line carries
the request id, merchant, account, credit token id (never the credit token),
tool, amount, outcome or problem code, and latency; the metrics count by kind,
outcome, code and limit only (bounded labels).

Cheap by design: a few attribute reads, two dictionary look-ups for the metric
children, and one `logging` call (skipped when INFO is off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ledger.observability import context, metrics

__all__ = ["MONEY_LOGGER", "RefusalSink", "add_refusal_sink", "moved", "note", "refused"]

MONEY_LOGGER = "ledger.money"
log = logging.getLogger(MONEY_LOGGER)

# Called with each refusal's fields (e.g. to keep recent refusals for the dashboard);
# must be quick and must not raise: it runs while the response is built.
RefusalSink = Callable[[dict[str, Any]], None]
_refusal_sinks: list[RefusalSink] = []


def add_refusal_sink(sink: RefusalSink) -> Callable[[], None]:
    """Register `sink`; returns the function that removes it again."""
    _refusal_sinks.append(sink)
    return lambda: _refusal_sinks.remove(sink)


def note(**facts: Any) -> None:
    """Remember what the request moves (merchant_id, account_id, token_id, tool,
    amount_micros) so that a refusal raised further down logs them too."""
    ctx = context.current()
    if ctx is not None:
        for name, value in facts.items():
            setattr(ctx, name, value)


def moved(
    kind: str,
    outcome: str,
    *,
    id: object = None,
    merchant_id: object = None,
    account_id: object = None,
    token_id: object = None,
    tool: str | None = None,
    amount_micros: int | None = None,
) -> None:
    metrics.observe_movement(kind, outcome, amount_micros)
    ctx = context.current()
    if ctx is not None:
        ctx.logged = True
    if not (_refusal_sinks or log.isEnabledFor(logging.INFO)):
        return
    fields = {
        "event": kind,
        "outcome": outcome,
        "id": id,
        "request_id": ctx.request_id if ctx else None,
        "merchant_id": merchant_id,
        "account_id": account_id,
        "token_id": token_id,
        "tool": tool,
        "amount_micros": amount_micros,
        "latency_ms": ctx.latency_ms() if ctx else None,
    }
    log.info("%s %s", kind, outcome, extra={"fields": fields})


def refused(*, code: str, status: int, extra: dict[str, Any]) -> None:
    """A problem answered; it is a money refusal when the route moves money (the
    HTTP layer marks the request with its kind). `extra` are the problem's members."""
    ctx = context.current()
    if ctx is None or ctx.money is None or ctx.logged:
        return
    kind = ctx.money
    limit = extra.get("limit")
    metrics.observe_refusal(kind, code, limit if isinstance(limit, str) else "")
    ctx.logged = True
    if not (_refusal_sinks or log.isEnabledFor(logging.INFO)):
        return
    fields = {
        "event": kind,
        "outcome": "refused",
        "code": code,
        "status": status,
        "limit": limit,
        "request_id": ctx.request_id,
        "merchant_id": ctx.merchant_id,
        "account_id": extra.get("account_id") or ctx.account_id,
        "token_id": extra.get("token_id") or ctx.token_id,
        "tool": ctx.tool,
        "amount_micros": ctx.amount_micros,
        "required": extra.get("required"),
        "available": extra.get("available"),
        "latency_ms": ctx.latency_ms(),
    }
    for sink in _refusal_sinks:
        sink(fields)
    if log.isEnabledFor(logging.INFO):
        log.info("%s refused %s", kind, code, extra={"fields": fields})
