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


# `make check-tools` / `make prereqs` against a PATH of stand-ins: the real programs are not
# needed (the check asks only whether each is there and, for go, its version), and a stand-in
# apt-get records what it was asked instead of installing anything.
TOOLS = ("ip", "mvn", "javac", "node", "npm")


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _tools_path(
    tmp_path: Path, *, without: tuple[str, ...] = (), go: str = "1.22.5", uid: int = 0
) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in TOOLS:
        if name not in without:
            _stub(bin_dir / name, "exit 0")
    if "go" not in without:
        _stub(bin_dir / "go", f'echo "go version go{go} linux/amd64"')
    _stub(bin_dir / "id", f"echo {uid}")
    return bin_dir


def _make(bin_dir: Path, target: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: the Makefile cannot be checked")
    return subprocess.run(
        [make, "--no-print-directory", target],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_tools_without_maven_names_the_package_and_installs_nothing(
    tmp_path: Path,
) -> None:
    bin_dir = _tools_path(tmp_path, without=("mvn",))
    log = tmp_path / "apt.log"
    _stub(bin_dir / "apt-get", f'echo "$@" >> {log}')
    done = _make(bin_dir, "check-tools")
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        "make tools needs these Debian packages, not installed here: maven"
    )
    assert "apt-get install -y --no-install-recommends maven" in done.stderr
    assert "Traceback" not in done.stderr
    assert not log.exists()


def test_check_tools_passes_when_everything_is_there(tmp_path: Path) -> None:
    done = _make(_tools_path(tmp_path), "check-tools")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "==> make tools prerequisites: ip, mvn, javac, node, npm, go 1.22"


def test_prereqs_as_root_with_apt_installs_the_missing_packages(tmp_path: Path) -> None:
    bin_dir = _tools_path(tmp_path, without=("mvn", "ip", "go"))
    log = tmp_path / "apt.log"
    # The stand-in apt-get "installs" by putting stand-ins of the programs on PATH.
    chmod = shutil.which("chmod")
    _stub(
        bin_dir / "apt-get",
        f'echo "$@" >> {log}\n'
        f'case "$1" in install) for p in mvn ip; do printf "#!/bin/sh\\n" > {bin_dir}/$p; '
        f'{chmod} 755 {bin_dir}/$p; done; printf "#!/bin/sh\\necho go version go1.24.1 x\\n" '
        f"> {bin_dir}/go; {chmod} 755 {bin_dir}/go;; esac",
    )
    done = _make(bin_dir, "prereqs")
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "update -q",
        "install -y -q --no-install-recommends iproute2 maven golang-go",
    ]
    assert "go 1.24" in done.stdout


@pytest.mark.parametrize(("uid", "apt"), [(1000, True), (0, False)])
def test_prereqs_that_cannot_install_stop_with_one_message(
    tmp_path: Path, uid: int, apt: bool
) -> None:
    bin_dir = _tools_path(tmp_path, without=("node", "npm"), uid=uid)
    log = tmp_path / "apt.log"
    if apt:
        _stub(bin_dir / "apt-get", f'echo "$@" >> {log}')
    done = _make(bin_dir, "prereqs")
    assert done.returncode != 0
    assert "not installed here: nodejs npm" in done.stderr
    assert not log.exists()


def test_prereqs_refuse_a_go_too_old_for_the_kubo_build(tmp_path: Path) -> None:
    done = _make(_tools_path(tmp_path, go="1.19.8"), "check-tools")
    assert done.returncode != 0
    assert "make tools needs Go 1.21 or newer" in done.stderr
    assert "go version go1.19.8" in done.stderr
