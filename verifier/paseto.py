"""PASETO v4.public and PASERK k4 helpers (Ed25519 via PyNaCl).

The protocol, as specified by PASETO v4 and PASERK:

    token  = "v4.public." || b64(m || sig) [ "." || b64(f) ]
    sig    = Ed25519-Sign(sk, PAE("v4.public.", m, f, i))
    PAE(p1..pn) = LE64(n) || LE64(len(p1)) || p1 || … || LE64(len(pn)) || pn

where `m` is the message (the claims, JSON), `f` the optional footer (never
encrypted, always authenticated), `i` the implicit assertion (authenticated but
never transmitted), `b64` is base64url without padding and LE64 an unsigned
64-bit little-endian integer with its top bit cleared. The signature is the last
64 bytes of the decoded body.

PASERK names keys in text:

    k4.public.<b64(32-byte Ed25519 public key)>
    k4.pid.<b64(BLAKE2b-264("k4.pid." || "k4.public.<…>"))>

and `k4.pid` is what credit tokens carry in their footer as `kid`, so a verifier
picks the right public key without trying them all.

Parsing is strict: only `v4.public`, only canonical unpadded base64url, only ASCII,
bounded sizes. Every failure is `TokenInvalid`; no other exception escapes.
Secret seeds are handled as bytes and never formatted into messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

import nacl.exceptions
import nacl.signing

from verifier.errors import TokenInvalid

__all__ = [
    "FOOTER_BYTES_MAX",
    "HEADER",
    "SIGNATURE_BYTES",
    "TOKEN_LENGTH_MAX",
    "DecodedToken",
    "b64decode",
    "b64encode",
    "pae",
    "parse_paserk_public",
    "paserk_pid",
    "paserk_public",
    "public_key_of",
    "sign",
    "split_token",
    "verify",
]

HEADER = "v4.public."
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
# A credit token is a few hundred bytes; anything far larger is refused unread.
TOKEN_LENGTH_MAX = 8192
FOOTER_BYTES_MAX = 512
PID_DIGEST_BYTES = 33

_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _le64(n: int) -> bytes:
    assert n >= 0
    return struct.pack("<Q", n & 0x7FFF_FFFF_FFFF_FFFF)


def pae(*pieces: bytes) -> bytes:
    """Pre-authentication encoding: unambiguous concatenation of `pieces`."""
    out = [_le64(len(pieces))]
    for piece in pieces:
        out.append(_le64(len(piece)))
        out.append(piece)
    return b"".join(out)


def b64encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict base64url without padding: the input must be the canonical encoding."""
    if not set(text) <= _B64_ALPHABET or len(text) % 4 == 1:
        raise TokenInvalid("malformed base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenInvalid("malformed base64url") from None
    # Unused trailing bits must be zero, or two strings would name one token.
    if b64encode(data) != text:
        raise TokenInvalid("non-canonical base64url")
    return data


class DecodedToken:
    """The parts of a `v4.public` token, before its signature is checked."""

    __slots__ = ("footer", "message", "signature")

    def __init__(self, message: bytes, signature: bytes, footer: bytes) -> None:
        self.message = message
        self.signature = signature
        self.footer = footer


def split_token(token: str) -> DecodedToken:
    """Split a `v4.public` token into message, signature and footer (unverified)."""
    if not isinstance(token, str) or len(token) > TOKEN_LENGTH_MAX or not token.isascii():
        raise TokenInvalid("not a v4.public token")
    if not token.startswith(HEADER):
        raise TokenInvalid("only v4.public tokens are accepted")
    parts = token[len(HEADER) :].split(".")
    if len(parts) not in (1, 2) or not parts[0]:
        raise TokenInvalid("not a v4.public token")
    body = b64decode(parts[0])
    footer = b64decode(parts[1]) if len(parts) == 2 else b""
    if len(parts) == 2 and not footer:
        raise TokenInvalid("empty footer must be omitted")
    if len(body) <= SIGNATURE_BYTES:
        raise TokenInvalid("token too short")
    if len(footer) > FOOTER_BYTES_MAX:
        raise TokenInvalid("footer too large")
    return DecodedToken(body[:-SIGNATURE_BYTES], body[-SIGNATURE_BYTES:], footer)


def sign(
    message: bytes,
    seed: bytes,
    *,
    footer: bytes = b"",
    implicit_assertion: bytes = b"",
) -> str:
    """A `v4.public` token over `message`, signed with the Ed25519 `seed` (32 bytes)."""
    assert len(seed) == SEED_BYTES, "an Ed25519 seed is 32 bytes"
    signing_key = nacl.signing.SigningKey(seed)
    signed = signing_key.sign(pae(HEADER.encode(), message, footer, implicit_assertion))
    token = HEADER + b64encode(message + signed.signature)
    if footer:
        token += "." + b64encode(footer)
    return token


def verify(
    decoded: DecodedToken,
    public_key: bytes,
    *,
    implicit_assertion: bytes = b"",
) -> bytes:
    """The message of `decoded` if its signature is valid under `public_key`."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise TokenInvalid("bad public key")
    m2 = pae(HEADER.encode(), decoded.message, decoded.footer, implicit_assertion)
    try:
        nacl.signing.VerifyKey(public_key).verify(m2, decoded.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise TokenInvalid("invalid signature") from None
    return decoded.message


def public_key_of(seed: bytes) -> bytes:
    assert len(seed) == SEED_BYTES, "an Ed25519 seed is 32 bytes"
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def paserk_public(public_key: bytes) -> str:
    """PASERK `k4.public` of an Ed25519 public key."""
    assert len(public_key) == PUBLIC_KEY_BYTES
    return "k4.public." + b64encode(public_key)


def parse_paserk_public(paserk: str) -> bytes:
    """The Ed25519 public key named by a PASERK `k4.public` string."""
    prefix = "k4.public."
    if not isinstance(paserk, str) or not paserk.startswith(prefix) or len(paserk) > 100:
        raise TokenInvalid("not a k4.public PASERK")
    key = b64decode(paserk[len(prefix) :])
    if len(key) != PUBLIC_KEY_BYTES:
        raise TokenInvalid("not a k4.public PASERK")
    return key


def paserk_pid(public_key: bytes) -> str:
    """PASERK `k4.pid`: the key id of an Ed25519 public key."""
    header = "k4.pid."
    digest = hashlib.blake2b(
        (header + paserk_public(public_key)).encode(), digest_size=PID_DIGEST_BYTES
    ).digest()
    return header + b64encode(digest)
