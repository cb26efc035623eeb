"""The merchant and agent SDKs against the real service, some through a loopback TCP
proxy that can drop a response after the service has committed it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from issuer.keys import rotate_signing_key
from ledger.db.embedded import free_port
from ledger.db.pool import connect
from tests.conftest import Service
from tests.helpers import assert_invariants
from tests.test_charges_api import Market, new_market
from verifier.sdk.agent import AgentClient, budget_exhausted
from verifier.sdk.merchant import (
    BudgetExhausted,
    Conflict,
    IdempotencyConflict,
    KeyCache,
    LedgerClientError,
    LedgerProblem,
    MerchantClient,
    NotFound,
    ScopeDenied,
    TokenRefused,
    ValidationFailed,
)


class DroppingProxy:
    """Forwards TCP to the service; can swallow the response to the next request whose
    first bytes contain `marker`, and abort that connection instead."""

    def __init__(self, upstream_port: int, *, marker: bytes, drops: int) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.drops_left = drops
        self.marked_requests = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        drop_next = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if self.marker in data:
                    self.marked_requests += 1
                    if self.drops_left > 0:
                        self.drops_left -= 1
                        drop_next.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if drop_next.is_set():
                    # The service answered, so it has committed; the client never hears.
                    self.dropped += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await w.wait_closed()
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def proxied(service: Service, *, marker: bytes, drops: int) -> AsyncIterator[DroppingProxy]:
    port = int(service.url.rsplit(":", 1)[1])
    proxy = DroppingProxy(port, marker=marker, drops=drops)
    proxy.url = await proxy.start()  # type: ignore[attr-defined]
    try:
        yield proxy
    finally:
        await proxy.stop()


async def count_charges(service: Service) -> int:
    conn = await connect(service.dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM charges"))
    finally:
        await conn.close()


@pytest.fixture
async def market(service: Service) -> Market:
    return await new_market(service, funds=10_000)


async def test_response_dropped_after_commit_is_retried_and_debited_once(market: Market) -> None:
    token = (await market.mint(cap_micros=5_000))["token"]
    async with proxied(market.service, marker=b"POST /v1/charges", drops=1) as proxy:
        async with MerchantClient(proxy.url, api_key=market.merchant_key) as ledger:  # type: ignore[attr-defined]
            charge = await ledger.charge(token, 700, tool="search")
        assert (proxy.dropped, proxy.marked_requests) == (1, 2)
    assert charge.replayed, "the retry got the committed charge back, not a new one"
    assert charge.receipt["amount_micros"] == 700
    assert await count_charges(market.service) == 1
    assert (await market.account())["balance_micros"] == 10_000 - 700
    await assert_invariants(market.service.dsn)


async def test_ledger_unreachable_after_bounded_retries(market: Market) -> None:
    token = (await market.mint())["token"]
    dead = f"http://127.0.0.1:{free_port()}"
    async with MerchantClient(dead, api_key=market.merchant_key, precheck=False) as ledger:
        with pytest.raises(LedgerClientError) as caught:
            await ledger.charge(token, 10, tool="search")
    assert not isinstance(caught.value, LedgerProblem)
    assert token not in str(caught.value)


async def test_budget_exhausted_carries_what_an_agent_needs(market: Market) -> None:
    token = (await market.mint(cap_micros=1_000))["token"]
    async with MerchantClient(market.service.url, api_key=market.merchant_key) as ledger:
        await ledger.charge(token, 600, tool="search")
        with pytest.raises(BudgetExhausted) as caught:
            await ledger.charge(token, 600, tool="search")
    error = caught.value
    assert (error.status, error.code, error.limit) == (402, "budget_exhausted", "token_cap")
    assert (error.required, error.available) == (600, 400)
    assert error.topup == {}, "a top-up does not help a spent credit token"
    refusal = budget_exhausted(error)
    assert refusal is not None and (refusal.limit, refusal.available) == ("token_cap", 400)
    assert (refusal.action, refusal.topup_url, refusal.topup_methods) == (
        "new_credit_token",
        "",
        [],
    )
    assert token not in str(error) and token not in str(error.problem)
    await assert_invariants(market.service.dsn)


async def test_idempotency_key_reuse_and_typed_refusals(market: Market) -> None:
    token = (await market.mint())["token"]
    async with MerchantClient(market.service.url, api_key=market.merchant_key) as ledger:
        first = await ledger.charge(token, 100, tool="search", idempotency_key="order-1")
        again = await ledger.charge(token, 100, tool="search", idempotency_key="order-1")
        with pytest.raises(IdempotencyConflict):
            await ledger.charge(token, 101, tool="search", idempotency_key="order-1")
        with pytest.raises(NotFound):
            await ledger.capture(str(uuid.uuid4()), 1)
        with pytest.raises(ValidationFailed):
            await ledger.charge(token, 0, tool="search")
        with pytest.raises(Conflict) as too_much:
            await ledger.refund(first.charge_id, 101)
        with pytest.raises(ValueError, match="idempotency keys"):
            await ledger.charge(token, 1, tool="search", idempotency_key="no spaces")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.signed_receipt == first.signed_receipt
    assert await count_charges(market.service) == 1
    assert too_much.value.code == "refund_exceeds_charge"


async def test_offline_precheck_refuses_without_a_round_trip(market: Market) -> None:
    token = (await market.mint(tools=["search"]))["token"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    async with proxied(market.service, marker=b"POST /v1/charges", drops=0) as proxy:
        async with MerchantClient(proxy.url, api_key=market.merchant_key) as ledger:  # type: ignore[attr-defined]
            with pytest.raises(TokenRefused) as bad:
                await ledger.charge(forged, 10, tool="search")
            with pytest.raises(TokenRefused):
                await ledger.charge("v4.public.garbage", 10, tool="search")
            with pytest.raises(ScopeDenied) as out_of_scope:
                await ledger.charge(token, 10, tool="admin")
            await ledger.charge(token, 10, tool="search")
        assert proxy.marked_requests == 1, "only the valid charge reached the ledger"
    assert bad.value.code == "token_invalid" and bad.value.status == 401
    assert out_of_scope.value.problem["reason"] == "tool"


async def test_unknown_kid_refreshes_the_published_keys(market: Market) -> None:
    old = (await market.mint())["token"]
    async with MerchantClient(market.service.url, api_key=market.merchant_key) as ledger:
        ledger.keys = KeyCache(ledger._http, reload_min_s=0)
        old_kid = (await ledger.check_credit_token(old, tool="search")).kid
        conn = await connect(market.service.dsn)
        try:
            await rotate_signing_key(conn, "credit_token")
        finally:
            await conn.close()
        new = (await market.mint())["token"]
        assert new.rsplit(".", 1)[1] != old.rsplit(".", 1)[1], "new footer, new kid"
        # Offline only: the service itself may refuse a brand-new kid for up to a second.
        claims = await ledger.check_credit_token(new, tool="search")
    assert claims.kid != old_kid


async def test_holds_capture_void_and_refund_through_the_sdk(market: Market) -> None:
    token = (await market.mint(cap_micros=5_000, max_per_call_micros=5_000))["token"]
    async with MerchantClient(market.service.url, api_key=market.merchant_key) as ledger:
        hold = await ledger.authorize(token, 3_000, tool="llm")
        capture = await ledger.capture(hold.hold_id, 1_200)
        repeat = await ledger.capture(hold.hold_id, 1_200)
        released = await ledger.authorize(token, 500, tool="llm")
        void = await ledger.void(released.hold_id)
        refund = await ledger.refund(capture.charge_id, 200, reason="partial")
        facts = await ledger.verify_receipt(refund.signed_receipt)
    assert (hold.status, hold.amount_micros) == ("pending", 3_000)
    assert (capture.captured_micros, capture.released_micros) == (1_200, 1_800)
    assert repeat.signed_receipt == capture.signed_receipt
    assert void.status == "voided"
    assert (refund.amount_micros, refund.refunded_total_micros) == (200, 200)
    assert facts["kind"] == "refund" and facts["amount_micros"] == 200
    assert (await market.account())["balance_micros"] == 10_000 - 1_000
    await assert_invariants(market.service.dsn)


async def test_agent_budget_and_delegation(market: Market) -> None:
    token = (await market.mint(cap_micros=3_000))["token"]
    async with AgentClient(market.service.url, token) as agent:
        child = await agent.delegate(cap_micros=1_000, tools=["search"])
        async with MerchantClient(market.service.url, api_key=market.merchant_key) as ledger:
            await ledger.charge(child.token, 800, tool="search")
            with pytest.raises(BudgetExhausted) as caught:
                await ledger.charge(child.token, 800, tool="search")
        budget = await agent.budget()
    async with AgentClient(market.service.url, child.token) as sub_agent:
        child_budget = await sub_agent.budget()
    assert caught.value.limit == "token_cap"
    assert (budget.spent_micros, budget.remaining_micros) == (800, 2_200)
    assert (child_budget.cap_micros, child_budget.remaining_micros) == (1_000, 200)
    assert child_budget.scope["tools"] == ["search"]


async def test_agent_recognises_budget_exhausted_over_http(market: Market) -> None:
    token = (await market.mint(cap_micros=100))["token"]
    response = await market.charge(token, 500)
    assert isinstance(response, httpx.Response)
    refusal = budget_exhausted(response)
    assert refusal is not None
    assert (refusal.limit, refusal.required) in {("token_cap", 500), ("max_per_call", 500)}
    assert budget_exhausted({"code": "scope_denied", "status": 403}) is None
