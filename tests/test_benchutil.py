"""Percentiles and summaries used by every benchmark."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.table import Table

from ehrshare.benchutil import machine_metadata, percentile, print_result, summarize


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 3.0], 100) == 3.0


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_percentiles_are_ordered_and_bounded(xs: list[float]) -> None:
    s = summarize(xs)
    assert min(xs) <= s["median_ms"] <= s["p95_ms"] <= s["p99_ms"] <= max(xs)


def test_machine_metadata_names_the_machine() -> None:
    meta = machine_metadata()
    for key in ("cpu", "cpu_count", "python", "timestamp", "platform"):
        assert meta[key]


def test_print_result_json_only_prints_nothing_but_the_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = Table(title="should-not-appear")
    print_result({"benchmark": "x", "value": 1.5}, json_only=True, tables=[table])
    out = capsys.readouterr().out
    assert json.loads(out) == {"benchmark": "x", "value": 1.5}
    assert "should-not-appear" not in out


def test_print_result_shows_tables_before_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    table = Table()
    table.add_column("operation")
    table.add_row("encrypt-row")
    print_result({"benchmark": "x"}, json_only=False, tables=[table, "a verdict line"])
    out = capsys.readouterr().out
    assert out.index("encrypt-row") < out.index("a verdict line") < out.index('"benchmark"')
    assert json.loads(out[out.index("{") :]) == {"benchmark": "x"}
