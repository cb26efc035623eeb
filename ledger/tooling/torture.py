"""`ledger torture`: a bank-style fault test, in the spirit of Jepsen's bank test.

A real `ledger serve` runs as a subprocess on its own data folder (embedded
PostgreSQL). Concurrent clients move money through it with idempotency keys —
charges, holds then captures, holds then voids, holds left to expire, refunds,
top-ups — while a nemesis repeatedly SIGKILLs the service mid-request and
restarts it, and restarts PostgreSQL itself under load. Clients retry after any
failure with the same idempotency keys, as the SDK does, until they get a
definitive answer.

At the end, with the service stopped:
- `ledger audit` passes (every ledger invariant, token and charge check);
- every transfer a client was acknowledged (receipt, top-up) is in the journal
  exactly once, with the acknowledged amount and code;
- no idempotency key moved money twice (the journal holds nothing that no client
  was acknowledged: per account, the journal equals the sum of acknowledgements);
- every hold is resolved (captured once, voided or expired), nothing held.

Operations are pluggable (`OPERATIONS`): each is a class with `name`, `weight`
and `run(world, client, rng)`, recording what was acknowledged in the world.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click
import httpx

from issuer.topups.card import MICROS_PER_CENT, payment_transfer_id, sign_test_webhook
from ledger.config import DEFAULT_DATABASE_NAME
from ledger.core import transfers as core
from ledger.db.embedded import EmbeddedPostgres, free_port
from ledger.db.pool import CONNECTION_ERRORS, connect
from ledger.db.queries import load_queries
from ledger.tooling.child import stop_child, wait_healthy
from ledger.tooling.progress import Progress, verdict_line

__all__ = ["OPERATIONS", "TortureConfig", "TortureReport", "run_torture"]

log = logging.getLogger("ledger.tooling.torture")

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 15.0
# A client retries one operation this long before calling it indeterminate.
RETRY_DEADLINE_S = 180.0
RETRY_BACKOFF_S = (0.05, 0.5)
HOLD_EXPIRY_S = 2
# One card top-up: 5 USD.
TOPUP_CENTS = 500
TOKEN_CAP_MICROS = 10_000_000_000
AMOUNT_RANGE = (1, 20_000)
RETRYABLE_STATUSES = frozenset({429, 503})
_OPERATOR_KEY = re.compile(r"lk_op_[A-Za-z0-9_-]+")


@dataclass(frozen=True, kw_only=True)
class TortureConfig:
    data_dir: Path
    duration_s: float = 60.0
    clients: int = 8
    wallets: int = 3
    kill_interval_s: tuple[float, float] = (2.0, 5.0)
    postgres_restarts: int = 1
    seed: int = 0
    port: int | None = None


@dataclass
class Ack:
    """What one client was told succeeded: the transfer and its effect on balances."""

    op: str
    transfer_id: uuid.UUID
    code: str
    amount: int
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID


@dataclass
class Wallet:
    account_id: uuid.UUID
    owner_key: str
    credit_token: str


@dataclass
class World:
    """Shared state of a run: the service's identities and every acknowledgement."""

    url: str
    dsn: Callable[[], str]
    webhook_secret: str
    merchant_key: str
    merchant_revenue_id: uuid.UUID
    wallets: list[Wallet]
    acks: list[Ack] = field(default_factory=list)
    charges: dict[int, list[tuple[uuid.UUID, int, Wallet]]] = field(default_factory=dict)
    expiring_holds: list[uuid.UUID] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


class Indeterminate(Exception):
    """An operation got no definitive answer before its retry deadline."""


class Anomaly(Exception):
    """An answer the service must never give (a 500, a malformed success)."""


class Client:
    """One HTTP client that retries a request, unchanged, until it is definitive."""

    def __init__(self, world: World, index: int, rng: random.Random) -> None:
        self.world = world
        self.index = index
        self.rng = rng
        self.http = httpx.AsyncClient(base_url=world.url, timeout=REQUEST_TIMEOUT_S)

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str = "",
        body: Any = None,
        content: bytes | None = None,
        headers: Callable[[], dict[str, str]] | None = None,
    ) -> httpx.Response:
        """`headers`, when given, are made afresh for every attempt (a signature
        with the current time, as Stripe re-signs each delivery)."""
        deadline = time.monotonic() + RETRY_DEADLINE_S
        attempt = 0
        while time.monotonic() < deadline:
            if attempt:
                self.world.counts["retries"] += 1
                await asyncio.sleep(self.rng.uniform(*RETRY_BACKOFF_S))
            attempt += 1
            sent = headers() if headers else {"Authorization": f"Bearer {key}"}
            try:
                response = await self.http.request(
                    method, path, json=body, content=content, headers=sent
                )
            except httpx.TransportError:
                continue
            if response.status_code in RETRYABLE_STATUSES:
                continue
            if response.status_code >= 500:
                raise Anomaly(f"{method} {path} answered {response.status_code}: {response.text}")
            return response
        raise Indeterminate(f"{method} {path}: no definitive answer")

    async def close(self) -> None:
        await self.http.aclose()


