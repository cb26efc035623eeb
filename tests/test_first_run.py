"""The first hour of a new user, with real processes: commands run in the wrong
folder, bad configuration, a package without migrations, and the public URL of a
service started on another port.

Each real `ledger` process costs a Python start (seconds on a busy machine), so the
many configuration cases run the same command in this process (`CliRunner`), and a
few representative ones run as real processes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from ledger.cli.main import main
from ledger.db.embedded import free_port
from ledger.tooling.child import stop_child, wait_healthy
from tests.helpers import operator_key_for

LEDGER = [sys.executable, "-m", "ledger"]
SOME_ID = "00000000-0000-4000-8000-000000000000"


def _ledger(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "DATABASE_URL"))}
    return subprocess.run(
        [*LEDGER, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _in_process(
    *args: str, cwd: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Result:
    """The `ledger` command run in this process: what a process would print and exit with."""
    for name in list(os.environ):
        if name.startswith(("LEDGER_", "USDC_", "STRIPE_", "CARD_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def test_a_command_in_an_empty_folder_creates_no_ledger(tmp_path: Path) -> None:
    result = _ledger("audit", cwd=tmp_path)  # a real process, as a user runs it
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line(result)
    assert str(tmp_path / ".ledger") in line
    assert "LEDGER_DATA_DIR" in line and "ledger serve" in line
    assert "all invariants hold" not in result.stdout
    assert list(tmp_path.iterdir()) == [], "nothing was created"


USDC = {"USDC_RPC_URL": "http://127.0.0.1:1", "USDC_CONTRACT": "0x" + "1" * 40,
        "USDC_TREASURY": "0x" + "2" * 40}  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["audit"],
        ["accounts", "show", SOME_ID],
        ["accounts", "transfers", SOME_ID],
        ["keys", "list"],
        ["operator-key", "rotate"],
        ["usdc", "resume", "--from-block", "1"],
    ],
)
def test_no_command_but_serve_and_migrate_creates_a_ledger(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _in_process(*command, cwd=tmp_path, env=USDC, monkeypatch=monkeypatch)
    assert result.exit_code == 2, result.output
    assert str(tmp_path / ".ledger") in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DATABASE_URL": "mysql://root@db/ledger"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://host:notaport/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:hunter2@no-such-host.invalid/db"}, "DATABASE_URL"),
        ({"LEDGER_PUBLIC_URL": "notaurl"}, "LEDGER_PUBLIC_URL"),
        ({"LEDGER_PORT": "eighty"}, "LEDGER_PORT"),
        ({"CARD_SUCCESS_URL": "ftp://x"}, "CARD_SUCCESS_URL"),
        ({"USDC_CONTRACT": "0x12"}, "USDC_CONTRACT"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "audit"])
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], name: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _in_process(command, cwd=tmp_path, env=env, monkeypatch=monkeypatch)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert name in lines[0]
    assert "hunter2" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_database_url_from_a_real_process(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/db"}
    result = _ledger("serve", cwd=tmp_path, env=env)
    assert result.returncode == 2
    line = _one_line(result)
    assert "DATABASE_URL" in line and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_serve_without_migrations_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "no-migrations"
    empty.mkdir()
    result = _ledger("serve", cwd=tmp_path, env={"LEDGER_MIGRATIONS_DIR": str(empty)})
    assert result.returncode == 2
    line = _one_line(result)
    assert "no migration files" in line and str(empty) in line
    assert [p.name for p in tmp_path.iterdir()] == ["no-migrations"], "no data folder made"


def _claims(credit_token: str) -> dict[str, object]:
    body = credit_token.split(".")[2]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    claims: dict[str, object] = json.loads(raw[:-64])  # the signature is the last 64 bytes
    return claims


def test_public_url_follows_the_port_option(tmp_path: Path, dsn: str) -> None:
    import asyncio

    operator_key = asyncio.run(operator_key_for(dsn))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*LEDGER, "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_healthy(proc, url, timeout_s=90, why_exited=log_path.read_text)
        op = {"Authorization": f"Bearer {operator_key}"}
        with httpx.Client(base_url=url, timeout=30) as client:
            owner = client.post("/v1/accounts", json={"name": "a"}, headers=op).json()
            merchant = client.post("/v1/merchants", json={"name": "m"}, headers=op).json()
            minted = client.post(
                "/v1/tokens",
                json={"cap_micros": 100},
                headers={"Authorization": f"Bearer {owner['owner_api_key']}"},
            ).json()
            assert _claims(minted["token"])["iss"] == url
            refused = client.post(
                "/v1/charges",
                json={"credit_token": minted["token"], "amount_micros": 10, "tool": "t"},
                headers={
                    "Authorization": f"Bearer {merchant['merchant_api_key']}",
                    "Idempotency-Key": "k",
                },
            )
        assert refused.status_code == 402, refused.text
        problem = refused.json()
        assert problem["limit"] == "account_balance"
        # No top-up method is configured here, so no top-up is offered: the
        # advice says who can help, and every link names this service's port.
        assert "topup" not in problem and "operator" in problem["detail"]
        assert problem["type"] == f"{url}/problems/budget_exhausted"
    finally:
        stop_child(proc, timeout_s=30)
        log.close()
