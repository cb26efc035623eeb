"""Duplicate JSON object keys are found exactly: against a reference parser that
sees every pair, on generated texts with colons and escapes inside strings."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.http.jsonkeys import holds_duplicate_keys

KEYS = st.sampled_from(["a", "b", "a:b", ":", "é", "\u003a", "x\\y"])
SCALARS = st.one_of(st.integers(), st.booleans(), st.none(), st.text(alphabet='ab:"\\é\x01'))


def _text(value: Any, escape: bool) -> str:
    """JSON for `value`, where an object is a list of (key, value) pairs, kept as given."""
    if isinstance(value, tuple):
        pairs = ", ".join(
            f"{json.dumps(k, ensure_ascii=escape)}: {_text(v, escape)}" for k, v in value
        )
        return "{" + pairs + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v, escape) for v in value) + "]"
    return json.dumps(value, ensure_ascii=escape)


TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(KEYS, children), max_size=4).map(tuple),
    ),
    max_leaves=12,
)


def _reference(text: str) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        keys = [k for k, _ in items]
        found = found or len(keys) != len(set(keys))
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found


@settings(max_examples=400, deadline=None)
@given(TREES, st.booleans())
def test_duplicates_found_exactly(tree: Any, escape: bool) -> None:
    text = _text(tree, escape)
    raw = text.encode()
    assert holds_duplicate_keys(raw, msgspec.json.decode(raw)) == _reference(text), text


def test_the_issue_example_and_an_escaped_twin() -> None:
    for text in (b'{"amount_micros": 1, "amount_micros": 2000}', b'{"a": 1, "\\u0061": 2}'):
        assert holds_duplicate_keys(text, msgspec.json.decode(text))
    text = b'{"a": "x:y", "b": [{"c": 1}, {"c": 2}]}'
    assert not holds_duplicate_keys(text, msgspec.json.decode(text))
