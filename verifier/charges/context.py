"""What the charge path keeps per process: the pool, the batcher, merchants, the
credit-token keyring (refreshed on an unknown kid) and the receipt signing keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg
import nacl.signing

from ledger.db.pool import CONNECTION_ERRORS
from ledger.db.queries import load_queries
from verifier.charges.batcher import ChargeBatcher
from verifier.charges.merchants import MerchantCache
from verifier.errors import TopupAdvice
from verifier.receipts import Receipt, sign_receipt
from verifier.tokens import (
    CreditTokenClaims,
    KeyRingCache,
    check_time,
    token_kid,
    verify_credit_token,
)

__all__ = ["ChargeContext"]

log = logging.getLogger("verifier.charges.context")
queries = load_queries("verifier", "keys.sql")

HOLD_SWEEP_INTERVAL_S = 1.0
# Receipt keys are re-read at least this often (a key rotated by another process).
RECEIPT_KEYS_RELOAD_S = 30.0


@dataclass
class _ReceiptKey:
    kid: str
    signing_key: nacl.signing.SigningKey = field(repr=False)


# Credit tokens whose signature this process has already checked, by exact token
# string. A hit still re-checks the time window and that the signing key is not
# retired; revocation and budgets are always checked by the database.
VERIFIED_CACHE_SIZE_MAX = 10_000


@dataclass
class ChargeContext:
    pool: asyncpg.Pool
    topup: TopupAdvice
    batcher: ChargeBatcher
    merchants: MerchantCache = field(default_factory=MerchantCache)
    keyrings: KeyRingCache = field(default_factory=KeyRingCache)
    receipt_keys: dict[str, _ReceiptKey] = field(default_factory=dict)
    retired_receipt_kids: frozenset[str] = frozenset()
    active_receipt_kid: str = ""
    _verified: dict[str, CreditTokenClaims] = field(default_factory=dict)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, pool: asyncpg.Pool, *, topup: TopupAdvice, sweep_interval_s: float
    ) -> ChargeContext:
        ctx = cls(pool=pool, topup=topup, batcher=ChargeBatcher(pool))
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
        from verifier.charges.service import expire_holds

        last_key_reload = time.monotonic()
        while True:
            await asyncio.sleep(interval_s)
            try:
                await expire_holds(self.pool)
                if time.monotonic() - last_key_reload >= RECEIPT_KEYS_RELOAD_S:
                    # Pick up a receipt key rotated by another process.
                    await self.reload_keys()
                    last_key_reload = time.monotonic()
            except CONNECTION_ERRORS:
                log.warning("hold expiry sweep skipped: database unavailable")

    async def reload_keys(self) -> None:
        """Every receipt key that still signs or verifies, and which one is active."""
        rows = await self.pool.fetch(queries["receipt_signing_keys"])
        active = [r["kid"] for r in rows if r["state"] == "active"]
        assert len(active) == 1, "one active receipt signing key (the app creates it at start)"
        self.receipt_keys = {
            r["kid"]: _ReceiptKey(r["kid"], nacl.signing.SigningKey(bytes(r["secret_seed"])))
            for r in rows
            if r["state"] != "retired"
        }
        self.retired_receipt_kids = frozenset(r["kid"] for r in rows if r["state"] == "retired")
        self.active_receipt_kid = active[0]

    async def verify_credit_token(self, token: str) -> CreditTokenClaims:
        keyring = await self.keyrings.get(self.pool)
        claims = self._verified.get(token)
        if claims is not None and keyring.get(claims.kid, "credit_token") is not None:
            check_time(claims)
            return claims
        keyring = await self.keyrings.get(self.pool, kid=token_kid(token))
        claims = verify_credit_token(token, keyring)
        if len(self._verified) >= VERIFIED_CACHE_SIZE_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

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
        return sign_receipt(receipt, key.signing_key, kid=key.kid)
