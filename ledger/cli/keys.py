"""`ledger keys …`: list, rotate and retire signing keys (never prints a secret)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click
import msgspec

from issuer.keys import (
    PURPOSES,
    RetireOutcome,
    ensure_signing_keys,
    list_signing_keys,
    retire_signing_key,
    rotate_signing_key,
)
from ledger.app.runtime import database_dsn, prepare_database
from ledger.config import Settings
from ledger.db.pool import connect

__all__ = ["ensure_signing_keys_at", "keys_group"]

T = TypeVar("T")


def _run(work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    settings = Settings.from_env()  # a ConfigError is reported by the `ledger` group
    with database_dsn(settings) as dsn:
        asyncio.run(prepare_database(dsn))
        return asyncio.run(_with_connection(dsn, work))


async def _with_connection(dsn: str, work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    conn = await connect(dsn)
    try:
        return await work(conn)
    finally:
        await conn.close()


def ensure_signing_keys_at(dsn: str) -> list[str]:
    """Create the first signing keys before the server starts (idempotent)."""
    return asyncio.run(_with_connection(dsn, ensure_signing_keys))


@click.group("keys")
def keys_group() -> None:
    """Signing keys of credit tokens and receipts."""


@keys_group.command("list")
def keys_list() -> None:
    """Every signing key: kid, purpose, state (never the secret)."""

    async def work(conn: asyncpg.Connection[Any]) -> list[Any]:
        await ensure_signing_keys(conn)
        return msgspec.to_builtins(await list_signing_keys(conn))  # type: ignore[no-any-return]

    click.echo(json.dumps(_run(work), indent=2, sort_keys=True))


@keys_group.command("rotate")
@click.option(
    "--purpose",
    type=click.Choice(PURPOSES),
    multiple=True,
    help="Which key(s) to rotate (default: both).",
)
def keys_rotate(purpose: tuple[str, ...]) -> None:
    """Make a new active key; the old one keeps verifying until retired."""
    purposes = purpose or PURPOSES

    async def work(conn: asyncpg.Connection[Any]) -> list[tuple[str, str]]:
        await ensure_signing_keys(conn)
        return [(p, await rotate_signing_key(conn, p)) for p in purposes]  # type: ignore[arg-type]

    for rotated, kid in _run(work):
        click.echo(f"{rotated}: new active key {kid}")


@keys_group.command("retire")
@click.argument("kid")
def keys_retire(kid: str) -> None:
    """Stop a verify-only key from verifying; what it signed stops verifying too."""

    async def work(conn: asyncpg.Connection[Any]) -> RetireOutcome:
        return await retire_signing_key(conn, kid)

    outcome = _run(work)
    if outcome is not RetireOutcome.retired:
        raise click.ClickException(f"not retired: {outcome.value}")
    click.echo(f"retired {kid}")
