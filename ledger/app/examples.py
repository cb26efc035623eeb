"""Examples in the OpenAPI document for the operations that move money: a request,
the answer, and the refusals a client most needs to handle. Ids are illustrative."""

from __future__ import annotations

from typing import Any

__all__ = ["EXAMPLES"]

_ACCOUNT = "3f2b8c1e-6d1a-4c55-9a1e-2b7d6c0f9a10"
_MERCHANT = "8a7d5e2c-1b3f-4e6a-9c8d-0f1e2d3c4b5a"
_JTI = "c0ffee00-1234-4abc-8def-0123456789ab"
_CHARGE = "5b1c9e7a-2d4f-4a6b-8c0e-1f2a3b4c5d6e"
_HOLD = "9d8c7b6a-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
# Relative: every URL the service gives out starts with its public URL (LEDGER_PUBLIC_URL).
_SERVICE = ""
_CREDIT_TOKEN = "v4.public.eyJqdGkiOiJjMGZmZWUwMC0xMjM0LTRhYmMtOGRlZi0wMTIzNDU2Nzg5YWIiLCJ…"  # noqa: S105 (an example, cut short)


def _receipt(kind: str, amount: int, remaining: int, balance: int) -> dict[str, Any]:
    return {
        "receipt_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "kind": kind,
        "charge_id": _CHARGE,
        "transfer_id": _CHARGE,
        "token_id": _JTI,
        "account_id": _ACCOUNT,
        "merchant_id": _MERCHANT,
        "tool": "search",
        "amount_micros": amount,
        "token_remaining_micros": remaining,
        "account_balance_micros": balance,
        "created_at": "2025-01-01T12:00:00Z",
        "unit": "micro_usd",
    }


def _budget(limit: str, required: int, available: int, action: str, detail: str) -> dict[str, Any]:
    problem: dict[str, Any] = {
        "type": f"{_SERVICE}/problems/budget_exhausted",
        "title": "Budget exhausted",
        "status": 402,
        "code": "budget_exhausted",
        "detail": detail,
        "instance": "/v1/charges",
        "limit": limit,
        "required": required,
        "available": available,
        "unit": "micro_usd",
        "token_id": _JTI,
        "account_id": _ACCOUNT,
        "action": action,
    }
    if limit == "account_balance":
        problem["topup"] = {"url": f"{_SERVICE}/topups/{_ACCOUNT}", "methods": ["card", "usdc"]}
    return problem


_OUT_OF_BALANCE = _budget(
    "account_balance",
    20_000,
    5_000,
    "top_up",
    "the account's balance has 5000 micro-USD left; this call needs 20000 micro-USD. Top up "
    f"the account (card, usdc): {_SERVICE}/topups/{_ACCOUNT}",
)
_OUT_OF_CAP = _budget(
    "token_cap",
    20_000,
    0,
    "new_credit_token",
    "this credit token has 0 micro-USD of its cap left; this call needs 20000 micro-USD. "
    "Ask the owner for a new credit token",
)
_CHARGE_OUT = {
    "charge_id": _CHARGE,
    "receipt": _receipt("charge", 20_000, 1_980_000, 4_980_000),
    "signed_receipt": "v4.public.eyJyZWNlaXB0X2lkIjoi…",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "createCharge": {
        "request": {
            "credit_token": _CREDIT_TOKEN,
            "amount_micros": 20_000,
            "tool": "search",
            "idempotency_key": "call-7f3a2c",
            "metadata": {"query_id": "q-123"},
        },
        "responses": {
            "201": {"charged": _CHARGE_OUT},
            "402": {"account_balance": _OUT_OF_BALANCE, "token_cap": _OUT_OF_CAP},
        },
    },
    "createHold": {
        "request": {
            "credit_token": _CREDIT_TOKEN,
            "amount_micros": 50_000,
            "tool": "summarize",
            "idempotency_key": "llm-call-91",
            "expires_in_s": 300,
        },
        "responses": {
            "201": {
                "held": {
                    "hold_id": _HOLD,
                    "status": "pending",
                    "amount_micros": 50_000,
                    "expires_at": "2025-01-01T12:05:00+00:00",
                    "token_id": _JTI,
                    "account_id": _ACCOUNT,
                    "merchant_id": _MERCHANT,
                    "tool": "summarize",
                    "unit": "micro_usd",
                }
            },
            "402": {"account_balance": _OUT_OF_BALANCE},
        },
    },
    "captureHold": {
        "request": {"amount_micros": 12_000},
        "responses": {
            "200": {
                "captured": {
                    "hold_id": _HOLD,
                    "charge_id": _CHARGE,
                    "captured_micros": 12_000,
                    "released_micros": 38_000,
                    "receipt": _receipt("capture", 12_000, 1_988_000, 4_988_000),
                    "signed_receipt": "v4.public.eyJyZWNlaXB0X2lkIjoi…",
                }
            },
            "409": {
                "capture_exceeds_hold": {
                    "type": f"{_SERVICE}/problems/capture_exceeds_hold",
                    "title": "The capture is larger than the hold",
                    "status": 409,
                    "code": "capture_exceeds_hold",
                    "detail": "the hold reserved 50000 micro-USD; capture at most that (it "
                    "stays pending)",
                    "instance": f"/v1/holds/{_HOLD}/capture",
                    "required": 60_000,
                    "available": 50_000,
                    "unit": "micro_usd",
                }
            },
        },
    },
    "createRefund": {
        "request": {
            "amount_micros": 5_000,
            "idempotency_key": "refund-q-123",
            "reason": "bad result",
        },
    },
    "mintCreditToken": {
        "request": {
            "cap_micros": 2_000_000,
            "max_per_call_micros": 50_000,
            "audiences": [_MERCHANT],
            "tools": ["search", "summarize*"],
            "expires_in_s": 86_400,
            "description": "research agent, week 1",
        },
    },
    "delegateCreditToken": {
        "request": {"cap_micros": 100_000, "tools": ["search"], "expires_in_s": 3_600},
    },
    "createCardTopup": {
        "request": {"amount_micros": 25_000_000},
    },
}
