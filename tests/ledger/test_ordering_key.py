"""The ordering key: made with the ledger (kill -9 in between is harmless), and a missing,
foreign or exposed key refuses writes with nothing written while reads and verify still work."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.ledger import EmbeddedLedger
from ehrshare.ledger.errors import EndorseError, OrderingKeyError
from ehrshare.ledger.ordering import KEY_FILE
from ehrshare.ledger.sandbox import Sandbox


def test_kill_9_between_key_and_genesis_leaves_a_ledger_that_opens(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    prog = f"from ehrshare.ledger import EmbeddedLedger; EmbeddedLedger.open({str(directory)!r})"
    env = {**os.environ, "EHRSHARE_FAULT_AT": "ledger.init.after_key"}
    done = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (directory / KEY_FILE).exists()  # written before the genesis block, which is not
    ledger = EmbeddedLedger.open(directory)
    try:
        assert ledger.height() == 1
        report = ledger.verify()
        assert report["height"] == 1
        assert (directory / KEY_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        ledger.close()


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Path:
    sb = Sandbox.open(tmp_path / "sb")
    sb.member("Org1MSP", "alice", "patient")
    sb.close()
    return tmp_path / "sb"


@pytest.mark.parametrize("how", ["missing", "foreign", "readable by others"])
def test_a_bad_ordering_key_refuses_writes_and_writes_nothing(
    sandbox_dir: Path, tmp_path: Path, how: str
) -> None:
    key = sandbox_dir / "ledger" / KEY_FILE
    saved = key.read_bytes()
    if how == "missing":
        key.unlink()
    elif how == "foreign":
        other = EmbeddedLedger.open(tmp_path / "other")
        other.close()
        shutil.copy(tmp_path / "other" / KEY_FILE, key)
    else:
        key.chmod(0o644)
    sb = Sandbox.open(sandbox_dir)
    try:
        before = (sb.ledger.height(), sb.ledger.state_digest())
        report = sb.ledger.verify()  # reading and verifying need no key
        member = sb.member("Org1MSP", "bob", "patient", register=False)
        with pytest.raises(OrderingKeyError) as info:
            member.submit("RegisterIdentity")
        assert not isinstance(info.value, EndorseError)
        expected = {
            "missing": "is missing: the ledger can be read and verified but not written",
            "foreign": "does not belong to the ordering certificate in its genesis block",
            "readable by others": "is readable by others; chmod 600 it",
        }[how]
        assert expected in info.value.message
        assert (sb.ledger.height(), sb.ledger.state_digest()) == before
        assert sb.ledger.verify() == report
    finally:
        sb.close()
    # Put the right key back: the next attempt succeeds.
    key.unlink(missing_ok=True)
    key.write_bytes(saved)
    key.chmod(0o600)
    sb = Sandbox.open(sandbox_dir)
    try:
        sb.member("Org1MSP", "bob", "patient")
        sb.ledger.verify()
    finally:
        sb.close()
