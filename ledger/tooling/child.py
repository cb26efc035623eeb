"""A `ledger serve` child process, as the benchmark and the fault test run one."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable

import httpx

__all__ = ["stop_child", "wait_healthy"]

POLL_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0


def wait_healthy(
    proc: subprocess.Popen[bytes], url: str, *, timeout_s: float, why_exited: Callable[[], str]
) -> None:
    """Return once `GET {url}/health` answers 200; raise if the process exits first
    (with `why_exited()`) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ledger serve exited {proc.returncode}: {why_exited()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT_S).status_code == 200:
                return
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"ledger serve did not become healthy within {timeout_s:.0f} s")


def stop_child(proc: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """SIGTERM (a clean stop: it stops its embedded PostgreSQL too); SIGKILL if it has
    not exited within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
