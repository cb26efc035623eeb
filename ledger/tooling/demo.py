"""`ledger demo`: the whole story, end to end, on a fresh embedded PostgreSQL.

An operator starts the ledger and registers an account and a merchant (a paid MCP
server); the account is topped up by a signed card webhook; the owner mints a
scoped credit token; an agent calls a paid MCP tool over streamable HTTP until the
budget runs out, reads the structured refusal, the account is topped up, and the
agent carries on with the same credit token. Receipts are verified offline and
the ledger is audited at the end.

Everything runs in this process: the ledger API and the MCP server are served by
uvicorn on loopback ports, and the agent uses the official MCP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from issuer.topups.card import sign_test_webhook
from ledger.access.api_keys import Role, create_api_key, ensure_operator_key
from ledger.app.runtime import database_dsn, prepare_database
from ledger.config import Settings
from ledger.core.audit import AuditReport, run_audit
from ledger.db.embedded import free_port
from ledger.db.pool import connect
from ledger.tooling.progress import Progress
from verifier.sdk.agent import AgentClient, budget_exhausted, receipt_of, signed_receipt_of
from verifier.sdk.mcp import Metered, Paywall
from verifier.sdk.merchant import PRICE_META_KEY, MerchantClient

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["demo_command", "demo_tools", "run_demo"]

MICROS_PER_CENT = 10_000
SEARCH_PRICE_MICROS = 20_000  # 2 cents a search
SUMMARY_MAX_MICROS = 50_000  # at most 5 cents a summary
SUMMARY_MICROS_PER_WORD = 1_000
FIRST_TOPUP_MICROS = 50_000  # 5 cents: two searches, then the balance runs out
SECOND_TOPUP_MICROS = 1_000_000  # 1 USD
TOKEN_CAP_MICROS = 200_000
SEARCHES_MAX = 10
STARTUP_WAIT_S = 20.0


def demo_tools(paid: Paywall) -> MCPServer[Any]:
    """The demo's paid MCP server: one fixed-price tool and one metered tool."""
    from mcp.server.mcpserver import MCPServer

    server: MCPServer[Any] = MCPServer("demo-search", lifespan=paid.lifespan, log_level="WARNING")

    @paid.tool(server, price_micros=SEARCH_PRICE_MICROS)
    async def search(query: str) -> str:
        """Search the (pretend) web: 2 cents a call."""
        return f"3 results for {query!r}"

    @paid.tool(server, max_price_micros=SUMMARY_MAX_MICROS)
    async def summarize(text: str) -> Metered[str]:
        """Summarize text: 0.1 cent per word, at most 5 cents."""
        words = text.split()
        return Metered(" ".join(words[:5]) + " …", cost_micros=len(words) * SUMMARY_MICROS_PER_WORD)

    return server


# ---- Output -----------------------------------------------------------------------------


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}".rstrip("0").rstrip(".") + f" ({micros:,} µUSD)"


DEMO_STEPS = 8
# The run's progress on stderr (phase and elapsed time; the story itself is stdout).
_progress = Progress("demo", phases=DEMO_STEPS)


def _step(number: int, title: str) -> None:
    _progress.phase(title.split(";")[0])
    click.echo("")
    click.secho(f"{number}. {title}", bold=True)


def _line(text: str) -> None:
    click.echo(f"   {text}")


# ---- Servers ------------------------------------------------------------------------------


