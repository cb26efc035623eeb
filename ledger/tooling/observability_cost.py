"""What logging and metrics add to one charge, in CPU time (best of several runs).

    python -m ledger.tooling.observability_cost            # text lines
    LEDGER_LOG_FORMAT=json python -m ledger.tooling.observability_cost

Times what the hot path runs per charge: the request context and request-id header
(`ledger.http.observe`), the money facts noted on the way (`money.note`, twice), the
money line and its counters (`money.moved`), the batch histogram share and the
per-route latency histogram, with the log line formatted and written to a file
(/dev/null) as `ledger serve` writes it to stderr, and metrics in multiprocess mode
(files in a temporary folder) as under `ledger serve`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import timeit
import uuid
from pathlib import Path

RUNS = 5
CALLS = 20_000


def main() -> None:
    directory = tempfile.mkdtemp(prefix="ledger-metrics-cost-")
    from ledger.observability import metrics

    metrics.prepare_multiprocess_dir(Path(directory))
    from ledger.observability import context, money
    from ledger.observability.logs import formatter_for

    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(formatter_for(os.environ.get("LEDGER_LOG_FORMAT", "text")))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    metrics.setup()
    ids = [uuid.uuid4() for _ in range(4)]

    def one_charge() -> None:
        ctx = context.RequestContext(context.accept_request_id(b"req-1234"), "charge")
        token = context.enter(ctx)
        money.note(merchant_id=ids[0], tool="search", amount_micros=2_000)
        money.note(token_id=ids[1], account_id=ids[2])
        money.moved(
            "charge",
            "created",
            id=ids[3],
            merchant_id=ids[0],
            account_id=ids[2],
            token_id=ids[1],
            tool="search",
            amount_micros=2_000,
        )
        metrics.observe_batch(1, 0.001, 0)
        context.leave(token)
        metrics.observe_request("/v1/charges", "POST", 201, 0.002)

    def bare() -> None:
        pass

    cost = min(timeit.repeat(one_charge, number=CALLS, repeat=RUNS)) / CALLS
    floor = min(timeit.repeat(bare, number=CALLS, repeat=RUNS)) / CALLS
    print(
        f"logging + metrics per charge: {(cost - floor) * 1e6:.1f} µs CPU "
        f"({os.environ.get('LEDGER_LOG_FORMAT', 'text')} lines, multiprocess metrics)"
    )
    logging.disable(logging.INFO)
    quiet = min(timeit.repeat(one_charge, number=CALLS, repeat=RUNS)) / CALLS
    print(f"metrics only (money lines off):  {(quiet - floor) * 1e6:.1f} µs CPU")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
