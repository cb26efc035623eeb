"""Migration runner: naming, idempotence, edit detection, concurrent starts."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledger.db.migrate import (
    NAME_PATTERN,
    MigrationError,
    apply_migrations,
    discover,
    migrations_dir,
)


def test_migration_files_are_numbered_and_named() -> None:
    # Besides the numbered files, the folder holds only what makes it the
    # `ledger.migrations` package of an installed service.
    files = sorted(
        p for p in migrations_dir().iterdir() if p.name not in ("__init__.py", "__pycache__")
    )
    assert files, "no migrations found"
    for path in files:
        assert NAME_PATTERN.match(path.name), path.name
    versions = [m.version for m in discover()]
    assert versions == sorted(set(versions))


@pytest.fixture
async def empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield pg_admin_dsn.rpartition("/")[0] + "/" + name
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_second_run_is_a_no_op(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        first = await apply_migrations(conn)
        assert len(first) == len(discover())
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()


async def test_edited_migration_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    conn = await asyncpg.connect(empty_dsn)
    try:
        await apply_migrations(conn, folder)
        first = sorted(folder.glob("*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await apply_migrations(conn, folder)
    finally:
        await conn.close()


async def test_unknown_applied_migration_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    conn = await asyncpg.connect(empty_dsn)
    try:
        await apply_migrations(conn, folder)
        sorted(folder.glob("*.sql"))[-1].unlink()
        with pytest.raises(MigrationError, match="does not know"):
            await apply_migrations(conn, folder)
    finally:
        await conn.close()


async def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


async def test_concurrent_starts_apply_each_migration_once(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in discover())
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(discover())
    finally:
        for c in conns:
            await c.close()


async def test_failed_migration_leaves_nothing_behind(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    last = max(m.version for m in discover(folder))
    (folder / f"{last + 1:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (x int); SELECT 1/0;"
    )
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, folder)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == last
    finally:
        await conn.close()
