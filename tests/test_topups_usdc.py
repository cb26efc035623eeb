"""USDC top-ups against a real Anvil node and a real Vyper ERC-20: wallet linking
with Sign-In with Ethereum, confirmations, reorgs, restarts, unattributed deposits."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from issuer.topups.usdc_watcher import UsdcConfigError, UsdcWatcher, watcher_lock
from issuer.topups.usdc_watcher import queries as usdc_queries
from ledger.access.api_keys import ensure_operator_key
from ledger.config import Settings
from ledger.core import transfers as core
from ledger.db.embedded import free_port
from ledger.db.pool import Conn, connect
from tests.conftest import ServerThread, Service, service_settings
from tests.evm import CHAIN_ID, Anvil
from tests.helpers import assert_invariants, balance
from tests.test_api_accounts import assert_problem

CONFIRMATIONS = 3
USDC = str(core.USDC_CLEARING_ID)


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    node = Anvil()
    try:
        yield node
    finally:
        node.stop()


@dataclasses.dataclass
class Chain:
    anvil: Anvil
    token: Any
    treasury: str

    def settings(self, dsn: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": dsn,
            "usdc_rpc_url": self.anvil.url,
            "usdc_contract": self.token.address,
            "usdc_treasury": self.treasury,
            "usdc_chain_id": CHAIN_ID,
            "usdc_confirmations": CONFIRMATIONS,
            "usdc_start_block": 0,
            "usdc_block_range_max": 1_000,
            "usdc_poll_interval_s": 1,
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture
def chain(anvil: Anvil) -> Chain:
    token = anvil.deploy_token()
    return Chain(anvil=anvil, token=token, treasury=Account.create().address)


async def scan(pool: asyncpg.Pool, settings: Settings) -> list[str]:
    """Run a fresh watcher until it has nothing more to do; return each step's status."""
    watcher = UsdcWatcher(pool, settings)
    statuses = []
    try:
        await watcher.check_chain()
        while True:
            result = await watcher.step()
            statuses.append(result.status)
            if result.status != "scanned":
                return statuses
    finally:
        await watcher.close()


async def link(pool: asyncpg.Pool, account_id: uuid.UUID, address: str) -> None:
    await pool.execute(
        "INSERT INTO linked_wallets (address, account_id) VALUES ($1, $2)",
        address.lower(),
        account_id,
    )


async def journal(conn: Conn, account_id: uuid.UUID) -> list[tuple[str, int, str]]:
    transfers = await core.list_account_transfers(conn, account_id, after_seq=0, limit=100)
    return [(t.code, t.amount, str(t.debit_account_id)) for t in transfers]


# --- wallet linking (SIWE) ---------------------------------------------------------


async def new_owner(service: Service, name: str = "alice") -> tuple[uuid.UUID, dict[str, str]]:
    response = await service.client.post(
        "/v1/accounts", json={"name": name}, headers=service.operator
    )
    body = response.json()
    return uuid.UUID(body["account"]["id"]), service.auth(body["owner_api_key"])


