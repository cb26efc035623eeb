"""Paid MCP tools end to end: the ledger service (uvicorn), an MCP server whose tools
use `Paywall` (streamable HTTP, uvicorn), and the official MCP client as the agent."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult

from ledger.db.embedded import free_port
from tests.conftest import ServerThread, Service, service_settings
from tests.helpers import AsgiThread, assert_invariants, assert_no_secrets_logged, operator_key_for
from tests.test_charges_api import Market, new_market
from tests.test_topups_card import STRIPE_KEY, WEBHOOK_SECRET, deliver, session_event
from verifier.sdk.agent import AgentClient, budget_exhausted, receipt_of, signed_receipt_of
from verifier.sdk.mcp import Metered, Paywall
from verifier.sdk.merchant import (
    CREDIT_TOKEN_META_KEY,
    IDEMPOTENCY_META_KEY,
    PRICE_META_KEY,
    RECEIPT_META_KEY,
    MerchantClient,
)

SEARCH_PRICE = 2_000
SUMMARY_MAX = 5_000


def paid_tools(ledger_url: str, merchant_key: str) -> MCPServer:
    paid = Paywall(MerchantClient(ledger_url, api_key=merchant_key))
    server = MCPServer("paid-tools", lifespan=paid.lifespan)

    @server.tool()
    @paid(price_micros=SEARCH_PRICE)
    async def search(query: str) -> str:
        """Search the web."""
        return f"results for {query}"

    @paid.tool(server, max_price_micros=SUMMARY_MAX)
    async def summarize(text: str, cost_micros: int) -> Metered[dict[str, int]]:
        """Summarize; costs what it reports (at most 5,000 micro-USD)."""
        if cost_micros < 0:
            raise ToolError("model overloaded")
        return Metered({"words": len(text.split())}, cost_micros=cost_micros)

    @server.tool()
    @paid(price_micros=1_500)
    def flaky(ctx: Context) -> str:
        """A sync tool that wants its Context, and fails after being charged."""
        assert ctx.request_id
        raise ToolError("upstream failed")

    @server.tool()
    @paid(price_micros=1_200)
    async def strict(mode: str) -> str:
        raise MCPError(INVALID_PARAMS, f"unknown mode {mode!r}")

    @server.tool()
    @paid(price_micros=1_000)
    async def admin_reset() -> str:
        return "reset"

    @server.tool()
    async def free_ping() -> str:
        return "pong"

    return server


@dataclass
class World:
    service: Service
    market: Market
    mcp_url: str

    async def mint(self, **scope: Any) -> str:
        body: dict[str, Any] = {
            "cap_micros": 50_000,
            "max_per_call_micros": 10_000,
            "tools": ["search", "summarize", "flaky", "strict"],
        }
        body.update(scope)
        return str((await self.market.mint(**body))["token"])

    async def balance(self) -> int:
        return int((await self.market.account())["balance_micros"])

    async def top_up(self, cents: int) -> None:
        """A card top-up, exactly as Stripe reports a paid Checkout session."""
        event = session_event(
            uuid.UUID(self.market.account_id),
            cents,
            payment_intent=f"pi_{uuid.uuid4().hex}",
            session_id=f"cs_{uuid.uuid4().hex}",
        )
        response = await deliver(self.service, event)
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "credited"


@pytest.fixture
async def card_ledger(dsn: str) -> AsyncIterator[Service]:
    """The ledger service, taking signed card webhooks."""
    operator_key = await operator_key_for(dsn)
    port = free_port()
    server = ServerThread(
        service_settings(
            dsn, port, stripe_webhook_secret=WEBHOOK_SECRET, stripe_secret_key=STRIPE_KEY
        )
    )
    server.start()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            yield Service(url=url, dsn=dsn, operator_key=operator_key, client=client)
        finally:
            server.stop()


@pytest.fixture
async def world(card_ledger: Service) -> AsyncIterator[World]:
    service = card_ledger
    market = await new_market(service, funds=5_000)
    server = AsgiThread(
        paid_tools(service.url, market.merchant_key).streamable_http_app(), free_port()
    )
    server.start()
    try:
        yield World(service=service, market=market, mcp_url=f"{server.url}/mcp")
    finally:
        server.stop()


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_paid_call_returns_content_and_a_receipt_that_verifies(world: World) -> None:
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        listed = {t.name: t for t in (await tools.list_tools()).tools}
        result = await tools.call_tool("search", {"query": "ledgers"})
        budget = await agent.budget()
        assert not result.is_error, text_of(result)
        assert text_of(result) == "results for ledgers"
        signed = signed_receipt_of(result)
        assert signed is not None and signed.startswith("v4.public.")
        facts = await agent.verify_receipt(signed)
    assert facts == receipt_of(result)
    assert facts["kind"] == "charge"
    assert facts["tool"] == "search"
    assert facts["amount_micros"] == SEARCH_PRICE
    assert facts["merchant_id"] == world.market.merchant_id
    assert facts["account_balance_micros"] == 5_000 - SEARCH_PRICE
    assert budget.spent_micros == SEARCH_PRICE
    assert await world.balance() == 5_000 - SEARCH_PRICE
    # Prices are advertised on tools registered with `paid.tool(...)`.
    assert listed["summarize"].meta is not None
    assert listed["summarize"].meta[PRICE_META_KEY] == {
        "kind": "metered",
        "max_micros": SUMMARY_MAX,
        "unit": "micro_usd",
    }
    # The wrapper keeps the tool's own input schema, and hides its Context.
    assert set(listed["search"].input_schema["properties"]) == {"query"}
    assert set(listed["flaky"].input_schema.get("properties", {})) == set()
    await assert_invariants(world.service.dsn)


async def test_budget_exhausted_is_structured_and_a_topup_revives_the_same_token(
    world: World,
) -> None:
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        for _ in range(2):
            ok = await tools.call_tool("search", {"query": "q"})
            assert not ok.is_error, text_of(ok)
        refused = await tools.call_tool("search", {"query": "q"})
        assert refused.is_error
        problem = refused.structured_content
        assert isinstance(problem, dict)
        assert problem["code"] == "budget_exhausted"
        assert problem["status"] == 402
        assert problem["limit"] == "account_balance"
        assert (problem["required"], problem["available"]) == (SEARCH_PRICE, 1_000)
        assert problem["unit"] == "micro_usd"
        assert problem["token_id"] and problem["account_id"] == world.market.account_id
        # Card top-ups are configured (USDC is not): only they are offered, with a
        # page of this service that says how.
        topup_page = f"{world.service.url}/topups/{world.market.account_id}"
        assert problem["topup"] == {"url": topup_page, "methods": ["card"]}
        assert problem["action"] == "top_up"
        assert f"Top up the account (card): {topup_page}" in text_of(refused)
        page = await world.service.client.get(problem["topup"]["url"])
        assert page.status_code == 200 and "/v1/topups/card" in page.text
        assert "USDC" not in page.text
        refusal = budget_exhausted(refused)
        assert refusal is not None and refusal.limit == "account_balance"
        assert refusal.required == SEARCH_PRICE and refusal.available == 1_000
        assert await world.balance() == 1_000

        await world.top_up(1)
        again = await tools.call_tool("search", {"query": "q"})
        assert not again.is_error, text_of(again)
        assert budget_exhausted(again) is None
        facts = await agent.verify_receipt(signed_receipt_of(again) or "")
    assert facts["account_balance_micros"] == 11_000 - SEARCH_PRICE
    await assert_invariants(world.service.dsn)


async def test_tool_outside_the_token_scope_is_scope_denied(world: World) -> None:
    token = await world.mint(tools=["search"])
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        denied = await tools.call_tool("admin_reset", {})
        also = await tools.call_tool("summarize", {"text": "a b", "cost_micros": 1})
    for result in (denied, also):
        assert result.is_error
        assert isinstance(result.structured_content, dict)
        assert result.structured_content["code"] == "scope_denied"
        assert result.structured_content["status"] == 403
        assert budget_exhausted(result) is None
    assert await world.balance() == 5_000


async def test_variable_price_captures_exactly_the_reported_cost(world: World) -> None:
    await world.top_up(1)
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        result = await tools.call_tool("summarize", {"text": "one two three", "cost_micros": 1_234})
        assert not result.is_error, text_of(result)
        assert result.structured_content == {"words": 3}
        facts = await agent.verify_receipt(signed_receipt_of(result) or "")
        budget = await agent.budget()

        failed = await tools.call_tool("summarize", {"text": "x", "cost_micros": -1})
        after_failure = await agent.budget()
    assert facts["kind"] == "capture"
    assert facts["amount_micros"] == 1_234
    assert (budget.spent_micros, budget.held_micros) == (1_234, 0)
    assert await world.balance() == 15_000 - 1_234
    # A tool that raises after its hold releases the hold.
    assert failed.is_error and "model overloaded" in text_of(failed)
    assert (after_failure.spent_micros, after_failure.held_micros) == (1_234, 0)
    await assert_invariants(world.service.dsn)


async def test_fixed_price_tool_that_fails_is_refunded(world: World) -> None:
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        result = await tools.call_tool("flaky", {})
        assert result.is_error
        assert "upstream failed" in text_of(result)
        refund = await agent.verify_receipt(signed_receipt_of(result) or "")
    assert refund["kind"] == "refund"
    assert refund["amount_micros"] == 1_500
    assert await world.balance() == 5_000
    await assert_invariants(world.service.dsn)


async def test_protocol_error_after_a_charge_is_refunded_and_passed_through(world: World) -> None:
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        with pytest.raises(MCPError) as caught:
            await tools.call_tool("strict", {"mode": "x"})
        budget = await agent.budget()
    assert caught.value.code == INVALID_PARAMS
    assert budget.spent_micros == 0, "the refund gave the token's budget back"
    assert await world.balance() == 5_000
    await assert_invariants(world.service.dsn)


async def test_missing_credit_token_is_refused_before_the_tool_runs(world: World) -> None:
    async with Client(f"{world.mcp_url}") as tools:
        result = await tools.call_tool("search", {"query": "q"})
        free = await tools.call_tool("free_ping", {})
    assert result.is_error
    assert isinstance(result.structured_content, dict)
    assert result.structured_content["code"] == "token_invalid"
    assert result.structured_content["reason"] == "missing"
    assert not free.is_error and text_of(free) == "pong"


def agent_meta(token: str, idempotency_key: str) -> Any:
    """A call's `_meta` with the credit token and the agent's idempotency key (typed
    loosely: the library's type for `_meta` names only its own keys)."""
    return {CREDIT_TOKEN_META_KEY: token, IDEMPOTENCY_META_KEY: idempotency_key}


async def test_credit_token_in_meta_and_agent_idempotency_key(world: World) -> None:
    """Transports without headers put the credit token in `_meta`; an agent's retry
    with the same idempotency key is charged once and gets the same receipt."""
    token = await world.mint()
    meta = agent_meta(token, "task-7")
    async with Client(world.mcp_url) as tools:
        first = await tools.call_tool("search", {"query": "q"}, meta=meta)
        retry = await tools.call_tool("search", {"query": "q"}, meta=meta)
        other = await tools.call_tool(
            "search",
            {"query": "q"},
            meta=agent_meta(token, "task-8"),
        )
    assert not first.is_error and not retry.is_error and not other.is_error
    assert first.meta is not None and retry.meta is not None and other.meta is not None
    assert first.meta[RECEIPT_META_KEY] == retry.meta[RECEIPT_META_KEY]
    assert first.meta[RECEIPT_META_KEY] != other.meta[RECEIPT_META_KEY]
    assert await world.balance() == 5_000 - 2 * SEARCH_PRICE
    await assert_invariants(world.service.dsn)


async def test_reusing_an_agent_key_never_buys_a_second_call(world: World) -> None:
    """An agent's idempotency key covers one call: a different call under the same
    key is charged anew, and a call already refunded or settled is not run again."""
    token = await world.mint()
    await world.top_up(100)
    start = await world.balance()
    meta = agent_meta(token, "reused")
    async with Client(world.mcp_url) as tools:
        a = await tools.call_tool("search", {"query": "a"}, meta=meta)
        b = await tools.call_tool("search", {"query": "b"}, meta=meta)
        assert text_of(a) == "results for a" and text_of(b) == "results for b"
        assert a.meta is not None and b.meta is not None
        assert a.meta[RECEIPT_META_KEY] != b.meta[RECEIPT_META_KEY]
        assert await world.balance() == start - 2 * SEARCH_PRICE

        # A failed call is refunded; its key cannot then run the tool for free.
        failed = await tools.call_tool("flaky", {}, meta=meta)
        again = await tools.call_tool("flaky", {}, meta=meta)
        assert failed.is_error and again.is_error
        assert isinstance(again.structured_content, dict)
        assert again.structured_content["code"] == "idempotency_conflict"
        assert "refunded" in again.structured_content["detail"]
        assert await world.balance() == start - 2 * SEARCH_PRICE

        # A metered call already captured is not run (nor given away) a second time.
        args = {"text": "one two three", "cost_micros": 700}
        done = await tools.call_tool("summarize", args, meta=meta)
        replay = await tools.call_tool("summarize", args, meta=meta)
    assert not done.is_error and done.structured_content == {"words": 3}
    assert replay.is_error
    assert isinstance(replay.structured_content, dict)
    assert replay.structured_content["code"] == "idempotency_conflict"
    assert "captured" in replay.structured_content["detail"]
    assert await world.balance() == start - 2 * SEARCH_PRICE - 700
    await assert_invariants(world.service.dsn)


async def test_a_forged_credit_token_never_reaches_the_ledger(world: World) -> None:
    token = await world.mint()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {forged}"}) as http,
        Client(streamable_http_client(world.mcp_url, http_client=http)) as tools,
    ):
        result = await tools.call_tool("search", {"query": "q"})
    assert result.is_error
    assert isinstance(result.structured_content, dict)
    assert result.structured_content["code"] == "token_invalid"
    assert await world.balance() == 5_000


