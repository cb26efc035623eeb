"""Domain errors, each with a stable snake_case `code` and an HTTP `status`.

Every refusal the service makes is one of these; the app maps them to RFC 9457
`application/problem+json` in one place (`ledger.problems`).

    LedgerError                       (abstract; code, status, title)
    ├── ValidationFailed              422 validation_failed
    ├── Unauthenticated               401 unauthenticated
    ├── Forbidden                     403 forbidden
    ├── NotFound                      404 not_found
    ├── Conflict                      409 conflict
    │   └── IdempotencyConflict       409 idempotency_conflict
    ├── PayloadTooLarge               413 payload_too_large
    ├── RateLimited                   429 rate_limited
    ├── ServiceUnavailable            503 service_unavailable
    │   └── DatabaseUnavailable       503 database_unavailable
    └── (issuer/verifier add token_*, scope_denied, budget_exhausted, …)

Programmer errors are `assert`s, never one of these: they surface as 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "DatabaseUnavailable",
    "Forbidden",
    "IdempotencyConflict",
    "LedgerError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthenticated",
    "ValidationFailed",
    "problem_type",
]


def problem_type(code: str, base_url: str = "") -> str:
    """The `type` URI of a problem code: a page the service serves about it."""
    return f"{base_url}/problems/{code}"


class LedgerError(Exception):
    """Base of every domain error. Subclasses set `code`, `status` and `title`."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request refused"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] = {}

    def problem(self, instance: str | None = None, *, base_url: str = "") -> dict[str, Any]:
        """The RFC 9457 body. `type` is the page describing the code, served by the
        service at `base_url` (a relative reference without one)."""
        body: dict[str, Any] = {
            "type": problem_type(self.code, base_url),
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


class ValidationFailed(LedgerError):
    """The body, a parameter or a header is not valid: wrong type, out of bounds, an unknown
    field or query parameter, a key twice in one JSON object, or a rule between fields.
    `errors` lists `{message, key}` per offending field. Nothing was written; fix the
    request before retrying."""

    code = "validation_failed"
    status = 422
    title = "The request is not valid"


class Unauthenticated(LedgerError):
    """No API key was sent (`Authorization: Bearer <key>`), or it is not a valid one
    (unknown, revoked). The response carries `WWW-Authenticate: Bearer`."""

    code = "unauthenticated"
    status = 401
    title = "Missing or invalid API key"


class Forbidden(LedgerError):
    """The API key is valid but its role (operator, owner, merchant) may not do this."""

    code = "forbidden"
    status = 403
    title = "This API key may not do that"


class NotFound(LedgerError):
    """No such resource, or one this credential may not see: another owner's account or
    another merchant's charge answers exactly like a missing one."""

    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(LedgerError):
    """The request conflicts with the current state of the resource (for example, a
    deposit already credited to another account)."""

    code = "conflict"
    status = 409
    title = "Conflicts with the current state"


class IdempotencyConflict(Conflict):
    """The idempotency key (the `Idempotency-Key` header, or a body's `idempotency_key`)
    was already used with a different request, or, for a remembered response, by
    another credential of the same principal. `idempotency_key` names it. Use a new key
    for a new request; retry the original request unchanged to get its answer."""

    code = "idempotency_conflict"
    title = "Idempotency key reused with a different request"


class PayloadTooLarge(LedgerError):
    """The request body is larger than `LEDGER_REQUEST_BODY_BYTES_MAX`; it was not read."""

    code = "payload_too_large"
    status = 413
    title = "Request body too large"


class RateLimited(LedgerError):
    """Too many requests at once (for charges: too many in flight in this process).
    Retry after `Retry-After` seconds (also `retry_after_s`) with the same idempotency key."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"


class ServiceUnavailable(LedgerError):
    """The service cannot complete the request now (the database did not finish in
    time, or a dependency is not configured). Retry after `Retry-After` seconds
    (`retry_after_s`), with the same idempotency key."""

    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL is unreachable. Nothing was written; the service recovers by itself
    when it returns. Retry after `Retry-After` seconds with the same idempotency key."""

    code = "database_unavailable"
    title = "The database is unavailable; retry shortly"