async def challenge(service: Service, owner: dict[str, str], address: str) -> dict[str, Any]:
    response = await service.client.post(
        "/v1/wallets/challenge", json={"address": address}, headers=owner
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def sign(key: Any, message: str) -> str:
    return "0x" + bytes(key.sign_message(encode_defunct(text=message)).signature).hex()


async def test_siwe_links_an_address_once(service: Service) -> None:
    alice, alice_key = await new_owner(service, "alice")
    _, bob_key = await new_owner(service, "bob")
    wallet = Account.create()
    issued = await challenge(service, alice_key, wallet.address.lower())
    message = issued["message"]
    assert f"\n{wallet.address}\n" in message  # EIP-55 checksummed, EIP-4361 layout
    assert f"Nonce: {issued['nonce']}" in message and "Chain ID: 1" in message
    assert str(alice) in message and "Expiration Time: " in message

    # Signed by another key: refused, and the nonce is spent.
    intruder = Account.create()
    bad = await service.client.post(
        "/v1/wallets",
        json={"message": message, "signature": sign(intruder, message)},
        headers=alice_key,
    )
    assert_problem(bad, 400, "wallet_challenge_invalid")
    good_sig = sign(wallet, message)
    replay = await service.client.post(
        "/v1/wallets", json={"message": message, "signature": good_sig}, headers=alice_key
    )
    assert_problem(replay, 400, "wallet_challenge_invalid")

    issued = await challenge(service, alice_key, wallet.address)
    message = issued["message"]
    # Bob cannot spend Alice's challenge.
    stolen = await service.client.post(
        "/v1/wallets",
        json={"message": message, "signature": sign(wallet, message)},
        headers=bob_key,
    )
    assert_problem(stolen, 400, "wallet_challenge_invalid")
    issued = await challenge(service, alice_key, wallet.address)
    message = issued["message"]
    # An edited message (same nonce) is refused.
    edited = message.replace("Version: 1", "Version: 2")
    tampered = await service.client.post(
        "/v1/wallets",
        json={"message": edited, "signature": sign(wallet, edited)},
        headers=alice_key,
    )
    assert_problem(tampered, 400, "wallet_challenge_invalid")

    issued = await challenge(service, alice_key, wallet.address)
    message = issued["message"]
    linked = await service.client.post(
        "/v1/wallets",
        json={"message": message, "signature": sign(wallet, message)},
        headers=alice_key,
    )
    assert linked.status_code == 201, linked.text
    assert linked.json()["address"] == wallet.address
    assert linked.json()["account_id"] == str(alice)
    again = await service.client.post(
        "/v1/wallets",
        json={"message": message, "signature": sign(wallet, message)},
        headers=alice_key,
    )
    assert_problem(again, 400, "wallet_challenge_invalid")  # single-use

    # The same address for Bob: a valid signature, but one address links one account.
    issued = await challenge(service, bob_key, wallet.address)
    taken = await service.client.post(
        "/v1/wallets",
        json={"message": issued["message"], "signature": sign(wallet, issued["message"])},
        headers=bob_key,
    )
    assert_problem(taken, 409, "wallet_already_linked")
    listing = await service.client.get("/v1/wallets", headers=alice_key)
    assert [w["address"] for w in listing.json()["data"]] == [wallet.address]
    assert (await service.client.get("/v1/wallets", headers=bob_key)).json()["data"] == []


async def test_siwe_expired_and_malformed(service: Service) -> None:
    _, owner = await new_owner(service)
    wallet = Account.create()
    issued = await challenge(service, owner, wallet.address)
    conn = await connect(service.dsn)
    try:
        await conn.execute("UPDATE wallet_challenges SET expires_at = now() - interval '1 second'")
    finally:
        await conn.close()
    expired = await service.client.post(
        "/v1/wallets",
        json={"message": issued["message"], "signature": sign(wallet, issued["message"])},
        headers=owner,
    )
    assert_problem(expired, 400, "wallet_challenge_invalid")
    for body in ({"address": "0x123"}, {"address": "nope"}, {"address": wallet.address, "x": 1}):
        assert_problem(
            await service.client.post("/v1/wallets/challenge", json=body, headers=owner),
            422,
            "validation_failed",
        )
    message = issued["message"]
    bodies = [
        {"message": "no nonce here", "signature": "0x" + "ab" * 65},
        {"message": message, "signature": "0x1234"},
        {"message": message},
    ]
    for body in bodies:
        assert_problem(
            await service.client.post("/v1/wallets", json=body, headers=owner),
            422,
            "validation_failed",
        )
    operator_try = await service.client.post(
        "/v1/wallets/challenge", json={"address": wallet.address}, headers=service.operator
    )
    assert_problem(operator_try, 403, "forbidden")


# --- the watcher --------------------------------------------------------------


async def test_linked_deposit_credited_after_confirmations_only(
    pool: asyncpg.Pool, conn: Conn, chain: Chain
) -> None:
    settings = chain.settings("unused")
    account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name="alice")
    holder = chain.anvil.new_holder(chain.token, 100_000_000)
    await link(pool, account.id, holder.address)
    block = chain.anvil.send(chain.token, holder, chain.treasury, 12_345_678)
    assert chain.anvil.head == block
    # 1 and then 2 confirmations: nothing yet.
    await scan(pool, settings)
    chain.anvil.mine(1)
    await scan(pool, settings)
    assert await balance(conn, account.id) == 0
    chain.anvil.mine(1)  # 3 confirmations
    await scan(pool, settings)
    assert await balance(conn, account.id) == 12_345_678
    chain.anvil.mine(5)
    await scan(pool, settings)
    assert await balance(conn, account.id) == 12_345_678
    assert await journal(conn, account.id) == [("topup_usdc", 12_345_678, USDC)]
    # A transfer to another address is not a deposit.
    chain.anvil.send(chain.token, holder, Account.create().address, 1_000)
    chain.anvil.mine(CONFIRMATIONS)
    await scan(pool, settings)
    assert await conn.fetchval("SELECT count(*) FROM usdc_deposits") == 1
    await assert_invariants(conn)


