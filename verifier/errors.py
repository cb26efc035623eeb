"""Errors of the credit-token and verify-and-debit surfaces.

    LedgerError (ledger.errors)
    ├── TokenInvalid          401 token_invalid        malformed, bad signature, unknown kid,
    │                                                  wrong version or purpose
    ├── TokenExpired          401 token_expired
    ├── TokenNotYetValid      401 token_not_yet_valid
    ├── TokenRevoked          401 token_revoked        (itself or an ancestor)
    ├── ScopeDenied           403 scope_denied         audience, tool, or a delegation that widens scope
    ├── BudgetExhausted       402 budget_exhausted     limit = token_cap | account_balance | ancestor_cap | max_per_call
    ├── HoldNotPending        409 hold_not_pending     already captured/voided/expired
    ├── CaptureExceedsHold    409 capture_exceeds_hold more than the hold reserved (still pending)
    ├── RefundExceedsCharge   409 refund_exceeds_charge
    └── IdempotencyConflict   409 idempotency_conflict (ledger.errors)

Credit tokens are secrets: no error here ever carries the token string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ledger.errors import LedgerError

__all__ = [
    "BudgetAction",
    "BudgetExhausted",
    "BudgetLimit",
    "CaptureExceedsHold",
    "HoldNotPending",
    "RefundExceedsCharge",
    "ScopeDenied",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotYetValid",
    "TokenRevoked",
    "TopupAdvice",
    "TopupMethod",
]

BudgetLimit = Literal["token_cap", "account_balance", "ancestor_cap", "max_per_call"]
TopupMethod = Literal["card", "usdc"]
# What the payer should do about each limit (`action` in the problem).
BudgetAction = Literal["top_up", "new_credit_token", "cheaper_call"]
_ACTIONS: dict[BudgetLimit, BudgetAction] = {
    "account_balance": "top_up",
    "token_cap": "new_credit_token",
    "ancestor_cap": "new_credit_token",
    "max_per_call": "cheaper_call",
}


@dataclass(frozen=True)
class TopupAdvice:
    """How an account is topped up on this service: only the methods it has
    configured, and a page (served by the service) that tells the payer how."""

    base_url: str
    methods: tuple[TopupMethod, ...]

    def page(self, account_id: str) -> str:
        return f"{self.base_url}/topups/{account_id}"


class TokenError(LedgerError):
    """The credit token was refused (the base of the `token_*` codes)."""

    status = 401
    code = "token_invalid"
    title = "Credit token refused"


class TokenInvalid(TokenError):
    """The credit token is not one this ledger issued and can verify: malformed, a bad
    signature, an unknown `kid`, the wrong PASETO version or purpose, or not known to the
    database. Ask the owner for a credit token."""

    code = "token_invalid"
    title = "The credit token is not valid"


class TokenExpired(TokenError):
    """The credit token (or one it was delegated from) is past its `exp`. Ask the owner
    for a new credit token."""

    code = "token_expired"
    title = "The credit token has expired"


class TokenNotYetValid(TokenError):
    """The credit token's `nbf` is in the future; retry after it."""

    code = "token_not_yet_valid"
    title = "The credit token is not valid yet"


class TokenRevoked(TokenError):
    """The credit token, or one it was delegated from, was revoked by the owner. Ask the
    owner for a new credit token."""

    code = "token_revoked"
    title = "The credit token was revoked"


class ScopeDenied(LedgerError):
    """The credit token does not cover this merchant or tool, or a delegation would widen
    its parent's scope. `reason` says which: `audience`, `tool`, `max_per_call`,
    `expiry` or `depth`."""

    code = "scope_denied"
    status = 403
    title = "Outside the credit token's scope"


class BudgetExhausted(LedgerError):
    """HTTP 402 with everything an agent needs to act on it, and only true advice:
    a top-up helps only when the account's balance ran out; a spent credit token
    (or the token it was delegated from) needs a new one from the owner; a call
    above `max_per_call` needs a cheaper call. `topup` is present only for
    `account_balance`, and lists only the methods this service has configured."""

    code = "budget_exhausted"
    status = 402
    title = "Budget exhausted"

    def __init__(
        self,
        *,
        limit: BudgetLimit,
        required: int,
        available: int,
        token_id: str,
        account_id: str,
        topup: TopupAdvice,
    ) -> None:
        extra: dict[str, object] = {}
        if limit == "account_balance" and topup.methods:
            extra["topup"] = {"url": topup.page(account_id), "methods": list(topup.methods)}
        super().__init__(
            _advice(limit, required, available, topup, account_id),
            limit=limit,
            required=required,
            available=available,
            unit="micro_usd",
            token_id=token_id,
            account_id=account_id,
            action=_ACTIONS[limit],
            **extra,
        )


def _advice(
    limit: BudgetLimit, required: int, available: int, topup: TopupAdvice, account_id: str
) -> str:
    need = f"this call needs {required} micro-USD"
    if limit == "account_balance":
        if not topup.methods:
            return (
                f"the account's balance has {available} micro-USD left; {need}. This service "
                "takes no top-ups: ask its operator"
            )
        return (
            f"the account's balance has {available} micro-USD left; {need}. Top up the account "
            f"({', '.join(topup.methods)}): {topup.page(account_id)}"
        )
    if limit == "token_cap":
        return (
            f"this credit token has {available} micro-USD of its cap left; {need}. Ask the "
            "owner for a new credit token"
        )
    if limit == "ancestor_cap":
        return (
            f"the credit token this one was delegated from has {available} micro-USD left; "
            f"{need}. Ask the owner for a new credit token"
        )
    return (
        f"this credit token allows at most {available} micro-USD per call; {need}. Choose a "
        "cheaper call, or ask the owner for a credit token with a higher max_per_call"
    )


class HoldNotPending(LedgerError):
    """The hold was already captured (with another amount), voided or expired;
    `hold_status` says which."""

    code = "hold_not_pending"
    status = 409
    title = "The hold is no longer pending"


class CaptureExceedsHold(LedgerError):
    """A capture asked for more than the hold reserved. Nothing changed: the hold is
    still pending, and a capture of at most `available` micro-USD will succeed."""

    code = "capture_exceeds_hold"
    status = 409
    title = "The capture is larger than the hold"


class RefundExceedsCharge(LedgerError):
    """The refund would take back more than the charge has left (`available`), or
    more than the merchant's revenue balance holds."""

    code = "refund_exceeds_charge"
    status = 409
    title = "Refunds would exceed the charged amount"
