"""The tests use only what the repository holds: a fresh clone with nothing beside
it runs them. No test builds a path above the repository's root."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# `parents[1]` of a file in tests/ is the repository root; anything higher is outside.
ABOVE_ROOT = re.compile(r"parents\[(?:[2-9]|\d\d+)\]|\.\.[/\\]\.\.|[\"']/work/")


def test_no_test_reads_outside_the_repository() -> None:
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ABOVE_ROOT.search(line)
    ]
    assert offenders == []
