"""What the service tells people about itself, over real HTTP: the API docs load
nothing from another host, every problem `type` is a page it serves, and the
OpenAPI document describes every operation, every problem member, and shows money
operations by example."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ledger.errors import LedgerError
from ledger.http.problems import problem_catalogue
from tests.conftest import Service
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import new_market

DOCUMENT = json.loads(
    (Path(__file__).resolve().parents[1] / "openapi" / "openapi.json").read_text()
)
ABSOLUTE_URL = re.compile(r"""\b[a-z][a-z0-9+.-]*://[^\s"'<>)]+""", re.IGNORECASE)
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)""")


async def test_docs_pages_reference_no_other_host(service: Service) -> None:
    own = urlsplit(service.url).netloc
    for path in ("/docs", "/docs/swagger"):
        page = await service.client.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        others = [u for u in ABSOLUTE_URL.findall(page.text) if urlsplit(u).netloc != own]
        assert others == [], (path, others)
        references = [a or b for a, b in REFERENCE.findall(page.text)]
        assert any(r.endswith(".js") for r in references), (path, references)
        for reference in references:
            target = urljoin(f"{service.url}{path}", reference)
            assert urlsplit(target).netloc == own, reference
            asset = await service.client.get(target)
            assert asset.status_code == 200 and asset.content, reference
            assert b"cdn.redoc.ly" not in asset.content, reference


def test_every_domain_error_documents_its_code() -> None:
    def subclasses(cls: type[LedgerError]) -> list[type[LedgerError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    undocumented = [c.__qualname__ for c in subclasses(LedgerError)[1:] if not c.__doc__]
    assert undocumented == [], "give these errors a docstring: it is their /problems page"


async def test_problem_types_are_pages_the_service_serves(service: Service) -> None:
    market = await new_market(service)
    answers = [
        await market.client.get("/v1/nowhere"),
        await market.client.get("/v1/tokens"),
        await market.client.post(
            "/v1/accounts", json={"name": ""}, headers=market.service.operator
        ),
        await market.client.post("/v1/accounts", content=b"x", headers=market.service.operator),
    ]
    for answer in answers:
        problem = answer.json()
        assert problem["type"] == f"{market.service.url}/problems/{problem['code']}"
        page = await market.client.get(problem["type"])
        assert page.status_code == 200, problem["type"]
        assert f"<code>{problem['code']}</code>" in page.text
    for code, info in problem_catalogue().items():
        page = await market.client.get(f"/problems/{code}")
        assert page.status_code == 200, code
        assert str(info.status) in page.text and info.title.split()[0] in page.text
    index = await market.client.get("/problems")
    assert all(f"/problems/{code}" in index.text for code in problem_catalogue())
    assert_problem(await market.client.get("/problems/no_such_code"), 404, "not_found")


def test_every_operation_is_described_and_money_operations_have_examples() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert len(operation.get("description", "")) > 40, where
            assert operation.get("summary"), where
    money = ["createCharge", "createHold", "captureHold", "createRefund", "createCardTopup",
             "mintCreditToken", "delegateCreditToken"]  # fmt: skip
    operations = {
        op["operationId"]: op for item in DOCUMENT["paths"].values() for op in item.values()
    }
    for operation_id in money:
        body = operations[operation_id]["requestBody"]["content"]["application/json"]
        assert "amount_micros" in body["example"] or "cap_micros" in body["example"], operation_id
    refusals = operations["createCharge"]["responses"]["402"]["content"]
    examples = refusals["application/problem+json"]["examples"]
    assert {e["value"]["limit"] for e in examples.values()} == {"account_balance", "token_cap"}


def test_problem_schema_documents_every_extension_member() -> None:
    problem = DOCUMENT["components"]["schemas"]["Problem"]["properties"]
    members = {
        "errors", "limit", "required", "available", "unit", "token_id", "account_id", "action",
        "topup", "reason", "hold_status", "idempotency_key", "accepted", "amount_min_micros",
        "amount_max_micros", "retry_after_s",
    }  # fmt: skip
    assert members <= set(problem)
    for name in members | {"type", "code", "detail", "instance"}:
        assert problem[name].get("description"), name
    mint = next(item["post"] for path, item in DOCUMENT["paths"].items() if path == "/v1/tokens")
    assert (
        '`audiences` `["*"]`' in mint["description"]
        and "`max_per_call_micros` = `cap_micros`" in mint["description"]
    )


async def test_capturing_more_than_the_hold_says_so(service: Service) -> None:
    market = await new_market(service)
    token = (await market.mint())["token"]
    hold = await market.client.post(
        "/v1/holds",
        json={"credit_token": token, "amount_micros": 400, "tool": "llm", "idempotency_key": "h"},
        headers=market.merchant,
    )
    url = f"/v1/holds/{hold.json()['hold_id']}/capture"
    over = await market.client.post(url, json={"amount_micros": 401}, headers=market.merchant)
    problem = assert_problem(over, 409, "capture_exceeds_hold")
    assert (problem["required"], problem["available"], problem["unit"]) == (401, 400, "micro_usd")
    assert "hold_status" not in problem and "capture at most" in problem["detail"]
    still = await market.client.get(f"/v1/holds/{hold.json()['hold_id']}", headers=market.merchant)
    assert still.json()["status"] == "pending"
    ok = await market.client.post(url, json={"amount_micros": 400}, headers=market.merchant)
    assert ok.status_code == 200, ok.text


async def test_card_return_pages_exist(service: Service) -> None:
    for path in ("/topups/card/success", "/topups/card/cancel", f"/topups/{uuid.uuid4()}"):
        page = await service.client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
