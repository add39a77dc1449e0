"""A hospital app installs the SDK without the simulator's packages (numpy, simpy, ...).

Each test runs a real `ehrshare` process in which those packages cannot be imported, as in an
environment made with a plain `pip install ehrshare`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ehrshare.commands.bench_consensus import BENCH_EXTRA

_WITHOUT_EXTRA = f"""
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {set(BENCH_EXTRA)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
sys.argv = ["ehrshare", *sys.argv[1:]]
from ehrshare.cli import main
main()
"""


def _ehrshare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def test_the_demo_runs_without_the_simulator_packages(tmp_path: Path) -> None:
    done = _ehrshare("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_bench_consensus_names_the_extra_to_install(tmp_path: Path) -> None:
    done = _ehrshare("bench", "consensus", "--quick", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "pip install 'ehrshare[bench]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
