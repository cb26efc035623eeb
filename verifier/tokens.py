"""Credit tokens, verified offline: key ring, claims, time window, scope.

A credit token is a PASETO `v4.public` (see `verifier.paseto`) whose footer is
`{"kid": "k4.pid.…"}` and whose message is the JSON claims below. Verification
never touches the database: the signature proves the scope; revocation and money
(cap, spent, held) are checked by the charge path against PostgreSQL.

The hard limits of credit tokens live here, and only here; the issuer and the
database constraints (migrations/0002) agree with them.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy
from msgspec import Meta

from ledger.db.queries import load_queries
from ledger.http.jsondepth import nests_deeper_than
from verifier import paseto
from verifier.errors import ScopeDenied, TokenExpired, TokenInvalid, TokenNotYetValid

__all__ = [
    "ANY",
    "AUDIENCES_MAX",
    "AUDIENCE_LENGTH_MAX",
    "CAP_MAX",
    "DEFAULT_LEEWAY_S",
    "DEPTH_MAX",
    "DESCRIPTION_LENGTH_MAX",
    "KEYRING_CACHE_TTL_S",
    "KEYRING_RELOAD_MIN_S",
    "LEEWAY_MAX_S",
    "LIFETIME_MAX_S",
    "MAX_PER_CALL_MAX",
    "TOOLS_MAX",
    "TOOL_LENGTH_MAX",
    "TOOL_NAME_PATTERN",
    "TOOL_PATTERN",
    "CreditTokenClaims",
    "Executor",
    "KeyPurpose",
    "KeyRing",
    "KeyRingCache",
    "KeyState",
    "PublicKey",
    "PublishedKey",
    "PublishedKeys",
    "TokenId",
    "ToolName",
    "audience_covers",
    "check_scope",
    "check_time",
    "encode_claims",
    "encode_footer",
    "load_keyring",
    "parse_claims",
    "parse_footer",
    "token_kid",
    "tool_matches",
    "tool_pattern_covers",
    "verify_credit_token",
]

queries = load_queries("verifier", "keys.sql")

# A pool, a connection, or a connection acquired from a pool.
Executor: TypeAlias = "asyncpg.Pool[Any] | asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

# ---- Hard limits of credit tokens (one place) --------------------------------
# A token's spending cap and per-call maximum, in micro-USD (100,000 USD).
CAP_MAX = 100_000_000_000
MAX_PER_CALL_MAX = CAP_MAX
# From nbf to exp, at most 90 days; delegated children never outlive parents.
LIFETIME_MAX_S = 90 * 24 * 3600
# Root tokens have depth 0; a chain of delegation is at most this deep.
DEPTH_MAX = 4
AUDIENCES_MAX = 32
AUDIENCE_LENGTH_MAX = 64
TOOLS_MAX = 64
TOOL_LENGTH_MAX = 128
DESCRIPTION_LENGTH_MAX = 200
ISSUER_LENGTH_MAX = 200
# How long a process trusts its cached key ring, and how often an unknown kid may
# force a reload (so garbage kids cannot hammer the database).
KEYRING_CACHE_TTL_S = 30.0
KEYRING_RELOAD_MIN_S = 1.0
# Clock skew tolerated on nbf and exp.
DEFAULT_LEEWAY_S = 30
LEEWAY_MAX_S = 300

# "*" alone means any audience / any tool.
ANY = "*"
# A tool is an exact name, a prefix followed by "*" (e.g. "search.*"), or "*".
TOOL_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.:/-]{0,126}\*?)$"
# An audience is a merchant id (letters, digits, '-', '_') or "*".
AUDIENCE_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$"
TOOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"
_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)

Audience = Annotated[
    str, Meta(min_length=1, max_length=AUDIENCE_LENGTH_MAX, pattern=AUDIENCE_PATTERN)
]
ToolPattern = Annotated[str, Meta(min_length=1, max_length=TOOL_LENGTH_MAX, pattern=TOOL_PATTERN)]
Audiences = Annotated[list[Audience], Meta(min_length=1, max_length=AUDIENCES_MAX)]
ToolPatterns = Annotated[list[ToolPattern], Meta(min_length=1, max_length=TOOLS_MAX)]
CapMicros = Annotated[int, Meta(ge=1, le=CAP_MAX)]
MaxPerCallMicros = Annotated[int, Meta(ge=1, le=MAX_PER_CALL_MAX)]
UtcTime = Annotated[datetime, Meta(tz=True)]
# The name of the tool a charge is for (use in request types of the charge path).
ToolName = Annotated[str, Meta(min_length=1, max_length=TOOL_LENGTH_MAX, pattern=TOOL_NAME_PATTERN)]

KeyPurpose = Literal["credit_token", "receipt"]
KeyState = Literal["active", "verify_only"]


# ---- Claims ------------------------------------------------------------------


# One id, two spellings, by where it appears: on a credit token itself it is `jti` (the
# PASETO claim; `GET /v1/tokens/{jti}`); on anything that refers to a credit token
# (a charge, hold, receipt or problem) it is `token_id`, like `account_id` and
# `merchant_id`. Both hold the same value.
TokenId = Annotated[
    uuid.UUID,
    Meta(description="The credit token's id: its `jti` claim (see `GET /v1/tokens/{jti}`)."),
]


class _Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signed message of a credit token, exactly."""

    iss: Annotated[str, Meta(min_length=1, max_length=ISSUER_LENGTH_MAX)]
    sub: uuid.UUID
    jti: uuid.UUID
    iat: UtcTime
    nbf: UtcTime
    exp: UtcTime
    aud: Audiences
    tools: ToolPatterns
    max_per_call: MaxPerCallMicros
    cap: CapMicros
    parent: uuid.UUID | None = None


class CreditTokenClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified credit token says. `kid` comes from the footer."""

    jti: uuid.UUID
    sub: uuid.UUID
    iss: str
    iat: datetime
    nbf: datetime
    exp: datetime
    aud: list[str]
    tools: list[str]
    max_per_call: int
    cap: int
    parent: uuid.UUID | None
    kid: str


class _Footer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kid: Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^k4\.pid\.[A-Za-z0-9_-]{44}$")]


_claims_decoder = msgspec.json.Decoder(_Claims)
_footer_decoder = msgspec.json.Decoder(_Footer)
_encoder = msgspec.json.Encoder()


def encode_claims(claims: CreditTokenClaims) -> bytes:
    """The message a credit token signs (used by the issuer)."""
    fields = msgspec.structs.asdict(claims)
    del fields["kid"]
    return _encoder.encode(_Claims(**fields))


def encode_footer(kid: str) -> bytes:
    return _encoder.encode(_Footer(kid=kid))


def parse_footer(footer: bytes) -> str:
    """The `kid` in a credit token's footer."""
    if nests_deeper_than(footer):
        raise TokenInvalid('footer is not {"kid": "k4.pid…"}')
    try:
        return _footer_decoder.decode(footer).kid
    except (msgspec.MsgspecError, UnicodeDecodeError):
        raise TokenInvalid('footer is not {"kid": "k4.pid…"}') from None


def parse_claims(message: bytes, kid: str) -> CreditTokenClaims:
    """Typed claims from a verified message; any malformation is `TokenInvalid`."""
    try:
        raw = _claims_decoder.decode(message)
    except UnicodeDecodeError:
        raise TokenInvalid("claims are not valid: not UTF-8") from None
    except msgspec.MsgspecError as exc:
        raise TokenInvalid(f"claims are not valid: {_safe(exc)}") from None
    if not raw.nbf < raw.exp:
        raise TokenInvalid("claims are not valid: nbf must be before exp")
    if ANY in raw.aud and len(raw.aud) > 1:
        raise TokenInvalid("claims are not valid: '*' audience must stand alone")
    return CreditTokenClaims(
        jti=raw.jti,
        sub=raw.sub,
        iss=raw.iss,
        iat=raw.iat.astimezone(UTC),
        nbf=raw.nbf.astimezone(UTC),
        exp=raw.exp.astimezone(UTC),
        aud=list(raw.aud),
        tools=list(raw.tools),
        max_per_call=raw.max_per_call,
        cap=raw.cap,
        parent=raw.parent,
        kid=kid,
    )


