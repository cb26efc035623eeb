"""`ledger bench`: verify-and-debit throughput and latency against baselines taken
in the same run on the same machine, so the ratios hold on noisy hosts.

Scenarios (N concurrent keep-alive clients, every charge paying one merchant):
- floor:  the same server's trivial JSON endpoint (`GET /health/live`): the web stack's ceiling;
- spread: each client charges its own credit token on its own wallet;
- shared: all clients charge one credit token on one wallet (the hot row);
- fixed:  charges at a fixed offered rate below saturation, for p50/p99/max latency.
Baselines from pgbench (shipped with the embedded PostgreSQL) on the same server:
single-row UPDATE transactions spread over N rows, and all on one hot row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from ledger.access.api_keys import ensure_operator_key
from ledger.app.runtime import prepare_database
from ledger.core import transfers as core
from ledger.db.embedded import PG_BIN, EmbeddedPostgres, free_port
from ledger.db.pool import connect
from ledger.tooling.child import stop_child, wait_healthy
from ledger.tooling.loadgen import LoadResult, Request, closed_loop, open_loop

__all__ = ["BenchConfig", "run_bench"]

DEFAULT_CLIENTS = 32
DEFAULT_DURATION_S = 5.0
FIXED_RATE_FRACTION = 0.5
WALLET_FUNDS_MICROS = 10**11
TOKEN_CAP_MICROS = 10**11
CHARGE_MICROS = 1
SERVICE_START_TIMEOUT_S = 60.0
SERVICE_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BenchConfig:
    clients: int = DEFAULT_CLIENTS
    duration_s: float = DEFAULT_DURATION_S
    workers: int = 1


class _RssSampler:
    """Peak resident memory of a process tree, sampled in a thread; also its CPU time."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_s(self) -> float:
        """User+system CPU seconds of the service's processes so far."""
        total = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            self.peak_bytes = max(self.peak_bytes, total)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _service(dsn: str, port: int, workers: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "LEDGER_PORT": str(port),
        "LEDGER_WORKERS": str(workers),
    }
    # The service's log goes to a file, not a pipe nobody drains: a pipe fills
    # at 64 KiB and would stall the service mid-benchmark.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

        def why_exited() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-2000:]

        try:
            wait_healthy(
                proc,
                f"http://127.0.0.1:{port}",
                timeout_s=SERVICE_START_TIMEOUT_S,
                why_exited=why_exited,
            )
            yield proc
        finally:
            stop_child(proc, timeout_s=SERVICE_STOP_TIMEOUT_S)


