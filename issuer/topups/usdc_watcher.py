"""The USDC deposit watcher: `Transfer` logs to the treasury, credited after N confirmations.

How it stays exact:
- It only reads blocks with at least `confirmations` confirmations (block b has
  `head - b + 1`), so a reorg shallower than that never shows it anything.
- It scans in bounded ranges `[next_block, next_block + range - 1]`; the deposits
  of a range and the new cursor are written in one transaction, so a restart
  resumes exactly where the last committed range ended (nothing missed, nothing
  repeated; deposits are UNIQUE on (chain id, tx hash, log index) besides).
- The cursor keeps the hash of the last block scanned. If the chain later has a
  different block at that height, a reorg deeper than the confirmation depth
  happened: it is recorded in `usdc_reorg_alerts` (with the deposits in blocks that
  changed), logged as an error, and the watcher halts until an operator resumes it
  (`ledger usdc resume --from-block N`; a rescan is idempotent).
- At start it checks the chain id and the token's `decimals()` (must be 6).
- One watcher per database: a PostgreSQL advisory lock, held on a dedicated
  connection while it runs, so several worker processes never run two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from web3 import AsyncHTTPProvider, AsyncWeb3

from issuer.topups.usdc import Deposit, record_deposit
from ledger.config import Settings
from ledger.db.pool import CONNECTION_ERRORS, connect
from ledger.db.queries import load_queries

__all__ = [
    "USDC_DECIMALS",
    "StepResult",
    "UsdcConfigError",
    "UsdcWatcher",
    "run_watcher_forever",
    "watcher_lock",
]

log = logging.getLogger("issuer.topups.usdc_watcher")
queries = load_queries("issuer.topups", "usdc.sql")

USDC_DECIMALS = 6
RPC_TIMEOUT_S = 15.0
# Arbitrary constant naming "the USDC watcher" among advisory locks.
WATCHER_LOCK_ID = 0x05DC_0001
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_DECIMALS_ABI = [
    {
        "name": "decimals",
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint8"}],
    }
]


class UsdcConfigError(Exception):
    """The configured chain or contract is not what the settings say."""


class StepResult(msgspec.Struct, frozen=True):
    status: str  # scanned | idle | halted | deep_reorg | raced
    from_block: int | None = None
    to_block: int | None = None
    deposits: int = 0


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


@dataclass(frozen=True)
class _Key:
    chain_id: int
    contract: str
    treasury: str

    def args(self) -> tuple[int, str, str]:
        return (self.chain_id, self.contract, self.treasury)


class UsdcWatcher:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        assert settings.usdc_rpc_url and settings.usdc_contract and settings.usdc_treasury
        self.pool = pool
        self.settings = settings
        self.w3 = AsyncWeb3(
            AsyncHTTPProvider(settings.usdc_rpc_url, request_kwargs={"timeout": RPC_TIMEOUT_S})
        )
        self.contract = AsyncWeb3.to_checksum_address(settings.usdc_contract)
        self.key = _Key(
            settings.usdc_chain_id, settings.usdc_contract.lower(), settings.usdc_treasury.lower()
        )
        self.treasury_topic = "0x" + "00" * 12 + self.key.treasury[2:]

    async def close(self) -> None:
        await self.w3.provider.disconnect()

    async def check_chain(self) -> None:
        """Refuse to start against the wrong chain or a token that is not 6 decimals."""
        chain_id = await self.w3.eth.chain_id
        if chain_id != self.key.chain_id:
            raise UsdcConfigError(
                f"USDC_RPC_URL serves chain {chain_id}, not USDC_CHAIN_ID {self.key.chain_id}"
            )
        token = self.w3.eth.contract(address=self.contract, abi=_DECIMALS_ABI)
        try:
            decimals = await token.functions.decimals().call()
        except Exception as exc:  # no code there, or no decimals(): web3 raises several types
            raise UsdcConfigError(f"USDC_CONTRACT has no decimals(): {type(exc).__name__}") from exc
        if decimals != USDC_DECIMALS:
            raise UsdcConfigError(
                f"USDC_CONTRACT has {decimals} decimals, expected {USDC_DECIMALS}"
            )

    async def _cursor(self, confirmed: int) -> asyncpg.Record:
        start = self.settings.usdc_start_block
        first = max(confirmed + 1, 0) if start is None else start
        await self.pool.execute(queries["init_cursor"], *self.key.args(), first)
        row = await self.pool.fetchrow(queries["get_cursor"], *self.key.args())
        assert row is not None
        return row

    async def _block_hash(self, number: int) -> str | None:
        block = await self.w3.eth.get_block(number)
        return None if block is None else _hex(block["hash"])

    async def step(self) -> StepResult:
        """Scan one bounded range of confirmed blocks, or report why not."""
        head = await self.w3.eth.block_number
        confirmed = head - self.settings.usdc_confirmations + 1
        cursor = await self._cursor(confirmed)
        if cursor["halted_reason"]:
            return StepResult(status="halted")
        next_block = cursor["next_block"]
        if cursor["last_block_hash"] is not None and next_block > 0:
            found = await self._block_hash(next_block - 1)
            if found != cursor["last_block_hash"]:
                await self._report_deep_reorg(next_block - 1, cursor["last_block_hash"], found)
                return StepResult(status="deep_reorg", to_block=next_block - 1)
        to_block = min(confirmed, next_block + self.settings.usdc_block_range_max - 1)
        if to_block < next_block:
            return StepResult(status="idle")
        deposits, to_hash = await self._read(next_block, to_block)
        if deposits is None:
            return StepResult(status="raced")
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchrow(queries["lock_cursor"], *self.key.args())
            if locked is None or locked["next_block"] != next_block or locked["halted_reason"]:
                return StepResult(status="raced")
            for deposit in deposits:
                await record_deposit(conn, deposit)
            await conn.execute(queries["advance_cursor"], *self.key.args(), to_block + 1, to_hash)
        if deposits:
            log.info("usdc: %d deposit(s) in blocks %d-%d", len(deposits), next_block, to_block)
        return StepResult(
            status="scanned", from_block=next_block, to_block=to_block, deposits=len(deposits)
        )

    async def _read(self, from_block: int, to_block: int) -> tuple[list[Deposit] | None, str]:
        """The range's deposits and the hash of its last block; None if the chain moved under us."""
        before = await self._block_hash(to_block)
        logs = await self.w3.eth.get_logs(
            {
                "fromBlock": from_block,
                "toBlock": to_block,
                "address": self.contract,
                "topics": [TRANSFER_TOPIC, None, self.treasury_topic],
            }
        )
        after = await self._block_hash(to_block)
        if before is None or before != after:
            return None, ""
        deposits = []
        for entry in logs:
            amount = int.from_bytes(bytes(entry["data"]), "big")
            if amount == 0 or entry.get("removed"):
                continue
            deposits.append(
                Deposit(
                    chain_id=self.key.chain_id,
                    tx_hash=_hex(entry["transactionHash"]),
                    log_index=int(entry["logIndex"]),
                    block_number=int(entry["blockNumber"]),
                    block_hash=_hex(entry["blockHash"]),
                    from_address="0x" + bytes(entry["topics"][1])[-20:].hex(),
                    amount=amount,
                )
            )
        return deposits, before

    async def _report_deep_reorg(self, block_number: int, expected: str, found: str | None) -> None:
        window_lo = max(0, block_number - 10 * self.settings.usdc_confirmations)
        affected: list[str] = []
        rows = await self.pool.fetch(
            queries["recent_deposit_blocks"], self.key.chain_id, window_lo, block_number
        )
        for row in rows:
            if await self._block_hash(row["block_number"]) != row["block_hash"]:
                ids = await self.pool.fetch(
                    queries["deposits_in_block"],
                    self.key.chain_id,
                    row["block_number"],
                    row["block_hash"],
                )
                affected.extend(str(r["id"]) for r in ids)
        depth = self.settings.usdc_confirmations
        reason = f"reorg deeper than {depth} confirmations at block {block_number}"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                queries["insert_reorg_alert"],
                self.key.chain_id,
                block_number,
                expected,
                found,
                affected,
            )
            await conn.execute(queries["halt_cursor"], *self.key.args(), reason)
        log.error("usdc watcher halted: %s; deposits affected: %s", reason, affected or "none")

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until `stop` is set; RPC or database hiccups are logged and retried."""
        while not stop.is_set():
            try:
                result = await self.step()
            except CONNECTION_ERRORS as exc:
                log.warning("usdc watcher: database unavailable (%s)", type(exc).__name__)
                result = StepResult(status="error")
            except Exception as exc:  # the RPC node: web3/aiohttp raise many types
                log.warning("usdc watcher: node request failed (%s)", type(exc).__name__)
                result = StepResult(status="error")
            if result.status == "scanned":
                continue  # more confirmed blocks may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.usdc_poll_interval_s)


@contextlib.asynccontextmanager
async def watcher_lock(dsn: str) -> AsyncIterator[bool]:
    """Try to become the one watcher; yields whether we are (held until exit)."""
    conn = await connect(dsn)
    try:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", WATCHER_LOCK_ID))
        yield held
    finally:
        await conn.close()  # closing the session releases the lock


async def run_watcher_forever(
    pool: asyncpg.Pool, dsn: str, settings: Settings, stop: asyncio.Event
) -> None:
    """Inside `ledger serve`: whichever worker gets the lock watches; others stand by."""
    while not stop.is_set():
        try:
            async with watcher_lock(dsn) as held:
                if held:
                    watcher = UsdcWatcher(pool, settings)
                    try:
                        await watcher.check_chain()
                        log.info("usdc watcher running (chain %d)", settings.usdc_chain_id)
                        await watcher.run(stop)
                    finally:
                        await watcher.close()
                    return
        except UsdcConfigError as exc:
            log.error("usdc watcher not started: %s", exc)
            return
        except CONNECTION_ERRORS as exc:
            log.warning("usdc watcher: cannot start yet (%s)", type(exc).__name__)
        except Exception as exc:  # the node not answering yet
            log.warning("usdc watcher: cannot start yet (%s)", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.usdc_poll_interval_s)