class _Served:
    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Served:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_WAIT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise click.ClickException(f"could not start a server on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def _data_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="ledger-demo-") as tmp:
        yield Path(tmp)


# ---- The story ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Story:
    api: httpx.AsyncClient
    settings: Settings
    dsn: str
    operator_key: str
    mcp_url: str = ""
    account_id: str = ""
    owner_key: str = ""
    merchant_id: str = ""
    merchant_key: str = ""
    receipts: list[str] = dataclasses.field(default_factory=list)

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def post(self, path: str, body: Any, key: str) -> dict[str, Any]:
        response = await self.api.post(path, json=body, headers=self.auth(key))
        if response.status_code not in (200, 201):
            raise click.ClickException(f"POST {path}: HTTP {response.status_code} {response.text}")
        out: dict[str, Any] = response.json()
        return out

    async def balance(self) -> int:
        response = await self.api.get(
            f"/v1/accounts/{self.account_id}", headers=self.auth(self.owner_key)
        )
        return int(response.json()["balance_micros"])

    async def top_up(self, amount_micros: int) -> str:
        """A card top-up: the webhook Stripe sends for a paid Checkout session, signed
        with this run's webhook secret (no Stripe account is involved)."""
        assert amount_micros % MICROS_PER_CENT == 0, "cards pay whole cents"
        secret = self.settings.stripe_webhook_secret
        assert secret is not None
        payment = f"demo_{uuid.uuid4().hex}"
        event_id = f"evt_{payment}"
        session = {
            "id": f"cs_{payment}",
            "object": "checkout.session",
            "payment_status": "paid",
            "amount_total": amount_micros // MICROS_PER_CENT,
            "currency": "usd",
            "payment_intent": f"pi_{payment}",
            "client_reference_id": self.account_id,
            "metadata": {"account_id": self.account_id},
        }
        event = {
            "id": event_id,
            "object": "event",
            "type": "checkout.session.completed",
            "data": {"object": session},
        }
        payload = json.dumps(event).encode()
        response = await self.api.post(
            "/v1/webhooks/stripe",
            content=payload,
            headers={
                "Stripe-Signature": sign_test_webhook(payload, secret),
                "Content-Type": "application/json",
            },
        )
        if response.status_code != 200:
            raise click.ClickException(
                f"webhook refused: HTTP {response.status_code} {response.text}"
            )
        return f"signed card webhook (event {event_id[:16]}…: {response.json()['outcome']})"


async def _register(story: _Story) -> None:
    _step(2, "Operator creates a customer account and a merchant (a paid MCP server)")
    account = await story.post("/v1/accounts", {"name": "demo agent owner"}, story.operator_key)
    story.account_id = account["account"]["id"]
    story.owner_key = account["owner_api_key"]
    merchant = await story.post("/v1/merchants", {"name": "demo-search"}, story.operator_key)
    story.merchant_id = merchant["merchant"]["id"]
    story.merchant_key = merchant["merchant_api_key"]
    _line(f"account  {story.account_id}  (owner API key {story.owner_key[:8]}…, shown once)")
    _line(f"merchant {story.merchant_id}  (merchant API key {story.merchant_key[:8]}…)")


async def _mint(story: _Story) -> str:
    _step(4, "The owner mints a credit token for the agent, scoped to the merchant's tools")
    minted = await story.post(
        "/v1/tokens",
        {
            "cap_micros": TOKEN_CAP_MICROS,
            "max_per_call_micros": SUMMARY_MAX_MICROS,
            "audiences": [story.merchant_id],
            "tools": ["search", "summarize"],
            "expires_in_s": 3600,
            "description": "demo agent",
        },
        story.owner_key,
    )
    _line(f"credit token {minted['jti']}  ({minted['token'][:16]}…)")
    _line(f"cap {_usd(minted['cap_micros'])}, at most {_usd(SUMMARY_MAX_MICROS)} per call")
    _line(f"tools {minted['scope']['tools']}, merchant {minted['scope']['audiences']}")
    return str(minted["token"])


async def _search_until_refused(story: _Story, tools: Any, start: int) -> dict[str, Any] | None:
    for n in range(start, start + SEARCHES_MAX):
        result = await tools.call_tool("search", {"query": f"question {n}"})
        refusal = budget_exhausted(result)
        if refusal is not None:
            _line(f"call {n}: REFUSED  {result.content[0].text}")
            problem: dict[str, Any] = result.structured_content
            return problem
        if result.is_error:
            raise click.ClickException(f"unexpected tool error: {result.content[0].text}")
        signed = signed_receipt_of(result)
        assert signed is not None
        story.receipts.append(signed)
        receipt = receipt_of(result)
        assert receipt is not None
        _line(
            f"call {n}: {result.content[0].text}  → charged {receipt['amount_micros']:,} µUSD, "
            f"balance {receipt['account_balance_micros']:,}, "
            f"token remaining {receipt['token_remaining_micros']:,}"
        )
    return None


async def _agent(story: _Story, token: str) -> None:
    async with (
        AgentClient(str(story.api.base_url), token) as agent,
        agent.mcp(story.mcp_url) as tools,
    ):
        listed = (await tools.list_tools()).tools
        _step(5, "The agent calls the paid `search` tool over MCP until the budget runs out")
        for tool in listed:
            price = json.dumps((tool.meta or {}).get(PRICE_META_KEY))
            _line(f"tool {tool.name!r}: price {price}")
        budget = await agent.budget()
        _line(f"budget: {_usd(budget.spendable_micros)} spendable now")
        problem = await _search_until_refused(story, tools, 1)
        if problem is None:
            raise click.ClickException("the budget never ran out")
        _line("structuredContent of the refusal (what the agent acts on):")
        for text in json.dumps(problem, indent=2, sort_keys=True).splitlines():
            _line(f"    {text}")

        _step(6, f"The account is topped up with {_usd(SECOND_TOPUP_MICROS)}; the agent carries on")
        _line(f"top-up by {await story.top_up(SECOND_TOPUP_MICROS)}")
        _line(f"balance {_usd(await story.balance())}")
        for n in (len(story.receipts) + 2, len(story.receipts) + 3):
            result = await tools.call_tool("search", {"query": f"question {n}"})
            assert not result.is_error, result
            story.receipts.append(signed_receipt_of(result) or "")
            _line(f"call {n}: {result.content[0].text}  (same credit token)")
        text = "the quick brown fox jumps over the lazy dog " * 3
        result = await tools.call_tool("summarize", {"text": text})
        assert not result.is_error, result
        story.receipts.append(signed_receipt_of(result) or "")
        _line(
            f"summarize ({len(text.split())} words, metered): {result.content[0].text!r}  → held "
            f"{SUMMARY_MAX_MICROS:,}, captured {len(text.split()) * SUMMARY_MICROS_PER_WORD:,} µUSD"
        )
        budget = await agent.budget()
        _line(
            f"budget: spent {_usd(budget.spent_micros)}, remaining {_usd(budget.remaining_micros)}"
        )

        _step(7, "Receipts, each verified offline against the published keys (GET /v1/keys)")
        for signed in story.receipts:
            facts = await agent.verify_receipt(signed)
            _line(
                f"{facts['kind']:<8} {facts['tool']:<10} {facts['amount_micros']:>8,} µUSD  "
                f"receipt {facts['receipt_id']}  balance after {facts['account_balance_micros']:,}"
            )


async def _story(settings: Settings, dsn: str, operator_key: str, ledger_url: str) -> None:
    async with httpx.AsyncClient(base_url=ledger_url, timeout=30) as api:
        story = _Story(api=api, settings=settings, dsn=dsn, operator_key=operator_key)
        await _register(story)
        _step(3, f"The account is topped up with {_usd(FIRST_TOPUP_MICROS)}")
        _line(f"top-up by {await story.top_up(FIRST_TOPUP_MICROS)}")
        _line(f"balance {_usd(await story.balance())}")
        token = await _mint(story)
        paid = Paywall(MerchantClient(ledger_url, api_key=story.merchant_key))
        with _Served(demo_tools(paid).streamable_http_app(), free_port()) as mcp_server:
            story.mcp_url = f"{mcp_server.url}/mcp"
            _line(f"paid MCP server (streamable HTTP): {story.mcp_url}")
            await _agent(story, token)


def _audit(dsn: str) -> AuditReport:
    async def work() -> AuditReport:
        conn = await connect(dsn)
        try:
            return await run_audit(conn)
        finally:
            await conn.close()

    return asyncio.run(work())


def run_demo(data_dir: Path | None) -> bool:
    """Run the story; True when the final audit finds every invariant holding."""
    with _data_dir(data_dir) as folder:
        # A throwaway webhook secret: this run signs its own card webhooks.
        settings = Settings(
            data_dir=folder,
            port=free_port(),
            stripe_webhook_secret=f"whsec_demo_{secrets.token_hex(16)}",
        )
        _step(1, "The operator starts the ledger on an embedded PostgreSQL")
        _line(f"data folder {folder}")
        with database_dsn(settings, own_server=True, create=True) as dsn:
            asyncio.run(prepare_database(dsn))
            operator_key = asyncio.run(_operator_key(dsn))
            from ledger.app.factory import create_app

            app = create_app(dataclasses.replace(settings, database_url=dsn))
            with _Served(app, settings.port) as ledger_server:
                _line(f"ledger API {ledger_server.url} (docs at {ledger_server.url}/docs)")
                asyncio.run(_story(settings, dsn, operator_key, ledger_server.url))
            report = _audit(dsn)
        _step(8, "ledger audit")
        _line(f"audited {report.accounts} accounts, {report.transfers} transfers")
        for violation in report.violations:
            _line(f"VIOLATION {violation.invariant}: {violation.detail}")
        _line("all invariants hold" if report.ok else "INVARIANTS VIOLATED")
        return report.ok


async def _operator_key(dsn: str) -> str:
    conn = await connect(dsn)
    try:
        # A folder reused from an earlier run already has one: add another, revoke nothing.
        return await ensure_operator_key(conn) or await create_api_key(conn, Role.operator, None)
    finally:
        await conn.close()


@click.command("demo")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Embedded PostgreSQL folder (default: a fresh temporary folder, removed afterwards).",
)
def demo_command(data_dir: Path | None) -> None:
    """Walk the whole story end to end: top-up, credit token, paid MCP tool, budget exhausted."""
    root = logging.getLogger()
    if root.level > logging.DEBUG:
        # The story is the output; routine INFO lines would bury it (`ledger -v demo` shows them).
        root.setLevel(logging.WARNING)
    global _progress
    _progress = Progress("demo", phases=DEMO_STEPS)
    ok = run_demo(data_dir)
    click.echo("")
    _progress.verdict(
        ok,
        f"the whole story ran in {_progress.elapsed()} and every invariant holds"
        if ok
        else "the final audit found violated invariants (listed above)",
    )
    if not ok:
        raise SystemExit(1)
