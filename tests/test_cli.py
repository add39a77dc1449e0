"""The command line is reachable both as `ehrshare` and as `python -m ehrshare`."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from ehrshare.cli import app


def test_help_lists_bench_group() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "bench" in result.output


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ehrshare", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "Usage" in out.stdout
    assert "bench" in out.stdout


def test_unknown_command_exits_with_usage_error() -> None:
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2
