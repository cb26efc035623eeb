"""Progress of a long command (bench, torture, demo) and its closing verdict.

Progress goes to stderr, so a command's report (and `--json`) on stdout stays
clean: one line when a phase starts, and while it runs a line every few seconds
with what `status()` says (operations so far, kills, …):

    [torture   0:12] phase 3/5: load (60 s, 8 clients)
    [torture   0:14] load: 1,204 operations, 1 kill, 0 PostgreSQL restarts

The verdict is the last line of stdout: `VERDICT: PASS — …` or `VERDICT: FAIL — …`.

    progress = Progress("torture", phases=5)
    progress.phase("load")
    with progress.ticking(lambda: f"{ops:,} operations"):   # from sync or async code
        ...
    progress.verdict(ok, "why")
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import click

__all__ = ["TICK_INTERVAL_S", "Progress", "verdict_line"]

TICK_INTERVAL_S = 5.0


def verdict_line(ok: bool, why: str) -> str:
    return f"VERDICT: {'PASS' if ok else 'FAIL'} — {why}"


class Progress:
    def __init__(
        self,
        command: str,
        *,
        phases: int | None = None,
        stream: TextIO | None = None,
        interval_s: float = TICK_INTERVAL_S,
        quiet: bool = False,
    ) -> None:
        self.command = command
        self.phases = phases
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.quiet = quiet
        self.started = time.monotonic()
        self.current = ""
        self._number = 0
        self._lock = threading.Lock()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def say(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self.stream.write(f"[{self.command} {self.elapsed():>6}] {text}\n")
            self.stream.flush()

    def phase(self, name: str) -> None:
        """A new phase starts (numbered when the total is known)."""
        self._number += 1
        self.current = name.split(" (")[0]
        of = f"/{self.phases}" if self.phases else ""
        self.say(f"phase {self._number}{of}: {name}")

    @contextlib.contextmanager
    def ticking(self, status: Callable[[], str]) -> Iterator[None]:
        """While the block runs, a line with `status()` every `interval_s` (from a thread,
        so it works around blocking and asyncio code alike); once more at the end."""
        done = threading.Event()

        def tick() -> None:
            while not done.wait(self.interval_s):
                self.say(f"{self.current}: {_safe(status)}")

        thread = threading.Thread(target=tick, name=f"{self.command}-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.say(f"{self.current} done: {_safe(status)}")

    def verdict(self, ok: bool, why: str) -> None:
        """The last line on stdout."""
        click.echo(verdict_line(ok, why))


def _safe(status: Callable[[], str]) -> str:
    try:
        return status()
    except Exception as exc:  # a progress line must never break the run
        return f"(status unavailable: {type(exc).__name__})"