def _amount(rng: random.Random) -> int:
    return rng.randint(*AMOUNT_RANGE)


def _ack_receipt(world: World, op: str, receipt: dict[str, Any], wallet: Wallet) -> None:
    kind = receipt["kind"]
    debit, credit = wallet.account_id, world.merchant_revenue_id
    if kind == "refund":
        debit, credit = credit, debit
    world.acks.append(
        Ack(
            op=op,
            transfer_id=uuid.UUID(receipt["transfer_id"]),
            code=kind,
            amount=receipt["amount_micros"],
            debit_account_id=debit,
            credit_account_id=credit,
        )
    )


def _expect(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        raise Anomaly(f"unexpected {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


class Operation:
    """One kind of client operation. `weight` is its relative frequency; `run`
    retries through `client` and records what was acknowledged in `client.world`."""

    name: ClassVar[str]
    weight: ClassVar[int]

    async def run(self, client: Client, wallet: Wallet) -> None:
        raise NotImplementedError


class Charge(Operation):
    name = "charge"
    weight = 5

    async def run(self, client: Client, wallet: Wallet) -> None:
        world, amount = client.world, _amount(client.rng)
        body = {
            "credit_token": wallet.credit_token,
            "amount_micros": amount,
            "tool": "torture.charge",
            "idempotency_key": f"charge-{uuid.uuid4()}",
        }
        response = await client.request("POST", "/v1/charges", key=world.merchant_key, body=body)
        if response.status_code == 402:
            world.counts["refused_budget"] += 1
            return
        result = _expect(response, 200, 201)
        _ack_receipt(world, self.name, result["receipt"], wallet)
        charge_id = uuid.UUID(result["charge_id"])
        world.charges.setdefault(client.index, []).append((charge_id, amount, wallet))


async def _place_hold(client: Client, wallet: Wallet, amount: int, expires_in_s: int) -> str | None:
    world = client.world
    body = {
        "credit_token": wallet.credit_token,
        "amount_micros": amount,
        "tool": "torture.hold",
        "idempotency_key": f"hold-{uuid.uuid4()}",
        "expires_in_s": expires_in_s,
    }
    response = await client.request("POST", "/v1/holds", key=world.merchant_key, body=body)
    if response.status_code == 402:
        world.counts["refused_budget"] += 1
        return None
    hold_id: str = _expect(response, 200, 201)["hold_id"]
    return hold_id


class HoldCapture(Operation):
    name = "hold+capture"
    weight = 3

    async def run(self, client: Client, wallet: Wallet) -> None:
        held = _amount(client.rng)
        hold_id = await _place_hold(client, wallet, held, expires_in_s=600)
        if hold_id is None:
            return
        body = {"amount_micros": client.rng.randint(1, held)}
        path = f"/v1/holds/{hold_id}/capture"
        result = _expect(
            await client.request("POST", path, key=client.world.merchant_key, body=body), 200
        )
        _ack_receipt(client.world, self.name, result["receipt"], wallet)


class HoldVoid(Operation):
    name = "hold+void"
    weight = 2

    async def run(self, client: Client, wallet: Wallet) -> None:
        hold_id = await _place_hold(client, wallet, _amount(client.rng), expires_in_s=600)
        if hold_id is None:
            return
        path = f"/v1/holds/{hold_id}/void"
        _expect(await client.request("POST", path, key=client.world.merchant_key), 200)


class HoldExpire(Operation):
    """A hold nobody resolves: the service must release it by itself."""

    name = "hold+expire"
    weight = 1

    async def run(self, client: Client, wallet: Wallet) -> None:
        hold_id = await _place_hold(client, wallet, _amount(client.rng), expires_in_s=HOLD_EXPIRY_S)
        if hold_id is not None:
            client.world.expiring_holds.append(uuid.UUID(hold_id))


class Refund(Operation):
    name = "refund"
    weight = 2

    async def run(self, client: Client, wallet: Wallet) -> None:
        # Only this client's own charges, so refunds of one charge never race.
        mine = client.world.charges.get(client.index) or []
        if not mine:
            return
        charge_id, amount, charged_wallet = mine.pop(client.rng.randrange(len(mine)))
        body = {
            "amount_micros": client.rng.randint(1, amount),
            "idempotency_key": f"refund-{uuid.uuid4()}",
        }
        path = f"/v1/charges/{charge_id}/refunds"
        result = _expect(
            await client.request("POST", path, key=client.world.merchant_key, body=body), 200, 201
        )
        _ack_receipt(client.world, self.name, result["receipt"], charged_wallet)


class TopUp(Operation):
    """Money in through the service, as Stripe sends it: a signed
    `checkout.session.completed` event, redelivered unchanged (re-signed) until
    the service answers; a third of the time followed by a second, distinct
    event for the same payment, which must credit nothing more."""

    name = "top-up"
    weight = 1

    async def run(self, client: Client, wallet: Wallet) -> None:
        world, payment = client.world, f"pi_torture_{uuid.uuid4().hex}"
        events = [_checkout_event(wallet, payment)]
        if client.rng.random() < 1 / 3:
            events.append(_checkout_event(wallet, payment))
        outcomes = []
        for event in events:
            payload = json.dumps(event).encode()

            def signed(payload: bytes = payload) -> dict[str, str]:
                return {
                    "Stripe-Signature": sign_test_webhook(payload, world.webhook_secret),
                    "Content-Type": "application/json",
                }

            response = await client.request(
                "POST", "/v1/webhooks/stripe", content=payload, headers=signed
            )
            outcomes.append(_expect(response, 200)["outcome"])
        # A redelivery whose first attempt committed answers `duplicate_event`.
        first, *later = outcomes
        if first not in {"credited", "duplicate_event"} or not all(
            outcome in {"already_credited", "duplicate_event"} for outcome in later
        ):
            raise Anomaly(f"top-up {payment}: outcomes {outcomes}")
        world.acks.append(
            Ack(
                self.name,
                payment_transfer_id(payment),
                "topup_card",
                TOPUP_CENTS * MICROS_PER_CENT,
                core.CARD_CLEARING_ID,
                wallet.account_id,
            )
        )


def _checkout_event(wallet: Wallet, payment: str) -> dict[str, Any]:
    session = {
        "id": f"cs_{payment}",
        "object": "checkout.session",
        "amount_total": TOPUP_CENTS,
        "currency": "usd",
        "payment_status": "paid",
        "payment_intent": payment,
        "client_reference_id": str(wallet.account_id),
        "metadata": {"account_id": str(wallet.account_id)},
    }
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": session},
    }


OPERATIONS: tuple[type[Operation], ...] = (Charge, HoldCapture, HoldVoid, HoldExpire, Refund, TopUp)


class ServiceProcess:
    """A real `ledger serve` on the run's data folder, killed and restarted at will."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.logfile = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Top-ups arrive as Stripe webhooks signed with this run's own secret.
        self.webhook_secret = "whsec_torture_" + secrets.token_hex(16)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["LEDGER_DATA_DIR"] = str(self.data_dir)
        env["STRIPE_WEBHOOK_SECRET"] = self.webhook_secret
        command = [sys.executable, "-m", "ledger", "serve", "--port", str(self.port)]
        with self.logfile.open("ab") as out:
            # Its own session: a signal meant for the harness never reaches it.
            self.proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_healthy(
            self.proc, self.url, timeout_s=START_TIMEOUT_S, why_exited=lambda: f"see {self.logfile}"
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, requests cut off wherever they are."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout_s=STOP_TIMEOUT_S)

    def operator_key(self) -> str:
        found = _OPERATOR_KEY.findall(self.logfile.read_text(errors="replace"))
        if not found:
            raise RuntimeError("the first `ledger serve` printed no operator API key")
        return str(found[0])


def restart_postgres(data_dir: Path, *, mode: str = "immediate") -> None:
    """Stop the embedded PostgreSQL under load (`immediate`: a crash, recovery from
    the WAL on start) and start it again on the same port."""
    server = EmbeddedPostgres(data_dir)
    port = server.running_port()
    if port is None:
        raise RuntimeError("PostgreSQL is not running")
    server.stop(mode=mode)
    EmbeddedPostgres(data_dir, port=port).start()


def _dsn(data_dir: Path) -> str:
    # Looked up on every use: the nemesis may have PostgreSQL down right now.
    if EmbeddedPostgres(data_dir).running_port() is None:
        raise ConnectionRefusedError("PostgreSQL is not running")
    return EmbeddedPostgres(data_dir).dsn(DEFAULT_DATABASE_NAME)


async def _setup(service: ServiceProcess, config: TortureConfig, rng: random.Random) -> World:
    operator = service.operator_key()
    world = World(
        url=service.url,
        dsn=lambda: _dsn(config.data_dir),
        webhook_secret=service.webhook_secret,
        merchant_key="",
        merchant_revenue_id=uuid.UUID(int=0),
        wallets=[],
    )
    client = Client(world, -1, rng)
    try:
        merchant = _expect(
            await client.request("POST", "/v1/merchants", key=operator, body={"name": "torture"}),
            201,
        )
        world.merchant_key = merchant["merchant_api_key"]
        world.merchant_revenue_id = uuid.UUID(merchant["merchant"]["revenue_account_id"])
        for i in range(config.wallets):
            world.wallets.append(await _new_wallet(client, operator, f"torture-{i}"))
        for wallet in world.wallets:
            await TopUp().run(client, wallet)
    finally:
        await client.close()
    return world


async def _new_wallet(client: Client, operator: str, name: str) -> Wallet:
    body = {"name": name}
    created = _expect(await client.request("POST", "/v1/accounts", key=operator, body=body), 201)
    owner_key = created["owner_api_key"]
    mint = {"cap_micros": TOKEN_CAP_MICROS, "expires_in_s": 86_400}
    token = _expect(await client.request("POST", "/v1/tokens", key=owner_key, body=mint), 201)
    return Wallet(uuid.UUID(created["account"]["id"]), owner_key, token["token"])


async def _client_loop(
    world: World, index: int, operations: list[Operation], stop_at: float, seed: int
) -> None:
    rng = random.Random(seed)
    client = Client(world, index, rng)
    weights = [op.weight for op in operations]
    try:
        while time.monotonic() < stop_at:
            op = rng.choices(operations, weights)[0]
            world.counts["operations"] += 1
            world.counts[f"op {op.name}"] += 1
            try:
                await op.run(client, rng.choice(world.wallets))
            except Indeterminate as exc:
                world.counts["indeterminate"] += 1
                log.error("indeterminate: %s", exc)
            except Anomaly as exc:
                world.counts["anomalies"] += 1
                log.error("anomaly: %s", exc)
            except Exception:
                # A fault of the harness itself fails the run too, never silently.
                world.counts["anomalies"] += 1
                log.exception("operation %s failed", op.name)
    finally:
        await client.close()


async def _nemesis(
    service: ServiceProcess, config: TortureConfig, world: World, stop_at: float, rng: random.Random
) -> None:
    """Kill the service at random moments (mid-request: the clients never pause),
    and restart PostgreSQL `postgres_restarts` times, spread over the run."""
    start = time.monotonic()
    span = max(stop_at - start, 1.0)
    restarts_at = [
        start + span * (i + 1) / (config.postgres_restarts + 1)
        for i in range(config.postgres_restarts)
    ]
    while True:
        await asyncio.sleep(rng.uniform(*config.kill_interval_s))
        if time.monotonic() >= stop_at:
            return
        if restarts_at and time.monotonic() >= restarts_at[0]:
            restarts_at.pop(0)
            await asyncio.to_thread(restart_postgres, config.data_dir)
            world.counts["postgres_restarts"] += 1
            continue
        await asyncio.to_thread(service.kill)
        world.counts["kills"] += 1
        await asyncio.to_thread(service.start)


queries = load_queries("ledger.tooling", "torture.sql")


@dataclass
class TortureReport:
    counts: dict[str, int]
    acknowledged: int
    lost: list[str]
    mismatched: list[str]
    unacknowledged: list[str]
    account_mismatches: list[str]
    held_micros: int
    holds: dict[str, int]
    audit_ok: bool
    audit_output: str

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.mismatched
            or self.unacknowledged
            or self.account_mismatches
            or self.held_micros
            or not self.audit_ok
            or self.counts.get("indeterminate", 0)
            or self.counts.get("anomalies", 0)
        )

    def summary(self) -> str:
        ops = {
            k.removeprefix("op "): v for k, v in sorted(self.counts.items()) if k.startswith("op ")
        }
        lines = [
            f"operations: {self.counts.get('operations', 0)} {ops}",
            f"kills: {self.counts.get('kills', 0)}",
            f"postgres restarts: {self.counts.get('postgres_restarts', 0)}",
            f"retries: {self.counts.get('retries', 0)}",
            f"refused (budget): {self.counts.get('refused_budget', 0)}",
            f"acknowledged: {self.acknowledged}",
            f"lost: {len(self.lost)}",
            f"mismatched: {len(self.mismatched)}",
            f"unacknowledged movements: {len(self.unacknowledged)}",
            f"accounts not matching acknowledgements: {len(self.account_mismatches)}",
            f"still held (micro-USD): {self.held_micros}",
            f"holds by status: {self.holds}",
            f"indeterminate: {self.counts.get('indeterminate', 0)}",
            f"anomalies: {self.counts.get('anomalies', 0)}",
            f"audit: {'ok' if self.audit_ok else 'FAILED'}",
        ]
        details = self.lost + self.mismatched + self.unacknowledged + self.account_mismatches
        lines += [f"  {d}" for d in details[:20]]
        if not self.audit_ok:
            lines.append(self.audit_output)
        lines.append("RESULT: " + ("ok" if self.ok else "FAILED"))
        lines.append(verdict_line(self.ok, self.why()))
        return "\n".join(lines)

    def why(self) -> str:
        if self.ok:
            return (
                f"{self.acknowledged:,} acknowledged movements all in the journal exactly once "
                f"through {self.counts.get('kills', 0)} kills and "
                f"{self.counts.get('postgres_restarts', 0)} PostgreSQL restarts; audit holds"
            )
        found = [
            f"{n} {name}"
            for name, n in (
                ("lost", len(self.lost)),
                ("mismatched", len(self.mismatched)),
                ("unacknowledged", len(self.unacknowledged)),
                ("accounts off", len(self.account_mismatches)),
                ("indeterminate", self.counts.get("indeterminate", 0)),
                ("anomalies", self.counts.get("anomalies", 0)),
                ("micro-USD still held", self.held_micros),
            )
            if n
        ]
        if not self.audit_ok:
            found.append("audit failed")
        return ", ".join(found)


def _expected_balances(world: World) -> dict[uuid.UUID, int]:
    expected: Counter[uuid.UUID] = Counter()
    for ack in world.acks:
        expected[ack.credit_account_id] += ack.amount
        expected[ack.debit_account_id] -= ack.amount
    return dict(expected)


async def check_journal(world: World, dsn: str) -> dict[str, Any]:
    """Compare what clients were acknowledged with what the journal holds."""
    accounts = [w.account_id for w in world.wallets] + [world.merchant_revenue_id]
    acked = {ack.transfer_id: ack for ack in world.acks}
    conn = await connect(dsn)
    try:
        rows = {r["id"]: r for r in await conn.fetch(queries["transfers_by_id"], list(acked))}
        movements = await conn.fetch(queries["money_movements"], accounts)
        balances = await conn.fetch(queries["balances"], accounts)
        holds = {r["status"]: r["holds"] for r in await conn.fetch(queries["holds_by_status"])}
    finally:
        await conn.close()
    lost = [f"lost {a.op} {a.transfer_id}" for a in acked.values() if a.transfer_id not in rows]
    mismatched = [
        f"{a.op} {a.transfer_id}: acknowledged {a.amount} {a.code}, journal {dict(rows[a.transfer_id])}"
        for a in acked.values()
        if a.transfer_id in rows
        and (rows[a.transfer_id]["amount"], rows[a.transfer_id]["code"]) != (a.amount, a.code)
    ]
    unacknowledged = [
        f"unacknowledged {m['code']} {m['id']} of {m['amount']}"
        for m in movements
        if m["id"] not in acked
    ]
    expected = _expected_balances(world)
    account_mismatches = [
        f"account {b['id']}: journal {b['balance']}, acknowledged {expected.get(b['id'], 0)}"
        for b in balances
        if b["balance"] != expected.get(b["id"], 0)
    ]
    return {
        "acknowledged": len(acked),
        "lost": lost,
        "mismatched": mismatched,
        "unacknowledged": unacknowledged,
        "account_mismatches": account_mismatches,
        "held_micros": sum(b["debits_pending"] for b in balances),
        "holds": holds,
    }


def run_audit_cli(data_dir: Path) -> tuple[bool, str]:
    """`ledger audit`, exactly as an operator runs it, on the run's data folder."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "ledger", "audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S * 5,
        check=False,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


async def _wait_holds_released(world: World, deadline_s: float) -> None:
    """Holds left to expire are released by the service itself (its sweeper)."""
    accounts = [w.account_id for w in world.wallets]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(*CONNECTION_ERRORS):
            conn = await connect(world.dsn())
            try:
                rows = await conn.fetch(queries["balances"], accounts)
            finally:
                await conn.close()
            if all(r["debits_pending"] == 0 for r in rows):
                return
        await asyncio.sleep(0.5)


def _load_status(world: World) -> str:
    c = world.counts
    return (
        f"{c.get('operations', 0):,} operations, {len(world.acks):,} acknowledged, "
        f"{c.get('kills', 0)} kills, {c.get('postgres_restarts', 0)} PostgreSQL restarts, "
        f"{c.get('retries', 0):,} retries, {c.get('anomalies', 0)} anomalies"
    )


async def run_torture(
    config: TortureConfig,
    operations: tuple[type[Operation], ...] = OPERATIONS,
    *,
    progress: Progress | None = None,
) -> tuple[TortureReport, World]:
    """One bounded run; the service and its PostgreSQL are stopped at the end."""
    progress = progress or Progress("torture", phases=5, quiet=True)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    service = ServiceProcess(config.data_dir.resolve(), config.port or free_port())
    try:
        progress.phase("starting ledger serve on an embedded PostgreSQL")
        await asyncio.to_thread(service.start)
        progress.phase("setting up a merchant and wallets")
        world = await _setup(service, config, rng)
        stop_at = time.monotonic() + config.duration_s
        ops: list[Operation] = [op() for op in operations]
        tasks = [
            _client_loop(world, i, ops, stop_at, seed=rng.randrange(2**32))
            for i in range(config.clients)
        ]
        progress.phase(f"load with faults ({config.duration_s:g} s, {config.clients} clients)")
        with progress.ticking(lambda: _load_status(world)):
            await asyncio.gather(_nemesis(service, config, world, stop_at, rng), *tasks)
        progress.phase("waiting for the service to release expired holds")
        await _wait_holds_released(world, deadline_s=HOLD_EXPIRY_S * 30)
    finally:
        await asyncio.to_thread(service.stop)
    progress.phase("checking the journal against every acknowledgement, and ledger audit")
    return await final_report(config.data_dir, world), world


async def final_report(data_dir: Path, world: World) -> TortureReport:
    """Every check, on the data folder at rest (PostgreSQL started just for this)."""
    server = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        journal = await check_journal(world, server.dsn(DEFAULT_DATABASE_NAME))
        audit_ok, audit_output = await asyncio.to_thread(run_audit_cli, data_dir)
    finally:
        await asyncio.to_thread(server.stop)
    return TortureReport(
        counts=dict(world.counts), audit_ok=audit_ok, audit_output=audit_output, **journal
    )


def main_json(report: TortureReport) -> str:
    return json.dumps({"ok": report.ok, **report.__dict__}, indent=2, sort_keys=True, default=str)


@click.command("torture")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A fresh folder for this run [default: a new temporary folder, removed after a "
    "passing run and kept after a failing one].",
)
@click.option(
    "--duration", "duration_s", type=click.FloatRange(1, 24 * 3600), default=60.0, show_default=True
)
@click.option("--clients", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--wallets", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--kill-every",
    type=(float, float),
    default=(2.0, 5.0),
    show_default=True,
    help="Seconds (min max).",
)
@click.option("--postgres-restarts", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def torture_command(
    data_dir: Path | None,
    duration_s: float,
    clients: int,
    wallets: int,
    kill_every: tuple[float, float],
    postgres_restarts: int,
    seed: int,
    as_json: bool,
) -> None:
    """Fault test: kill the service and PostgreSQL under load; nothing may be lost."""
    temporary = data_dir is None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="ledger-torture-"))
    elif (data_dir / "pgdata").exists():
        raise click.BadParameter(
            "use a fresh folder (the checks count every transfer)", param_hint="--data-dir"
        )
    click.echo(f"data folder: {data_dir}", err=True)
    config = TortureConfig(
        data_dir=data_dir,
        duration_s=duration_s,
        clients=clients,
        wallets=wallets,
        kill_interval_s=kill_every,
        postgres_restarts=postgres_restarts,
        seed=seed,
    )
    # One line per request would drown the report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report, _ = asyncio.run(run_torture(config, progress=Progress("torture", phases=5)))
    click.echo(main_json(report) if as_json else report.summary())
    if not report.ok:
        click.echo(f"data folder kept for inspection: {data_dir}", err=True)
        sys.exit(1)
    if temporary:
        shutil.rmtree(data_dir, ignore_errors=True)
