"""Every error becomes RFC 9457 `application/problem+json`, mapped here and only here.

Domain errors carry their own `code` and `status`. Framework errors are mapped by
kind: a request that fails decoding or validation is 422 `validation_failed`; an
unknown route is 404 `not_found`; a lost database is 503 `database_unavailable`.
Anything else is a server bug: 500 `internal_error`, logged with its traceback,
with nothing from the request echoed back.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import asyncpg
import msgspec
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
    problem_type,
)
from ledger.observability import money

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "WWW_AUTHENTICATE",
    "ProblemInfo",
    "exception_handlers",
    "problem_catalogue",
    "problem_response",
]

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
    if exc.status in (429, 503):
        # Every 429 and 503 tells the client when to come back, however it was
        # raised: in the header, and in the body for clients that read only that.
        headers.setdefault("Retry-After", str(limits.RETRY_AFTER_S))
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    body = exc.problem(request.url.path, base_url=_base_url(request))
    if "Retry-After" in headers and headers["Retry-After"].isdigit():
        body.setdefault("retry_after_s", int(headers["Retry-After"]))
    return problem_response(exc.status, body, headers or None)


def _base_url(request: Request[Any, Any, Any]) -> str:
    settings = request.app.state.get("settings")
    return str(getattr(settings, "base_url", ""))


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
        "type": problem_type(code, _base_url(request)),
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
        "type": problem_type("internal_error", _base_url(request)),
        "title": "Internal error",
        "status": 500,
        "code": "internal_error",
        "detail": "an unexpected error occurred; it has been logged",
        "instance": request.url.path,
    }
    return problem_response(500, body)


class ProblemInfo(msgspec.Struct, frozen=True):
    code: str
    status: int
    title: str
    description: str


# Codes the framework's own refusals carry (no domain class raises them).
_FRAMEWORK_PROBLEMS = (
    ProblemInfo(
        "bad_request",
        400,
        "Bad request",
        "The request could not be understood at the HTTP level. Fix it; retrying it "
        "unchanged gives the same answer.",
    ),
    ProblemInfo(
        "method_not_allowed",
        405,
        "Method not allowed",
        "The path exists but does not take this method; the `Allow` header lists the "
        "methods it takes.",
    ),
    ProblemInfo(
        "internal_error",
        500,
        "Internal error",
        "An unexpected fault in the service, logged with its traceback. Nothing from the "
        "request is echoed. Retrying with the same idempotency key is safe.",
    ),
)


def _subclasses(cls: type[LedgerError]) -> list[type[LedgerError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def problem_catalogue() -> dict[str, ProblemInfo]:
    """Every problem code the service can answer, with what it means: the page
    each problem's `type` URI names. A domain error documents its code in its
    class docstring (of the classes raising one code, the most derived describes it)."""
    catalogue: dict[str, ProblemInfo] = {}
    for cls in _subclasses(LedgerError)[1:]:
        doc = inspect.getdoc(cls) or ""
        if doc and cls.__doc__:  # its own docstring, not one inherited
            catalogue[cls.code] = ProblemInfo(cls.code, cls.status, cls.title, doc)
    for info in _FRAMEWORK_PROBLEMS:
        catalogue.setdefault(info.code, info)
    return dict(sorted(catalogue.items()))


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
