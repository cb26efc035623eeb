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
]


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

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://errors.credit-ledger.dev/{self.code}",
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
    code = "validation_failed"
    status = 422
    title = "The request is not valid"


class Unauthenticated(LedgerError):
    code = "unauthenticated"
    status = 401
    title = "Missing or invalid API key"


class Forbidden(LedgerError):
    code = "forbidden"
    status = 403
    title = "This API key may not do that"


class NotFound(LedgerError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(LedgerError):
    code = "conflict"
    status = 409
    title = "Conflicts with the current state"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    title = "Idempotency key reused with a different request"


class PayloadTooLarge(LedgerError):
    code = "payload_too_large"
    status = 413
    title = "Request body too large"


class RateLimited(LedgerError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class ServiceUnavailable(LedgerError):
    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "The database is unavailable; retry shortly"
