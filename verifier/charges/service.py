"""Verify-and-debit: charges, holds (authorize, capture, void), refunds.

A request is checked offline first (signature, window, audience, tool,
`max_per_call`: no database work for a token that cannot pay), then applied in
PostgreSQL in one round trip (see `verifier.batcher` and migrations/0004), which
re-checks what only the database knows (revocation, caps of the token and every
ancestor, the wallet's balance) and either writes everything or nothing.

Outcomes of the database, in precedence order, map to problems here and only here.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from msgspec import Meta

from ledger import limits
from ledger.db.queries import load_queries
from ledger.errors import IdempotencyConflict, LedgerError, NotFound
from ledger.ids import new_id
from ledger.observability import money
from verifier.charges.context import ChargeContext
from verifier.charges.merchants import Merchant
from verifier.errors import (
    BudgetExhausted,
    CaptureExceedsHold,
    HoldNotPending,
    RefundExceedsCharge,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
    TokenRevoked,
)
from verifier.receipts import Receipt
from verifier.tokens import CreditTokenClaims, TokenId, ToolName, check_scope

__all__ = [
    "CaptureIn",
    "CaptureOut",
    "ChargeIn",
    "ChargeOut",
    "HoldIn",
    "HoldOut",
    "RefundIn",
    "RefundOut",
    "VoidOut",
    "capture_hold",
    "charge",
    "place_hold",
    "refund",
    "void_hold",
]

queries = load_queries("verifier.charges", "charges.sql")

CREDIT_TOKEN_LENGTH_MAX = 8192
REASON_LENGTH_MAX = 200

# Optional here because the `Idempotency-Key` header may carry it instead; the API
# fills it in (`ledger.http.idempotency.keyed`) before any of this runs.
IdempotencyKey = limits.IdempotencyKey | None
CreditToken = Annotated[str, Meta(min_length=1, max_length=CREDIT_TOKEN_LENGTH_MAX)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=limits.METADATA_KEY_LENGTH_MAX)]
MetadataValue = Annotated[str, Meta(max_length=limits.METADATA_VALUE_LENGTH_MAX)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=limits.METADATA_KEYS_MAX)]


class ChargeIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    credit_token: CreditToken
    amount_micros: limits.Amount
    tool: ToolName
    idempotency_key: IdempotencyKey = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class ChargeOut(msgspec.Struct, frozen=True):
    charge_id: uuid.UUID
    receipt: Receipt
    signed_receipt: str


class HoldIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    credit_token: CreditToken
    amount_micros: limits.Amount
    tool: ToolName
    idempotency_key: IdempotencyKey = None
    expires_in_s: Annotated[int, Meta(ge=1, le=limits.HOLD_EXPIRY_MAX_S)] = (
        limits.HOLD_EXPIRY_DEFAULT_S
    )
    metadata: Metadata = msgspec.field(default_factory=dict)


class HoldOut(msgspec.Struct, frozen=True):
    hold_id: uuid.UUID
    status: Literal["pending", "captured", "voided", "expired"]
    amount_micros: int
    expires_at: str
    token_id: TokenId
    account_id: uuid.UUID
    merchant_id: uuid.UUID
    tool: str
    unit: Literal["micro_usd"] = "micro_usd"


class CaptureIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_micros: limits.Amount


class CaptureOut(msgspec.Struct, frozen=True):
    hold_id: uuid.UUID
    charge_id: uuid.UUID
    captured_micros: int
    released_micros: int
    receipt: Receipt
    signed_receipt: str


class VoidOut(msgspec.Struct, frozen=True):
    hold_id: uuid.UUID
    status: Literal["voided", "expired"]


class RefundIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_micros: limits.Amount
    idempotency_key: IdempotencyKey = None
    reason: Annotated[str, Meta(max_length=REASON_LENGTH_MAX)] | None = None


class RefundOut(msgspec.Struct, frozen=True):
    refund_id: uuid.UUID
    charge_id: uuid.UUID
    amount_micros: int
    refunded_total_micros: int
    receipt: Receipt
    signed_receipt: str
    unit: Literal["micro_usd"] = "micro_usd"


def _request_hash(kind: str, credit_token: str, *parts: object) -> bytes:
    """What makes two requests "the same" for idempotency (never stores the token)."""
    token_digest = hashlib.sha256(credit_token.encode()).hexdigest()
    return hashlib.sha256(msgspec.json.encode([kind, token_digest, *parts])).digest()


def _refusal(outcome: str, row: Any, *, required: int, ctx: ChargeContext) -> LedgerError:
    if outcome == "idempotency_conflict":
        return IdempotencyConflict("this idempotency key was used with a different request")
    if outcome == "token_unknown":
        return TokenInvalid("the credit token is not known to this ledger")
    if outcome == "token_revoked":
        return TokenRevoked("the credit token or one of its ancestors was revoked")
    if outcome == "token_expired":
        return TokenExpired("the credit token or one of its ancestors has expired")
    if outcome in ("max_per_call", "token_cap", "ancestor_cap", "account_balance"):
        return BudgetExhausted(
            limit=outcome,  # type: ignore[arg-type]
            required=required,
            available=max(0, int(row["available"])),
            token_id=str(row["token_jti"]),
            account_id=str(row["account_id"]),
            topup=ctx.topup,
        )
    raise AssertionError(f"unexpected charge outcome {outcome!r}")


async def _verified(
    ctx: ChargeContext, credit_token: str, merchant: Merchant, tool: str
) -> CreditTokenClaims:
    claims = await ctx.verify_credit_token(credit_token)
    money.note(token_id=claims.jti, account_id=claims.sub)
    check_scope(claims, merchant_id=str(merchant.id), tool=tool)
    return claims


def _max_per_call(claims: CreditTokenClaims, amount: int, ctx: ChargeContext) -> None:
    if amount > claims.max_per_call:
        raise BudgetExhausted(
            limit="max_per_call",
            required=amount,
            available=claims.max_per_call,
            token_id=str(claims.jti),
            account_id=str(claims.sub),
            topup=ctx.topup,
        )


async def charge(ctx: ChargeContext, merchant: Merchant, body: ChargeIn) -> tuple[ChargeOut, bool]:
    """Verify and debit; returns (result, created). A replay returns the original."""
    money.note(merchant_id=merchant.id, tool=body.tool, amount_micros=body.amount_micros)
    request_hash = _request_hash(
        "charge", body.credit_token, body.amount_micros, body.tool, body.metadata
    )
    try:
        claims = await _verified(ctx, body.credit_token, merchant, body.tool)
    except (TokenExpired, TokenNotYetValid, TokenRevoked):
        # A retry of a charge made while the token was valid still gets its receipt.
        replay = await _replay_charge(ctx, merchant, body.idempotency_key, request_hash)
        if replay is None:
            raise
        _log_charge("charge", "exists", merchant, replay.receipt)
        return replay, False
    _max_per_call(claims, body.amount_micros, ctx)
    signer = ctx.receipt_signer()
    row = await ctx.batcher.submit(
        (
            new_id(),
            "charge",
            merchant.id,
            merchant.revenue_account_id,
            body.idempotency_key,
            request_hash,
            claims.jti,
            body.tool,
            body.amount_micros,
            new_id(),
            signer.kid,
            None,
            body.metadata,
        )
    )
    outcome = row["outcome"]
    if outcome not in ("created", "exists"):
        raise _refusal(outcome, row, required=body.amount_micros, ctx=ctx)
    receipt = Receipt(
        receipt_id=row["receipt_id"],
        kind="charge",
        charge_id=row["id"],
        transfer_id=row["id"],
        token_id=row["token_jti"],
        account_id=row["account_id"],
        merchant_id=merchant.id,
        tool=row["tool"],
        amount_micros=row["amount"],
        token_remaining_micros=row["token_remaining"],
        account_balance_micros=row["account_balance"],
        created_at=row["created_at"],
    )
    signed = await ctx.sign_receipt(receipt, kid=row["receipt_kid"])
    _log_charge("charge", outcome, merchant, receipt)
    return ChargeOut(
        charge_id=row["id"], receipt=receipt, signed_receipt=signed
    ), outcome == "created"


def _log_charge(kind: str, outcome: str, merchant: Merchant, receipt: Receipt) -> None:
    money.moved(
        kind,
        outcome,
        id=receipt.charge_id if kind != "refund" else receipt.transfer_id,
        merchant_id=merchant.id,
        account_id=receipt.account_id,
        token_id=receipt.token_id,
        tool=receipt.tool,
        amount_micros=receipt.amount_micros,
    )


async def _replay_charge(
    ctx: ChargeContext, merchant: Merchant, key: str | None, request_hash: bytes
) -> ChargeOut | None:
    row = await ctx.pool.fetchrow(queries["find_charge_by_key"], merchant.id, key)
    if row is None or bytes(row["request_hash"]) != request_hash:
        return None
    receipt = _charge_receipt(row, kind="charge")
    return ChargeOut(
        charge_id=row["id"],
        receipt=receipt,
        signed_receipt=await ctx.sign_receipt(receipt, kid=row["receipt_kid"]),
    )


def _charge_receipt(row: Any, *, kind: Literal["charge", "capture"]) -> Receipt:
    return Receipt(
        receipt_id=uuid.UUID(str(row["receipt_id"])),
        kind=kind,
        charge_id=uuid.UUID(str(row["id"])),
        transfer_id=uuid.UUID(str(row["transfer_id"])),
        token_id=uuid.UUID(str(row["token_jti"])),
        account_id=uuid.UUID(str(row["account_id"])),
        merchant_id=uuid.UUID(str(row["merchant_id"])),
        tool=row["tool"],
        amount_micros=int(row["amount_micros"]),
        token_remaining_micros=int(row["token_remaining_micros"]),
        account_balance_micros=int(row["account_balance_micros"]),
        created_at=_timestamp(row["created_at"]),
    )


def _timestamp(value: datetime | str) -> datetime:
    # Rows from the batch function carry datetimes; JSON results carry ISO strings.
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def place_hold(ctx: ChargeContext, merchant: Merchant, body: HoldIn) -> tuple[HoldOut, bool]:
    money.note(merchant_id=merchant.id, tool=body.tool, amount_micros=body.amount_micros)
    request_hash = _request_hash(
        "hold", body.credit_token, body.amount_micros, body.tool, body.expires_in_s, body.metadata
    )
    claims = await _verified(ctx, body.credit_token, merchant, body.tool)
    _max_per_call(claims, body.amount_micros, ctx)
    row = await ctx.batcher.submit(
        (
            new_id(),
            "hold",
            merchant.id,
            merchant.revenue_account_id,
            body.idempotency_key,
            request_hash,
            claims.jti,
            body.tool,
            body.amount_micros,
            None,
            None,
            body.expires_in_s,
            body.metadata,
        )
    )
    outcome = row["outcome"]
    if outcome not in ("created", "exists"):
        raise _refusal(outcome, row, required=body.amount_micros, ctx=ctx)
    status = "pending"
    if outcome == "exists":
        current = await ctx.pool.fetchrow(queries["get_hold"], row["id"], merchant.id)
        assert current is not None
        status = current["status"]
    hold = HoldOut(
        hold_id=row["id"],
        status=status,  # type: ignore[arg-type]
        amount_micros=row["amount"],
        expires_at=row["expires_at"].isoformat(),
        token_id=row["token_jti"],
        account_id=row["account_id"],
        merchant_id=merchant.id,
        tool=row["tool"],
    )
    money.moved(
        "hold",
        outcome,
        id=hold.hold_id,
        merchant_id=merchant.id,
        account_id=hold.account_id,
        token_id=hold.token_id,
        tool=hold.tool,
        amount_micros=hold.amount_micros,
    )
    return hold, outcome == "created"


async def capture_hold(
    ctx: ChargeContext, merchant: Merchant, hold_id: uuid.UUID, body: CaptureIn
) -> CaptureOut:
    money.note(merchant_id=merchant.id, amount_micros=body.amount_micros)
    signer = ctx.receipt_signer()
    result = await ctx.pool.fetchval(
        queries["capture_hold"],
        hold_id,
        merchant.id,
        body.amount_micros,
        new_id(),
        new_id(),
        signer.kid,
    )
    outcome = result["outcome"]
    if outcome == "hold_not_found":
        raise NotFound("no such hold")
    if outcome in ("hold_not_pending", "hold_expired"):
        raise HoldNotPending(f"the hold is {result['status']}", hold_status=result["status"])
    if outcome == "exceeds_hold":
        raise CaptureExceedsHold(
            f"the hold reserved {result['available']} micro-USD; capture at most that "
            "(it stays pending)",
            required=body.amount_micros,
            available=result["available"],
            unit="micro_usd",
        )
    assert outcome in ("created", "exists"), outcome
    held = await ctx.pool.fetchval("SELECT amount_micros FROM holds WHERE id = $1", hold_id)
    receipt = _charge_receipt(result, kind="capture")
    _log_charge("capture", outcome, merchant, receipt)
    return CaptureOut(
        hold_id=hold_id,
        charge_id=receipt.charge_id,
        captured_micros=receipt.amount_micros,
        released_micros=int(held) - receipt.amount_micros,
        receipt=receipt,
        signed_receipt=await ctx.sign_receipt(receipt, kid=result["receipt_kid"]),
    )


async def void_hold(ctx: ChargeContext, merchant: Merchant, hold_id: uuid.UUID) -> VoidOut:
    money.note(merchant_id=merchant.id)
    result = await ctx.pool.fetchval(queries["void_hold"], hold_id, merchant.id, "voided")
    outcome = result["outcome"]
    if outcome == "hold_not_found":
        raise NotFound("no such hold")
    if outcome == "hold_not_pending":
        raise HoldNotPending(f"the hold is {result['status']}", hold_status=result["status"])
    hold = await ctx.pool.fetchrow(queries["get_hold"], hold_id, merchant.id)
    assert hold is not None
    _log_release("void", outcome, hold)
    return VoidOut(hold_id=hold_id, status=result["status"])


def _log_release(kind: str, outcome: str, hold: Any) -> None:
    money.moved(
        kind,
        outcome,
        id=hold["id"],
        merchant_id=hold["merchant_id"],
        account_id=hold["account_id"],
        token_id=hold["token_jti"],
        tool=hold["tool"],
        amount_micros=hold["amount_micros"],
    )


async def refund(
    ctx: ChargeContext, merchant: Merchant, charge_id: uuid.UUID, body: RefundIn
) -> tuple[RefundOut, bool]:
    money.note(merchant_id=merchant.id, amount_micros=body.amount_micros)
    request_hash = hashlib.sha256(
        msgspec.json.encode(["refund", str(charge_id), body.amount_micros, body.reason])
    ).digest()
    signer = ctx.receipt_signer()
    result = await ctx.pool.fetchval(
        queries["refund"], new_id(), charge_id, merchant.id, body.idempotency_key, request_hash,
        body.amount_micros, new_id(), signer.kid, body.reason,
    )  # fmt: skip
    outcome = result["outcome"]
    if outcome == "charge_not_found":
        raise NotFound("no such charge")
    if outcome == "idempotency_conflict":
        raise IdempotencyConflict("this idempotency key was used with a different request")
    if outcome == "exceeds_charge":
        raise RefundExceedsCharge(
            f"at most {result['available']} micro-USD of this charge can still be refunded",
            available=result["available"],
        )
    if outcome == "merchant_balance_insufficient":
        raise RefundExceedsCharge("the merchant's revenue balance cannot cover this refund")
    assert outcome in ("created", "exists"), outcome
    receipt = Receipt(
        receipt_id=uuid.UUID(result["receipt_id"]),
        kind="refund",
        charge_id=charge_id,
        transfer_id=uuid.UUID(result["transfer_id"]),
        token_id=uuid.UUID(result["token_jti"]),
        account_id=uuid.UUID(result["account_id"]),
        merchant_id=merchant.id,
        tool=result["tool"],
        amount_micros=int(result["amount_micros"]),
        token_remaining_micros=int(result["token_remaining_micros"]),
        account_balance_micros=int(result["account_balance_micros"]),
        created_at=_timestamp(result["created_at"]),
    )
    out = RefundOut(
        refund_id=uuid.UUID(result["id"]),
        charge_id=charge_id,
        amount_micros=receipt.amount_micros,
        refunded_total_micros=int(result["refunded_total_micros"]),
        receipt=receipt,
        signed_receipt=await ctx.sign_receipt(receipt, kid=result["receipt_kid"]),
    )
    _log_charge("refund", outcome, merchant, receipt)
    return out, outcome == "created"


async def expire_holds(pool: asyncpg.Pool, *, batch_size: int = 500) -> int:
    """Release every hold past its expiry; return how many. Safe to run anywhere."""
    holds = await pool.fetch(queries["expired_holds"], batch_size)
    released = 0
    for hold in holds:
        result = await pool.fetchval(queries["void_hold"], hold["id"], None, "expired")
        if result["outcome"] == "created":
            released += 1
            _log_release("expiry", "created", hold)
    return released