async def test_unlinked_sender_is_unattributed_until_operator_assigns(
    service: Service, chain: Chain
) -> None:
    account_id, owner = await new_owner(service)
    holder = chain.anvil.new_holder(chain.token, 10_000_000)
    chain.anvil.send(chain.token, holder, chain.treasury, 7_000_000)
    chain.anvil.mine(CONFIRMATIONS)
    conn = await connect(service.dsn)
    try:
        from ledger.db.pool import create_pool

        pool = await create_pool(service.dsn, min_size=1, max_size=2)
        try:
            await scan(pool, chain.settings(service.dsn))
        finally:
            await pool.close()
        listing = await service.client.get(
            "/v1/usdc/deposits?status=unattributed", headers=service.operator
        )
        [deposit] = listing.json()["data"]
        assert (deposit["amount_micros"], deposit["from_address"]) == (
            7_000_000,
            holder.address.lower(),
        )
        assert await balance(conn, account_id) == 0
        assert_problem(
            await service.client.get("/v1/usdc/deposits", headers=owner), 403, "forbidden"
        )
        url = f"/v1/usdc/deposits/{deposit['id']}/assign"
        assert_problem(
            await service.client.post(url, json={"account_id": str(account_id)}, headers=owner),
            403,
            "forbidden",
        )
        assert_problem(
            await service.client.post(
                url, json={"account_id": str(uuid.uuid4())}, headers=service.operator
            ),
            404,
            "not_found",
        )
        body = {"account_id": str(account_id)}
        results = await asyncio.gather(
            *(service.client.post(url, json=body, headers=service.operator) for _ in range(4))
        )
        assert {r.status_code for r in results} == {200}
        assert {r.json()["status"] for r in results} == {"credited"}
        other, _ = await new_owner(service, "bob")
        assert_problem(
            await service.client.post(
                url, json={"account_id": str(other)}, headers=service.operator
            ),
            409,
            "conflict",
        )
        missing = f"/v1/usdc/deposits/{uuid.uuid4()}/assign"
        assert_problem(
            await service.client.post(
                missing, json={"account_id": str(account_id)}, headers=service.operator
            ),
            404,
            "not_found",
        )
        assert await balance(conn, account_id) == 7_000_000
        assert await journal(conn, account_id) == [("topup_usdc", 7_000_000, USDC)]
        alerts = await service.client.get("/v1/usdc/reorg-alerts", headers=service.operator)
        assert (alerts.status_code, alerts.json()["data"]) == (200, [])
        assert_problem(
            await service.client.get("/v1/usdc/reorg-alerts", headers=owner), 403, "forbidden"
        )
        await assert_invariants(conn)
    finally:
        await conn.close()


async def test_reorg_below_depth_credits_nothing(
    pool: asyncpg.Pool, conn: Conn, chain: Chain
) -> None:
    settings = chain.settings("unused")
    account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name="alice")
    holder = chain.anvil.new_holder(chain.token, 100_000_000)
    await link(pool, account.id, holder.address)
    chain.anvil.mine(CONFIRMATIONS)
    await scan(pool, settings)
    chain.anvil.send(chain.token, holder, chain.treasury, 5_000_000)
    chain.anvil.mine(CONFIRMATIONS - 2)  # 2 confirmations, one short
    assert (await scan(pool, settings))[-1] == "idle"
    assert await balance(conn, account.id) == 0
    chain.anvil.reorg(CONFIRMATIONS - 1)  # drops the transfer's block
    chain.anvil.mine(CONFIRMATIONS * 3)
    statuses = await scan(pool, settings)
    assert "deep_reorg" not in statuses
    assert chain.token.functions.balanceOf(chain.treasury).call() == 0
    assert await balance(conn, account.id) == 0
    assert await conn.fetchval("SELECT count(*) FROM usdc_deposits") == 0
    assert await conn.fetchval("SELECT count(*) FROM usdc_reorg_alerts") == 0
    # A transfer after the reorg is credited as usual.
    chain.anvil.send(chain.token, holder, chain.treasury, 1_000_000)
    chain.anvil.mine(CONFIRMATIONS)
    await scan(pool, settings)
    assert await balance(conn, account.id) == 1_000_000
    await assert_invariants(conn)


