"""JSON text from outside (a record to store, an exported audit trail, a head file, a client's
proposal) checked for depth *before* it is parsed.

Python's C JSON decoder recurses once per nesting level. With the interpreter's default
recursion limit a deep document ends in a ``RecursionError``; with a raised limit (a library may
raise it: py_ecc does, to 100,000) it can overflow the C stack and kill the process. A linear
scan of the text, which cannot recurse, refuses such input first.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["MAX_DEPTH", "TooDeep", "loads_untrusted", "too_deep"]

#: Deeper than any document ehrshare reads (a FHIR resource nests a few levels; a trail two).
MAX_DEPTH: Final = 100

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class TooDeep(ValueError):
    """The JSON text nests arrays and objects deeper than allowed; it was not parsed."""


def too_deep(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep, found without
    parsing it (brackets inside strings do not count; malformed text is left to the parser)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_untrusted(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for text from outside: :class:`TooDeep` (a ``ValueError``) for text nested
    more than ``max_depth`` deep, ``json.JSONDecodeError`` (also a ``ValueError``) for text that
    is not JSON."""
    if too_deep(text, max_depth):
        raise TooDeep(f"nested more than {max_depth} levels deep")
    return json.loads(text)
