"""Every error becomes RFC 9457 `application/problem+json`, mapped here and only here.

Domain errors carry their own `code` and `status`. Framework errors are mapped by
kind: a request that fails decoding or validation is 422 `validation_failed`; an
unknown route is 404 `not_found`; a lost database is 503 `database_unavailable`.
Anything else is a server bug: 500 `internal_error`, logged with its traceback,
with nothing from the request echoed back.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from ledger import limits
from ledger.db.pool import CONNECTION_ERRORS
from ledger.errors import (
    DatabaseUnavailable,
    LedgerError,
    NotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from ledger.observability import money

__all__ = ["PROBLEM_MEDIA_TYPE", "WWW_AUTHENTICATE", "exception_handlers", "problem_response"]

log = logging.getLogger("ledger.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "headers_too_large",
    503: "service_unavailable",
}


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    # Every problem passes here: on a money route it is that request's refusal line.
    money.refused(code=str(body.get("code")), status=status, extra=body)
    return Response(
        content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


# RFC 9110: a 401 names the scheme that would work. Every credential here (API key
# or credit token) is a bearer token (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="credit-ledger"'


def _domain(request: Request[Any, Any, Any], exc: LedgerError) -> Response[dict[str, Any]]:
    headers = dict(exc.headers)
    if isinstance(exc, ServiceUnavailable):
        # Every 503 tells the client when to come back, however it was raised.
        headers.setdefault("Retry-After", str(limits.RETRY_AFTER_S))
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return problem_response(exc.status, exc.problem(request.url.path), headers or None)


def _validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            errors.append(
                {"message": str(item.get("message", "")), "key": str(item.get("key", ""))}
            )
    error = ValidationFailed(_first_message(exc, errors), errors=errors)
    return _domain(request, error)


def _first_message(exc: ValidationException, errors: list[dict[str, str]]) -> str:
    if errors and errors[0]["message"]:
        return errors[0]["message"]
    return "the request body or parameters are not valid"


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        return _internal(request, exc)
    if status == 400:
        # The framework's "could not decode" (malformed JSON, wrong content).
        return _domain(request, ValidationFailed("the request body is not valid JSON"))
    code = _HTTP_CODES.get(status, "bad_request")
    body = {
        "type": f"https://errors.credit-ledger.dev/{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return problem_response(status, body, headers)


def _not_found(request: Request[Any, Any, Any], exc: NotFoundException) -> Response[dict[str, Any]]:
    return _domain(request, NotFound("no such resource"))


def _database(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("database unavailable: %s", type(exc).__name__)
    return _domain(request, DatabaseUnavailable())


def _busy(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # A statement timeout, lock timeout, deadlock or serialization failure: an
    # operating condition, not a bug; the client retries (with its idempotency key).
    log.warning("database busy: %s", type(exc).__name__)
    return _domain(request, ServiceUnavailable("the database did not complete the request; retry"))


def _unstorable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # PostgreSQL cannot store a NUL character (text) or its escape (jsonb): the
    # input is at fault, and nothing was written.
    return _domain(
        request, ValidationFailed("the request contains a character that cannot be stored")
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, CONNECTION_ERRORS):
        return _database(request, exc)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {
        "type": "https://errors.credit-ledger.dev/internal_error",
        "title": "Internal error",
        "status": 500,
        "code": "internal_error",
        "detail": "an unexpected error occurred; it has been logged",
        "instance": request.url.path,
    }
    return problem_response(500, body)


def exception_handlers() -> dict[type[Exception] | int, Any]:
    handlers: dict[type[Exception] | int, Any] = {
        LedgerError: _domain,
        ValidationException: _validation,
        NotFoundException: _not_found,
        MethodNotAllowedException: _http,
        HTTPException: _http,
        asyncpg.exceptions.InterfaceError: _database,
        asyncpg.exceptions.QueryCanceledError: _busy,
        asyncpg.exceptions.LockNotAvailableError: _busy,
        asyncpg.exceptions.TransactionRollbackError: _busy,
        asyncpg.exceptions.CharacterNotInRepertoireError: _unstorable,
        asyncpg.exceptions.UntranslatableCharacterError: _unstorable,
        Exception: _internal,
    }
    for exc_type in CONNECTION_ERRORS:
        if issubclass(exc_type, Exception):
            handlers[exc_type] = _database
    return handlers
