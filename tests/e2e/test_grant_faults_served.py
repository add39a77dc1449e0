"""kill -9 of ``ehrshare grant`` / ``revoke`` with the proxies as ``proxy serve`` processes.

Real ``kgc serve`` / ``proxy serve`` processes on 127.0.0.1 (gRPC, mutual TLS), stopped by pid;
the CLI reaches them as a member would. A served proxy follows the chaincode events: it takes
a re-key delivered ahead of its grant into use on the grant's GrantAccess event, and deletes
the re-key of a grant whose revoking process died before telling it on the RevokeAccess event.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect

pytestmark = pytest.mark.slow

PEOPLE = {"alice": ("HospitalA", "patient"), "baker": ("HospitalB", "clinician")}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "consortium"
    c = Consortium.init(root, services="processes", ports=free_loopback_ports(6))
    for name, (hospital, role) in PEOPLE.items():
        c.add_member(name, hospital, role)
    c.close()
    procs = ServiceProcesses(
        Profile.load(root / "profile.yaml"), root / "run", die_with_parent=True
    )
    try:
        procs.start()
        yield root
    finally:
        started = list(procs.started_pids)
        procs.stop_all()
        assert [pid for pid in started if pid_alive(pid)] == []


def _cli(root: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update({"EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""})
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args, "-p", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _rows(root: Path, table: str) -> list[str]:
    """Grant ids in a table of hospital B's proxy database (the served process owns it)."""
    db = sqlite3.connect(f"file:{root / 'proxy' / 'hospitalb' / 'proxy.db'}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute(f"SELECT grant_id FROM {table}")]
    finally:
        db.close()


def _wait(what: str, condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_served_proxy_follows_what_a_killed_grant_and_revoke_left(services: Path) -> None:
    root = services
    for name in PEOPLE:
        with connect(root / "profile.yaml", name) as s:
            s.enroll(timeout=5)
            s.publish_type_keys(["lab"])
    with connect(root / "profile.yaml", "alice") as alice:
        record_id = alice.put_record(lab_observation()).record_id

    killed = _cli(
        root, "grant", "HospitalBMSP/baker", "lab", "--days", "1", "-w", "alice",
        fault="grant.after_commit",
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The proxy process takes the pending re-key into use on the grant's event.
    _wait("the GrantAccess event", lambda: _rows(root, "pending_rekeys") == [])
    (gid,) = _rows(root, "rekeys")
    got = _cli(root, "record", "get", record_id, "-w", "baker")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["resourceType"] == "Observation"

    killed = _cli(root, "revoke", gid, "-w", "alice", fault="revoke.after_commit")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _wait("the RevokeAccess event", lambda: _rows(root, "rekeys") == [])
    denied = _cli(root, "record", "get", record_id, "-w", "baker")
    assert denied.returncode == 1 and f"grant {gid} is revoked" in denied.stderr
