"""Depth of untrusted JSON text, found without parsing it (ehrshare.jsontext)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.jsontext import TooDeep, loads_untrusted, too_deep

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\:, '),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(JSON)
def test_the_scan_agrees_with_the_parsed_depth(value: Any) -> None:
    text = json.dumps(value)  # brackets and quotes inside strings must not count
    depth = _depth(value)
    assert not too_deep(text, depth)
    assert too_deep(text, depth - 1) is (depth > 0)
    assert loads_untrusted(text, max_depth=max(depth, 1)) == value


def test_deep_text_is_refused_unparsed_even_with_a_raised_recursion_limit() -> None:
    program = (
        "import sys\n"
        "sys.setrecursionlimit(10**7)\n"
        "from ehrshare.jsontext import TooDeep, loads_untrusted\n"
        "try:\n"
        "    loads_untrusted('[' * 400000 + ']' * 400000)\n"
        "except TooDeep as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "refused: nested more than 100 levels deep" in done.stdout


def test_text_that_is_not_json_is_left_to_the_parser() -> None:
    with pytest.raises(ValueError) as bad:
        loads_untrusted("{not json")
    assert not isinstance(bad.value, TooDeep)


def test_the_test_session_recurses_as_production_does() -> None:
    # tests/conftest.py puts back the limit a test dependency (py_ecc) raises on import
    assert sys.getrecursionlimit() <= 1000
