"""Resharing across separately started KGC node processes (``ehrshare kgc serve`` following
events), opened with ``ehrshare kgc reshare`` (issue 12).

Four hospitals; the first three nodes hold the key. In order: node 4 joins while node 3 is
killed (kill -9, the ``reshare.sealed`` fault point) after sealing its new share and before
publishing its view — until the result is final every node's old share stays current and on
disk; node 3 restarted publishes its view, the result becomes final and every node answers under
it with the same mpk. Then node 2 leaves (``--remove 2 --wait``) and destroys its share. Records
written before read throughout; new members enrol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.slow

NODES = ("kgc1", "kgc2", "kgc3", "kgc4")
HOSPITALS = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")


@dataclass
class Cluster:
    root: Path
    consortium: Consortium
    procs: ServiceProcesses
    record: str

    def cli(self, *args: str, wallet: str = "admin") -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ehrshare", *args, "--profile", str(self.root)]
        return subprocess.run(
            [*cmd, "--wallet", wallet], capture_output=True, text=True, timeout=180
        )

    def session_state(self, nonce: str) -> dict[str, Any]:
        with self.consortium.session("admin") as s:
            state: dict[str, Any] = json.loads(
                s.contract.evaluate_transaction("GetDKGSession", nonce)
            )
        return state

    def state_dir(self, node: str) -> Path:
        return self.root / "kgc" / f"node{node[-1]}"

    def current(self, node: str) -> str | None:
        pointer = self.state_dir(node) / "current-session"
        return pointer.read_text().strip() if pointer.exists() else None

    def sealed(self, node: str, nonce: str) -> bool:
        return (self.state_dir(node) / f"dkg-{nonce}.sealed").is_file()

    def reads(self) -> None:
        got = self.cli("record", "get", self.record, "--json", wallet="pat")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["status"] == "final"


def _until(what: str, check: Any, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {limit:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("reshprocs")
    root = base / "c"
    Consortium.init(
        root,
        hospitals=HOSPITALS,
        committee=3,
        services="processes",
        ports=free_loopback_ports(8),
    ).close()
    procs = ServiceProcesses(Profile.load(root / "profile.yaml"), base / "run")
    consortium = Consortium.open(root / "profile.yaml")
    try:
        procs.start(*NODES, *(n for n in procs.commands if n.startswith("proxy")))
        consortium.add_member("pat", "HospitalA", "patient")
        consortium.add_member("doc", "HospitalA", "clinician")
        for name in ("pat", "doc"):
            with consortium.session(name) as s:
                s.enroll(timeout=10.0)
                s.publish_type_keys()
        with consortium.session("doc") as doc:
            record = doc.put_record(lab_observation(), patient="HospitalAMSP/pat").record_id
        yield Cluster(root, consortium, procs, record)
    finally:
        procs.stop_all()
        consortium.close()


def test_a_node_killed_mid_reshare_keeps_its_old_share_until_the_result_is_final(
    cluster: Cluster,
) -> None:
    c = cluster
    old = c.consortium.dkg_result()
    first = old["nonce"]
    c.procs.stop("kgc3")
    os.environ[FAULT_ENV] = "reshare.sealed"
    try:
        c.procs.start("kgc3")
    finally:
        del os.environ[FAULT_ENV]
    # τ=4 of 4: the result cannot become final without node 3's view.
    opened = c.cli(
        "kgc", "reshare", "--add", "4", "--threshold", "4", "--phase-timeout", "30", "--json"
    )
    assert opened.returncode == 0, opened.stderr
    nonce = json.loads(opened.stdout)["nonce"]
    _until("kgc3 died after sealing its new share", lambda: c.sealed("kgc3", nonce))
    assert c.procs.stop("kgc3", kill=True) == -9
    _until(
        "the other new members published", lambda: c.session_state(nonce)["result"]["views"] == 3
    )
    state = c.session_state(nonce)
    assert state["result"]["final"] is False
    # Nothing is final: every old member still answers under, and keeps, its old share.
    for node in ("kgc1", "kgc2", "kgc3"):
        assert c.current(node) == first
        assert c.sealed(node, first)
    assert c.consortium.dkg_result()["nonce"] == first
    c.reads()
    # Restarted, node 3 publishes the view of the share it sealed; the result becomes final.
    c.procs.start("kgc3")
    _until("the reshare is final", lambda: c.session_state(nonce)["result"]["final"])
    _until("every node answers under it", lambda: {c.current(n) for n in NODES} == {nonce})
    for node in ("kgc1", "kgc2", "kgc3"):
        _until(f"{node} destroyed its old share", lambda node=node: not c.sealed(node, first))
    new = c.consortium.dkg_result()
    assert new["nonce"] == nonce and new["mpk"] == old["mpk"]
    assert new["indices"] == [1, 2, 3, 4]
    c.reads()
    c.consortium.add_member("late", "HospitalD", "clinician")
    with c.consortium.session("late") as s:
        enrolled = s.enroll(timeout=10.0)
    assert enrolled.invalid == () and len(enrolled.used) == 4


def test_a_removed_node_destroys_its_share_once_the_result_is_final(cluster: Cluster) -> None:
    """Node 2 leaves; it is killed (fault point ``reshare.retired``) after dropping its current
    share and before deleting the file; restarted, it deletes it."""
    c = cluster
    before = c.consortium.dkg_result()
    c.procs.stop("kgc2")
    os.environ[FAULT_ENV] = "reshare.retired"
    try:
        c.procs.start("kgc2")
    finally:
        del os.environ[FAULT_ENV]
    done = c.cli("kgc", "reshare", "--remove", "2", "--threshold", "2", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    nonce = state["nonce"]
    assert state["result"]["final"] is True
    assert state["roster"] == ["HospitalAMSP/kgc1", "HospitalCMSP/kgc3", "HospitalDMSP/kgc4"]
    _until("kgc2 dropped its current share", lambda: c.current("kgc2") is None)
    assert c.procs.stop("kgc2", kill=True) == -9
    assert c.sealed("kgc2", before["nonce"])  # killed before the file went
    c.procs.start("kgc2")
    _until("kgc2 destroyed its share", lambda: not c.sealed("kgc2", before["nonce"]))
    assert c.current("kgc2") is None
    _until(
        "the others answer under it",
        lambda: {c.current(n) for n in ("kgc1", "kgc3", "kgc4")} == {nonce},
    )
    assert c.consortium.dkg_result()["mpk"] == before["mpk"]
    c.reads()
    c.consortium.add_member("later", "HospitalC", "clinician")
    with c.consortium.session("later") as s:
        enrolled = s.enroll(timeout=10.0)
    assert enrolled.invalid == ()
    assert 2 in enrolled.failed  # node 2 holds no share any more
