"""Linking an EVM address to an account with Sign-In with Ethereum (EIP-4361).

Protocol:
1. The owner asks for a challenge for an address; the service stores a random
   nonce (single-use, expiring) and the exact EIP-4361 message naming the address,
   the account, the chain id, the nonce and the validity window.
2. The owner signs that message with the address's key (EIP-191 `personal_sign`)
   and sends back the message and the signature.
3. The service finds the stored challenge by the message's nonce, requires the
   message to be byte-for-byte the one it issued, consumes the nonce, recovers
   the signer with eth-account and links the address if the signer is that
   address. One address links to one account (a primary key on the address).
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

import asyncpg
import msgspec
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from msgspec import Meta

from ledger.config import Settings
from ledger.db.queries import load_queries
from ledger.errors import Conflict, LedgerError, NotFound, ValidationFailed
from ledger.http.lists import Page, decode_cursor, page_of

__all__ = [
    "ADDRESS_PATTERN",
    "CHALLENGE_TTL_S",
    "ChallengeInvalid",
    "LinkedWallet",
    "WalletAlreadyLinked",
    "WalletChallenge",
    "WalletChallengeCreate",
    "WalletLink",
    "build_message",
    "create_challenge",
    "link_wallet",
    "list_wallets",
    "read_wallet",
]

queries = load_queries("issuer.topups", "siwe.sql")

CHALLENGE_TTL_S = 600
NONCE_BYTES = 16
MESSAGE_LENGTH_MAX = 2_000
SIGNATURE_LENGTH_MAX = 200

ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
Address = Annotated[str, Meta(pattern=ADDRESS_PATTERN, description="EVM address")]
_NONCE_LINE = re.compile(r"^Nonce: ([A-Za-z0-9]{8,64})$", re.MULTILINE)


class ChallengeInvalid(LedgerError):
    code = "wallet_challenge_invalid"
    status = 400
    title = "The wallet challenge is unknown, used, expired, or not signed by the address"


class WalletAlreadyLinked(Conflict):
    code = "wallet_already_linked"
    title = "This address is linked to another account"


class WalletChallengeCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    address: Address


class WalletChallenge(msgspec.Struct, frozen=True):
    address: str
    nonce: str
    message: str
    expires_at: datetime


class WalletLink(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: Annotated[str, Meta(min_length=1, max_length=MESSAGE_LENGTH_MAX)]
    signature: Annotated[
        str, Meta(pattern=r"^(0x)?[0-9a-fA-F]{130}$", max_length=SIGNATURE_LENGTH_MAX)
    ]


class LinkedWallet(msgspec.Struct, frozen=True):
    address: str
    account_id: uuid.UUID
    linked_at: datetime
    status: Literal["linked"] = "linked"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_message(
    *,
    settings: Settings,
    address: str,
    account_id: uuid.UUID,
    nonce: str,
    issued_at: datetime,
    expires_at: datetime,
) -> str:
    """The EIP-4361 message the owner signs."""
    uri = settings.base_url
    domain = urlsplit(uri).netloc or "localhost"
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n"
        f"{to_checksum_address(address)}\n"
        "\n"
        f"Link this address to ledger account {account_id} for USDC top-ups.\n"
        "\n"
        f"URI: {uri}\n"
        "Version: 1\n"
        f"Chain ID: {settings.usdc_chain_id}\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {_iso(issued_at)}\n"
        f"Expiration Time: {_iso(expires_at)}"
    )


async def create_challenge(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, request: WalletChallengeCreate
) -> WalletChallenge:
    nonce = secrets.token_hex(NONCE_BYTES)
    issued_at = datetime.now(UTC).replace(microsecond=0)
    expires_at = issued_at + timedelta(seconds=CHALLENGE_TTL_S)
    message = build_message(
        settings=settings,
        address=request.address,
        account_id=account_id,
        nonce=nonce,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    await pool.execute(
        queries["insert_challenge"],
        nonce,
        account_id,
        request.address.lower(),
        message,
        expires_at,
    )
    return WalletChallenge(
        address=to_checksum_address(request.address),
        nonce=nonce,
        message=message,
        expires_at=expires_at,
    )


def _signer(message: str, signature: str) -> str | None:
    try:
        recovered: str = Account.recover_message(encode_defunct(text=message), signature=signature)
    except Exception:  # eth-account raises several types for a malformed signature
        return None
    return recovered.lower()


async def link_wallet(
    pool: asyncpg.Pool, account_id: uuid.UUID, request: WalletLink
) -> LinkedWallet:
    match = _NONCE_LINE.search(request.message)
    if match is None:
        raise ValidationFailed("the message has no `Nonce:` line; sign the challenge as issued")
    async with pool.acquire() as conn, conn.transaction():
        # Consumed here whatever follows: a nonce answers one attempt only.
        challenge = await conn.fetchrow(queries["consume_challenge"], match[1], account_id)
    if challenge is None or challenge["message"] != request.message:
        raise ChallengeInvalid("ask for a new challenge and sign it as issued")
    if _signer(request.message, request.signature) != challenge["address"]:
        raise ChallengeInvalid("the signature is not from the challenged address")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(queries["link_wallet"], challenge["address"], account_id)
        if row is None:
            row = await conn.fetchrow(queries["get_wallet"], challenge["address"])
            assert row is not None
            if row["account_id"] != account_id:
                raise WalletAlreadyLinked()
    return LinkedWallet(
        address=to_checksum_address(row["address"]),
        account_id=row["account_id"],
        linked_at=row["linked_at"],
    )


async def read_wallet(pool: asyncpg.Pool, account_id: uuid.UUID, address: str) -> LinkedWallet:
    """One address linked to the account; another account's answers like a missing one."""
    row = await pool.fetchrow(queries["get_wallet"], address.lower())
    if row is None or row["account_id"] != account_id:
        raise NotFound("no such linked wallet")
    return LinkedWallet(
        address=to_checksum_address(row["address"]),
        account_id=row["account_id"],
        linked_at=row["linked_at"],
    )


async def list_wallets(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, cursor: str | None, limit: int
) -> Page[LinkedWallet]:
    """Addresses linked to the account, oldest first."""
    after = decode_cursor("wallets", cursor, str)
    rows = await pool.fetch(queries["list_wallets"], account_id, after, limit + 1)
    wallets = [
        LinkedWallet(
            address=to_checksum_address(r["address"]),
            account_id=r["account_id"],
            linked_at=r["linked_at"],
        )
        for r in rows
    ]
    return page_of(wallets, limit, "wallets", lambda w: w.address.lower())
