"""The `ledger` command as an operator runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil

from ledger.db.embedded import EmbeddedPostgres, free_port

LEDGER = [sys.executable, "-m", "ledger"]


def run_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn}
    return subprocess.run([*LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and any(str(data_dir) in part for part in cmdline):
            found.append(proc)
    return found


def _start_serve(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "LEDGER_DATA_DIR": str(data_dir), "LEDGER_PORT": str(port)}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen(
        [*LEDGER, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_healthy(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("service did not become healthy")


def test_serve_on_embedded_postgres_starts_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = (tmp_path / "data").resolve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_serve(data_dir, port)
    try:
        _wait_healthy(url, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert output.count("lk_op_") == 1, "the operator API key is printed exactly once"
    assert str(data_dir / "pgdata") in output, "logs where the data lives"
    assert "postgresql://postgres@127.0.0.1:" in output, "logs which database"
    assert f"{url}/docs" in output, "logs the API docs URL"
    assert EmbeddedPostgres(data_dir).running_port() is None
    assert _postgres_processes(data_dir) == [], "no orphan PostgreSQL processes"

    # Second start reuses the folder, keeps the data, and prints no new key.
    proc = _start_serve(data_dir, port)
    try:
        _wait_healthy(url, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert "lk_op_" not in output
    assert "initialising" not in output
    assert _postgres_processes(data_dir) == []


def test_audit_passes_then_names_a_corrupted_account(dsn: str) -> None:
    created = run_cli("accounts", "create", "alice", dsn=dsn)
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    account_id = account["account"]["id"]
    assert account["owner_api_key"].startswith("lk_own_")
    adjusted = run_cli("accounts", "adjust", account_id, "2500", "--reason", "welcome", dsn=dsn)
    assert adjusted.returncode == 0, adjusted.stderr
    shown = json.loads(run_cli("accounts", "show", account_id, dsn=dsn).stdout)
    assert shown["balance_micros"] == 2500

    ok = run_cli("audit", dsn=dsn)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all invariants hold" in ok.stdout

    async def corrupt() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = $1",
                uuid.UUID(account_id),
            )
        finally:
            await conn.close()

    import asyncio

    asyncio.run(corrupt())
    bad = run_cli("audit", "--json", dsn=dsn)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    invariants = {v["invariant"] for v in report["violations"]}
    assert invariants == {"sum_of_balances_is_zero", "balance_matches_journal"}
    assert account_id in bad.stdout


def test_adjust_with_same_id_moves_money_once(dsn: str) -> None:
    account_id = json.loads(run_cli("accounts", "create", "bob", dsn=dsn).stdout)["account"]["id"]
    tid = str(uuid.uuid4())
    for _ in range(2):
        result = run_cli(
            "accounts", "adjust", account_id, "100", "--reason", "r", "--id", tid, dsn=dsn
        )
        assert result.returncode == 0, result.stderr
    assert (
        json.loads(run_cli("accounts", "show", account_id, dsn=dsn).stdout)["balance_micros"] == 100
    )
    refused = run_cli("accounts", "adjust", account_id, "0", "--reason", "r", dsn=dsn)
    assert refused.returncode == 2


def test_operator_key_rotation_revokes_the_old_key(service_dsn_and_key: tuple[str, str]) -> None:
    dsn, old_key = service_dsn_and_key
    rotated = run_cli("operator-key", "rotate", dsn=dsn)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key.startswith("lk_op_") and new_key != old_key

    async def roles() -> list[tuple[str, bool]]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT role, revoked_at IS NOT NULL AS revoked FROM api_keys ORDER BY created_at"
            )
            return [(r["role"], r["revoked"]) for r in rows]
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(roles()) == [("operator", True), ("operator", False)]
