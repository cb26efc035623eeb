"""The committed OpenAPI document is what the running service serves, and it tells
the truth about errors: every refusal is a documented `Problem`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ledger.cli.main import main
from ledger.http.problems import PROBLEM_MEDIA_TYPE
from tests.conftest import Service

DOCUMENT = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "patch")


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


async def test_committed_document_is_what_the_service_serves(service: Service) -> None:
    served = await service.client.get("/docs/openapi.json")
    assert served.status_code == 200
    committed = json.loads(DOCUMENT.read_text())
    assert committed == served.json(), "openapi/openapi.json is out of date; run `ledger openapi`"


def test_ledger_openapi_check_agrees() -> None:
    result = CliRunner().invoke(main, ["openapi", "--output", str(DOCUMENT), "--check"])
    assert result.exit_code == 0, result.output


def test_every_error_response_is_a_problem() -> None:
    document = json.loads(DOCUMENT.read_text())
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "code", "detail"}
    assert "instance" in problem["properties"]
    operations = _operations(document)
    assert operations
    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        assert operation.get("operationId"), where
        responses = operation["responses"]
        # Undecodable input is 422; 400 is kept for the Stripe webhook, whose
        # sender treats any 4xx as "do not retry this payload".
        if path != "/v1/webhooks/stripe":
            assert "400" not in responses, where
        assert "503" in responses, where
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in responses, where
        if operation.get("security"):
            assert "401" in responses, where
        for status, response in responses.items():
            if int(status) < 400:
                continue
            content = response["content"]
            assert list(content) == [PROBLEM_MEDIA_TYPE], (where, status)
            ref = content[PROBLEM_MEDIA_TYPE]["schema"]["$ref"]
            assert ref == "#/components/schemas/Problem", (where, status)
