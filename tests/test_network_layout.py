"""Where the network is (issue 14, move 4): everything that starts Fabric, IPFS and the services
lives in ``ehrshare.network``; one module starts processes; one module knows where binaries are."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from ehrshare.network import binaries
from ehrshare.network.binaries import (
    BinaryDirUnknown,
    fabric_bin_dir,
    find_binary,
    kubo_bin_dir,
)
from ehrshare.network.fabric import FabricNet
from ehrshare.network.supervisor import log_tail

SDK = Path(__file__).resolve().parents[1] / "sdk" / "ehrshare"


def _calls(path: Path) -> set[str]:
    """Dotted names this module calls (``subprocess.Popen``, ``os.execvp`` …)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            names.add(f"{func.value.id}.{func.attr}")
    return names


@pytest.mark.parametrize("old", ["ehrshare.fabricnet", "ehrshare.processes", "ehrshare.netctl"])
def test_the_old_top_level_modules_are_gone(old: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_only_the_supervisor_starts_long_running_processes() -> None:
    starters = sorted(
        str(p.relative_to(SDK))
        for p in SDK.rglob("*.py")
        if "subprocess.Popen" in _calls(p) or "PDEATHSIG" in p.read_text(encoding="utf-8")
    )
    assert starters == ["network/supervisor.py"]


def test_no_module_of_the_network_package_is_a_several_modules() -> None:
    sizes = {
        str(p.relative_to(SDK)): len(p.read_text(encoding="utf-8").splitlines())
        for p in (SDK / "network").rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > 650} == {}


def test_fabric_net_is_one_type_across_its_modules() -> None:
    owners = {cls.__module__ for cls in FabricNet.__mro__ if cls is not object}
    assert owners == {
        "ehrshare.network.fabric.launcher",
        "ehrshare.network.fabric.material",
        "ehrshare.network.fabric.channel",
        "ehrshare.network.fabric.layout",
    }


# --- one binary lookup ---------------------------------------------------------------------------


def test_the_variables_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(tmp_path / "fabric"))
    monkeypatch.setenv("EHRSHARE_BIN_DIR", str(tmp_path / "tools"))
    assert fabric_bin_dir() == tmp_path / "fabric"
    assert kubo_bin_dir() == tmp_path / "tools"
    assert find_binary("peer") == tmp_path / "fabric" / "peer"
    assert find_binary("osnadmin") == tmp_path / "fabric" / "osnadmin"
    assert find_binary("ipfs") == tmp_path / "tools" / "ipfs"


def test_a_source_checkout_gives_its_build_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRSHARE_FABRIC_BIN", raising=False)
    monkeypatch.delenv("EHRSHARE_BIN_DIR", raising=False)
    repo = binaries.source_checkout()
    assert repo is not None and (repo / "pyproject.toml").is_file()
    assert fabric_bin_dir() == repo / "network" / "build" / "fabric23" / "bin"
    assert kubo_bin_dir() == repo / "network" / "build" / "bin"


def test_without_a_checkout_fabric_needs_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EHRSHARE_FABRIC_BIN", raising=False)
    monkeypatch.delenv("EHRSHARE_BIN_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(binaries, "source_checkout", lambda: None)
    with pytest.raises(BinaryDirUnknown, match="EHRSHARE_FABRIC_BIN") as caught:
        fabric_bin_dir()
    assert caught.value.exit_code == 3
    # Kubo has a place of its own to be built in: the user's cache.
    assert kubo_bin_dir() == tmp_path / ".cache" / "ehrshare" / "bin"


def test_an_unknown_binary_is_refused() -> None:
    with pytest.raises(ValueError, match="'docker' is not a network binary"):
        find_binary("docker")


# --- one log tail ------------------------------------------------------------------------------


def test_a_python_service_that_died_is_named_by_its_fatal_line(tmp_path: Path) -> None:
    log = tmp_path / "kgc1.stderr"
    log.write_text("starting\nFatal Python error: Segmentation fault\n\nThread 0x01:\n  File x\n")
    assert log_tail(log, lines=5) == (
        f"{log}: Fatal Python error: Segmentation fault (then 3 more lines)"
    )
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert log_tail(empty) == f"{empty}: (empty)"