async def _setup(dsn: str, url: str, clients: int) -> dict[str, Any]:
    conn = await connect(dsn)
    try:
        operator_key = await ensure_operator_key(conn)
        if operator_key is None:
            from ledger.access.api_keys import rotate_operator_key

            operator_key = await rotate_operator_key(conn)
    finally:
        await conn.close()
    op = {"Authorization": f"Bearer {operator_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        merchant = (await http.post("/v1/merchants", json={"name": "bench"}, headers=op)).json()
        merchant_id = merchant["merchant"]["id"]
        tokens = []
        for i in range(clients + 1):
            created = (
                await http.post("/v1/accounts", json={"name": f"bench-{i}"}, headers=op)
            ).json()
            account_id = uuid.UUID(created["account"]["id"])
            conn = await connect(dsn)
            try:
                outcome = await core.create_transfer(
                    conn, transfer_id=uuid.uuid4(), debit_account_id=core.ADJUSTMENT_CLEARING_ID,
                    credit_account_id=account_id, amount=WALLET_FUNDS_MICROS, code="adjustment",
                )  # fmt: skip
                assert outcome is core.TransferOutcome.created
            finally:
                await conn.close()
            minted = await http.post(
                "/v1/tokens",
                json={
                    "cap_micros": TOKEN_CAP_MICROS,
                    "max_per_call_micros": 1_000_000,
                    "audiences": [merchant_id],
                    "tools": ["*"],
                },
                headers={"Authorization": f"Bearer {created['owner_api_key']}"},
            )
            minted.raise_for_status()
            tokens.append(minted.json()["token"])
    return {"merchant_key": merchant["merchant_api_key"], "tokens": tokens}


def _charge_request(merchant_key: str, token: str, key: str) -> Request:
    body = json.dumps(
        {
            "credit_token": token,
            "amount_micros": CHARGE_MICROS,
            "tool": "bench",
            "idempotency_key": key,
        }
    ).encode()
    return Request("POST", "/v1/charges", body, (("Authorization", f"Bearer {merchant_key}"),))


def _pgbench(dsn_port: int, clients: int, duration_s: float, *, hot: bool, folder: Path) -> float:
    script = folder / ("hot.sql" if hot else "spread.sql")
    row = "1" if hot else f"random(1, {clients})"
    script.write_text(f"\\set id {row}\nUPDATE bench_rows SET v = v + 1 WHERE id = :id;\n")
    result = subprocess.run(
        [
            str(PG_BIN / "pgbench"),
            "-h",
            "127.0.0.1",
            "-p",
            str(dsn_port),
            "-U",
            "postgres",
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(max(1, round(duration_s))),
            "-f",
            str(script),
            "pgbench_baseline",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
        check=True,
    )
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    assert match, result.stdout
    return float(match[1])


async def _prepare_pgbench(admin_dsn: str, rows: int) -> None:
    conn = await connect(admin_dsn)
    try:
        await conn.execute("DROP DATABASE IF EXISTS pgbench_baseline")
        await conn.execute("CREATE DATABASE pgbench_baseline")
    finally:
        await conn.close()
    conn = await connect(admin_dsn.rsplit("/", 1)[0] + "/pgbench_baseline")
    try:
        await conn.execute("CREATE TABLE bench_rows (id integer PRIMARY KEY, v bigint NOT NULL)")
        await conn.execute("INSERT INTO bench_rows SELECT g, 0 FROM generate_series(1, $1) g", rows)
    finally:
        await conn.close()


def _summary(result: LoadResult) -> dict[str, Any]:
    return {
        "per_s": round(result.rate_per_s, 1),
        "p50_ms": round(result.percentile_ms(0.5), 2),
        "p99_ms": round(result.percentile_ms(0.99), 2),
        "max_ms": round(result.percentile_ms(1.0), 2),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
    }


def run_bench(config: BenchConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        folder = Path(tmp)
        server = EmbeddedPostgres(folder / "data")
        pg_port = server.start()
        try:
            admin = server.dsn("postgres")
            asyncio.run(_create_db(admin))
            dsn = server.dsn("ledger")
            asyncio.run(prepare_database(dsn))
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with _service(dsn, port, config.workers) as proc, _RssSampler(proc.pid) as rss:
                report = asyncio.run(_drive(dsn, url, port, config, rss))
            report["server_rss_mb_max"] = round(rss.peak_bytes / 2**20, 1)
            asyncio.run(_prepare_pgbench(admin, config.clients))
            report["pgbench_tps_spread"] = round(
                _pgbench(pg_port, config.clients, config.duration_s, hot=False, folder=folder), 1
            )
            report["pgbench_tps_hot_row"] = round(
                _pgbench(pg_port, config.clients, config.duration_s, hot=True, folder=folder), 1
            )
        finally:
            server.stop()
    report["ratio_spread_to_floor"] = round(
        report["charges_per_s_spread"] / report["floor_per_s"], 3
    )
    report["ratio_shared_to_pgbench_hot"] = round(
        report["charges_per_s_shared"] / report["pgbench_tps_hot_row"], 3
    )
    report["ratio_spread_to_pgbench_spread"] = round(
        report["charges_per_s_spread"] / report["pgbench_tps_spread"], 3
    )
    report["clients"] = config.clients
    report["duration_s"] = config.duration_s
    report["workers"] = config.workers
    return report


async def _create_db(admin: str) -> None:
    from ledger.db.pool import ensure_database

    await ensure_database(admin, "ledger")


async def _measured(rss: _RssSampler, work: Awaitable[LoadResult]) -> tuple[LoadResult, float]:
    """Run a scenario; return its result and the service's CPU microseconds per request."""
    before = rss.cpu_s()
    result = await work
    spent = rss.cpu_s() - before
    return result, round(spent * 1e6 / max(1, result.completed), 1)


async def _drive(
    dsn: str, url: str, port: int, config: BenchConfig, rss: _RssSampler
) -> dict[str, Any]:
    setup = await _setup(dsn, url, config.clients)
    merchant_key, tokens = setup["merchant_key"], setup["tokens"]
    run = uuid.uuid4().hex[:8]
    host, n, duration = "127.0.0.1", config.clients, config.duration_s

    def spread(i: int, seq: int) -> Request:
        return _charge_request(merchant_key, tokens[i], f"{run}-s-{i}-{seq}")

    def shared(i: int, seq: int) -> Request:
        return _charge_request(merchant_key, tokens[-1], f"{run}-h-{i}-{seq}")

    def floor(i: int, seq: int) -> Request:
        return Request("GET", "/health/live")

    def warm(i: int, seq: int) -> Request:
        return _charge_request(merchant_key, tokens[i], f"{run}-w-{i}-{seq}")

    await closed_loop(host, port, warm, clients=n, duration_s=min(2.0, duration))
    floor_result, floor_cpu = await _measured(
        rss, closed_loop(host, port, floor, clients=n, duration_s=duration)
    )
    spread_result, spread_cpu = await _measured(
        rss, closed_loop(host, port, spread, clients=n, duration_s=duration)
    )
    shared_result, shared_cpu = await _measured(
        rss, closed_loop(host, port, shared, clients=n, duration_s=duration)
    )
    rate = max(1.0, spread_result.rate_per_s * FIXED_RATE_FRACTION)

    def fixed(i: int, seq: int) -> Request:
        return _charge_request(merchant_key, tokens[i], f"{run}-f-{seq}")

    fixed_result = await open_loop(
        host, port, fixed, rate_per_s=rate, duration_s=duration, connections=n
    )
    for name, result in (
        ("spread", spread_result),
        ("shared", shared_result),
        ("fixed", fixed_result),
    ):
        ok = result.statuses.get(201, 0)
        if ok != result.completed:
            raise RuntimeError(
                f"{name}: not every charge succeeded: {result.statuses}, errors {result.errors}"
            )
    return {
        "charges_per_s_spread": round(spread_result.rate_per_s, 1),
        "charges_per_s_shared": round(shared_result.rate_per_s, 1),
        "floor_per_s": round(floor_result.rate_per_s, 1),
        "fixed_rate_per_s": round(rate, 1),
        "service_cpu_us_per_request": {
            "floor": floor_cpu,
            "spread": spread_cpu,
            "shared": shared_cpu,
        },
        "p50_ms": round(fixed_result.percentile_ms(0.5), 2),
        "p99_ms": round(fixed_result.percentile_ms(0.99), 2),
        "max_ms": round(fixed_result.percentile_ms(1.0), 2),
        "detail": {
            "floor": _summary(floor_result),
            "spread": _summary(spread_result),
            "shared": _summary(shared_result),
            "fixed": _summary(fixed_result),
        },
    }
