"""What the OpenAPI document says about errors: every one is a `Problem`.

Handlers declare the refusals specific to them with
`responses=problem_responses(403, 404)`. `document_problems` then completes the
generated document for every operation, including routes added later, with the
refusals any route of that shape can produce (so a fuzzer that checks responses
against the document finds nothing undocumented):

- 422 `validation_failed` when the operation has parameters or a body;
- 413 `payload_too_large` and 415 `unsupported_media_type` when it has a body;
- 401 `unauthenticated` and 403 `forbidden` (a credential of the wrong role)
  when it is secured;
- 404 `not_found` when a parameter names a resource (a path parameter, or any
  parameter that is a UUID);
- 431 `headers_too_large` and 503 `database_unavailable` for all.

Litestar adds a 400 "ValidationException" response of its own shape to any
operation with inputs; we never send 400 (a request that cannot be decoded is
422 `validation_failed`), so that response is removed.

Request bodies are Structs with `forbid_unknown_fields=True`; Litestar does not
say so in their schemas, so `complete_openapi` adds `additionalProperties: false`
to the schema of every such Struct a handler decodes (nested ones included). It
also drops constraints inside containers (list items, dict keys and values, the
members of `X | None`); those are copied from msgspec's own schema of the Struct,
which is exactly what the decoder enforces. And no string in a request body may
hold NUL (`ledger.guard` refuses it: PostgreSQL cannot store it), which every
string schema without a pattern of its own now says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import msgspec
import msgspec.inspect as mi
from litestar import Litestar
from litestar.enums import ParamType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
)
from litestar.openapi.spec import OpenAPIResponse as Response

from ledger import limits
from ledger.http.idempotency import IDEMPOTENCY_HEADER, Idempotency
from ledger.http.lists import QUERY_PARAMETERS_STATE_KEY, query_parameters_of
from ledger.http.problems import PROBLEM_MEDIA_TYPE

__all__ = [
    "FieldError",
    "Problem",
    "complete_openapi",
    "document_problems",
    "problem_responses",
    "replay_response",
]

PROBLEM_SCHEMA_NAME = "Problem"

# What each refusal status means in this API, with the codes it carries.
_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid credentials (`unauthenticated`, or a credit token's `token_*` code).",
    402: "Budget exhausted (`budget_exhausted`): carries the limit, required and available amounts.",
    403: "The credential may not do this (`forbidden`, `scope_denied`).",
    404: "No such resource, or not one this credential may see (`not_found`).",
    409: "Conflicts with the current state (`conflict`, `idempotency_conflict`).",
    413: "The request body is larger than the configured limit (`payload_too_large`).",
    415: "The body is not sent as JSON (`unsupported_media_type`): use `application/json`.",
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


def replay_response(container: type[msgspec.Struct]) -> dict[int, ResponseSpec]:
    """`responses=` for a create handler that answers an idempotent replay with
    200 and the original result."""
    return {
        200: ResponseSpec(
            data_container=container,
            description="Idempotent replay: the result of the original request, unchanged.",
            generate_examples=False,
        )
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
        statuses.extend((413, 415))
    if operation.security:
        statuses.extend((401, 403))
    if any(_names_a_resource(p) for p in operation.parameters or ()):
        statuses.append(404)
    return statuses


def _names_a_resource(parameter: Any) -> bool:
    schema = getattr(parameter, "schema", None)
    options = [schema, *_alternatives(schema)] if isinstance(schema, Schema) else []
    is_uuid = any(isinstance(o, Schema) and o.format == OpenAPIFormat.UUID for o in options)
    return getattr(parameter, "param_in", None) == "path" or is_uuid


def _complete(operation: Operation) -> None:
    responses = operation.responses if operation.responses is not None else {}
    framework_400 = responses.get("400")
    if framework_400 is not None and PROBLEM_MEDIA_TYPE not in (
        getattr(framework_400, "content", None) or {}
    ):
        # Litestar's own "ValidationException" answer, which we never send.
        del responses["400"]
    for status in _implied_statuses(operation):
        responses.setdefault(str(status), _problem_response(status))
    operation.responses = dict(sorted(responses.items()))


def _operations(document: OpenAPI) -> Iterator[Operation]:
    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(path_item, method, None)
            if operation is not None:
                yield operation


def document_problems(document: OpenAPI) -> OpenAPI:
    """Complete every operation's error responses in place (see the module docstring)."""
    schemas = document.components.schemas if document.components else None
    assert schemas and PROBLEM_SCHEMA_NAME in schemas, "no handler uses problem_responses()"
    for operation in _operations(document):
        _complete(operation)
    return document


