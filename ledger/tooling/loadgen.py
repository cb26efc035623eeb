"""A small HTTP/1.1 keep-alive load generator on asyncio streams.

`ledger bench` measures the service against baselines taken in the same run, so
the client's own cost is the same for every scenario; a minimal client keeps that
cost low on small machines (a general-purpose client would dominate the CPU).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoadResult", "Request", "closed_loop", "open_loop"]

RESPONSE_HEAD_BYTES_MAX = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.body or self.method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    errors: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    @property
    def rate_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000

    def record(self, status: int, latency_s: float) -> None:
        self.latencies_s.append(latency_s)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, payload: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if len(head) > RESPONSE_HEAD_BYTES_MAX:
            raise ValueError("response head too large")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def closed_loop(
    host: str,
    port: int,
    make_request: Callable[[int, int], Request],
    *,
    clients: int,
    duration_s: float,
) -> LoadResult:
    """`clients` connections, each sending its next request as soon as the last returns."""
    result = LoadResult()
    deadline = time.perf_counter() + duration_s
    hostport = f"{host}:{port}"

    async def client(index: int) -> None:
        conn = _Connection(host, port)
        sequence = 0
        try:
            while time.perf_counter() < deadline:
                payload = make_request(index, sequence).encode(hostport)
                sequence += 1
                started = time.perf_counter()
                try:
                    status = await conn.send(payload)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    conn.close()
                    continue
                result.record(status, time.perf_counter() - started)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def open_loop(
    host: str,
    port: int,
    make_request: Callable[[int, int], Request],
    *,
    rate_per_s: float,
    duration_s: float,
    connections: int,
) -> LoadResult:
    """Requests at a fixed offered rate (latency measured from the scheduled start)."""
    result = LoadResult()
    hostport = f"{host}:{port}"
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Connection(host, port))
    total = int(rate_per_s * duration_s)
    interval = 1.0 / rate_per_s
    started = time.perf_counter()

    async def one(sequence: int, scheduled: float) -> None:
        conn = await pool.get()
        try:
            status = await conn.send(
                make_request(sequence % connections, sequence).encode(hostport)
            )
            result.record(status, time.perf_counter() - scheduled)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            conn.close()
        finally:
            pool.put_nowait(conn)

    tasks = []
    for sequence in range(total):
        scheduled = started + sequence * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(sequence, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait().close()
    return result
