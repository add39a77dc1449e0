"""``store check`` / ``store gc`` and a ``kgc reshare`` killed mid-way, on a real Fabric network.

The store commands list every record version with the chaincode's ``ListRecordVersions`` (an
org admin or auditor wallet), the same query on both backends; a ``record put`` killed after its
store write leaves an orphan that check reports and gc removes. A ``kgc reshare`` killed with
``kill -9`` after a node made its final share current loses nothing: the record still reads and
the next resharing succeeds with the same master key. One network serves both (building one
takes minutes); it is stopped at the end and its pids are checked gone.
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

HOSPITALS = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")


def _cli(root: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update({"EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": "", "COLUMNS": "200"})
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args, "-p", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def _check(root: Path, code: int) -> dict[str, object]:
    done = _cli(root, "store", "check", "--json")
    assert done.returncode == code, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def _reads(c: Consortium, record_id: str) -> bool:
    with c.session("pat") as pat:
        return bool(pat.read_record(record_id).status == "final")  # type: ignore[attr-defined]


def test_store_check_gc_and_a_killed_reshare_on_fabric(tmp_path: Path) -> None:
    root = tmp_path / "c"
    obs = tmp_path / "obs.json"
    obs.write_text(json.dumps(lab_observation(7.0)), encoding="utf-8")
    with Consortium.init(root, hospitals=HOSPITALS, committee=3, ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        pids = list(c.network.pids().values())
        c.add_member("pat", "HospitalA", "patient")
        with c.session("pat") as pat:
            pat.enroll()
            pat.publish_type_keys(["lab"])
            record = pat.put_record(lab_observation()).record_id

        # store check and gc on Fabric: one record version, then an orphan of a killed put.
        report = _check(root, 0)
        assert (report["clean"], report["record_versions"], report["ciphertexts"]) == (True, 1, 1)
        killed = _cli(root, "record", "put", str(obs), "-w", "pat", fault="put.after_store")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        report = _check(root, 5)
        orphans = report["orphans"]
        assert isinstance(orphans, list) and len(orphans) == 1
        refused = _cli(root, "store", "check", "-w", "pat")
        assert refused.returncode == 1, refused.stderr
        assert "this needs role admin or auditor" in refused.stderr
        assert "Traceback" not in refused.stderr
        gc = _cli(root, "store", "gc", "--older-than", "0", "--json")
        assert gc.returncode == 0, gc.stderr
        assert json.loads(gc.stdout)["removed"] == [orphans[0]["cid"]]
        assert _check(root, 0)["record_versions"] == 1
        assert _reads(c, record)

        # kgc reshare killed after a node made its final share current.
        first = c.dkg_result()
        died = _cli(
            root, "kgc", "reshare", "--remove", "2", "--add", "4", "-w", "admin",
            fault="reshare.promoted",
        )  # fmt: skip
        assert died.returncode == -signal.SIGKILL, died.stderr
        assert c.dkg_result()["mpk"] == first["mpk"]
        assert _reads(c, record)
        again = _cli(root, "kgc", "reshare", "--json", "-w", "admin")
        assert again.returncode == 0, again.stderr
        state = json.loads(again.stdout)
        assert state["result"]["final"] is True
        assert c.dkg_result()["mpk"] == first["mpk"]
        assert c.dkg_result()["nonce"] == state["nonce"]
        assert _reads(c, record)
        # A fresh process (this one's in-process nodes still hold the old shares in memory)
        # enrols with τ partial keys of the new committee and reads.
        enrolled = _cli(root, "enroll", "-w", "pat")
        assert enrolled.returncode == 0, enrolled.stderr
        got = _cli(root, "record", "get", record, "-w", "pat")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["resourceType"] == "Observation"
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "the network left processes running"
