"""What the OpenAPI document says about errors: every one is a `Problem`.

Handlers declare the refusals specific to them with
`responses=problem_responses(403, 404)`. `document_problems` then completes the
generated document for every operation, including routes added later, with the
refusals any route of that shape can produce (so a fuzzer that checks responses
against the document finds nothing undocumented):

- 422 `validation_failed` when the operation has parameters or a body;
- 413 `payload_too_large` when it has a body;
- 401 `unauthenticated` when it is secured;
- 431 `headers_too_large` and 503 `database_unavailable` for all.

Litestar adds a 400 "ValidationException" response of its own shape to any
operation with inputs; we never send 400 (a request that cannot be decoded is
422 `validation_failed`), so that response is removed.
"""

from __future__ import annotations

from http import HTTPStatus

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, Operation, Reference
from litestar.openapi.spec import OpenAPIResponse as Response

from ledger.problems import PROBLEM_MEDIA_TYPE

__all__ = ["FieldError", "Problem", "document_problems", "problem_responses"]

PROBLEM_SCHEMA_NAME = "Problem"

# What each refusal status means in this API, with the codes it carries.
_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid credentials (`unauthenticated`, or a credit token's `token_*` code).",
    402: "Budget exhausted (`budget_exhausted`): carries the limit, required and available amounts.",
    403: "The credential may not do this (`forbidden`, `scope_denied`).",
    404: "No such resource, or not one this credential may see (`not_found`).",
    409: "Conflicts with the current state (`conflict`, `idempotency_conflict`).",
    413: "The request body is larger than the configured limit (`payload_too_large`).",
    422: "The body or parameters are not valid (`validation_failed`, with `errors`).",
    429: "Too many requests (`rate_limited`); see Retry-After.",
    431: "The request headers are larger than the configured limit (`headers_too_large`).",
    503: "The database is unavailable (`database_unavailable`); retry after Retry-After seconds.",
}


class FieldError(msgspec.Struct, frozen=True):
    message: str
    key: str


class Problem(msgspec.Struct, frozen=True):
    """An RFC 9457 problem; some codes add members of their own (`errors`, `limit`, …)."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | msgspec.UnsetType = msgspec.UNSET
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


def _description(status: int) -> str:
    return _DESCRIPTIONS.get(status) or HTTPStatus(status).phrase


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` for a handler: these statuses answer with a `Problem`."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            description=_description(status),
            generate_examples=False,
        )
        for status in statuses
    }


def _problem_response(status: int) -> Response:
    reference = Reference(ref=f"#/components/schemas/{PROBLEM_SCHEMA_NAME}")
    return Response(
        description=_description(status),
        content={PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=reference)},
    )


def _implied_statuses(operation: Operation) -> list[int]:
    statuses = [431, 503]
    if operation.parameters or operation.request_body:
        statuses.append(422)
    if operation.request_body:
        statuses.append(413)
    if operation.security:
        statuses.append(401)
    return statuses


def _complete(operation: Operation) -> None:
    responses = operation.responses if operation.responses is not None else {}
    responses.pop("400", None)
    for status in _implied_statuses(operation):
        responses.setdefault(str(status), _problem_response(status))
    operation.responses = dict(sorted(responses.items()))


def document_problems(document: OpenAPI) -> OpenAPI:
    """Complete every operation's error responses in place (see the module docstring)."""
    schemas = document.components.schemas if document.components else None
    assert schemas and PROBLEM_SCHEMA_NAME in schemas, "no handler uses problem_responses()"
    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(path_item, method, None)
            if operation is not None:
                _complete(operation)
    return document
