"""Hostile input over real HTTP: refused early, as a problem with the right code,
and nothing in the database changes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ledger import limits
from ledger.config import ConfigError, Settings
from ledger.db.embedded import free_port
from tests.helpers import operator_key_for, row_counts, serving

PROBLEM = "application/problem+json"


@dataclass
class Target:
    url: str
    dsn: str
    operator: dict[str, str]


def _settings(dsn: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=dsn, host="127.0.0.1", port=free_port(), data_dir=Path("/nonexistent")
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def target(dsn: str) -> AsyncIterator[Target]:
    key = await operator_key_for(dsn)
    with serving(_settings(dsn)) as url:
        yield Target(url=url, dsn=dsn, operator={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def client(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=target.url, timeout=30) as c:
        yield c


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["type"].endswith("/" + code)


async def post_account(client: httpx.AsyncClient, target: Target, content: bytes) -> httpx.Response:
    headers = {**target.operator, "Content-Type": "application/json"}
    return await client.post("/v1/accounts", content=content, headers=headers)


async def test_oversized_bodies_are_413_and_change_nothing(
    target: Target, client: httpx.AsyncClient
) -> None:
    before = await row_counts(target.dsn)
    just_over = b'{"name": "' + b"x" * limits.REQUEST_BODY_BYTES_MAX + b'"}'
    for body in (just_over, b"x" * 10 * 1024 * 1024):
        assert_problem(await post_account(client, target, body), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(limits.REQUEST_BODY_BYTES_MAX // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    # No Content-Length: the body is cut off at the same limit while it is read.
    streamed = await client.post(
        "/v1/accounts",
        content=chunks(),
        headers={**target.operator, "Content-Type": "application/json"},
    )
    assert_problem(streamed, 413, "payload_too_large")
    assert await row_counts(target.dsn) == before
    # The connection pool still serves a normal request afterwards.
    ok = await post_account(client, target, b'{"name": "ok"}')
    assert ok.status_code == 201


async def test_oversized_headers_are_431(target: Target, client: httpx.AsyncClient) -> None:
    big = {"X-Filler": "a" * (limits.REQUEST_HEADER_BYTES_MAX + 1)}
    assert_problem(await client.get("/health", headers=big), 431, "headers_too_large")
    # Well above our limit, below the server's own: still our problem, not a bare 400.
    bigger = {"X-Filler": "a" * (2 * limits.REQUEST_HEADER_BYTES_MAX)}
    assert_problem(await client.get("/health", headers=bigger), 431, "headers_too_large")
    many = {f"X-H{i}": "v" for i in range(limits.REQUEST_HEADERS_COUNT_MAX + 1)}
    assert_problem(await client.get("/health", headers=many), 431, "headers_too_large")
    long_query = "/v1/accounts/00000000-0000-0000-0000-000000000001/transfers?after=1&" + (
        "x=1&" * (limits.REQUEST_HEADER_BYTES_MAX // 4)
    )
    assert_problem(await client.get(long_query, headers=target.operator), 431, "headers_too_large")
    small = await client.get("/health", headers={"X-Small": "a" * 1000})
    assert small.status_code == 200


async def test_limits_are_configurable(dsn: str) -> None:
    settings = _settings(dsn, request_header_bytes_max=2048, request_body_bytes_max=1024)
    with serving(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.get("/health", headers={"X-F": "a" * 3000})
            assert_problem(response, 431, "headers_too_large")
            body = b'{"name": "' + b"x" * 1100 + b'"}'
            response = await client.post("/v1/accounts", content=body)
            assert_problem(response, 413, "payload_too_large")
    env = {"LEDGER_REQUEST_HEADER_BYTES_MAX": "4096", "LEDGER_REQUEST_HEADERS_COUNT_MAX": "20"}
    from_env = Settings.from_env(env)
    assert (from_env.request_header_bytes_max, from_env.request_headers_count_max) == (4096, 20)
    with pytest.raises(ConfigError):
        Settings.from_env({"LEDGER_REQUEST_HEADER_BYTES_MAX": "12"})


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


async def test_malformed_json_is_422_and_changes_nothing(
    target: Target, client: httpx.AsyncClient
) -> None:
    before = await row_counts(target.dsn)
    depth = limits.REQUEST_BODY_BYTES_MAX // 2 - 20
    cases = {
        "nested value": b'{"name": ' + _nested(depth) + b"}",
        "nested unknown field": b'{"x": ' + _nested(depth) + b', "name": "a"}',
        "nested objects": b'{"name": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
        "nested top level": _nested(depth),
        "invalid UTF-8": b'{"name": "a\xff\xfeb"}',
        "NUL escape": b'{"name": "a\\u0000b"}',
        "lone surrogate": b'{"name": "a\\ud800b"}',
        "huge integer": b'{"name": 1' + b"0" * 4000 + b"}",
        "huge float": b'{"name": 1e400}',
        "NaN": b'{"name": NaN}',
        "duplicate keys, one bad": b'{"name": "a", "name": 5}',
        "empty": b"",
        "null": b"null",
    }
    for label, body in cases.items():
        response = await post_account(client, target, body)
        assert response.status_code == 422, (label, response.status_code, response.text[:200])
        assert_problem(response, 422, "validation_failed")
        if label.startswith("nested"):
            assert "deep" in response.json()["detail"], label
    assert await row_counts(target.dsn) == before


async def test_huge_and_negative_query_integers_are_422(
    target: Target, client: httpx.AsyncClient
) -> None:
    created = (await post_account(client, target, b'{"name": "q"}')).json()
    path = f"/v1/accounts/{created['account']['id']}/transfers"
    owner = {"Authorization": f"Bearer {created['owner_api_key']}"}
    for query in ("limit=0", "limit=-1", "limit=1e400", "after=" + "9" * 400, "after=-0.5"):
        assert_problem(await client.get(f"{path}?{query}", headers=owner), 422, "validation_failed")


async def test_unicode_names_round_trip_exactly(target: Target, client: httpx.AsyncClient) -> None:
    # Names are the owner's words: any Unicode text is kept as sent, and only
    # what PostgreSQL cannot store (NUL) is refused, above.
    for name in ("Zoë", "日本語のエージェント", "🚀" * 50, "\u202eevil", "a\u0301"):
        response = await client.post("/v1/accounts", json={"name": name}, headers=target.operator)
        assert response.status_code == 201, response.text
        assert response.json()["account"]["name"] == name
    too_long = "🚀" * (limits.NAME_LENGTH_MAX + 1)
    response = await client.post("/v1/accounts", json={"name": too_long}, headers=target.operator)
    assert_problem(response, 422, "validation_failed")