def _structs(info: mi.Type, seen: dict[type, mi.StructType]) -> None:
    if isinstance(info, mi.StructType):
        if info.cls not in seen:
            seen[info.cls] = info
            for field in info.fields:
                _structs(field.type, seen)
    elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        _structs(info.item_type, seen)
    elif isinstance(info, mi.DictType):
        _structs(info.value_type, seen)
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            _structs(member, seen)
    elif isinstance(info, mi.TupleType):
        for member in info.item_types:
            _structs(member, seen)


def _request_structs(app: Litestar) -> Iterator[mi.StructType]:
    seen: dict[type, mi.StructType] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                _structs(mi.type_info(data.annotation), seen)
    yield from seen.values()


_CONSTRAINTS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
}


def _alternatives(schema: Schema) -> list[Any]:
    return [*(schema.one_of or []), *(schema.any_of or [])]


def _children(schema: Schema) -> list[Any]:
    """The schemas nested directly in `schema` (properties, alternatives, items, values)."""
    return [
        *(schema.properties or {}).values(),
        *_alternatives(schema),
        schema.items,
        schema.additional_properties,
    ]


def _merge_constraints(schema: Any, spec: Any) -> None:
    """Copy the decoder's constraints (`spec`, JSON Schema from msgspec) that the
    generated `schema` lacks, recursively."""
    if not isinstance(schema, Schema) or not isinstance(spec, dict):
        return
    for key, attr in _CONSTRAINTS.items():
        if key in spec and getattr(schema, attr) is None:
            setattr(schema, attr, spec[key])
    _merge_constraints(schema.items, spec.get("items"))
    _merge_constraints(schema.additional_properties, spec.get("additionalProperties"))
    names = spec.get("propertyNames")
    if isinstance(names, dict) and schema.property_names is None:
        schema.property_names = Schema(
            **{attr: names[key] for key, attr in _CONSTRAINTS.items() if key in names}
        )
    for name, sub in (spec.get("properties") or {}).items():
        _merge_constraints((schema.properties or {}).get(name), sub)
    for option in spec.get("anyOf") or []:
        kind = option.get("type") if isinstance(option, dict) else None
        for candidate in _alternatives(schema):
            if kind is not None and isinstance(candidate, Schema) and candidate.type == kind:
                _merge_constraints(candidate, option)


def _no_nul(schema: Any) -> None:
    if not isinstance(schema, Schema):
        return
    if schema.type == OpenAPIType.STRING and schema.pattern is None:
        schema.pattern = limits.TEXT_PATTERN
    if isinstance(schema.property_names, Schema) and schema.property_names.pattern is None:
        schema.property_names.pattern = limits.TEXT_PATTERN
    for child in _children(schema):
        _no_nul(child)


def document_closed_request_bodies(app: Litestar, document: OpenAPI) -> None:
    """What the decoder enforces on request bodies, in their schemas: no unknown
    fields, and the constraints inside containers."""
    schemas: dict[str, Any] = dict(document.components.schemas) if document.components else {}
    for struct in _request_structs(app):
        schema = schemas.get(struct.cls.__name__)
        if schema is None:
            continue
        if struct.forbid_unknown_fields:
            schema.additional_properties = False
        _, components = msgspec.json.schema_components([struct.cls])
        _merge_constraints(schema, components.get(struct.cls.__name__))
        _no_nul(schema)


