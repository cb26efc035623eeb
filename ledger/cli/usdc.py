"""`ledger usdc ...`: run the deposit watcher on its own, resume it after a deep reorg."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import click

from issuer.topups.usdc_watcher import UsdcConfigError, UsdcWatcher, watcher_lock
from ledger.app.runtime import database_dsn, prepare_database
from ledger.config import ConfigError, Settings
from ledger.db.pool import connect, create_pool
from ledger.db.queries import load_queries

__all__ = ["usdc_group"]

log = logging.getLogger("ledger.cli.usdc")
queries = load_queries("issuer.topups", "usdc.sql")


def _settings() -> Settings:
    settings = Settings.from_env()  # a ConfigError is reported by the `ledger` group
    if not settings.usdc_configured:
        raise ConfigError("set USDC_RPC_URL, USDC_CONTRACT and USDC_TREASURY")
    return settings


@click.group("usdc")
def usdc_group() -> None:
    """USDC deposits on an EVM chain."""


@usdc_group.command("watch")
@click.option("--once", is_flag=True, help="Scan what is confirmed now, then exit.")
def watch(once: bool) -> None:
    """Credit confirmed USDC transfers to the treasury (one watcher per database)."""
    settings = _settings()
    with database_dsn(settings) as dsn:
        asyncio.run(prepare_database(dsn))
        try:
            asyncio.run(_watch(dsn, settings, once=once))
        except UsdcConfigError as exc:
            raise click.ClickException(str(exc)) from exc


async def _watch(dsn: str, settings: Settings, *, once: bool) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with watcher_lock(dsn) as held:
            if not held:
                raise click.ClickException("another USDC watcher holds the lock on this database")
            watcher = UsdcWatcher(pool, settings)
            try:
                await watcher.check_chain()
                if once:
                    while (result := await watcher.step()).status == "scanned":
                        click.echo(
                            f"scanned {result.from_block}-{result.to_block}: {result.deposits}"
                        )
                    click.echo(result.status)
                    return
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.add_signal_handler(sig, stop.set)
                log.info("usdc watcher running (chain %d)", settings.usdc_chain_id)
                await watcher.run(stop)
            finally:
                await watcher.close()
    finally:
        await pool.close()


@usdc_group.command("resume")
@click.option("--from-block", type=click.IntRange(min=0), required=True, help="Rescan from here.")
def resume(from_block: int) -> None:
    """Clear a halt (after a deep reorg) and rescan from a block; rescans repeat nothing."""
    settings = _settings()
    assert settings.usdc_contract and settings.usdc_treasury

    async def work(dsn: str) -> str:
        conn = await connect(dsn)
        try:
            return str(
                await conn.execute(
                    queries["resume_cursor"],
                    settings.usdc_chain_id,
                    settings.usdc_contract.lower() if settings.usdc_contract else "",
                    settings.usdc_treasury.lower() if settings.usdc_treasury else "",
                    from_block,
                )
            )
        finally:
            await conn.close()

    with database_dsn(settings) as dsn:
        asyncio.run(prepare_database(dsn))
        status = asyncio.run(work(dsn))
    if status != "UPDATE 1":
        raise click.ClickException("no watcher cursor for this chain, contract and treasury yet")
    click.echo(f"resumed: the watcher rescans from block {from_block}")
