"""The README's Python samples, exactly as written there, run against a real service:
the paid MCP server as its own process, the agent as its own process calling it
with a real MCP client, so the samples cannot rot."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ledger.db.embedded import free_port
from tests.conftest import Service
from tests.helpers import assert_invariants
from tests.test_charges_api import new_market
from verifier.sdk.agent import AgentClient

README = Path(__file__).resolve().parents[1] / "README.md"
SAMPLE = re.compile(r"```python\n(.*?)```", re.DOTALL)
START_TIMEOUT_S = 60


def readme_samples() -> dict[str, str]:
    """Each Python sample of the README by the file name its first line gives it."""
    samples = {}
    for code in SAMPLE.findall(README.read_text()):
        first = code.splitlines()[0]
        match = re.match(r"# (\w+\.py)\b", first)
        assert match, f"a README Python sample starts with `# <file>.py`: {first!r}"
        samples[match[1]] = code
    return samples


def test_every_sample_is_run_below() -> None:
    assert set(readme_samples()) == {"paid_tools.py", "agent.py"}


def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the README's MCP server did not start")


async def test_readme_mcp_server_and_agent_run_as_written(service: Service, tmp_path: Path) -> None:
    samples = readme_samples()
    for name, code in samples.items():
        (tmp_path / name).write_text(code)
    market = await new_market(service, funds=100_000)
    token = (await market.mint(cap_micros=90_000, max_per_call_micros=50_000))["token"]
    port = free_port()
    env = {**os.environ, "LEDGER_URL": service.url, "PYTHONUNBUFFERED": "1"}
    # The service runs in its own thread and loop: blocking this one is harmless.
    server = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "paid_tools.py"],
        cwd=tmp_path,
        env={**env, "LEDGER_MERCHANT_KEY": market.merchant_key, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_listening(port, server)
        tool_url = f"http://127.0.0.1:{port}/mcp"
        agent = subprocess.run(  # noqa: ASYNC221
            [sys.executable, "agent.py"],
            cwd=tmp_path,
            env={**env, "CREDIT_TOKEN": token, "TOOL_URL": tool_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert agent.returncode == 0, agent.stderr
        assert agent.stdout.strip() == "results for ledgers (paid 2000 micro-USD)"
        # The metered tool, from a real MCP client here: a hold, then a capture.
        async with AgentClient(service.url, token) as client, client.mcp(tool_url) as tools:
            text = " ".join(["word"] * 30)
            meta = client.mcp_meta(idempotency_key=f"readme-{uuid.uuid4().hex}")
            result = await tools.call_tool("summarize", {"text": text}, meta=meta)
        assert not result.is_error, result
        assert (await market.account())["balance_micros"] == 100_000 - 2_000 - 30 * 1_000
    finally:
        server.terminate()
        server.communicate(timeout=30)
    await assert_invariants(service.dsn)
