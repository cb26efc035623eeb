"""Named SQL blocks loaded once from `.sql` files.

A file holds blocks introduced by `-- name: <name>` followed by comment lines (the
block's documentation) and the statement. Code says `queries["post_transfer"]`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

__all__ = ["load_queries"]

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = body.strip()
        assert name not in queries, f"duplicate query name {name}"
        assert statement, f"empty query {name}"
        queries[name] = statement
    return queries


def load_queries(package: str, filename: str) -> Mapping[str, str]:
    text = resources.files(package).joinpath("sql").joinpath(filename).read_text(encoding="utf-8")
    return MappingProxyType(parse_queries(text))
