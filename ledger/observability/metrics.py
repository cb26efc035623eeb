"""Prometheus metrics with the official `prometheus-client`.

Several worker processes: `ledger serve` sets `PROMETHEUS_MULTIPROC_DIR` (a fresh
folder per start, wiped before any worker forks); each worker writes its samples
there and `/metrics`, whichever worker answers, reads them all. The client picks
its storage when it is first imported, so nothing here imports it before `setup()`
(called by the app factory); until then every function is a no-op, which keeps
the CLI and tooling free of it.

Labels are bounded: kinds, outcomes, problem codes and limits come from the code,
routes are path templates, statuses are HTTP codes. No account, credit token,
merchant or tool name is ever a label.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MULTIPROC_ENV",
    "Sample",
    "observe_batch",
    "observe_movement",
    "observe_pool",
    "observe_refusal",
    "observe_request",
    "process_exit",
    "render",
    "setup",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Distinct label sets a metric may hold in this process; beyond it, samples go to
# "other" (a last guard: every label value already comes from a bounded set).
LABEL_SETS_MAX = 2_000

Sample = tuple[str, str, float, dict[str, str]]  # name, help, value, labels


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.movements = Counter(
            "ledger_money_movements_total",
            "Money movements by kind (charge, hold, capture, void, expiry, refund, top-up, "
            "adjustment) and outcome (created; exists = an idempotent replay).",
            ["kind", "outcome"],
        )
        self.amounts = Counter(
            "ledger_money_moved_micros_total",
            "Micro-USD moved by created movements, by kind.",
            ["kind"],
        )
        self.refusals = Counter(
            "ledger_money_refusals_total",
            "Refused money requests by kind, problem code and the limit that refused "
            "(402 budget_exhausted carries one; empty otherwise).",
            ["kind", "code", "limit"],
        )
        self.requests = Histogram(
            "ledger_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.batch_size = Histogram(
            "ledger_charge_batch_size",
            "Requests per verify-and-debit batch (one database round trip).",
            buckets=BATCH_SIZE_BUCKETS,
        )
        self.batch_seconds = Histogram(
            "ledger_charge_batch_duration_seconds",
            "Database time per verify-and-debit batch.",
            buckets=LATENCY_BUCKETS_S,
        )
        self.queue_depth = Gauge(
            "ledger_charge_queue_depth",
            "Charge and hold requests waiting for a batch (summed over live workers).",
            multiprocess_mode="livesum",
        )
        self.pool_in_use = Gauge(
            "ledger_db_pool_connections_in_use",
            "Database connections in use (summed over live workers).",
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "ledger_db_pool_connections",
            "Database connections open (summed over live workers).",
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "ledger_db_pool_connections_max",
            "Most connections a worker's pool may open (summed over live workers).",
            multiprocess_mode="livesum",
        )
        self.pool_waiting = Gauge(
            "ledger_db_pool_waiting",
            "Requests waiting for a database connection (summed over live workers).",
            multiprocess_mode="livesum",
        )
        self.workers = Gauge(
            "ledger_workers", "Live service worker processes.", multiprocess_mode="livesum"
        )
        self.workers.set(1)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= LABEL_SETS_MAX:
                labels = tuple("other" for _ in labels)
                key = (id(metric), *labels)
            found = self._children.get(key) or metric.labels(*labels)
            self._children[key] = found
        return found


_metrics: _Metrics | None = None


def setup() -> None:
    """Create this process's metrics (once); from here on the observe_* functions count."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()


def observe_movement(kind: str, outcome: str, amount_micros: int | None) -> None:
    m = _metrics
    if m is None:
        return
    m.child(m.movements, kind, outcome).inc()
    if outcome == "created" and amount_micros:
        m.child(m.amounts, kind).inc(amount_micros)


def observe_refusal(kind: str, code: str, limit: str) -> None:
    m = _metrics
    if m is not None:
        m.child(m.refusals, kind, code, limit).inc()


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    m = _metrics
    if m is not None:
        m.child(m.requests, route, method, str(status)).observe(seconds)


def observe_batch(size: int, seconds: float, queue_depth: int) -> None:
    m = _metrics
    if m is not None:
        m.batch_size.observe(size)
        m.batch_seconds.observe(seconds)
        m.queue_depth.set(queue_depth)


def observe_pool(*, size: int, idle: int, size_max: int, waiting: int) -> None:
    m = _metrics
    if m is not None:
        m.pool_size.set(size)
        m.pool_in_use.set(size - idle)
        m.pool_max.set(size_max)
        m.pool_waiting.set(waiting)


def process_exit() -> None:
    """A worker stops: its live gauges leave the sums (counters are kept)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if _metrics is not None and directory:
        _mark_process_dead(os.getpid(), directory)


def _mark_process_dead(pid: int, directory: str) -> None:
    from prometheus_client import multiprocess

    mark: Callable[[int, str], None] = multiprocess.mark_process_dead
    mark(pid, directory)


_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _reap_dead_workers(directory: str) -> None:
    """A worker killed outright (SIGKILL, OOM) leaves its live gauges behind; uvicorn has
    no child-exit hook, so the scrape drops the files of processes that are gone."""
    for path in Path(directory).iterdir():
        match = _LIVE_FILE.match(path.name)
        if match is None:
            continue
        pid = int(match[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _mark_process_dead(pid, directory)
        except PermissionError:
            pass


class _Samples:
    """Values read at scrape time (from the database), as gauges."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families: dict[str, Any] = {}
        for name, help_text, value, labels in self.samples:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        yield from families.values()


def render(accept: str, samples: Iterable[Sample] = ()) -> tuple[bytes, str]:
    """The exposition (text format, or OpenMetrics when asked) and its content type."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
    from prometheus_client.exposition import choose_encoder

    setup()
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        _reap_dead_workers(directory)
        collector: Callable[..., object] = multiprocess.MultiProcessCollector
        collector(registry, path=directory)
    else:
        registry.register(_Proxy(REGISTRY))
    registry.register(_Samples(samples))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class _Proxy:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()


def prepare_multiprocess_dir(directory: Path) -> None:
    """Empty (or create) the folder before any worker starts; never while they run."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