def _safe(exc: Exception) -> str:
    # msgspec messages name the path and the expected type, never the value.
    return str(exc)[:200]


# ---- Keys --------------------------------------------------------------------


class PublicKey(msgspec.Struct, frozen=True, kw_only=True):
    kid: str
    purpose: KeyPurpose
    public_key: bytes
    state: KeyState

    @property
    def paserk(self) -> str:
        return paseto.paserk_public(self.public_key)


class PublishedKey(msgspec.Struct, frozen=True):
    """One entry of `GET /v1/keys`."""

    kid: str
    paserk: str
    purpose: KeyPurpose
    state: KeyState


class PublishedKeys(msgspec.Struct, frozen=True):
    keys: list[PublishedKey]


class KeyRing:
    """Public signing keys by kid; retired keys are simply absent."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            assert key.kid == paseto.paserk_pid(key.public_key), "kid must be the key's k4.pid"
            self._keys[key.kid] = key

    def get(self, kid: str, purpose: KeyPurpose) -> PublicKey | None:
        key = self._keys.get(kid)
        return key if key is not None and key.purpose == purpose else None

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(sorted(self._keys.values(), key=lambda k: (k.purpose, k.state, k.kid)))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def published(self) -> PublishedKeys:
        return PublishedKeys(keys=[PublishedKey(k.kid, k.paserk, k.purpose, k.state) for k in self])

    @classmethod
    def from_published(cls, document: bytes | str | dict[str, Any]) -> KeyRing:
        """A key ring from the body of `GET /v1/keys` (offline verifiers).

        Each kid is recomputed from its public key; a mismatch is refused.
        """
        if isinstance(document, dict):
            published = msgspec.convert(document, PublishedKeys)
        else:
            published = msgspec.json.decode(document, type=PublishedKeys)
        keys = []
        for entry in published.keys:
            public_key = paseto.parse_paserk_public(entry.paserk)
            if paseto.paserk_pid(public_key) != entry.kid:
                raise TokenInvalid("published kid does not match its key")
            keys.append(
                PublicKey(
                    kid=entry.kid, purpose=entry.purpose, public_key=public_key, state=entry.state
                )
            )
        return cls(keys)


async def load_keyring(pool: Executor) -> KeyRing:
    """Every non-retired public key from `signing_keys` (never the secret seeds)."""
    rows = await pool.fetch(queries["public_keys"])
    return KeyRing(
        PublicKey(
            kid=row["kid"],
            purpose=row["purpose"],
            public_key=bytes(row["public_key"]),
            state=row["state"],
        )
        for row in rows
    )


class KeyRingCache:
    """A key ring reloaded at most every `ttl_s` seconds, or sooner (at most every
    `reload_min_s`) when a token names a kid it lacks, so a key rotated in by
    another process is picked up at once and a retired key stops verifying within
    `ttl_s`. The service loads it from the database (`load_keyring`, the default;
    one per process, on the hot path); the client SDKs load the published keys
    over HTTP (`verifier.sdk.merchant.KeyCache`). `get(source)` hands `source` to
    the loader.
    """

    def __init__(
        self,
        *,
        ttl_s: float = KEYRING_CACHE_TTL_S,
        reload_min_s: float = KEYRING_RELOAD_MIN_S,
        load: Callable[[Any], Awaitable[KeyRing]] | None = None,
    ) -> None:
        assert 0 <= reload_min_s <= ttl_s
        self._ttl_s = ttl_s
        self._reload_min_s = reload_min_s
        self._load = load or load_keyring
        self._keyring: KeyRing | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, source: Any, *, kid: str | None = None) -> KeyRing:
        """The key ring; pass the token's `kid` to reload early if it is unknown."""
        if not self._stale(kid):
            assert self._keyring is not None
            return self._keyring
        async with self._lock:
            if self._stale(kid):
                self._keyring = await self._load(source)
                self._loaded_at = time.monotonic()
        assert self._keyring is not None
        return self._keyring

    def _stale(self, kid: str | None) -> bool:
        if self._keyring is None:
            return True
        age = time.monotonic() - self._loaded_at
        if age >= self._ttl_s:
            return True
        unknown = kid is not None and kid not in self._keyring
        return unknown and age >= self._reload_min_s


