"""kill -9 of ``ehrshare grant`` right after GrantAccess committed, on a real Fabric network.

The same chaincode and the same client path as on the embedded ledger (tests/sdk/
test_grant_faults.py): the re-key reaches the proxy before the grant is submitted, so the grant
a killed process left committed is read at once. The shared ``fabric_net`` fixture is a bare
network (admins only); this needs a consortium (KGC nodes, DKG, proxies, enrolled members), so
it builds one with ``Consortium.init(ledger="fabric")`` and checks by pid that it is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.network.supervisor import pid_alive
from ehrshare.provisioning import Consortium

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def _cli(root: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update({"EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""})
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args, "-p", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_a_grant_killed_after_its_commit_is_usable_on_fabric(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        pids = list(c.network.pids().values())
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
        with c.session("alice") as alice:
            record_id = alice.put_record(lab_observation()).record_id

        killed = _cli(
            root, "grant", "HospitalBMSP/baker", "lab", "--days", "1", "-w", "alice",
            fault="grant.after_commit",
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        with c.session("alice") as alice:
            (gid,) = [g.grant_id for g in alice.grants()]
        # Delivered before the commit, not yet taken into use.
        assert c.proxies["HospitalBMSP/proxy"].rekey_status(gid) == "pending"

        got = _cli(root, "record", "get", record_id, "-w", "baker")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["resourceType"] == "Observation"
        assert c.proxies["HospitalBMSP/proxy"].rekey_status(gid) == "held"
        listed = _cli(root, "grant", "list", "--given", "--json", "-w", "alice")
        assert listed.returncode == 0, listed.stderr
        (grant,) = json.loads(listed.stdout)["grants"]
        assert (grant["grant_id"], grant["status"]) == (gid, "active")
        assert grant["proxy"] == "HospitalBMSP/proxy"
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "the network left processes running"
