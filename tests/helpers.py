"""Test helpers shared across modules (never imported by product code)."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator

import uvicorn

from ledger.access.api_keys import ensure_operator_key
from ledger.app.factory import create_app
from ledger.config import Settings
from ledger.core import transfers as core
from ledger.core.audit import run_audit
from ledger.db.pool import Conn, connect
from ledger.http.guard import server_options
from ledger.observability.logs import JsonFormatter, TextFormatter


async def assert_invariants(conn_or_dsn: Conn | str) -> None:
    """All four ledger invariants hold; fail naming the violations otherwise."""
    if isinstance(conn_or_dsn, str):
        conn = await connect(conn_or_dsn)
        try:
            report = await run_audit(conn)
        finally:
            await conn.close()
    else:
        report = await run_audit(conn_or_dsn)
    assert report.ok, report.violations


async def new_wallet(conn: Conn, name: str = "wallet", funds: int = 0) -> uuid.UUID:
    account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name=name)
    if funds:
        await fund(conn, account.id, funds)
    return account.id


async def fund(conn: Conn, account_id: uuid.UUID, amount: int) -> None:
    outcome = await core.create_transfer(
        conn,
        transfer_id=uuid.uuid4(),
        debit_account_id=core.ADJUSTMENT_CLEARING_ID,
        credit_account_id=account_id,
        amount=amount,
        code="adjustment",
    )
    assert outcome is core.TransferOutcome.created, outcome


async def balance(conn: Conn, account_id: uuid.UUID) -> int:
    account = await core.get_account(conn, account_id)
    assert account is not None
    return account.balance


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The real app behind uvicorn on `settings.port` with the server options
    `ledger serve` uses; yields the base URL."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
        **server_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            assert thread.is_alive(), "uvicorn did not start"
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start in time"
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def operator_key_for(dsn: str) -> str:
    """The first operator API key of a fresh database."""
    conn = await connect(dsn)
    try:
        key = await ensure_operator_key(conn)
    finally:
        await conn.close()
    assert key is not None
    return key


# Written in the background from what was already there (usage roll-ups, recent
# refusals): a refused request changes none of the tables that count.
DERIVED_TABLES = frozenset({"usage_hourly", "usage_daily", "usage_rollup_state", "recent_refusals"})


async def row_counts(dsn: str) -> dict[str, int]:
    """Rows per table that money or accounts live in: 'nothing changed' is equality."""
    conn = await connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        counts: dict[str, int] = {}
        for row in tables:
            name = row["tablename"]
            if name in DERIVED_TABLES:
                continue
            counts[name] = await conn.fetchval(f'SELECT count(*) FROM "{name}"')
        return counts
    finally:
        await conn.close()


def assert_no_secrets_logged(records: list[logging.LogRecord], secrets: list[str]) -> None:
    """No log record (message, args, traceback) contains any of `secrets`.

    Pass credit tokens, API keys and signing-key seeds (hex and base64url); a
    recognisable fragment (e.g. a token's first 40 body characters) is a leak too.
    """
    assert any(r.getMessage() == "capture probe" for r in records), (
        "log the probe `logging.getLogger('tests').warning('capture probe')` first, "
        "so that an empty capture cannot pass"
    )
    # Each record as the service writes it, in both formats (structured fields included).
    formatters = (TextFormatter(), JsonFormatter())
    text = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {r.stack_info or ''} "
        + " ".join(f.format(r) for f in formatters)
        for r in records
    )
    leaked = [s[:12] + "…" for s in secrets if s and s in text]
    assert not leaked, f"secrets in logs: {leaked}"


class _RecordList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and not record.exc_text:
            # Render tracebacks now: a leak in one counts too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        self.records.append(record)


# Loggers that do not propagate to the root under the servers' own logging setup.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar")


@contextlib.contextmanager
def capture_all_logs(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """Every record at `level` or above, from every logger in every thread: ours (which
    propagate to the root) and uvicorn's and Litestar's (which do not). Levels and
    handlers are restored on exit. Pass the records to `assert_no_secrets_logged`.
    """
    handler = _RecordList()
    named = [logging.getLogger(name) for name in _SERVER_LOGGERS]
    named += [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    loggers = list(dict.fromkeys([logging.root, *named]))
    saved = [(logger, logger.level) for logger in loggers]
    attached = [logger for logger in loggers if logger is logging.root or not logger.propagate]
    for logger in loggers:
        logger.setLevel(level)
    for logger in attached:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in attached:
            logger.removeHandler(handler)
        for logger, saved_level in saved:
            logger.setLevel(saved_level)


class AsgiThread:
    """Any ASGI app behind uvicorn on a loopback port, in a thread with its own loop."""

    def __init__(self, app: object, port: int) -> None:
        import threading

        import uvicorn

        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        import threading

        self.thread.start()
        for _ in range(1000):
            if self.server.started:
                return
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        raise RuntimeError("uvicorn did not start in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# The double-entry core's pending transfers, driven through its SQL functions
# directly: the charge path places, posts and voids holds with these same
# functions (`ledger_create_transfer`, `ledger_resolve_pending`), inside its own.


async def create_transfer_or_hold(
    conn: Conn,
    *,
    transfer_id: uuid.UUID,
    debit_account_id: uuid.UUID,
    credit_account_id: uuid.UUID,
    amount: int,
    code: str,
    pending: bool = False,
    timeout_s: int | None = None,
) -> core.TransferOutcome:
    outcome = await conn.fetchval(
        "SELECT ledger_create_transfer($1, $2, $3, $4, $5, $6, $7, $8)",
        transfer_id, debit_account_id, credit_account_id, amount, code, pending, timeout_s, {},
    )  # fmt: skip
    return core.TransferOutcome(outcome)


async def post_pending(
    conn: Conn, *, transfer_id: uuid.UUID, pending_id: uuid.UUID, code: str,
    amount: int | None = None,
) -> core.TransferOutcome:  # fmt: skip
    outcome = await conn.fetchval(
        "SELECT ledger_resolve_pending($1, $2, true, $3, $4, '{}'::jsonb, false)",
        transfer_id, pending_id, amount, code,
    )  # fmt: skip
    return core.TransferOutcome(outcome)


async def void_pending(
    conn: Conn, *, transfer_id: uuid.UUID, pending_id: uuid.UUID, code: str,
    allow_expired: bool = False,
) -> core.TransferOutcome:  # fmt: skip
    outcome = await conn.fetchval(
        "SELECT ledger_resolve_pending($1, $2, false, NULL, $3, '{}'::jsonb, $4)",
        transfer_id, pending_id, code, allow_expired,
    )  # fmt: skip
    return core.TransferOutcome(outcome)
