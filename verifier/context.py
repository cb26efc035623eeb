"""What the charge path keeps per process: the pool, the batcher, merchants, the
credit-token keyring (refreshed on an unknown kid) and the receipt signing keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from ledger.db import CONNECTION_ERRORS
from verifier.batcher import ChargeBatcher
from verifier.errors import TokenInvalid
from verifier.merchants import MerchantCache
from verifier.receipts import Receipt, sign_receipt
from verifier.tokens import CreditTokenClaims, KeyRing, load_keyring, verify_credit_token

__all__ = ["ChargeContext"]

log = logging.getLogger("verifier.context")

# An unknown kid reloads the keyring at most this often (a flood of forged kids
# must not turn into a flood of database reads).
KEYRING_REFRESH_INTERVAL_S = 1.0
HOLD_SWEEP_INTERVAL_S = 1.0


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
    active_receipt_kid: str = ""
    _keyring_loaded_at: float = 0.0
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
            except CONNECTION_ERRORS:
                log.warning("hold expiry sweep skipped: database unavailable")

    async def reload_keys(self) -> None:
        self.keyring = await load_keyring(self.pool)
        self._keyring_loaded_at = time.monotonic()
        rows = await self.pool.fetch(
            "SELECT kid, secret_seed, state FROM signing_keys WHERE purpose = 'receipt' AND state <> 'retired'"
        )
        self.receipt_keys = {r["kid"]: _ReceiptKey(r["kid"], bytes(r["secret_seed"])) for r in rows}
        active = [r["kid"] for r in rows if r["state"] == "active"]
        assert active, "no active receipt signing key (the app creates one at start)"
        self.active_receipt_kid = active[0]

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

    def sign_receipt(self, receipt: Receipt, *, kid: str) -> str:
        key = self.receipt_keys.get(kid) or self.receipt_signer()
        return sign_receipt(receipt, key.secret_seed, kid=key.kid)
