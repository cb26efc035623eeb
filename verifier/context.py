"""What the charge path keeps per process: the pool, the batcher, merchants, the
credit-token keyring (refreshed on an unknown kid) and the receipt signing keys.

Receipt signing keys: a receipt's facts and the kid that signed it are stored with
the charge, capture or refund, and a replay re-signs those facts with that same key
(Ed25519 is deterministic), so the replay is byte-identical to the original even
after a rotation. Hence verify-only keys stay loaded, and a kid this process has not
seen (rotated in by another process after this one loaded its keys) reloads them.
Only a retired key is never used again: its receipts are re-signed with the active
key (same facts, new signature), since what a retired key signed no longer verifies.
All keys are also reloaded every `KEYS_RELOAD_INTERVAL_S`, so a rotation or
retirement done elsewhere takes effect here without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from ledger.db import CONNECTION_ERRORS
from ledger.queries import load_queries
from verifier.batcher import ChargeBatcher
from verifier.errors import TokenInvalid
from verifier.merchants import MerchantCache
from verifier.receipts import Receipt, sign_receipt
from verifier.tokens import CreditTokenClaims, KeyRing, load_keyring, verify_credit_token

__all__ = ["ChargeContext"]

log = logging.getLogger("verifier.context")
queries = load_queries("verifier", "keys.sql")

# An unknown kid reloads the keyring at most this often (a flood of forged kids
# must not turn into a flood of database reads).
KEYRING_REFRESH_INTERVAL_S = 1.0
HOLD_SWEEP_INTERVAL_S = 1.0
# Every key (credit-token and receipt) is re-read at least this often.
KEYS_RELOAD_INTERVAL_S = 30.0


@dataclass
class _ReceiptKey:
    kid: str
    secret_seed: bytes


@dataclass
class ChargeContext:
    pool: asyncpg.Pool
    topup_url: str
    batcher: ChargeBatcher
    merchants: MerchantCache = field(default_factory=MerchantCache)
    keyring: KeyRing | None = None
    receipt_keys: dict[str, _ReceiptKey] = field(default_factory=dict)
    retired_receipt_kids: frozenset[str] = frozenset()
    active_receipt_kid: str = ""
    _keyring_loaded_at: float = 0.0
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, pool: asyncpg.Pool, *, topup_url: str, sweep_interval_s: float
    ) -> ChargeContext:
        ctx = cls(pool=pool, topup_url=topup_url, batcher=ChargeBatcher(pool))
        await ctx.reload_keys()
        ctx.batcher.start()
        ctx._sweeper = asyncio.create_task(ctx._sweep(sweep_interval_s))
        return ctx

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.batcher.stop()

    async def _sweep(self, interval_s: float) -> None:
        from verifier.charges import expire_holds

        while True:
            await asyncio.sleep(interval_s)
            try:
                await expire_holds(self.pool)
                if time.monotonic() - self._keyring_loaded_at >= KEYS_RELOAD_INTERVAL_S:
                    await self.reload_keys()
            except CONNECTION_ERRORS:
                log.warning("hold expiry sweep skipped: database unavailable")

    async def reload_keys(self) -> None:
        """Every public key, and every receipt key that still signs or verifies."""
        keyring = await load_keyring(self.pool)
        rows = await self.pool.fetch(queries["receipt_signing_keys"])
        active = [r["kid"] for r in rows if r["state"] == "active"]
        assert len(active) == 1, "one active receipt signing key (the app creates it at start)"
        self.receipt_keys = {
            r["kid"]: _ReceiptKey(r["kid"], bytes(r["secret_seed"]))
            for r in rows
            if r["state"] != "retired"
        }
        self.retired_receipt_kids = frozenset(r["kid"] for r in rows if r["state"] == "retired")
        self.active_receipt_kid = active[0]
        self.keyring = keyring
        self._keyring_loaded_at = time.monotonic()

    async def verify_credit_token(self, token: str) -> CreditTokenClaims:
        assert self.keyring is not None
        try:
            return verify_credit_token(token, self.keyring)
        except TokenInvalid:
            if time.monotonic() - self._keyring_loaded_at < KEYRING_REFRESH_INTERVAL_S:
                raise
            await self.reload_keys()
            return verify_credit_token(token, self.keyring)

    def receipt_signer(self) -> _ReceiptKey:
        return self.receipt_keys[self.active_receipt_kid]

    async def sign_receipt(self, receipt: Receipt, *, kid: str) -> str:
        """Sign `receipt` with the key recorded for it (`kid`), so replays match."""
        if kid not in self.receipt_keys and kid not in self.retired_receipt_kids:
            async with self._reload_lock:
                if kid not in self.receipt_keys:
                    await self.reload_keys()
        key = self.receipt_keys.get(kid)
        if key is None:
            # Retired (or unknown to the database): what it signed verifies nowhere.
            log.warning("receipt signing key %s is retired; re-signing with the active key", kid)
            key = self.receipt_signer()
        return sign_receipt(receipt, key.secret_seed, kid=key.kid)
