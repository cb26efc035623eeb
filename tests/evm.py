"""A real local EVM node (Anvil, from the npm package `@foundry-rs/anvil`) and a real
6-decimals ERC-20 written in Vyper, compiled at test time."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from ledger.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = 31337


ANVIL_PACKAGE = "@foundry-rs/anvil"
NPM_INSTALL_TIMEOUT_S = 600


def _find_anvil() -> str | None:
    candidates = [os.environ.get("ANVIL_BIN", "")]
    candidates += sorted(glob.glob(str(ROOT / ".tools/node_modules/@foundry-rs/anvil-*/bin/anvil")))
    candidates += [str(ROOT / ".tools/node_modules/.bin/anvil"), shutil.which("anvil") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def anvil_binary() -> str:
    """ANVIL_BIN, the project-local npm install (`.tools/`), or `anvil` on PATH.

    The test set-up installs the npm package into `.tools/` on first use, so the
    README's one test command is all a fresh machine needs (plus Node.js/npm).
    """
    found = _find_anvil()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("Anvil not found and npm is missing: install Node.js, or set ANVIL_BIN")
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(ROOT / ".tools"),
            "--no-audit",
            "--no-fund",
            ANVIL_PACKAGE,
        ],
        check=True,
        capture_output=True,
        timeout=NPM_INSTALL_TIMEOUT_S,
    )
    found = _find_anvil()
    if found is None:
        raise RuntimeError(f"`npm install {ANVIL_PACKAGE}` did not provide an anvil binary")
    return found


@functools.cache
def token_artifact() -> tuple[list[dict[str, Any]], str]:
    from vyper.compiler import compile_code

    source = (Path(__file__).parent / "contracts" / "usdc.vy").read_text()
    out = compile_code(source, output_formats=["abi", "bytecode"])
    return out["abi"], out["bytecode"]


class Anvil:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port),
             "--chain-id", str(CHAIN_ID), "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.w3 = Web3(Web3.HTTPProvider(self.url))
        for _ in range(500):
            try:
                _ = self.w3.eth.block_number
                break
            except Exception:
                if self.process.poll() is not None:
                    raise RuntimeError("anvil exited at start") from None
                time.sleep(0.02)
        else:
            raise RuntimeError("anvil did not start")
        self.deployer = self.w3.eth.accounts[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def rpc(self, method: str, params: list[Any]) -> Any:
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        assert "error" not in response, response
        return response.get("result")

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def reorg(self, depth: int) -> None:
        """Replace the last `depth` blocks with empty ones (their transactions are dropped)."""
        self.rpc("anvil_reorg", [depth, []])

    @property
    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def deploy_token(self, decimals: int = 6) -> Any:
        abi, bytecode = token_artifact()
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        tx = factory.constructor(decimals).transact({"from": self.deployer})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=abi)

    def new_holder(self, token: Any, amount: int) -> Any:
        """A fresh key with `amount` tokens and some ether for gas."""
        holder = Account.create()
        self.rpc("anvil_setBalance", [holder.address, hex(10**20)])
        tx = token.functions.mint(holder.address, amount).transact({"from": self.deployer})
        self.w3.eth.wait_for_transaction_receipt(tx)
        return holder

    def send(self, token: Any, holder: Any, to: str, amount: int) -> int:
        """Transfer from `holder` (signed locally); return the block it landed in."""
        tx = token.functions.transfer(to, amount).build_transaction({
            "from": holder.address, "nonce": self.w3.eth.get_transaction_count(holder.address),
            "chainId": CHAIN_ID,
        })  # fmt: skip
        signed = holder.sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        )
        assert receipt["status"] == 1
        return int(receipt["blockNumber"])
