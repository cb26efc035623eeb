"""Credit tokens: mint, list, read, revoke, delegate, self-inspection.

A credit token's scope is signed into it (see `verifier.tokens`); its money side
lives in `credit_tokens`: `cap_micros`, and `spent_micros`/`held_micros`, which
the charge path adds to the token's row and to every ancestor's row. So each
row's CHECK (`spent + held <= cap`) bounds its whole subtree, and a token's
effective remaining budget is the minimum of `cap - spent - held` over its chain.

Revocation is immediate and cascades: revoking a token sets `revoked_at` on it
and on every descendant, in the same transaction.

The token string exists only in the mint/delegate response; rows hold its id.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from msgspec import Meta

from issuer.keys import Connection, Executor, active_signer
from ledger.access.api_keys import Principal, Role, bearer_credential
from ledger.db.queries import load_queries
from ledger.errors import Forbidden, NotFound, ValidationFailed
from ledger.http.lists import Page, decode_cursor, page_of
from verifier import tokens as vt
from verifier.errors import BudgetExhausted, ScopeDenied, TokenInvalid, TokenRevoked

__all__ = [
    "DEFAULT_LIFETIME_S",
    "DelegateRequest",
    "MintRequest",
    "MintedToken",
    "RevokedToken",
    "Scope",
    "SelfView",
    "TokenView",
    "delegate_token",
    "inspect_token",
    "list_tokens",
    "mint_token",
    "read_token",
    "revoke_token",
]

queries = load_queries("issuer", "tokens.sql")

DEFAULT_LIFETIME_S = 24 * 3600
LIFETIME_MIN_S = 60
LifetimeS = Annotated[int, Meta(ge=LIFETIME_MIN_S, le=vt.LIFETIME_MAX_S)]
Description = Annotated[str, Meta(min_length=1, max_length=vt.DESCRIPTION_LENGTH_MAX)]


def _any() -> list[str]:
    return [vt.ANY]


class MintRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cap_micros: vt.CapMicros
    max_per_call_micros: vt.MaxPerCallMicros | None = None
    audiences: vt.Audiences = msgspec.field(default_factory=_any)
    tools: vt.ToolPatterns = msgspec.field(default_factory=_any)
    expires_in_s: LifetimeS = DEFAULT_LIFETIME_S
    description: Description | None = None


class DelegateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A child token; omitted scope fields inherit the parent's."""

    cap_micros: vt.CapMicros
    max_per_call_micros: vt.MaxPerCallMicros | None = None
    audiences: vt.Audiences | None = None
    tools: vt.ToolPatterns | None = None
    expires_in_s: LifetimeS | None = None
    description: Description | None = None


class Scope(msgspec.Struct, frozen=True):
    audiences: list[str]
    tools: list[str]
    max_per_call_micros: int


