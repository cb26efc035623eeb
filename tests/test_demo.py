"""`ledger demo` runs the whole story as a real process and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO_TIMEOUT_S = 300


def test_ledger_demo_exits_0_and_tells_the_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "demo", "--data-dir", str(tmp_path / "pg")],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("top-up by signed card webhook") == 2
    assert '"code": "budget_exhausted"' in out
    assert '"limit": "account_balance"' in out
    assert "(same credit token)" in out
    assert "capture  summarize" in out
    assert "all invariants hold" in out
    assert out.splitlines()[-1].startswith("VERDICT: PASS — the whole story ran in ")
    assert "[demo" in done.stderr and "phase 8/8: ledger audit" in done.stderr
    # Secrets stay secret: no full API key or credit token is printed.
    for line in out.splitlines():
        assert "lk_own_" not in line or "…" in line
        assert "v4.public." not in line or "…" in line
