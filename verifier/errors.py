"""Errors of the credit-token and verify-and-debit surfaces.

    LedgerError (ledger.errors)
    ├── TokenInvalid          401 token_invalid        malformed, bad signature, unknown kid,
    │                                                  wrong version or purpose
    ├── TokenExpired          401 token_expired
    ├── TokenNotYetValid      401 token_not_yet_valid
    ├── TokenRevoked          401 token_revoked        (itself or an ancestor)
    ├── ScopeDenied           403 scope_denied         audience, tool, or a delegation that widens scope
    ├── BudgetExhausted       402 budget_exhausted     limit = token_cap | account_balance | ancestor_cap | max_per_call
    ├── ChargeNotFound        404 not_found
    ├── HoldNotFound          404 not_found
    ├── HoldNotPending        409 hold_not_pending     already captured/voided/expired
    ├── RefundExceedsCharge   409 refund_exceeds_charge
    └── IdempotencyConflict   409 idempotency_conflict (ledger.errors)

Credit tokens are secrets: no error here ever carries the token string.
"""

from __future__ import annotations

from typing import Literal

from ledger.errors import LedgerError

__all__ = [
    "BudgetExhausted",
    "BudgetLimit",
    "ChargeNotFound",
    "HoldNotFound",
    "HoldNotPending",
    "RefundExceedsCharge",
    "ScopeDenied",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenNotYetValid",
    "TokenRevoked",
]

BudgetLimit = Literal["token_cap", "account_balance", "ancestor_cap", "max_per_call"]

TOPUP_METHODS = ("card", "usdc")


class TokenError(LedgerError):
    status = 401
    code = "token_invalid"
    title = "Credit token refused"


class TokenInvalid(TokenError):
    code = "token_invalid"
    title = "The credit token is not valid"


class TokenExpired(TokenError):
    code = "token_expired"
    title = "The credit token has expired"


class TokenNotYetValid(TokenError):
    code = "token_not_yet_valid"
    title = "The credit token is not valid yet"


class TokenRevoked(TokenError):
    code = "token_revoked"
    title = "The credit token was revoked"


class ScopeDenied(LedgerError):
    code = "scope_denied"
    status = 403
    title = "Outside the credit token's scope"


class BudgetExhausted(LedgerError):
    """HTTP 402 with everything an agent needs to act on it."""

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
        topup_url: str,
    ) -> None:
        super().__init__(
            f"{limit} allows {available} micro-USD; this call needs {required}",
            limit=limit,
            required=required,
            available=available,
            unit="micro_usd",
            token_id=token_id,
            account_id=account_id,
            topup={"url": topup_url, "methods": list(TOPUP_METHODS)},
        )


class ChargeNotFound(LedgerError):
    code = "not_found"
    status = 404
    title = "No such charge"


class HoldNotFound(LedgerError):
    code = "not_found"
    status = 404
    title = "No such hold"


class HoldNotPending(LedgerError):
    code = "hold_not_pending"
    status = 409
    title = "The hold is no longer pending"


class RefundExceedsCharge(LedgerError):
    code = "refund_exceeds_charge"
    status = 409
    title = "Refunds would exceed the charged amount"
