"""How deeply a JSON text nests, measured before anything decodes it.

The JSON decoders recurse once per nesting level and are bounded only by the
interpreter's recursion limit, which a dependency raises to 100,000 at import
(`py_ecc`, through the Ethereum libraries): a 64 KiB body of `[[[[…` then
overflows the C stack and kills the whole server process instead of raising.
Every decode of untrusted JSON asks `nests_deeper_than` first.
"""

from __future__ import annotations

import re
from itertools import accumulate

from ledger.limits import JSON_DEPTH_MAX

__all__ = ["nests_deeper_than"]

# A complete JSON string (escapes included); brackets inside one do not count.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1


def nests_deeper_than(text: bytes, depth_max: int = JSON_DEPTH_MAX) -> bool:
    """Whether `text` opens more than `depth_max` arrays or objects at once.

    Counting is in C for the common case (few brackets at all); only a text
    with more brackets than the limit is measured exactly. An unterminated
    string counts its brackets, which can only refuse text that is not JSON.
    """
    if text.count(b"[") + text.count(b"{") <= depth_max:
        return False
    brackets = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > depth_max