def _exact_integer_bounds(schema: Any) -> None:
    # Litestar writes `le=2**62` as the float 4.611686018427388e+18, which is not
    # the bound the decoder enforces; integer bounds are written as integers.
    if not isinstance(schema, Schema):
        return
    if schema.type == OpenAPIType.INTEGER:
        for name in ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum"):
            value = getattr(schema, name)
            if isinstance(value, float) and value.is_integer():
                setattr(schema, name, int(value))
    for child in _children(schema):
        _exact_integer_bounds(child)


def document_exact_integer_bounds(document: OpenAPI) -> None:
    for schema in (document.components.schemas or {}).values() if document.components else ():
        _exact_integer_bounds(schema)
    for operation in _operations(document):
        for parameter in operation.parameters or ():
            _exact_integer_bounds(getattr(parameter, "schema", None))


def _handlers(app: Litestar) -> Iterator[Any]:
    for route in app.routes:
        yield from getattr(route, "route_handlers", ())


def document_idempotency(app: Litestar, document: OpenAPI) -> None:
    """The `Idempotency-Key` header on every route that takes it, and `Location` on
    every 201."""
    idempotent_ids = {
        handler.operation_id
        for handler in _handlers(app)
        if any(isinstance(m, Idempotency) for m in handler.middleware or ())
    }
    header = Parameter(
        name=IDEMPOTENCY_HEADER,
        param_in=ParamType.HEADER,
        required=False,
        schema=Schema(
            type=OpenAPIType.STRING,
            min_length=1,
            max_length=limits.IDEMPOTENCY_KEY_LENGTH_MAX,
            pattern=limits.IDEMPOTENCY_KEY_PATTERN,
        ),
        description=(
            "Makes a retry safe: the same key with the same request answers the original "
            "response (with `Idempotent-Replayed: true`) and creates nothing; with a "
            "different request, 409 `idempotency_conflict`. Kept 24 hours, per API key "
            "subject or credit token."
        ),
    )
    for operation in _operations(document):
        if operation.operation_id in idempotent_ids:
            names = {getattr(p, "name", "").lower() for p in operation.parameters or ()}
            if IDEMPOTENCY_HEADER.lower() not in names:
                operation.parameters = [*(operation.parameters or ()), header]
            responses = operation.responses if operation.responses is not None else {}
            responses.setdefault("409", _problem_response(409))
            operation.responses = dict(sorted(responses.items()))
        created = (operation.responses or {}).get("201")
        if isinstance(created, Response):
            created.headers = {
                **(created.headers or {}),
                "Location": OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING),
                    description="Where the created resource is read back.",
                ),
            }


def _renamed_refs(node: Any, names: dict[str, str], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, Reference) and node.ref.rsplit("/", 1)[-1] in names:
        node.ref = "#/components/schemas/" + names[node.ref.rsplit("/", 1)[-1]]
    elif isinstance(node, dict):
        for value in node.values():
            _renamed_refs(value, names, seen)
    elif isinstance(node, list | tuple):
        for value in node:
            _renamed_refs(value, names, seen)
    elif dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            _renamed_refs(getattr(node, field.name), names, seen)


def document_page_names(document: OpenAPI) -> None:
    """`Page[ChargeView]` is the schema `ChargeViewPage`, not the framework's name
    spelled with module paths (which would change when a module moves)."""
    schemas = document.components.schemas if document.components else None
    if not schemas:
        return
    names = {}
    for name, schema in list(schemas.items()):
        title = getattr(schema, "title", None) or ""
        if title.startswith("Page[") and title.endswith("]"):
            names[name] = title[len("Page[") : -1] + "Page"
    for old, new in names.items():
        schema = schemas.pop(old)
        schema.title = new
        schemas[new] = schema
    document.components.schemas = dict(sorted(schemas.items()))
    _renamed_refs(document, names, set())


def complete_openapi(app: Litestar) -> None:
    """Complete the app's document in place, before it is first served."""
    document = app.openapi_schema
    document_problems(document)
    document_closed_request_bodies(app, document)
    document_exact_integer_bounds(document)
    document_idempotency(app, document)
    document_page_names(document)
    app.state[QUERY_PARAMETERS_STATE_KEY] = query_parameters_of(document)
