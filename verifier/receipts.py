"""Signed receipts: the facts of a charge, capture or refund as plain JSON and as a
PASETO v4.public signed with the service's receipt signing key.

The signed form's payload is exactly the JSON facts (`Receipt`), and its footer
carries the signing key's `kid`, so anyone holding the published keys
(`GET /v1/keys`) can check a receipt offline. Ed25519 is deterministic: the same
facts signed by the same key give the same receipt, so an idempotent replay
returns a byte-identical receipt.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
import nacl.signing

from verifier import paseto
from verifier.errors import TokenInvalid
from verifier.tokens import KeyRing, TokenId, encode_footer, parse_footer

__all__ = ["Receipt", "ReceiptKind", "encode_facts", "sign_receipt", "verify_receipt"]

ReceiptKind = Literal["charge", "capture", "refund"]


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    receipt_id: uuid.UUID
    kind: ReceiptKind
    charge_id: uuid.UUID
    transfer_id: uuid.UUID
    token_id: TokenId
    account_id: uuid.UUID
    merchant_id: uuid.UUID
    tool: str
    amount_micros: int
    token_remaining_micros: int
    account_balance_micros: int
    created_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


_encoder = msgspec.json.Encoder()


def encode_facts(receipt: Receipt) -> bytes:
    """The canonical bytes a receipt signature covers (field order is fixed)."""
    return _encoder.encode(receipt)


def decode_facts(payload: bytes) -> Receipt:
    return msgspec.json.decode(payload, type=Receipt)


def facts_dict(receipt: Receipt) -> dict[str, Any]:
    return msgspec.to_builtins(receipt)  # type: ignore[no-any-return]


def sign_receipt(receipt: Receipt, signing_key: nacl.signing.SigningKey, *, kid: str) -> str:
    return paseto.sign_with_key(signing_key, encode_facts(receipt), footer=encode_footer(kid))


def verify_receipt(signed_receipt: str, keyring: KeyRing) -> dict[str, Any]:
    """Check a signed receipt offline against the published keys (`GET /v1/keys`).

    Returns the receipt's facts as plain JSON values; raises `TokenInvalid` for a
    receipt that is malformed, signed by an unknown key, or altered in any byte.
    """
    decoded = paseto.split_token(signed_receipt)
    key = keyring.get(parse_footer(decoded.footer), "receipt")
    if key is None:
        raise TokenInvalid("receipt signed by an unknown receipt key")
    message = paseto.verify(decoded, key.public_key)
    try:
        return facts_dict(decode_facts(message))
    except msgspec.ValidationError:
        raise TokenInvalid("receipt payload is not a receipt") from None
    except msgspec.DecodeError:
        raise TokenInvalid("receipt payload is not JSON") from None
