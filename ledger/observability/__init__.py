"""Logs and metrics: plumbing every room may use (it depends only on `ledger`).

- `context`: the request in flight (its id, when it started, what money it moves).
- `logs`: readable text or JSON lines, and the logging set-up `ledger serve` uses.
- `metrics`: Prometheus metrics (the official client), correct across worker processes.
- `money`: one function per outcome of a money movement or refusal; each writes one
  log line and moves the metrics, so the hot path calls exactly one of them.
"""
