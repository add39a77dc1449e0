"""`make demo` says what it does while it installs: a line before each step and pip's own
progress (not --quiet). Checked with `make -n` (a dry run: nothing is created or installed)
against a virtual environment that does not exist, so the install recipe is what make would run;
once installed, `make demo` runs only the demo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(*args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.fail("make is not installed: the Makefile cannot be checked")
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.splitlines()


def test_make_demo_on_a_fresh_machine_announces_each_install_step(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    lines = _dry_run("demo", f"VENV={venv}")
    installs = [line for line in lines if " -m pip install " in line]
    assert len(installs) == 2, lines
    assert all("--quiet" not in line and " -q" not in line for line in installs), installs
    assert all("--progress-bar on" in line for line in installs), installs
    # A line saying what comes next before each step, and the demo last.
    echoes = [line for line in lines if line.startswith("echo ")]
    assert echoes == [
        f'echo "==> creating the virtual environment {venv}"',
        'echo "==> upgrading pip"',
        'echo "==> installing ehrshare and its dependencies (about 2 minutes the first time)"',
        f'echo "==> installed into {venv}"',
        'echo "==> running the demo"',
    ]
    assert lines.index(echoes[1]) < lines.index(installs[0]) < lines.index(echoes[2])
    assert lines.index(echoes[2]) < lines.index(installs[1])
    assert lines[-1] == f"{venv}/bin/ehrshare demo"
    assert not venv.exists()


def test_make_demo_once_installed_only_runs_the_demo(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".installed"
    stamp.touch()  # newer than pyproject.toml
    lines = _dry_run("demo", f"VENV={venv}")
    assert lines == ['echo "==> running the demo"', f"{venv}/bin/ehrshare demo"]
