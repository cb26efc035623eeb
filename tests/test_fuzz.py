"""Schema-driven fuzzing (schemathesis) of the running service against the committed
OpenAPI document, with valid and invalid credentials.

Every operation in `openapi/openapi.json` becomes one test, so routes added later
are fuzzed as soon as the document is regenerated. For each generated request
(valid and invalid by the schema) and each credential: no 500, every error is
`application/problem+json` with a `code`, and the response conforms to the
document (status documented, body matching its schema). Examples are bounded
and derandomized so the run is short and repeatable in CI.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis import checks as schemathesis_checks
from schemathesis.checks import CheckContext
from schemathesis.core.failures import Failure

from ledger.config import Settings
from ledger.embedded import free_port
from ledger.problems import PROBLEM_MEDIA_TYPE
from tests.helpers import operator_key_for, serving

DOCUMENT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
EXAMPLES_PER_OPERATION = 30
# Strings that break storage, logs or naive code; put in place of every string in
# generated bodies, in turn.
HOSTILE_STRINGS = (
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\ufeff",
    "🚀" * 300,
    "' OR 1=1 --",
    "%s%n%x",
    "\\u0000",
    "Ω" * 5000,
)

schema = schemathesis.openapi.from_path(DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    # PostgreSQL text cannot hold NUL: generated, so its refusal is fuzzed too.
    allow_x00=True,
    # Credentials are ours to choose (below), valid and invalid alike.
    with_security_parameters=False,
)


@dataclass
class Live:
    url: str
    credentials: dict[str, dict[str, str]]
    # Real ids a generated request may be pointed at (path parameters by name).
    path_values: dict[str, str]


@pytest.fixture
def live(dsn: str) -> Iterator[Live]:
    operator_key = asyncio.run(operator_key_for(dsn))
    settings_ = Settings(
        database_url=dsn, host="127.0.0.1", port=free_port(), data_dir=Path("/nonexistent")
    )
    with serving(settings_) as url:
        bearer = {"Authorization": f"Bearer {operator_key}"}
        created = httpx.post(f"{url}/v1/accounts", json={"name": "fuzz"}, headers=bearer).json()
        owner_key = created["owner_api_key"]
        yield Live(
            url=url,
            credentials={
                "operator": bearer,
                "owner": {"Authorization": f"Bearer {owner_key}"},
                "wrong key": {"Authorization": "Bearer lk_op_" + "A" * 43},
                "not bearer": {"Authorization": "Basic " + "QQ==" * 4},
                "none": {},
            },
            path_values={"account_id": created["account"]["id"]},
        )


@schemathesis.check
def refusals_are_problems(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """Every error is RFC 9457 problem+json with a stable snake_case `code`."""
    if response.status_code < 400:
        return None
    media_type = response.headers.get("content-type", [""])[0].split(";")[0]
    if media_type != PROBLEM_MEDIA_TYPE:
        raise Failure(
            operation=case.operation.label,
            title="Refusal is not problem+json",
            message=f"{response.status_code} answered with content-type {media_type!r}",
        )
    body = response.json()
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code.replace("_", "").isalpha() or not code.islower():
        raise Failure(
            operation=case.operation.label,
            title="Problem without a code",
            message=f"{response.status_code} problem has code {code!r}",
        )
    if body.get("status") != response.status_code:
        raise Failure(
            operation=case.operation.label,
            title="Problem status differs from the HTTP status",
            message=f"HTTP {response.status_code}, problem status {body.get('status')!r}",
        )
    return True


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_paths(item, (*path, index))


def _replaced(body: Any, path: tuple[Any, ...], new: str) -> Any:
    result = copy.deepcopy(body)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return result


_hostile = itertools.cycle(HOSTILE_STRINGS)
VARIANT_CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_schema_conformance,
    refusals_are_problems,
]


def _hostile_variants(case: Any, live: Live, headers: dict[str, str]) -> None:
    """Each string in a generated body replaced by a hostile one: never a 500,
    and every answer documented and, if a refusal, a problem."""
    original = case.body
    if not isinstance(original, dict | list):
        return
    try:
        for path in list(_string_paths(original)) or []:
            if not path:
                continue
            case.body = _replaced(original, path, next(_hostile))
            response = case.call(base_url=live.url, headers=headers)
            case.validate_response(response, headers=headers, checks=VARIANT_CHECKS)
    finally:
        case.body = original


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_and_never_fails(case: Any, live: Live) -> None:
    for name, headers in live.credentials.items():
        response = case.call(base_url=live.url, headers=headers)
        case.validate_response(response, headers=headers, additional_checks=[refusals_are_problems])
        if case.path_parameters and case.meta.generation.mode.is_positive:
            # The same request aimed at real resources, so success paths are fuzzed too.
            original = dict(case.path_parameters)
            case.path_parameters.update(
                {k: v for k, v in live.path_values.items() if k in case.path_parameters}
            )
            try:
                response = case.call(base_url=live.url, headers=headers)
                case.validate_response(
                    response, headers=headers, additional_checks=[refusals_are_problems]
                )
            finally:
                case.path_parameters.clear()
                case.path_parameters.update(original)
        if name in ("operator", "owner"):
            _hostile_variants(case, live, headers)