def token_kid(token: str) -> str:
    """The kid in a credit token's footer (unverified), to pick or refresh keys."""
    decoded = paseto.split_token(token)
    if not decoded.footer:
        raise TokenInvalid("the footer with the key id is missing")
    return parse_footer(decoded.footer)


# ---- Verification --------------------------------------------------------------


def verify_credit_token(
    token: str,
    keyring: KeyRing,
    *,
    now: datetime | None = None,
    leeway_s: int = DEFAULT_LEEWAY_S,
) -> CreditTokenClaims:
    """Verify a credit token offline: format, kid, signature, claims, time window.

    Raises `TokenInvalid`, `TokenExpired` or `TokenNotYetValid`; nothing else.
    Revocation and budget are the database's business.
    """
    assert 0 <= leeway_s <= LEEWAY_MAX_S
    decoded = paseto.split_token(token)
    if not decoded.footer:
        raise TokenInvalid("the footer with the key id is missing")
    kid = parse_footer(decoded.footer)
    key = keyring.get(kid, "credit_token")
    if key is None:
        raise TokenInvalid("unknown or retired signing key")
    message = paseto.verify(decoded, key.public_key)
    claims = parse_claims(message, kid)
    check_time(claims, now=now, leeway_s=leeway_s)
    return claims


def check_time(
    claims: CreditTokenClaims, *, now: datetime | None = None, leeway_s: int = DEFAULT_LEEWAY_S
) -> None:
    now = now or datetime.now(UTC)
    assert now.tzinfo is not None, "now must be timezone-aware"
    leeway = timedelta(seconds=leeway_s)
    if now + leeway < claims.nbf:
        raise TokenNotYetValid(f"valid from {claims.nbf.isoformat()}")
    if now - leeway >= claims.exp:
        raise TokenExpired(f"expired at {claims.exp.isoformat()}")


# ---- Scope ---------------------------------------------------------------------


def tool_matches(pattern: str, tool: str) -> bool:
    if pattern == ANY:
        return True
    if pattern.endswith("*"):
        return tool.startswith(pattern[:-1])
    return tool == pattern


def tool_pattern_covers(parent: str, child: str) -> bool:
    """Whether every tool `child` matches is also matched by `parent`."""
    if parent == ANY:
        return True
    if parent.endswith("*"):
        return child != ANY and child.startswith(parent[:-1])
    return child == parent


def audience_covers(parent: list[str], child: list[str]) -> bool:
    if ANY in parent:
        return True
    return ANY not in child and set(child) <= set(parent)


def check_scope(claims: CreditTokenClaims, *, merchant_id: str, tool: str) -> None:
    """Raise `ScopeDenied` unless the token may be spent at `merchant_id` on `tool`."""
    if ANY not in claims.aud and merchant_id not in claims.aud:
        raise ScopeDenied("this credit token may not be spent at this merchant", reason="audience")
    if not _TOOL_NAME.match(tool) or not any(tool_matches(p, tool) for p in claims.tools):
        raise ScopeDenied("this credit token may not be spent on this tool", reason="tool")
