"""JSON nesting is measured before any decoder sees untrusted text: the
decoders recurse per level, bounded only by an interpreter recursion limit that
a dependency raises far beyond what the C stack holds."""

from __future__ import annotations

import pytest

from ledger.http.jsondepth import nests_deeper_than
from ledger.limits import JSON_DEPTH_MAX
from verifier.errors import TokenInvalid
from verifier.tokens import parse_footer


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + b"1" + closer * depth


def test_depth_limit_is_exact() -> None:
    assert not nests_deeper_than(nested(JSON_DEPTH_MAX))
    assert nests_deeper_than(nested(JSON_DEPTH_MAX + 1))
    objects = b'{"a":' * (JSON_DEPTH_MAX + 1) + b"1" + b"}" * (JSON_DEPTH_MAX + 1)
    assert nests_deeper_than(objects)
    # Many brackets side by side are wide, not deep.
    assert not nests_deeper_than(b"[" + b"[1]," * 1000 + b"[1]]")
    assert not nests_deeper_than(b"")


def test_brackets_inside_strings_do_not_count() -> None:
    assert not nests_deeper_than(b'{"a": "' + b"[" * 100 + b'"}')
    # An escaped quote does not end the string...
    assert not nests_deeper_than(b'{"a": "\\"' + b"[" * 100 + b'"}')
    # ...but an escaped backslash before a quote does.
    after_string = b'{"a": "\\\\", "b": ' + nested(40) + b"}"
    assert nests_deeper_than(after_string)


def test_deep_footer_is_token_invalid_not_a_crash() -> None:
    with pytest.raises(TokenInvalid):
        parse_footer(b'{"kid": "k4.pid.x", "x": ' + nested(30_000) + b"}")
