"""``ehrshare bench e2e`` with tiny repeats: the JSON has every operation and the metadata."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app

OPERATIONS = {
    "put_record_10KB",
    "put_record_10MB",
    "grant",
    "read_record_hop1",
    "read_record_hop3",
}


def test_bench_e2e_json_keys() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "e2e",
            "--json",
            "--repeat",
            "2",
            "--repeat-large",
            "1",
            "--warmup",
            "0",
            "--large-bytes",
            "65536",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["results"]) == OPERATIONS
    for name, stats in data["results"].items():
        assert set(stats) == {"p50_ms", "p95_ms", "n"}, name
        assert stats["p95_ms"] >= stats["p50_ms"] > 0, name
    assert data["results"]["grant"]["n"] == 2
    assert data["results"]["put_record_10MB"]["n"] == 1
    assert data["params"]["large_bytes"] == 65536
    assert {"cpu", "python", "git_commit"} <= set(data["machine"])


@pytest.mark.slow
def test_bench_e2e_with_service_processes() -> None:
    args = ["bench", "e2e", "--json", "--repeat", "2", "--repeat-large", "1", "--warmup", "0"]
    result = CliRunner().invoke(app, [*args, "--large-bytes", "65536", "--services", "processes"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"]["services"] == "processes"
    assert set(data["results"]) == OPERATIONS
    assert data["results"]["read_record_hop3"]["n"] == 2


def test_bench_e2e_refuses_unknown_services() -> None:
    result = CliRunner().invoke(app, ["bench", "e2e", "--services", "docker"])
    assert result.exit_code == 2
    assert "'docker' is not in-process or processes" in result.output
