"""Logs, request ids, metrics and readiness over real HTTP, in one process and in two.

A charge writes exactly one money line with the documented fields; a refusal one
line with its code and limit; `/metrics` counters move by exactly the number of
charges and refusals made, also when two worker processes share the work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ledger.db.embedded import free_port
from ledger.db.pool import connect
from ledger.observability.logs import JsonFormatter, TextFormatter
from tests.conftest import ServerThread, Service, service_settings
from tests.helpers import assert_invariants, capture_all_logs
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market

MONEY_FIELDS = {
    "event", "outcome", "id", "request_id", "merchant_id", "account_id", "token_id", "tool",
    "amount_micros", "latency_ms",
}  # fmt: skip
BURST = 40
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def money_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The money lines as an operator reads them with LEDGER_LOG_FORMAT=json."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in records if r.name == "ledger.money"]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_charge_is_one_log_line_with_the_documented_fields(service: Service) -> None:
    market = await new_market(service)
    token = (await market.mint())["token"]
    body = {"credit_token": token, "amount_micros": 250, "tool": "search", "idempotency_key": "a"}
    with capture_all_logs() as records:
        created = await market.client.post(
            "/v1/charges", json=body, headers={**market.merchant, "X-Request-Id": "req-42"}
        )
        refused = await market.charge(token, 5_000)
    assert created.status_code == 201, created.text
    assert created.headers["x-request-id"] == "req-42"
    assert_problem(refused, 402, "budget_exhausted")
    assert len(refused.headers["x-request-id"]) == 16, "a new id when none was sent"

    lines = money_lines(records)
    assert len(lines) == 2, lines
    charge, refusal = lines
    assert set(charge) >= MONEY_FIELDS, charge
    receipt = created.json()["receipt"]
    assert charge["event"] == "charge" and charge["outcome"] == "created"
    assert charge["request_id"] == "req-42"
    assert charge["id"] == created.json()["charge_id"]
    assert charge["merchant_id"] == market.merchant_id
    assert charge["account_id"] == market.account_id
    assert charge["token_id"] == receipt["token_id"]
    assert (charge["tool"], charge["amount_micros"]) == ("search", 250)
    assert charge["latency_ms"] > 0
    assert refusal["outcome"] == "refused" and refusal["code"] == "budget_exhausted"
    assert (refusal["status"], refusal["limit"]) == (402, "max_per_call")
    assert refusal["request_id"] == refused.headers["x-request-id"]
    assert refusal["token_id"] == receipt["token_id"]
    assert refusal["amount_micros"] == 5_000
    # The readable default says the same in key=value form, on one line.
    text = TextFormatter().format(next(r for r in records if r.name == "ledger.money"))
    assert "\n" not in text
    assert "charge created" in text and "request_id=req-42" in text and "amount_micros=250" in text


async def test_a_hostile_request_id_is_replaced(service: Service) -> None:
    for bad in (b"has space", b"x" * 129, b'a"b', "é".encode()):
        response = await service.client.get("/health/live", headers=[(b"X-Request-Id", bad)])
        assert response.headers["x-request-id"].encode() != bad
        assert len(response.headers["x-request-id"]) == 16


async def _exercise(market: Market) -> dict[str, int]:
    """Charges, replays, refusals, a hold captured and one voided, a refund; returns
    what was done, as the metrics should count it."""
    token = (await market.mint(cap_micros=600, max_per_call_micros=300))["token"]
    charges = [await market.charge(token, 100, key=f"c{i}") for i in range(3)]
    assert all(c.status_code == 201 for c in charges)
    assert (await market.charge(token, 100, key="c0")).status_code == 200
    for amount in (301, 301):
        assert_problem(await market.charge(token, amount), 402, "budget_exhausted")
    assert_problem(await market.charge(token, 1, key="c0"), 409, "idempotency_conflict")
    assert_problem(await market.charge(token + "x", 1), 401, "token_invalid")
    body = {"credit_token": token, "amount_micros": 50, "tool": "llm"}
    holds = [
        await market.client.post(
            "/v1/holds", json={**body, "idempotency_key": f"h{i}"}, headers=market.merchant
        )
        for i in range(2)
    ]
    capture = await market.client.post(
        f"/v1/holds/{holds[0].json()['hold_id']}/capture",
        json={"amount_micros": 20},
        headers=market.merchant,
    )
    assert capture.status_code == 200, capture.text
    void = await market.client.post(
        f"/v1/holds/{holds[1].json()['hold_id']}/void", headers=market.merchant
    )
    assert void.status_code == 200, void.text
    refund = await market.client.post(
        f"/v1/charges/{charges[0].json()['charge_id']}/refunds",
        json={"amount_micros": 40, "idempotency_key": "r1"},
        headers=market.merchant,
    )
    assert refund.status_code == 201, refund.text
    return {"charge": 3, "replay": 1, "max_per_call": 2, "conflict": 1, "invalid": 1}


async def _check_counts(before: Samples, after: Samples) -> None:
    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    movements = "ledger_money_movements_total"
    assert moved(movements, kind="charge", outcome="created") == 3
    assert moved(movements, kind="charge", outcome="exists") == 1
    assert moved(movements, kind="hold", outcome="created") == 2
    assert moved(movements, kind="capture", outcome="created") == 1
    assert moved(movements, kind="void", outcome="created") == 1
    assert moved(movements, kind="refund", outcome="created") == 1
    assert moved("ledger_money_moved_micros_total", kind="charge") == 300
    assert moved("ledger_money_moved_micros_total", kind="refund") == 40
    refusals = "ledger_money_refusals_total"
    assert moved(refusals, kind="charge", code="budget_exhausted", limit="max_per_call") == 2
    assert moved(refusals, kind="charge", code="idempotency_conflict", limit="") == 1
    assert moved(refusals, kind="charge", code="token_invalid", limit="") == 1
    route = {"route": "/v1/charges", "method": "POST"}
    assert moved("ledger_http_request_duration_seconds_count", **route, status="201") == 3
    assert moved("ledger_http_request_duration_seconds_count", **route, status="402") == 2
    assert moved("ledger_charge_batch_size_sum") >= 3 + 2  # charges and holds that reached SQL


async def test_metrics_count_exactly_what_was_done(service: Service) -> None:
    market = await new_market(service)
    before = await scrape(service.client)
    await _exercise(market)
    after = await scrape(service.client)
    await _check_counts(before, after)
    assert value(after, "ledger_database_up") == 1
    assert value(after, "ledger_holds_expired_backlog") == 0
    assert value(after, "ledger_db_pool_connections_max") >= 2
    names = {name for name, _ in after}
    # Bounded labels: never an id, a tool or a name.
    label_names = {n for name, labels in after if name.startswith("ledger_") for n, _ in labels}
    assert label_names <= {"kind", "outcome", "code", "limit", "route", "method", "status",
                           "le", "chain_id"}, label_names  # fmt: skip
    assert {"ledger_charge_batch_duration_seconds_bucket", "ledger_holds_pending"} <= names
    await assert_invariants(service.dsn)


async def test_metrics_access_is_configurable(dsn: str, service: Service) -> None:
    market = await new_market(service)
    port = free_port()
    server = ServerThread(service_settings(dsn, port, metrics_access="operator"))
    server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert_problem(await client.get("/metrics"), 401, "unauthenticated")
            owner = service.auth(market.owner_key)
            assert_problem(await client.get("/metrics", headers=owner), 403, "forbidden")
            await scrape(client, **service.operator)
    finally:
        server.stop()
    # The default: a loopback client needs nothing; a wrong key is still refused.
    await scrape(service.client)
    bad = {"Authorization": "Bearer lk_op_nope"}
    assert_problem(await service.client.get("/metrics", headers=bad), 401, "unauthenticated")


async def test_ready_needs_the_database_and_every_migration(service: Service) -> None:
    ready = await service.client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "database": "ok", "migrations": "current"}
    conn = await connect(service.dsn)
    try:
        latest = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", latest)
        problem = assert_problem(await service.client.get("/health/ready"), 503, "not_ready")
        assert problem["pending_migrations"] and problem["pending_migrations"][0].startswith(
            f"{latest:04d}_"
        )
        live = await service.client.get("/health/live")
        assert live.status_code == 200, "liveness does not depend on the database"
    finally:
        await conn.close()


def _serve(dsn: str, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "LEDGER_PORT": str(port),
        "LEDGER_LOG_FORMAT": "json",
        "LEDGER_ACCESS_LOG": "on",
    }
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _read(path: Path) -> str:
    return path.read_text()


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, _read(log_path)
            try:
                samples = await scrape(client)
                if value(samples, "ledger_workers") == 2:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("two workers did not come up: " + _read(log_path))


async def test_two_worker_processes_count_as_one_service(
    service_dsn_and_key: tuple[str, str], tmp_path: Path
) -> None:
    dsn, operator_key = service_dsn_and_key
    port, log_path = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(dsn, port, log_path)
    try:
        await _wait_ready(url, proc, log_path)
        # A new connection per request, so the kernel spreads them over both workers.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            market = await new_market(Service(url, dsn, operator_key, client))
            before = await scrape(client)
            await _exercise(market)
            after = await scrape(client)
            await _check_counts(before, after)
            # Concurrent connections: both workers take some.
            token = (await market.mint(cap_micros=1_000))["token"]
            burst = await asyncio.gather(*(market.charge(token, 1) for _ in range(BURST)))
            assert all(r.status_code == 201 for r in burst)
            final = await scrape(client)
            created = {"kind": "charge", "outcome": "created"}
            assert (
                value(final, "ledger_money_movements_total", **created)
                - value(after, "ledger_money_movements_total", **created)
                == BURST
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    money = [line for line in lines if line["logger"] == "ledger.money"]
    charges = [m for m in money if m["event"] == "charge" and m["outcome"] == "created"]
    assert len(charges) == 3 + BURST, money
    assert len({m["pid"] for m in charges}) == 2, "both workers charged"
    assert len({m["request_id"] for m in charges}) == len(charges)
    access = [line for line in lines if line["logger"] == "ledger.access_log"]
    assert {line["pid"] for line in access if line.get("route") == "/v1/charges"} == {
        m["pid"] for m in charges
    }
    await assert_invariants(dsn)
