"""Forward-only migrations: numbered `.sql` files in `migrations/`.

`schema_migrations` records each applied file with its SHA-256. An applied file
that was edited afterwards is refused. A session-level advisory lock serialises
concurrent starts so no migration is applied twice. Each file runs in its own
transaction together with its bookkeeping row.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

__all__ = [
    "Migration",
    "MigrationError",
    "apply_migrations",
    "discover",
    "migrations_dir",
    "pending_migrations",
]

# An arbitrary constant naming "the migration lock" among advisory locks.
MIGRATION_LOCK_ID = 0x1ED6E8
NAME_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migrations folder and the database disagree; refuse to start."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """`LEDGER_MIGRATIONS_DIR`, or the files shipped in the package (`ledger.migrations`,
    which the build maps from the repository's top-level `migrations/` folder)."""
    override = os.environ.get("LEDGER_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(str(resources.files("ledger.migrations")))


def discover(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = NAME_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    if not found:
        raise MigrationError(
            f"no migration files (NNNN_name.sql) in {folder}; the installed package is "
            "incomplete, or LEDGER_MIGRATIONS_DIR names the wrong folder"
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection, folder: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names of those applied now."""
    migrations = discover(folder)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"database has migrations this code does not know: {unknown}; "
                "is this an older version of the service?"
            )
        done: list[str] = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql was edited after "
                        "it was applied; migrations are forward-only: add a new file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(f"{migration.version:04d}_{migration.name}")
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def pending_migrations(conn: Any, folder: Path | None = None) -> list[str]:
    """Migrations this code ships that the database lacks (or holds edited); [] = current."""
    migrations = discover(folder)
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations") if exists else []
    applied = {row["version"]: row["checksum"] for row in rows}
    return [f"{m.version:04d}_{m.name}" for m in migrations if applied.get(m.version) != m.checksum]
