"""The `ledger` command: serve, migrate, audit, accounts, operator key, OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click
import msgspec

from ledger import limits
from ledger.access.api_keys import ensure_operator_key, rotate_operator_key
from ledger.app.runtime import database_dsn, prepare_database
from ledger.cli.keys import ensure_signing_keys_at, keys_group
from ledger.config import ConfigError, Settings
from ledger.core import accounts
from ledger.core import transfers as core
from ledger.core.audit import run_audit
from ledger.db.migrate import MigrationError, discover
from ledger.db.pool import connect, mask_dsn
from ledger.errors import LedgerError, ValidationFailed
from ledger.http.lists import Page
from ledger.observability.logs import formatter_for, log_config
from ledger.observability.metrics import prepare_multiprocess_dir
from ledger.tooling.demo import demo_command

__all__ = ["main"]

log = logging.getLogger("ledger.cli.main")
T = TypeVar("T")


class ConfigProblem(click.ClickException):
    """A setting the service cannot use: one line naming it, exit status 2."""

    exit_code = 2


class LedgerGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None


def _settings(**overrides: Any) -> Settings:
    settings = Settings.from_env()
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _with_connection(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    with database_dsn(settings) as dsn:
        asyncio.run(prepare_database(dsn))

        async def run() -> T:
            conn = await connect(dsn)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())


def _print_json(value: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True))


@click.group(cls=LedgerGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Prepaid credit-token ledger for AI agents."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(_settings().log_format))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


@main.command()
@click.option("--host", help="Interface to listen on (LEDGER_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (LEDGER_PORT, default 8000).")
@click.option("--workers", type=int, help="uvicorn worker processes (LEDGER_WORKERS, default 1).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Embedded PostgreSQL folder.")
def serve(host: str | None, port: int | None, workers: int | None, data_dir: Path | None) -> None:
    """Run the API (on the embedded PostgreSQL unless DATABASE_URL is set)."""
    import uvicorn

    from ledger.http.guard import server_options

    settings = _settings(host=host, port=port, workers=workers, data_dir=data_dir)
    _migrations_present()
    # uvicorn handles Ctrl-C/SIGTERM while it runs, then re-raises the signal to the
    # handler it found; make that handler unwind normally so the embedded PostgreSQL
    # is stopped by `database_dsn` rather than orphaned.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    with database_dsn(settings, own_server=True, create=True) as dsn:
        try:
            asyncio.run(prepare_database(dsn))
        except MigrationError as exc:
            raise click.ClickException(str(exc)) from exc
        operator_key = asyncio.run(_first_operator_key(dsn))
        ensure_signing_keys_at(dsn)
        if operator_key is not None:
            click.echo(
                "\nOperator API key (shown once; store it now, rotate with "
                f"`ledger operator-key rotate`):\n\n    {operator_key}\n",
                err=True,
            )
        log.info("database: %s", mask_dsn(dsn))
        log.info("API docs: %s/docs", settings.base_url)
        os.environ["DATABASE_URL"] = dsn
        # The workers read their settings from the environment: what the options
        # chose must reach them, or every link would name the default port.
        os.environ["LEDGER_HOST"] = settings.host
        os.environ["LEDGER_PORT"] = str(settings.port)
        # Every worker writes its metrics here; emptied now, before any worker starts.
        with tempfile.TemporaryDirectory(prefix="ledger-metrics-") as metrics_dir:
            prepare_multiprocess_dir(Path(metrics_dir))
            uvicorn.run(
                "ledger.app.factory:create_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_config=log_config(settings.log_format, settings.log_level),
                # Our own access log (LEDGER_ACCESS_LOG) carries the request id.
                access_log=False,
                timeout_graceful_shutdown=10,
                **server_options(settings),
            )


def _migrations_present() -> None:
    """Refuse at once, before any database is started, when there are none to apply."""
    try:
        discover()
    except MigrationError as exc:
        raise ConfigProblem(str(exc)) from None


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _first_operator_key(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn, timeout=limits.DB_CONNECT_TIMEOUT_S)
    try:
        return await ensure_operator_key(conn)
    finally:
        await conn.close()


@main.command()
def migrate() -> None:
    """Apply pending migrations (forward-only; edited migrations are refused)."""
    settings = _settings()
    _migrations_present()
    try:
        with database_dsn(settings, create=True) as dsn:
            applied = asyncio.run(prepare_database(dsn))
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"applied {len(applied)} migration(s)" + "".join(f"\n  {n}" for n in applied))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit(as_json: bool) -> None:
    """Check the ledger invariants; exit 1 naming the offending accounts."""
    report = _with_connection(_settings(), run_audit)
    if as_json:
        _print_json({"ok": report.ok, **msgspec.to_builtins(report)})
    else:
        click.echo(f"audited {report.accounts} accounts, {report.transfers} transfers")
        for v in report.violations:
            click.echo(f"VIOLATION {v.invariant}: {v.detail}")
            for row in v.rows:
                click.echo(f"    {row}")
        click.echo("all invariants hold" if report.ok else "INVARIANTS VIOLATED")
    if not report.ok:
        sys.exit(1)


@main.group("operator-key")
def operator_key() -> None:
    """The operator API key."""


@operator_key.command("rotate")
def operator_key_rotate() -> None:
    """Revoke the operator API key(s) and print a new one (shown once)."""
    key = _with_connection(_settings(), rotate_operator_key)
    click.echo(key)


@main.group("accounts")
def accounts_group() -> None:
    """Customer accounts (operator)."""


@accounts_group.command("create")
@click.argument("name")
def accounts_create(name: str) -> None:
    """Create a customer wallet; prints its owner API key once."""
    if not 1 <= len(name) <= limits.NAME_LENGTH_MAX:
        raise click.BadParameter(f"1 to {limits.NAME_LENGTH_MAX} characters", param_hint="NAME")

    async def work(conn: asyncpg.Connection) -> accounts.AccountCreated:
        async with conn.transaction():
            account = await core.create_account(
                conn, kind=core.AccountKind.customer_wallet, name=name
            )
            from ledger.access.api_keys import Role, create_api_key

            key = await create_api_key(conn, Role.owner, account.id)
        return accounts.AccountCreated(account=accounts.account_view(account), owner_api_key=key)

    _print_json(_with_connection(_settings(), work))


@accounts_group.command("show")
@click.argument("account_id", type=click.UUID)
def accounts_show(account_id: uuid.UUID) -> None:
    """Balance of an account."""

    async def work(conn: asyncpg.Connection) -> accounts.AccountView | None:
        account = await core.get_account(conn, account_id)
        return None if account is None else accounts.account_view(account)

    view = _with_connection(_settings(), work)
    if view is None:
        raise click.ClickException(f"no account {account_id}")
    _print_json(view)


@accounts_group.command("transfers")
@click.argument("account_id", type=click.UUID)
@click.option("--cursor", help="`next_cursor` of the previous page.")
@click.option(
    "--limit", type=click.IntRange(1, limits.PAGE_SIZE_MAX), default=limits.PAGE_SIZE_DEFAULT
)
def accounts_transfers(account_id: uuid.UUID, cursor: str | None, limit: int) -> None:
    """One page of an account's journal, as the API lists it."""

    async def work(conn: asyncpg.Connection) -> Page[accounts.JournalEntry]:
        if await core.get_account(conn, account_id) is None:
            raise click.ClickException(f"no account {account_id}")
        try:
            return await accounts.journal_page(conn, account_id, cursor=cursor, limit=limit)
        except ValidationFailed as exc:
            raise click.BadParameter(exc.detail, param_hint="--cursor") from None

    _print_json(_with_connection(_settings(), work))


