"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) signs in as the owner, a merchant and the operator, reads the figures on
each page and checks them against the API's; a screenshot per role is saved under
`test-artifacts/`. Without the browser this test fails: it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright

from ledger.dashboard.pages import usd
from ledger.usage import rollup
from tests.conftest import Service
from tests.test_api_accounts import assert_problem
from tests.test_charges_api import Market, new_market

# Debian's chromium by default; `LEDGER_TEST_CHROMIUM=playwright` uses the browser that
# `playwright install chromium` downloaded, any other value a browser at that path.
CHROMIUM = os.environ.get("LEDGER_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = '<img src=x onerror="alert(1)"> & "quotes"'


async def _ledger_with_activity(service: Service) -> tuple[Market, dict[str, Any]]:
    market = await new_market(service, name=HOSTILE)
    created = await service.client.post(
        "/v1/accounts", json={"name": f"owner {HOSTILE}"}, headers=service.operator
    )
    assert created.status_code == 201
    token = await market.mint(cap_micros=900, max_per_call_micros=400, description=HOSTILE)
    charges = [
        await market.charge(token["token"], amount, tool=tool)
        for amount, tool in ((300, "search"), (250, "llm"), (200, "search"))
    ]
    assert all(c.status_code == 201 for c in charges)
    assert_problem(await market.charge(token["token"], 300), 402, "budget_exhausted")
    refund = await market.client.post(
        f"/v1/charges/{charges[0].json()['charge_id']}/refunds",
        json={"amount_micros": 100, "idempotency_key": "r", "reason": HOSTILE},
        headers=market.merchant,
    )
    assert refund.status_code == 201, refund.text
    conn = await asyncpg.connect(service.dsn)
    try:
        await rollup.roll_up_all(conn)
    finally:
        await conn.close()
    owner = service.auth(market.owner_key)
    for _ in range(100):  # recent refusals are written off the request path
        refusals = (await service.client.get("/v1/usage/refusals", headers=owner)).json()["data"]
        if refusals:
            break
        await asyncio.sleep(0.1)
    return market, {"token": token, "refusals": refusals}


async def _sign_in(
    browser: Browser, service: Service, key: str, role: str
) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: pytest.fail(f"a script ran: {d.message}"))
    response = await page.goto(f"{service.url}/dashboard")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    await page.fill("#api_key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(r"/dashboard/home$"))
    assert (await page.text_content("[data-testid=role]")) == role
    cookies = await context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("ledger_session", True, "Strict")
    ]
    assert key not in cookies[0]["value"]
    return page, requests


async def _screenshot(page: Page, role: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{role}.png"), full_page=True)


async def _finish(page: Page, requests: list[str], key: str, role: str) -> None:
    html = await page.content()
    assert key not in html and key not in page.url, "the API key is never in the page or URL"
    assert HOSTILE not in html, "user-typed text is escaped"
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in requests), requests
    if role != "operator":
        await _screenshot(page, role)
    await page.click("text=Sign out")
    await page.wait_for_url(re.compile(r"/dashboard$"))
    await page.context.close()


def _column(rows: list[list[str]], index: int) -> list[str]:
    return [row[index] for row in rows]


async def _table(page: Page, testid: str) -> list[list[str]]:
    rows = await page.locator(f"[data-testid={testid}] tbody tr").all()
    return [[c.strip() for c in await row.locator("td").all_inner_texts()] for row in rows]


async def _owner(browser: Browser, service: Service, market: Market, facts: dict[str, Any]) -> None:
    key = market.owner_key
    api = service.auth(key)
    page, requests = await _sign_in(browser, service, key, "owner")
    account = (await service.client.get(f"/v1/accounts/{market.account_id}", headers=api)).json()
    assert await page.text_content("[data-testid=balance]") == usd(account["balance_micros"])
    assert await page.text_content("[data-testid=account-name]") == "agent-owner"
    by_tool = (
        await service.client.get(
            "/v1/usage", params={"group_by": "tool", "order": "net_desc"}, headers=api
        )
    ).json()["data"]
    assert await _table(page, "by-tool") == [
        [r["tool"], str(r["charges"]), usd(r["net_micros"])] for r in by_tool
    ]
    tokens = (await service.client.get("/v1/tokens", headers=api)).json()["data"]
    remaining = await page.locator("[data-testid=remaining]").all_inner_texts()
    assert remaining == [usd(t["remaining_micros"]) for t in tokens]
    assert HOSTILE in _column(await _table(page, "tokens"), 1), "shown as text"
    refusals = await _table(page, "refusals")
    assert [(r[2], r[3], r[5]) for r in refusals] == [
        (f["code"], f["limit"] or "", usd(f["amount_micros"])) for f in facts["refusals"]
    ]
    assert await page.locator("svg.chart rect[data-value]").count() == 30
    await _finish(page, requests, key, "owner")