class MintedToken(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    jti: uuid.UUID
    account_id: uuid.UUID
    parent_jti: uuid.UUID | None
    depth: int
    scope: Scope
    cap_micros: int
    not_before: datetime
    expires_at: datetime
    kid: str
    unit: Literal["micro_usd"] = "micro_usd"


class TokenView(msgspec.Struct, frozen=True, kw_only=True):
    """A credit token as listed: never the token string."""

    jti: uuid.UUID
    account_id: uuid.UUID
    parent_jti: uuid.UUID | None
    depth: int
    status: Literal["active", "revoked", "expired"]
    scope: Scope
    cap_micros: int
    spent_micros: int
    held_micros: int
    remaining_micros: int
    not_before: datetime
    expires_at: datetime
    revoked_at: datetime | None
    description: str | None
    kid: str
    created_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


class RevokedToken(msgspec.Struct, frozen=True):
    jti: uuid.UUID
    revoked_at: datetime
    descendants_revoked: int


class SelfView(msgspec.Struct, frozen=True, kw_only=True):
    jti: uuid.UUID
    account_id: uuid.UUID
    parent_jti: uuid.UUID | None
    depth: int
    scope: Scope
    cap_micros: int
    spent_micros: int
    held_micros: int
    # min over the token and its ancestors of cap - spent - held
    remaining_micros: int
    limited_by: Literal["token_cap", "ancestor_cap"]
    account_available_micros: int
    # what the next charge could take at most: min(remaining, account available)
    spendable_micros: int
    not_before: datetime
    expires_at: datetime
    unit: Literal["micro_usd"] = "micro_usd"


# ---- helpers ---------------------------------------------------------------------


def _now() -> datetime:
    # Whole seconds, so the signed claims and the row agree exactly.
    return datetime.now(UTC).replace(microsecond=0)


def _canonical_audiences(audiences: list[str]) -> list[str]:
    """Merchant ids that are UUIDs in canonical (lower-case) form, no duplicates."""
    out: list[str] = []
    for audience in audiences:
        with contextlib.suppress(ValueError):
            audience = str(uuid.UUID(audience))
        if audience not in out:
            out.append(audience)
    if vt.ANY in out and len(out) > 1:
        raise ValidationFailed("audience '*' (any merchant) must stand alone")
    return out


def _tools(tools: list[str]) -> list[str]:
    return list(dict.fromkeys(tools))


def _owner_account(principal: Principal) -> uuid.UUID:
    if principal.role is not Role.owner or principal.subject_id is None:
        raise Forbidden("minting credit tokens needs the account owner's API key")
    return principal.subject_id


async def _issue(
    conn: Connection,
    *,
    issuer: str,
    account_id: uuid.UUID,
    parent: vt.CreditTokenClaims | None,
    depth: int,
    scope: Scope,
    cap: int,
    nbf: datetime,
    exp: datetime,
    description: str | None,
) -> MintedToken:
    """Insert the row and sign the token, in the caller's transaction."""
    assert 0 <= depth <= vt.DEPTH_MAX
    assert nbf < exp
    assert scope.max_per_call_micros <= cap
    signer = await active_signer(conn, "credit_token")
    claims = vt.CreditTokenClaims(
        jti=uuid.uuid4(),
        sub=account_id,
        iss=issuer,
        iat=nbf,
        nbf=nbf,
        exp=exp,
        aud=scope.audiences,
        tools=scope.tools,
        max_per_call=scope.max_per_call_micros,
        cap=cap,
        parent=None if parent is None else parent.jti,
        kid=signer.kid,
    )
    await conn.execute(
        queries["insert_token"],
        claims.jti,
        account_id,
        claims.parent,
        depth,
        signer.kid,
        scope.audiences,
        scope.tools,
        scope.max_per_call_micros,
        cap,
        nbf,
        exp,
        description,
    )
    token = signer.sign(vt.encode_claims(claims), footer=vt.encode_footer(signer.kid))
    return MintedToken(
        token=token,
        jti=claims.jti,
        account_id=account_id,
        parent_jti=claims.parent,
        depth=depth,
        scope=scope,
        cap_micros=cap,
        not_before=nbf,
        expires_at=exp,
        kid=signer.kid,
    )


# ---- owner: mint, list, read, revoke ----------------------------------------------


async def mint_token(
    pool: asyncpg.Pool[Any],
    principal: Principal,
    request: MintRequest,
    *,
    issuer: str,
) -> MintedToken:
    """A root credit token for the owner's own account."""
    account_id = _owner_account(principal)
    max_per_call = request.max_per_call_micros or request.cap_micros
    if max_per_call > request.cap_micros:
        raise ValidationFailed("max_per_call_micros may not exceed cap_micros")
    scope = Scope(_canonical_audiences(request.audiences), _tools(request.tools), max_per_call)
    nbf = _now()
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(queries["account_exists"], account_id):
            raise NotFound("no such account")
        return await _issue(
            conn,
            issuer=issuer,
            account_id=account_id,
            parent=None,
            depth=0,
            scope=scope,
            cap=request.cap_micros,
            nbf=nbf,
            exp=nbf + timedelta(seconds=request.expires_in_s),
            description=request.description,
        )


def _view(row: asyncpg.Record, *, now: datetime) -> TokenView:
    status: Literal["active", "revoked", "expired"] = "active"
    if row["revoked_at"] is not None:
        status = "revoked"
    elif row["expires_at"] <= now:
        status = "expired"
    return TokenView(
        jti=row["jti"],
        account_id=row["account_id"],
        parent_jti=row["parent_jti"],
        depth=row["depth"],
        status=status,
        scope=Scope(list(row["audiences"]), list(row["tools"]), row["max_per_call_micros"]),
        cap_micros=row["cap_micros"],
        spent_micros=row["spent_micros"],
        held_micros=row["held_micros"],
        remaining_micros=row["cap_micros"] - row["spent_micros"] - row["held_micros"],
        not_before=row["not_before"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        description=row["description"],
        kid=row["kid"],
        created_at=row["created_at"],
    )


def _readable_account(principal: Principal, account_id: uuid.UUID | None) -> uuid.UUID | None:
    """The account whose tokens `principal` may see (None: any, for operators)."""
    if principal.role is Role.owner:
        assert principal.subject_id is not None
        if account_id is not None and account_id != principal.subject_id:
            raise NotFound("no such account")
        return principal.subject_id
    if principal.role is Role.operator:
        return account_id
    raise Forbidden("credit tokens are managed with the account owner's API key")


async def list_tokens(
    pool: asyncpg.Pool[Any],
    principal: Principal,
    *,
    account_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> Page[TokenView]:
    """One page of an account's credit tokens, oldest first."""
    after = decode_cursor("tokens", cursor, uuid.UUID)
    account = _readable_account(principal, account_id)
    if account is None:
        raise ValidationFailed("operators list credit tokens with ?account_id=…")
    rows = await pool.fetch(queries["list_tokens"], account, after, limit + 1)
    now = _now()
    return page_of([_view(row, now=now) for row in rows], limit, "tokens", lambda t: t.jti)


async def read_token(pool: asyncpg.Pool[Any], principal: Principal, jti: uuid.UUID) -> TokenView:
    account = _readable_account(principal, None)
    row = await pool.fetchrow(queries["get_token"], jti, account)
    if row is None:
        raise NotFound("no such credit token")
    return _view(row, now=_now())


async def revoke_token(
    pool: asyncpg.Pool[Any], principal: Principal, jti: uuid.UUID
) -> RevokedToken:
    """Revoke a token and all its descendants, at once (idempotent)."""
    account = _readable_account(principal, None)
    async with pool.acquire() as conn, conn.transaction():
        return await _revoke(conn, jti, account)


async def _revoke(conn: Connection, jti: uuid.UUID, account: uuid.UUID | None) -> RevokedToken:
    revoked_at = await conn.fetchval(queries["revoke_token"], jti, account)
    if revoked_at is None:
        raise NotFound("no such credit token")
    # The row lock above waits for any delegation from this token in flight; each
    # pass below takes a fresh snapshot, so a child committed meanwhile is caught.
    total = 0
    for _ in range(vt.DEPTH_MAX + 2):
        status = await conn.execute(queries["revoke_descendants"], jti, revoked_at)
        count = int(status.split()[-1])
        total += count
        if count == 0:
            break
    return RevokedToken(jti=jti, revoked_at=revoked_at, descendants_revoked=total)


# ---- agent: delegate, self -----------------------------------------------------


async def _verified(pool: Executor, token: str | None) -> vt.CreditTokenClaims:
    if token is None:
        raise TokenInvalid("send the credit token as `Authorization: Bearer v4.public.…`")
    keyring = await vt.load_keyring(pool)
    return vt.verify_credit_token(token, keyring)


async def _chain(conn: Executor, jti: uuid.UUID) -> list[asyncpg.Record]:
    """The token and its ancestors, token first; refuses revoked chains."""
    rows = await conn.fetch(queries["token_chain"], jti)
    rows.sort(key=lambda r: -r["depth"])
    if not rows or rows[0]["jti"] != jti:
        raise TokenInvalid("unknown credit token")
    if any(row["revoked_at"] is not None for row in rows):
        raise TokenRevoked("this credit token or one of its ancestors was revoked")
    return rows


def _remaining(rows: list[asyncpg.Record]) -> tuple[int, Literal["token_cap", "ancestor_cap"]]:
    """The effective remaining budget (min over the chain) and which row binds it."""
    remaining = rows[0]["cap_micros"] - rows[0]["spent_micros"] - rows[0]["held_micros"]
    limit: Literal["token_cap", "ancestor_cap"] = "token_cap"
    for row in rows[1:]:
        left = row["cap_micros"] - row["spent_micros"] - row["held_micros"]
        if left < remaining:
            remaining, limit = left, "ancestor_cap"
    return remaining, limit


async def inspect_token(pool: asyncpg.Pool[Any], authorization: str | None) -> SelfView:
    """What an agent may still spend with the credit token it presents."""
    claims = await _verified(pool, bearer_credential(authorization))
    rows = await _chain(pool, claims.jti)
    own = rows[0]
    remaining, limit = _remaining(rows)
    available = own["account_available_micros"]
    return SelfView(
        jti=claims.jti,
        account_id=claims.sub,
        parent_jti=claims.parent,
        depth=own["depth"],
        scope=Scope(claims.aud, claims.tools, claims.max_per_call),
        cap_micros=own["cap_micros"],
        spent_micros=own["spent_micros"],
        held_micros=own["held_micros"],
        remaining_micros=remaining,
        limited_by=limit,
        account_available_micros=available,
        spendable_micros=max(0, min(remaining, available)),
        not_before=claims.nbf,
        expires_at=claims.exp,
    )


def _child_scope(parent: vt.CreditTokenClaims, request: DelegateRequest) -> Scope:
    """The child's scope; refuses anything wider than the parent's."""
    audiences = _canonical_audiences(request.audiences or parent.aud)
    tools = _tools(request.tools or parent.tools)
    max_per_call = request.max_per_call_micros or min(parent.max_per_call, request.cap_micros)
    if not vt.audience_covers(parent.aud, audiences):
        raise ScopeDenied("a child may not reach merchants its parent cannot", reason="audience")
    for tool in tools:
        if not any(vt.tool_pattern_covers(p, tool) for p in parent.tools):
            raise ScopeDenied("a child may not use tools its parent cannot", reason="tool")
    if max_per_call > parent.max_per_call:
        raise ScopeDenied(
            "a child's max_per_call may not exceed its parent's", reason="max_per_call"
        )
    if max_per_call > request.cap_micros:
        raise ValidationFailed("max_per_call_micros may not exceed cap_micros")
    return Scope(audiences, tools, max_per_call)


async def delegate_token(
    pool: asyncpg.Pool[Any],
    authorization: str | None,
    request: DelegateRequest,
    *,
    issuer: str,
    topup_url: str,
) -> MintedToken:
    """A child of the presented credit token: narrower scope, cap within its budget."""
    parent = await _verified(pool, bearer_credential(authorization))
    scope = _child_scope(parent, request)
    nbf = max(_now(), parent.nbf)
    exp = parent.exp
    if request.expires_in_s is not None:
        exp = nbf + timedelta(seconds=request.expires_in_s)
        if exp > parent.exp:
            raise ScopeDenied("a child may not outlive its parent", reason="expiry")
    if not nbf < exp:
        raise ScopeDenied("the parent expires too soon to delegate", reason="expiry")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(queries["lock_token"], parent.jti)
        rows = await _chain(conn, parent.jti)
        depth = rows[0]["depth"] + 1
        if depth > vt.DEPTH_MAX:
            raise ScopeDenied(f"delegation is at most {vt.DEPTH_MAX} deep", reason="depth")
        remaining, limit = _remaining(rows)
        if request.cap_micros > remaining:
            raise BudgetExhausted(
                limit=limit,
                required=request.cap_micros,
                available=max(0, remaining),
                token_id=str(parent.jti),
                account_id=str(parent.sub),
                topup_url=topup_url,
            )
        return await _issue(
            conn,
            issuer=issuer,
            account_id=parent.sub,
            parent=parent,
            depth=depth,
            scope=scope,
            cap=request.cap_micros,
            nbf=nbf,
            exp=exp,
            description=request.description,
        )