async def test_stateless_json_transport_reads_the_bearer_header_too(service: Service) -> None:
    market = await new_market(service, funds=5_000)
    paid = Paywall(MerchantClient(service.url, api_key=market.merchant_key))
    server = MCPServer("stateless", lifespan=paid.lifespan)

    @server.tool(name="web.search")
    @paid(price_micros=300, tool="web.search")
    async def search(query: str) -> list[str]:
        return [query, query.upper()]

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    thread = AsgiThread(app, free_port())
    thread.start()
    try:
        token = (await market.mint(tools=["web.*"]))["token"]
        async with (
            AgentClient(service.url, token) as agent,
            agent.mcp(f"{thread.url}/mcp") as tools,
        ):
            result = await tools.call_tool("web.search", {"query": "abc"})
            facts = await agent.verify_receipt(signed_receipt_of(result) or "")
    finally:
        thread.stop()
    assert not result.is_error, text_of(result)
    assert result.structured_content == {"result": ["abc", "ABC"]}
    assert (facts["tool"], facts["amount_micros"]) == ("web.search", 300)
    await assert_invariants(service.dsn)


async def test_no_credit_token_or_api_key_in_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("tests").warning("capture probe")
    token = await world.mint()
    async with AgentClient(world.service.url, token) as agent, agent.mcp(world.mcp_url) as tools:
        await tools.call_tool("search", {"query": "q"})
        await tools.call_tool("flaky", {})
        await tools.call_tool("admin_reset", {})
        await tools.call_tool("summarize", {"text": "x", "cost_micros": -1})
    body = token.split(".")[2]
    assert any(r.name == "verifier.sdk.mcp" for r in caplog.records), (
        "the MCP server's logs are seen"
    )
    assert_no_secrets_logged(
        caplog.records, [token, body[:40], world.market.merchant_key, world.market.owner_key]
    )


async def test_a_wrong_merchant_api_key_is_not_the_agents_problem(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    paid = Paywall(MerchantClient(world.service.url, api_key="lk_mer_not-a-real-key"))
    server = MCPServer("misconfigured", lifespan=paid.lifespan)

    @server.tool()
    @paid(price_micros=100)
    async def search(query: str) -> str:
        raise AssertionError("never runs")

    thread = AsgiThread(server.streamable_http_app(), free_port())
    thread.start()
    try:
        token = await world.mint()
        async with (
            AgentClient(world.service.url, token) as agent,
            agent.mcp(f"{thread.url}/mcp") as tools,
        ):
            result = await tools.call_tool("search", {"query": "q"})
    finally:
        thread.stop()
    assert result.is_error
    assert isinstance(result.structured_content, dict)
    assert (result.structured_content["code"], result.structured_content["status"]) == (
        "service_unavailable",
        503,
    )
    assert any("merchant API key" in r.getMessage() for r in caplog.records)
    assert await world.balance() == 5_000