async def _merchant(browser: Browser, service: Service, market: Market) -> None:
    key = market.merchant_key
    page, requests = await _sign_in(browser, service, key, "merchant")
    me = (await service.client.get("/v1/merchants/me", headers=market.merchant)).json()
    assert await page.text_content("[data-testid=revenue]") == usd(me["revenue_balance_micros"])
    assert await page.text_content("[data-testid=merchant-name]") == HOSTILE
    by_tool = (
        await service.client.get(
            "/v1/usage", params={"group_by": "tool", "order": "net_desc"}, headers=market.merchant
        )
    ).json()["data"]
    assert _column(await _table(page, "by-tool"), 2) == [usd(r["net_micros"]) for r in by_tool]
    charges = (await service.client.get("/v1/usage/charges", headers=market.merchant)).json()[
        "data"
    ]
    assert _column(await _table(page, "charges"), 3) == [usd(c["amount_micros"]) for c in charges]
    assert _column(await _table(page, "refunds"), 3) == [HOSTILE]
    await _finish(page, requests, key, "merchant")


async def _operator(browser: Browser, service: Service, market: Market) -> None:
    key = service.operator_key
    page, requests = await _sign_in(browser, service, key, "operator")
    listed = (
        await service.client.get("/v1/accounts", params={"limit": 50}, headers=service.operator)
    ).json()["data"]
    shown = await _table(page, "accounts")
    assert [(r[0], r[2]) for r in shown] == [(a["name"], usd(a["balance_micros"])) for a in listed]
    merchants = await _table(page, "merchants")
    assert [(m[0], m[4]) for m in merchants] == [(HOSTILE, market.merchant_id)]
    assert merchants[0][3] == usd(650)  # 750 charged, 100 refunded
    await page.click("text=Run the audit")
    await page.wait_for_url(re.compile(r"audit=true"))
    assert "all invariants hold" in (await page.text_content("[data-testid=audit]") or "")
    await _screenshot(page, "operator")
    await page.fill("#q", "owner <img")
    await page.press("#q", "Enter")
    await page.wait_for_url(re.compile(r"q=owner"))
    assert _column(await _table(page, "accounts"), 0) == [f"owner {HOSTILE}"]
    await _finish(page, requests, key, "operator")


def _browser_present() -> bool:
    return CHROMIUM == "playwright" or os.path.exists(CHROMIUM)


async def test_each_role_signs_in_and_sees_the_apis_figures(service: Service) -> None:
    bundled = CHROMIUM == "playwright"
    assert _browser_present(), (
        f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install -y chromium`)"
    )
    market, facts = await _ledger_with_activity(service)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=None if bundled else CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            await _owner(browser, service, market, facts)
            await _merchant(browser, service, market)
            await _operator(browser, service, market)
        finally:
            await browser.close()
    for role in ("owner", "merchant", "operator"):
        assert (ARTIFACTS / f"dashboard-{role}.png").stat().st_size > 10_000


async def test_a_session_is_refused_once_signed_out_or_with_a_bad_key(service: Service) -> None:
    bad = await service.client.post("/dashboard/sign-in", data={"api_key": "lk_own_nope"})
    assert bad.status_code == 401 and "not valid" in bad.text
    home = await service.client.get("/dashboard/home", headers={"Cookie": "ledger_session=forged"})
    assert home.status_code == 302 and home.headers["location"] == "/dashboard"
    topup = await service.client.post(
        "/dashboard/topup",
        data={"amount_usd": "5", "csrf": "x"},
        headers={"Cookie": "ledger_session=forged"},
    )
    assert_problem(topup, 401, "unauthenticated")