async def test_reorg_deeper_than_confirmations_is_reported(
    pool: asyncpg.Pool, conn: Conn, chain: Chain
) -> None:
    settings = chain.settings("unused")
    account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name="alice")
    holder = chain.anvil.new_holder(chain.token, 100_000_000)
    await link(pool, account.id, holder.address)
    chain.anvil.send(chain.token, holder, chain.treasury, 5_000_000)
    chain.anvil.mine(CONFIRMATIONS)
    assert (await scan(pool, settings))[-1] == "idle"
    assert await balance(conn, account.id) == 5_000_000
    [dep_id] = [r["id"] for r in await conn.fetch("SELECT id FROM usdc_deposits")]
    chain.anvil.reorg(CONFIRMATIONS + 1)  # replaces the credited transfer's block
    chain.anvil.mine(1)
    assert await scan(pool, settings) == ["deep_reorg"]
    assert await scan(pool, settings) == ["halted"]
    alert = await conn.fetchrow("SELECT * FROM usdc_reorg_alerts")
    assert alert is not None and alert["affected_deposits"] == [str(dep_id)]
    assert alert["found_hash"] != alert["expected_hash"]
    # Nothing is silently undone or credited twice; the ledger stays consistent.
    assert await balance(conn, account.id) == 5_000_000
    # The operator resumes with a rescan: the dropped transfer is not on the new chain,
    # the recorded deposit is not repeated, and the halt is over.
    status = await conn.execute(
        usdc_queries["resume_cursor"],
        CHAIN_ID,
        chain.token.address.lower(),
        chain.treasury.lower(),
        0,
    )
    assert status == "UPDATE 1"
    assert (await scan(pool, settings))[-1] == "idle"
    assert await conn.fetchval("SELECT count(*) FROM usdc_deposits") == 1
    assert await balance(conn, account.id) == 5_000_000
    await assert_invariants(conn)


async def test_restart_mid_stream_misses_and_repeats_nothing(
    pool: asyncpg.Pool, conn: Conn, chain: Chain
) -> None:
    account = await core.create_account(conn, kind=core.AccountKind.customer_wallet, name="alice")
    holder = chain.anvil.new_holder(chain.token, 100_000_000)
    stranger = chain.anvil.new_holder(chain.token, 100_000_000)
    # One transfer per block from here; ranges of two blocks.
    settings = chain.settings(
        "unused", usdc_block_range_max=2, usdc_start_block=chain.anvil.head + 1
    )
    await link(pool, account.id, holder.address)
    amounts = [1_000_000 + i for i in range(8)]
    for amount in amounts:
        chain.anvil.send(chain.token, holder, chain.treasury, amount)
        chain.anvil.send(chain.token, stranger, chain.treasury, 1)
    chain.anvil.mine(CONFIRMATIONS)
    # Watcher 1 scans two bounded ranges, then "crashes".
    first = UsdcWatcher(pool, settings)
    await first.check_chain()
    assert [(await first.step()).status for _ in range(2)] == ["scanned", "scanned"]
    await first.close()
    partial = await balance(conn, account.id)
    assert partial == amounts[0] + amounts[1]  # blocks 1-4 of the stream
    # Watcher 2 resumes from the stored cursor; a third finds nothing new.
    assert (await scan(pool, settings))[-1] == "idle"
    assert await scan(pool, settings) == ["idle"]
    assert await balance(conn, account.id) == sum(amounts)
    assert await conn.fetchval("SELECT count(*) FROM usdc_deposits WHERE status = 'credited'") == 8
    assert (
        await conn.fetchval("SELECT count(*) FROM usdc_deposits WHERE status = 'unattributed'") == 8
    )
    assert sorted(a for _, a, _ in await journal(conn, account.id)) == amounts
    await assert_invariants(conn)


