"""The `Idempotency-Key` header: a retried creation answers what the first one did.

Stripe's convention (and the IETF draft "The Idempotency-Key HTTP Header Field"):
a client sends `Idempotency-Key: <key>` on a POST that creates something, and
retries with the same key until it gets an answer.

- Same key, same request (method, path, query and body; JSON compared by value):
  the original response, status, headers and body byte for byte, with
  `Idempotent-Replayed: true`. Nothing is created again.
- Same key, different request: 409 `idempotency_conflict`.
- Concurrent duplicates: the second waits for the first, then replays it.
- Only a success (2xx) is remembered: a refused request (422, 402, …) created
  nothing, and may be retried under the same key once its cause is fixed. A
  request without a valid credential is not looked up at all (the route answers
  401), nor is one without the header.
- Keys are scoped per principal (an API key's role and subject, or a credit
  token) and kept `IDEMPOTENCY_KEY_RETENTION_S` (24 hours).

Exactly once: the handler runs on the connection of the transaction that then
records its response (the `pool` dependency hands that connection out), so what
it created and the remembered response commit together or not at all.

The response is stored sealed with a key derived from the caller's credential
and the idempotency key, neither of which is stored; so a response that shows a
secret once (an owner API key, a credit token) is replayed, as Stripe does, to
the caller who can present that credential again, and to no one else (a
different API key of the same account is answered 409: see `_open`).

A route adopts it in one line:

    @post("/v1/things", operation_id="createThing", middleware=[idempotent], ...)

Routes whose body already carries `idempotency_key` (charges, holds, refunds),
with exactly-once handled in SQL, take the header with `IdempotencyKeyHeader`
and `keyed(data, header)` instead: either may be sent, and both must agree.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar, cast

import asyncpg
import msgspec
import nacl.exceptions
import nacl.secret
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ledger import limits
from ledger.access.api_keys import AuthCache, bearer_credential
from ledger.db.pool import Conn
from ledger.db.queries import load_queries
from ledger.errors import IdempotencyConflict, Unauthenticated, ValidationFailed
from ledger.http.params import BOUND_POOL_STATE_KEY

__all__ = [
    "IDEMPOTENCY_HEADER",
    "Idempotency",
    "IdempotencyKeyHeader",
    "idempotent",
    "keyed",
    "purge_expired_keys",
]

queries = load_queries("ledger.http", "idempotency.sql")

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
PURGE_BATCH_SIZE_MAX = 1000
_HEADER_NAME = IDEMPOTENCY_HEADER.lower().encode()
_SEAL_PERSON = b"ledger-idem-v1"

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_HEADER,
        required=False,
        min_length=1,
        max_length=limits.IDEMPOTENCY_KEY_LENGTH_MAX,
        pattern=limits.IDEMPOTENCY_KEY_PATTERN,
        description=(
            "Client-chosen key that makes a retry safe: the same key with the same request "
            "returns the original result; with a different request, 409 "
            "`idempotency_conflict`. Kept at least 24 hours."
        ),
    ),
]


def _header_key(scope: Scope) -> str | None:
    values = [v for name, v in scope.get("headers") or () if name.lower() == _HEADER_NAME]
    if not values:
        return None
    key = values[0].decode("latin-1")
    if (
        len(values) > 1
        or len(key) > limits.IDEMPOTENCY_KEY_LENGTH_MAX
        or not limits.IDEMPOTENCY_KEY_RE.fullmatch(key)
    ):
        raise ValidationFailed(
            f"send one {IDEMPOTENCY_HEADER} of 1 to {limits.IDEMPOTENCY_KEY_LENGTH_MAX} "
            "letters, digits or . _ : -",
            errors=[{"message": "invalid idempotency key", "key": IDEMPOTENCY_HEADER}],
        )
    return key


async def _principal(scope: Scope, pool: asyncpg.Pool, credential: str) -> str | None:
    """Whose key this is; None when the credential is not valid (the route answers)."""
    if credential.startswith("v4.public."):
        return "credit_token:" + hashlib.sha256(credential.encode()).hexdigest()
    cache: AuthCache = scope["app"].state.auth_cache
    try:
        principal = await cache.authenticate(pool, f"Bearer {credential}")
    except Unauthenticated:
        return None
    return f"{principal.role.value}:{principal.subject_id or '-'}"


def _request_hash(scope: Scope, body: bytes) -> bytes:
    try:
        # Equal JSON is the same request, whatever its spacing or key order.
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except (msgspec.DecodeError, RecursionError):
        canonical = body
    parts = [scope.get("method"), scope.get("raw_path") or scope["path"], scope.get("query_string")]
    return hashlib.sha256(msgspec.msgpack.encode([*parts, canonical])).digest()


def _box(credential: str, key: str) -> nacl.secret.SecretBox:
    secret = hashlib.blake2b(
        key.encode(),
        key=hashlib.sha256(credential.encode()).digest(),
        person=_SEAL_PERSON,
        digest_size=nacl.secret.SecretBox.KEY_SIZE,
    ).digest()
    return nacl.secret.SecretBox(secret)


class _Response(msgspec.Struct, array_like=True):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _seal(box: nacl.secret.SecretBox, messages: list[Message]) -> tuple[int, bytes]:
    events = cast(list[dict[str, Any]], messages)
    body = b"".join(bytes(e.get("body", b"")) for e in events[1:])
    headers = [(bytes(n), bytes(v)) for n, v in events[0].get("headers") or ()]
    response = _Response(int(events[0]["status"]), headers, body)
    return response.status, bytes(box.encrypt(msgspec.msgpack.encode(response)))


def _open(box: nacl.secret.SecretBox, sealed: bytes) -> _Response:
    try:
        return msgspec.msgpack.decode(box.decrypt(sealed), type=_Response)
    except nacl.exceptions.CryptoError:
        # The same principal with another of its credentials (say, a second API
        # key of the account): the response may hold a secret shown once.
        raise IdempotencyConflict(
            "this idempotency key was used with another credential; retry with the one "
            "that made the original request"
        ) from None


def _replay_events(response: _Response) -> list[Message]:
    start: Message = {
        "type": "http.response.start",
        "status": response.status,
        "headers": [*response.headers, REPLAYED_HEADER],
    }
    body: Message = {"type": "http.response.body", "body": response.body, "more_body": False}
    return [start, body]


if TYPE_CHECKING:
    _PoolBase = asyncpg.Pool[asyncpg.Record]
else:  # not subscriptable at run time
    _PoolBase = asyncpg.Pool


class _BoundPool(_PoolBase):
    """A pool (to the framework's type checks) whose every query runs on one
    connection, in its transaction. It covers what handlers call."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Conn) -> None:  # no pool of its own: nothing to start
        self._conn = conn

    def acquire(self, **_: Any) -> Any:
        return _Acquired(self._conn)

    async def execute(self, query: str, *args: Any, **options: Any) -> str:
        return await self._conn.execute(query, *args, **options)

    async def fetch(self, query: str, *args: Any, **options: Any) -> Any:
        return await self._conn.fetch(query, *args, **options)

    async def fetchrow(self, query: str, *args: Any, **options: Any) -> Any:
        return await self._conn.fetchrow(query, *args, **options)

    async def fetchval(self, query: str, *args: Any, **options: Any) -> Any:
        return await self._conn.fetchval(query, *args, **options)


class _Acquired:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def __aenter__(self) -> Conn:
        return self._conn

    async def __aexit__(self, *_: object) -> None:
        return None


class Idempotency(ASGIMiddleware):
    """Route middleware: see the module docstring. Use the `idempotent` instance."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        key = _header_key(scope)
        request: Request[Any, Any, Any] = Request(scope, receive)
        credential = bearer_credential(request.headers.get("authorization"))
        pool: asyncpg.Pool = scope["app"].state.pool
        principal = None
        if key is not None and credential is not None:
            principal = await _principal(scope, pool, credential)
        if key is None or credential is None or principal is None:
            # Nothing to remember: no key, or no valid credential (the route refuses).
            await next_app(scope, receive, send)
            return
        once = _Once(principal, key, credential, _request_hash(scope, await request.body()))
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                events = await once.run(conn, scope, receive, next_app)
            except BaseException:
                await transaction.rollback()
                raise
            # Also after a refusal: what the route committed on its own without a key
            # (say, a consumed challenge) it commits with one.
            await transaction.commit()
        for event in events:
            await send(event)


class _Once(msgspec.Struct):
    """One request under an idempotency key."""

    principal: str
    key: str
    credential: str
    request_hash: bytes

    async def run(
        self, conn: Conn, scope: Scope, receive: Receive, next_app: ASGIApp
    ) -> list[Message]:
        """The response to send: the remembered one, or the route's (remembered if 2xx)."""
        key_hash = hashlib.sha256(self.key.encode()).digest()
        box = _box(self.credential, self.key)
        await conn.execute(queries["lock_key"], int.from_bytes(key_hash[:4], "big", signed=True))
        row = await conn.fetchrow(queries["find_response"], self.principal, key_hash)
        if row is not None:
            if bytes(row["request_hash"]) != self.request_hash:
                raise IdempotencyConflict(
                    "this idempotency key was used with a different request",
                    idempotency_key=self.key,
                )
            return _replay_events(_open(box, bytes(row["response"])))
        events: list[Message] = []

        async def buffer(message: Message) -> None:
            # Held back until the transaction commits: a client never sees a 201
            # for something that was then rolled back.
            events.append(message)

        scope["state"][BOUND_POOL_STATE_KEY] = _BoundPool(conn)
        try:
            await next_app(scope, receive, buffer)
        finally:
            del scope["state"][BOUND_POOL_STATE_KEY]
        status, sealed = _seal(box, events)
        if 200 <= status < 300:
            await conn.execute(queries["remember_response"], self.principal, key_hash,
                               self.request_hash, sealed,
                               float(limits.IDEMPOTENCY_KEY_RETENTION_S))  # fmt: skip
        return events


idempotent = Idempotency()


class _Keyed(Protocol):
    @property
    def idempotency_key(self) -> str | None: ...


K = TypeVar("K", bound=_Keyed)


def keyed(data: K, header: str | None) -> K:
    """`data` with its idempotency key from the body, the header, or both (equal)."""
    body = data.idempotency_key
    if header is None and body is None:
        raise ValidationFailed(
            f"send an {IDEMPOTENCY_HEADER} header (or `idempotency_key` in the body)",
            errors=[{"message": "missing idempotency key", "key": IDEMPOTENCY_HEADER}],
        )
    if header is not None and body is not None and header != body:
        raise ValidationFailed(
            f"the {IDEMPOTENCY_HEADER} header and the body's `idempotency_key` differ",
            errors=[{"message": "differs from the header", "key": "idempotency_key"}],
        )
    if body is None:
        return cast(K, msgspec.structs.replace(cast(Any, data), idempotency_key=header))
    return data


async def purge_expired_keys(pool: asyncpg.Pool) -> int:
    """Delete remembered responses past their retention; return how many."""
    status = await pool.execute(queries["purge_expired"], PURGE_BATCH_SIZE_MAX)
    return int(status.split()[-1])
