"""The --older-than parser of 'store gc'."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.storemaint import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("2d", 172800),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "1w", "h", "1 h 2", "1e3"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", "s", "m", "h", "d"]))
def test_integer_durations_scale_by_their_unit(n: int, unit: str) -> None:
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{n}{unit}") == n * scale


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    """Nothing but a non-negative number of seconds or ValueError (no other exception)."""
    with contextlib.suppress(ValueError):
        assert parse_duration(text) >= 0
