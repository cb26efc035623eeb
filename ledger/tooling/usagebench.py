"""`ledger usage bench`: usage queries on a large generated ledger.

On its own embedded PostgreSQL (a temporary folder unless `--data-dir`), with the
real migrations: accounts, merchants and credit tokens, then `--charges` charges
(one journal transfer and one charges row each, 1 % refunded in half) spread over
`--days`, written in bulk by SQL; the journal balances (`ledger audit` holds). The
usage roll-up then folds everything (timed), and each question an owner, a
merchant or the operator asks is answered through the same code the API runs,
`--repeat` times; the median and the slowest are reported, beside the same
question asked of the charges rows directly.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ledger.access.api_keys import Principal, Role
from ledger.config import DEFAULT_DATABASE_NAME
from ledger.core import transfers as core
from ledger.db.embedded import EmbeddedPostgres
from ledger.db.migrate import apply_migrations
from ledger.db.pool import Conn, connect, ensure_database
from ledger.db.queries import load_queries
from ledger.tooling.progress import Progress
from ledger.usage import reports, rollup
from ledger.usage.reports import Filters, UsageQuery

__all__ = ["usage_bench_command"]

queries = load_queries("ledger.tooling", "usagebench.sql")
CHUNK_CHARGES = 250_000
REFUND_EVERY = 100
TOOLS_PER_TOKEN = 3
BENCH_KID = "k4.pid.usage-bench"


async def _identities(conn: Conn, *, accounts: int, merchants: int, tokens: int) -> None:
    await conn.execute(
        "INSERT INTO signing_keys (kid, purpose, public_key, secret_seed, state)"
        " VALUES ($1, 'credit_token', $2, $3, 'verify_only')",
        BENCH_KID,
        b"\x01" * 32,
        b"\x02" * 32,
    )
    shops = []
    for m in range(merchants):
        revenue = await core.create_account(
            conn, kind=core.AccountKind.merchant_revenue, name=f"revenue: shop-{m}"
        )
        shop = uuid.uuid4()
        await conn.execute(
            "INSERT INTO merchants (id, name, revenue_account_id) VALUES ($1, $2, $3)",
            shop,
            f"shop-{m}",
            revenue.id,
        )
        shops.append((shop, revenue.id))
    wallets = [
        (
            await core.create_account(
                conn, kind=core.AccountKind.customer_wallet, name=f"owner-{a}"
            )
        ).id
        for a in range(accounts)
    ]
    await conn.execute(queries["bench_tokens"])
    now = datetime.now(UTC)
    for i in range(tokens):
        jti, wallet, (shop, revenue_id) = uuid.uuid4(), wallets[i % accounts], shops[i % merchants]
        await conn.execute(
            """INSERT INTO credit_tokens (jti, account_id, kid, audiences, tools, max_per_call_micros,
                   cap_micros, not_before, expires_at) VALUES ($1, $2, $3, '{*}', '{*}', 1000000,
                   1000000000000, $4, $5)""",
            jti,
            wallet,
            BENCH_KID,
            now - timedelta(days=400),
            now + timedelta(days=30),
        )
        await conn.execute(
            "INSERT INTO bench_tokens VALUES ($1, $2, $3, $4, $5)", i, jti, wallet, shop, revenue_id
        )


async def _generate(dsn: str, args: dict[str, int], progress: Progress) -> float:
    conn = await connect(dsn)
    try:
        await conn.execute("SET statement_timeout = 0")
        progress.phase("accounts, merchants and credit tokens")
        await _identities(
            conn, accounts=args["accounts"], merchants=args["merchants"], tokens=args["tokens"]
        )
        total, done = args["charges"], [0]
        progress.phase(f"writing {total:,} charges in bulk")
        started = time.perf_counter()
        now = datetime.now(UTC)
        with progress.ticking(lambda: f"{done[0]:,} of {total:,} charges"):
            for start in range(1, total + 1, CHUNK_CHARGES):
                end = min(total, start + CHUNK_CHARGES - 1)
                await conn.execute(
                    queries["insert_charges"],
                    start,
                    end,
                    args["days"],
                    args["tokens"],
                    now,
                    REFUND_EVERY,
                )
                done[0] = end
            for name in ("settle_counters", "settle_accounts", "settle_tokens"):
                await conn.execute(queries[name])
            await conn.execute("ANALYZE")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def _questions(conn: Conn, ids: dict[str, Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    day = now.replace(hour=0)
    owner = Principal(role=Role.owner, subject_id=ids["account"], key_id=uuid.uuid4())
    shop = Principal(role=Role.merchant, subject_id=ids["merchant"], key_id=uuid.uuid4())

    def ask(principal: Principal | None, **spec: Any) -> Callable[[], Awaitable[Any]]:
        filters = Filters(**spec.pop("filters", {}))
        if principal is not None:
            filters = reports.scoped(principal, filters)
        query = UsageQuery(filters=filters, **spec)
        return lambda: reports.usage_groups(
            conn, query, limit=500, cursor=None, complete_through=None
        )

    return {
        "owner: spend per day, 90 days": ask(owner, filters={"from_": day - timedelta(days=90)}),
        "owner: by credit token and tool, 30 days": ask(
            owner, group_by=("token", "tool"), filters={"from_": day - timedelta(days=30)}
        ),
        "owner: per hour, 7 days": ask(
            owner, bucket="hour", filters={"from_": now - timedelta(days=7)}
        ),
        "merchant: revenue by tool and day, 30 days": ask(
            shop, group_by=("bucket", "tool"), filters={"from_": day - timedelta(days=30)}
        ),
        "merchant: top 10 paying accounts, all time": lambda: reports.usage_groups(
            conn,
            UsageQuery(
                filters=reports.scoped(shop, Filters()), group_by=("account",), order="net_desc"
            ),
            limit=10,
            cursor=None,
            complete_through=None,
        ),
        "operator: totals per merchant, all time": ask(None, group_by=("merchant",)),
        "operator: totals per account, all time": ask(
            None, group_by=("account",), order="net_desc"
        ),
        "operator: spend per month, all time": ask(None, bucket="month"),
        "owner: charges listing, first page, one tool": lambda: reports.list_rows(
            conn, "charges", reports.scoped(owner, Filters(tool="tool-1")), limit=50, cursor=None
        ),
        "naive: merchant's top accounts from the charges rows": lambda: conn.fetch(
            queries["naive_top_accounts"], ids["merchant"]
        ),
    }


async def _measure(dsn: str, repeat: int, progress: Progress) -> dict[str, Any]:
    conn = await connect(dsn)
    try:
        await conn.execute("SET statement_timeout = 0")
        progress.phase("usage roll-up of the whole journal")
        started = time.perf_counter()
        with progress.ticking(lambda: "folding"):
            await rollup.roll_up_all(conn)
        rollup_s = time.perf_counter() - started
        await conn.execute("ANALYZE usage_hourly, usage_daily")
        ids = {
            "account": await conn.fetchval("SELECT account_id FROM bench_tokens WHERE idx = 0"),
            "merchant": await conn.fetchval("SELECT merchant_id FROM bench_tokens WHERE idx = 0"),
        }
        counts = {
            name: await conn.fetchval(f"SELECT count(*) FROM {name}")
            for name in ("charges", "refunds", "usage_hourly", "usage_daily")
        }
        progress.phase(f"asking each question {repeat} times")
        timings = {}
        for name, fn in _questions(conn, ids).items():
            await fn()  # warm the cache, as a service that answers questions all day has it
            timings[name] = await _timed(fn, repeat)
        return {"rollup_s": round(rollup_s, 1), "rows": counts, "queries": timings}
    finally:
        await conn.close()


async def _bench(
    server: EmbeddedPostgres, args: dict[str, int], progress: Progress
) -> dict[str, Any]:
    await ensure_database(server.dsn("postgres"), DEFAULT_DATABASE_NAME)
    dsn = server.dsn(DEFAULT_DATABASE_NAME)
    conn = await connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    generate_s = await _generate(dsn, args, progress)
    report = await _measure(dsn, args["repeat"], progress)
    return {"config": args, "generate_s": round(generate_s, 1), **report}


@click.command("bench")
@click.option(
    "--charges",
    type=click.IntRange(1_000, 100_000_000),
    default=1_000_000,
    show_default=True,
    help="Charges to generate.",
)
@click.option("--accounts", type=click.IntRange(1, 1_000_000), default=1_000, show_default=True)
@click.option("--merchants", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--tokens", type=click.IntRange(1, 1_000_000), default=2_000, show_default=True)
@click.option("--days", type=click.IntRange(1, 3_650), default=90, show_default=True)
@click.option("--repeat", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A fresh folder [default: a temporary one, removed afterwards].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def usage_bench_command(data_dir: Path | None, as_json: bool, **args: int) -> None:
    """Usage queries on a generated ledger of --charges charges (median and max ms)."""
    folder = data_dir or Path(tempfile.mkdtemp(prefix="ledger-usage-bench-"))
    progress = Progress("usage bench", phases=4)
    server = EmbeddedPostgres(folder, fsync=False)
    server.start()
    try:
        report = asyncio.run(_bench(server, args, progress))
    finally:
        server.stop()
        if data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        _print(report)
    slowest = max(q["median_ms"] for name, q in report["queries"].items() if name[:5] != "naive")
    progress.verdict(
        slowest < 1000,
        f"slowest usage question {slowest} ms (median) over "
        f"{args['charges']:,} charges; target well under 1,000 ms",
    )


def _print(report: dict[str, Any]) -> None:
    rows = report["rows"]
    click.echo(
        f"ledger: {rows['charges']:,} charges, {rows['refunds']:,} refunds; "
        f"generated in {report['generate_s']} s"
    )
    click.echo(
        f"roll-up: {report['rollup_s']} s -> {rows['usage_hourly']:,} hourly and "
        f"{rows['usage_daily']:,} daily buckets"
    )
    for name, t in report["queries"].items():
        click.echo(f"  {name:<55} median {t['median_ms']:>9.2f} ms   max {t['max_ms']:>9.2f} ms")
