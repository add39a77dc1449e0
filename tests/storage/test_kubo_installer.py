"""The Kubo installer's decisions that need no build: cached binary, missing Go, CLI usage."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ehrshare.network.kubo import (
    KuboDaemon,
    KuboDaemonError,
    KuboInstallError,
    install_kubo,
    installed_version,
    kubo_binary,
    main,
)


def fake_ipfs(bin_dir: Path, version: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    binary = kubo_binary(bin_dir)
    binary.write_text(f"#!/bin/sh\necho {version}\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_a_binary_of_the_pinned_version_is_kept(tmp_path: Path) -> None:
    binary = fake_ipfs(tmp_path, "0.39.0")
    assert install_kubo(tmp_path, go="no-such-go-command") == binary


def test_a_wrong_version_needs_a_build_and_a_missing_go_says_so(tmp_path: Path) -> None:
    fake_ipfs(tmp_path, "0.38.0")
    assert installed_version(kubo_binary(tmp_path)) == "0.38.0"
    with pytest.raises(KuboInstallError, match="'no-such-go-command' is not on PATH"):
        install_kubo(tmp_path, go="no-such-go-command")


def test_absent_binary_has_no_version(tmp_path: Path) -> None:
    assert installed_version(tmp_path / "ipfs") is None


def test_script_entry_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "usage: python -m ehrshare.network.kubo install" in capsys.readouterr().err


def test_a_hanging_ipfs_command_names_itself_and_the_log(tmp_path: Path) -> None:
    # A repo locked by another process makes `ipfs init`/`config` wait; the error must say which
    # command hung and where its log is, not surface a bare subprocess.TimeoutExpired.
    binary = tmp_path / "bin" / "ipfs"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexec sleep 30\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    daemon = KuboDaemon(tmp_path / "repo", binary=binary, command_timeout=0.5)
    with pytest.raises(KuboDaemonError, match=r"`ipfs init --profile=test` did not finish") as err:
        daemon.init()
    assert str(daemon.log_path) in str(err.value)
    assert daemon.pid is None  # nothing was left running under this object