def _list_command(listing: str, extra: dict[str, Any], limit: int, cursor: str | None,
                  as_json: bool) -> None:  # fmt: skip
    from ledger.usage import reports

    async def work(conn: asyncpg.Connection) -> reports.ListingPage:
        return await reports.list_rows(conn, listing, reports.Filters(), limit=limit,  # type: ignore[arg-type]
                                       cursor=cursor, extra=extra)  # fmt: skip

    try:
        page = _with_connection(_settings(), work)
    except LedgerError as exc:
        raise click.ClickException(exc.detail) from exc
    if as_json:
        _print_json(page)
        return
    for row in page.data:
        balance = row.get("balance_micros", row.get("revenue_balance_micros"))
        kind = row.get("kind", "merchant")
        click.echo(f"{row['id']}  {kind:<19} {balance:>18,} µUSD  {row['name']}")
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


_LIST_LIMIT = click.option(
    "--limit", type=click.IntRange(1, limits.PAGE_SIZE_MAX), default=limits.PAGE_SIZE_DEFAULT,
    show_default=True,
)  # fmt: skip
_LIST_CURSOR = click.option("--cursor", help="`next_cursor` of the previous page.")
_LIST_SEARCH = click.option("--search", help="Case-insensitive part of the name.")
_LIST_JSON = click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")


