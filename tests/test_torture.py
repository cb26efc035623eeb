"""The bank-style fault test, short: a real `ledger serve` killed with SIGKILL
mid-request and restarted, PostgreSQL restarted under load, clients retrying with
their idempotency keys; then nothing lost, nothing moved twice, every invariant.

And the checker itself can fail: a double debit or a lost receipt is reported.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ledger.config import DEFAULT_DATABASE_NAME
from ledger.core import transfers as core
from ledger.db.embedded import EmbeddedPostgres
from ledger.db.pool import connect
from ledger.tooling.torture import (
    Ack,
    TortureConfig,
    TortureReport,
    World,
    final_report,
    run_torture,
)


@pytest.fixture(scope="module")
def torture_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[TortureReport, World, Path]:
    data_dir = tmp_path_factory.mktemp("torture")
    config = TortureConfig(
        data_dir=data_dir,
        duration_s=15.0,
        clients=4,
        wallets=2,
        kill_interval_s=(2.0, 4.0),
        postgres_restarts=1,
        seed=7,
    )
    report, world = asyncio.run(run_torture(config))
    return report, world, data_dir


async def test_nothing_is_lost_under_kills_and_restarts(
    torture_run: tuple[TortureReport, World, Path],
) -> None:
    report, world, _ = torture_run
    assert report.ok, report.summary()
    assert report.counts["kills"] >= 1, report.summary()
    assert report.counts["postgres_restarts"] == 1, report.summary()
    assert report.counts["retries"] >= 1, "no request was ever cut off: the faults missed"
    assert report.acknowledged > 0
    # Top-ups came through the service as signed webhooks, credited once each.
    assert sum(ack.code == "topup_card" for ack in world.acks) > len(world.wallets)
    assert (report.lost, report.unacknowledged, report.account_mismatches) == ([], [], [])
    ops = {k for k in report.counts if k.startswith("op ")}
    expected = {
        "op charge",
        "op hold+capture",
        "op hold+void",
        "op hold+expire",
        "op refund",
        "op top-up",
    }
    assert expected <= ops, ops
    # Holds left alone were released by the service itself, across restarts.
    assert report.holds.get("expired", 0) >= 1, report.holds
    assert report.holds.get("pending", 0) == 0, report.holds


async def test_the_checks_catch_a_double_debit_and_a_lost_receipt(
    torture_run: tuple[TortureReport, World, Path],
) -> None:
    _, world, data_dir = torture_run
    charge = next(a for a in world.acks if a.code == "charge")
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        conn = await connect(server.dsn(DEFAULT_DATABASE_NAME))
        try:
            # What a broken idempotency check does: the retry moves the money again.
            outcome = await core.create_transfer(
                conn,
                transfer_id=uuid.uuid4(),
                debit_account_id=charge.debit_account_id,
                credit_account_id=charge.credit_account_id,
                amount=charge.amount,
                code="charge",
            )
            assert outcome is core.TransferOutcome.created
        finally:
            await conn.close()
    finally:
        server.stop()
    # And a receipt the journal does not hold.
    world.acks.append(
        Ack("charge", uuid.uuid4(), "charge", 1, charge.debit_account_id, charge.credit_account_id)
    )
    report = await final_report(data_dir, world)
    assert not report.ok
    assert len(report.unacknowledged) == 1, report.summary()
    assert len(report.lost) == 1, report.summary()
    assert len(report.account_mismatches) == 2, report.summary()
    assert not report.audit_ok, "the audit matches every charge transfer to a charge"


def test_the_command_runs_in_a_temporary_folder_and_removes_it_after_passing(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    args = ["--duration", "3", "--clients", "2", "--wallets", "1", "--kill-every", "1", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "torture", *args, "--postgres-restarts", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-2] == "RESULT: ok"
    assert result.stdout.splitlines()[-1].startswith("VERDICT: PASS — ")
    assert "phase 3/5: load with faults" in result.stderr
    assert "load with faults done: " in result.stderr and " operations, " in result.stderr
    assert "lost: 0" in result.stdout.splitlines()
    assert f"data folder: {tmp_path}" in result.stderr
    assert not list(tmp_path.glob("ledger-torture-*")), "a passing run leaves nothing behind"


def test_the_command_refuses_a_used_data_folder(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "torture", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "use a fresh folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgdata"]