async def test_start_checks_chain_id_and_decimals(pool: asyncpg.Pool, chain: Chain) -> None:
    wrong_chain = UsdcWatcher(pool, chain.settings("unused", usdc_chain_id=1))
    with pytest.raises(UsdcConfigError, match="chain 31337"):
        await wrong_chain.check_chain()
    await wrong_chain.close()
    eighteen = chain.anvil.deploy_token(decimals=18)
    wrong_token = UsdcWatcher(pool, chain.settings("unused", usdc_contract=eighteen.address))
    with pytest.raises(UsdcConfigError, match="18 decimals"):
        await wrong_token.check_chain()
    await wrong_token.close()
    no_contract = UsdcWatcher(
        pool, chain.settings("unused", usdc_contract=Account.create().address)
    )
    with pytest.raises(UsdcConfigError, match="decimals"):
        await no_contract.check_chain()
    await no_contract.close()


async def test_watcher_runs_inside_the_service_and_holds_the_lock(dsn: str, chain: Chain) -> None:
    conn = await connect(dsn)
    try:
        operator_key = await ensure_operator_key(conn)
        account = await core.create_account(
            conn, kind=core.AccountKind.customer_wallet, name="alice"
        )
        holder = chain.anvil.new_holder(chain.token, 10_000_000)
        await conn.execute(
            "INSERT INTO linked_wallets (address, account_id) VALUES ($1, $2)",
            holder.address.lower(),
            account.id,
        )
    finally:
        await conn.close()
    assert operator_key is not None
    port = free_port()
    usdc = chain.settings(dsn)
    settings = dataclasses.replace(
        service_settings(dsn, port),
        **{
            f.name: getattr(usdc, f.name)
            for f in dataclasses.fields(usdc)
            if f.name.startswith("usdc_")
        },
    )
    server = ServerThread(settings)
    server.start()
    conn = await connect(dsn)
    try:
        chain.anvil.send(chain.token, holder, chain.treasury, 3_000_000)
        chain.anvil.mine(CONFIRMATIONS)
        for _ in range(600):  # the watcher polls every second; wait for its credit
            if await balance(conn, account.id) == 3_000_000:
                break
            await asyncio.sleep(0.1)
        assert await balance(conn, account.id) == 3_000_000
        # The service's watcher holds the lock: a second watcher stands by.
        async with watcher_lock(dsn) as held:
            assert held is False
    finally:
        server.stop()
    async with watcher_lock(dsn) as held:
        assert held is True
    try:
        await assert_invariants(conn)
    finally:
        await conn.close()


def test_cli_watch_once_and_resume(chain: Chain, template_dsn: str, pg_admin_dsn: str) -> None:
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = pg_admin_dsn.rpartition("/")[0] + "/" + name

    async def setup() -> uuid.UUID:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "ledger_template"')
        finally:
            await admin.close()
        conn = await connect(dsn)
        try:
            account = await core.create_account(
                conn, kind=core.AccountKind.customer_wallet, name="a"
            )
            return account.id
        finally:
            await conn.close()

    account_id = asyncio.run(setup())
    holder = chain.anvil.new_holder(chain.token, 10_000_000)
    chain.anvil.send(chain.token, holder, chain.treasury, 2_000_000)
    chain.anvil.mine(CONFIRMATIONS)
    env = {**os.environ, "DATABASE_URL": dsn, "USDC_RPC_URL": chain.anvil.url,
           "USDC_CONTRACT": chain.token.address, "USDC_TREASURY": chain.treasury,
           "USDC_CHAIN_ID": str(CHAIN_ID), "USDC_CONFIRMATIONS": str(CONFIRMATIONS),
           "USDC_START_BLOCK": "0"}  # fmt: skip
    ledger = [str(Path(sys.executable).parent / "ledger")]
    done = subprocess.run(
        [*ledger, "usdc", "watch", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("idle")
    resumed = subprocess.run(
        [*ledger, "usdc", "resume", "--from-block", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    again = subprocess.run(
        [*ledger, "usdc", "watch", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    wrong = subprocess.run([*ledger, "usdc", "watch", "--once"], env={**env, "USDC_CHAIN_ID": "5"},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert wrong.returncode == 1 and "chain 31337" in wrong.stderr

    async def check() -> None:
        conn = await connect(dsn)
        try:
            # The rescan found the same deposit again and recorded nothing new.
            assert await conn.fetchval("SELECT count(*) FROM usdc_deposits") == 1
            assert await conn.fetchval("SELECT status FROM usdc_deposits") == "unattributed"
            await assert_invariants(conn)
        finally:
            await conn.close()
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    assert account_id
    asyncio.run(check())