@accounts_group.command("list")
@_LIST_SEARCH
@click.option("--kind", type=click.Choice([k.value for k in core.AccountKind]))
@_LIST_LIMIT
@_LIST_CURSOR
@_LIST_JSON
def accounts_list(
    search: str | None, kind: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Accounts with balances, by name (operator)."""
    _list_command("accounts", {"q": search, "kind": kind}, limit, cursor, as_json)


@main.group("merchants")
def merchants_group() -> None:
    """Merchants (operator)."""


@merchants_group.command("list")
@_LIST_SEARCH
@_LIST_LIMIT
@_LIST_CURSOR
@_LIST_JSON
def merchants_list(search: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """Merchants with their revenue balances, by name."""
    _list_command("merchants", {"q": search}, limit, cursor, as_json)


@accounts_group.command("adjust")
@click.argument("account_id", type=click.UUID)
@click.argument("amount_micros", type=click.IntRange(1, limits.AMOUNT_MAX))
@click.option("--reason", required=True, help="Why (kept in the journal's metadata).")
@click.option("--id", "transfer_id", type=click.UUID, help="Transfer id, for an idempotent retry.")
def accounts_adjust(
    account_id: uuid.UUID, amount_micros: int, reason: str, transfer_id: uuid.UUID | None
) -> None:
    """Credit a wallet from the operator-adjustment clearing account."""
    tid = transfer_id or uuid.uuid4()

    async def work(conn: asyncpg.Connection) -> core.TransferOutcome:
        return await core.create_transfer(
            conn,
            transfer_id=tid,
            debit_account_id=core.ADJUSTMENT_CLEARING_ID,
            credit_account_id=account_id,
            amount=amount_micros,
            code="adjustment",
            metadata={"reason": reason[: limits.METADATA_VALUE_LENGTH_MAX]},
        )

    outcome = _with_connection(_settings(), work)
    if not outcome.ok:
        raise click.ClickException(f"adjustment refused: {outcome.value}")
    click.echo(f"{outcome.value}: transfer {tid}")


@main.command()
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("openapi/openapi.json"),
    show_default=True,
)
@click.option("--check", is_flag=True, help="Exit 1 if the file differs from the app's document.")
def openapi(output: Path, check: bool) -> None:
    """Export the OpenAPI document the app serves."""
    from ledger.app.factory import openapi_document

    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if check:
        if not output.exists() or output.read_text() != text:
            raise click.ClickException(f"{output} is out of date; run `ledger openapi`")
        click.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}")


main.add_command(keys_group)
main.add_command(demo_command)


@main.command()
@click.option(
    "--clients",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    help="Concurrent clients.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.5, 600),
    default=5.0,
    show_default=True,
    help="Seconds per scenario.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Service worker processes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(clients: int, duration: float, workers: int, as_json: bool) -> None:
    """Measure verify-and-debit against same-run baselines (web floor, pgbench)."""
    from ledger.tooling.bench import BenchConfig, run_bench

    logging.getLogger("httpx").setLevel(logging.WARNING)

    report = run_bench(BenchConfig(clients=clients, duration_s=duration, workers=workers))
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    click.echo(f"clients {clients}, {duration:g} s per scenario, {workers} worker(s)")
    rows = [
        ("floor (GET /health/live)", report["floor_per_s"], "req/s"),
        ("charges, spread", report["charges_per_s_spread"], "/s"),
        ("charges, shared token+wallet", report["charges_per_s_shared"], "/s"),
        ("pgbench UPDATE, spread rows", report["pgbench_tps_spread"], "tps"),
        ("pgbench UPDATE, one hot row", report["pgbench_tps_hot_row"], "tps"),
    ]
    for name, value, unit in rows:
        click.echo(f"  {name:<32} {value:>10.1f} {unit}")
    click.echo(
        f"  spread / floor                   {report['ratio_spread_to_floor']:>10.3f}  (target >= 0.5)"
    )
    click.echo(
        f"  shared / pgbench hot row         {report['ratio_shared_to_pgbench_hot']:>10.3f}  (target >= 1.0)"
    )
    click.echo(
        f"  latency at {report['fixed_rate_per_s']:.0f}/s offered: p50 {report['p50_ms']} ms, "
        f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms"
    )
    click.echo(f"  service peak RSS                 {report['server_rss_mb_max']:>10.1f} MB")
    cpu = report["service_cpu_us_per_request"]
    click.echo(
        f"  service CPU per request: floor {cpu['floor']} us, spread {cpu['spread']} us, shared {cpu['shared']} us"
    )


def _register_features() -> None:
    from ledger.cli.usdc import usdc_group
    from ledger.tooling.torture import torture_command
    from ledger.tooling.usagebench import usage_bench_command

    @click.group("usage")
    def usage_group() -> None:
        """Usage analytics."""

    usage_group.add_command(usage_bench_command)

    main.add_command(usdc_group)
    main.add_command(usage_group)
    main.add_command(torture_command)


_register_features()
