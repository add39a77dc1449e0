"""A DKG run across separately started KGC node processes (``ehrshare kgc serve`` following DKG
events), opened by the org admin with ``ehrshare kgc dkg open``.

One consortium, three node processes, stopped by pid. In order: a new session becomes final and
members enrol under its mpk; a restarted node resumes from its checkpoint without re-running it;
a session that cannot finish (τ=3 of 3 with a node down) is marked failed and extraction under
the previous result goes on; a node killed mid-session does not stop a τ=2 of 3 session.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.slow

NODES = ("kgc1", "kgc2", "kgc3")


@dataclass
class Cluster:
    root: Path
    consortium: Consortium
    procs: ServiceProcesses
    members: list[str] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ehrshare", *args, "--profile", str(self.root)]
        return subprocess.run(
            [*cmd, "--wallet", "admin"], capture_output=True, text=True, timeout=timeout
        )

    def session_state(self, nonce: str) -> dict[str, Any]:
        with self.consortium.session("admin") as s:
            state: dict[str, Any] = json.loads(
                s.contract.evaluate_transaction("GetDKGSession", nonce)
            )
        return state

    def state_dir(self, node: str) -> Path:
        return self.root / "kgc" / f"node{node[-1]}"

    def current(self, node: str) -> str:
        return (self.state_dir(node) / "current-session").read_text().strip()

    def log(self, node: str) -> str:
        return (self.state_dir(node) / "kgc.log").read_text(encoding="utf-8")

    def enrol_new_member(self) -> Any:
        name = f"member{len(self.members) + 1}"
        self.members.append(name)
        self.consortium.add_member(name, "HospitalB", "patient")
        with self.consortium.session(name) as s:
            return s.enroll(timeout=10.0), s.roster, s._master()[0]


def _until(what: str, check: Any, limit: float = 120.0) -> None:
    """Wait for a condition the processes bring about (a bound, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {limit:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("dkgprocs")
    root = base / "c"
    Consortium.init(root, services="processes", ports=free_loopback_ports(6)).close()
    procs = ServiceProcesses(Profile.load(root / "profile.yaml"), base / "run")
    consortium = Consortium.open(root / "profile.yaml")
    try:
        procs.start(*NODES)
        yield Cluster(root, consortium, procs)
    finally:
        procs.stop_all()
        consortium.close()


def test_a_session_opened_with_the_cli_runs_across_node_processes(cluster: Cluster) -> None:
    c = cluster
    first = c.current("kgc1")  # the consortium's initial session
    old_mpk = c.consortium.dkg_result()["mpk"]
    opened = c.cli("kgc", "dkg", "open", "--threshold", "2", "--wait", "--json")
    assert opened.returncode == 0, opened.stderr
    state = json.loads(opened.stdout)
    nonce = state["nonce"]
    assert nonce != first
    assert state["result"]["final"] is True
    assert [p["phase"] for p in state["closed"]][:2] == ["deal", "response"]
    assert all(len(p["posters"]) == 3 for p in state["closed"][:2])
    # Every node sealed a share of the new session beside the old one and answers under it
    # once the result is final (the last one may adopt it a poll after the CLI returned).
    _until(
        "all nodes answer under the new session", lambda: {c.current(n) for n in NODES} == {nonce}
    )
    for node in NODES:
        assert (c.state_dir(node) / f"dkg-{nonce}.sealed").is_file()
        assert (c.state_dir(node) / f"dkg-{first}.sealed").is_file()
        assert f"dkg session {nonce[:16]}: posted its deal" in c.log(node)
    enrolled, roster, mpk = c.enrol_new_member()
    assert enrolled.invalid == () and enrolled.failed == {}
    assert len(enrolled.used) == 2
    result = c.consortium.dkg_result()
    assert result["nonce"] == nonce and len(roster) == 3
    # The member's key was checked against, and belongs to, the new session's mpk.
    assert base64.b64encode(mpk.to_bytes()).decode() == result["mpk"]
    assert result["mpk"] != old_mpk
    status = c.cli("kgc", "dkg", "status", nonce)
    assert status.returncode == 0, status.stderr
    assert re.search(r"status: final: [23] of τ=2 views agree", status.stdout), status.stdout


def test_a_restarted_node_resumes_after_its_checkpoint(cluster: Cluster) -> None:
    c = cluster
    latest = c.consortium.dkg_result()["nonce"]
    checkpoint = json.loads((c.state_dir("kgc1") / "dkg-follow.json").read_text())
    before = len(c.log("kgc1"))
    c.procs.restart("kgc1")
    _until("kgc1 follows again", lambda: "follows dkg sessions" in c.log("kgc1")[before:])
    after = c.log("kgc1")[before:]
    assert f"from block {checkpoint['block']} (checkpoint)" in after
    assert f"dkg session {latest[:16]}" not in after  # the finished session is not re-run
    assert c.current("kgc1") == latest  # and its share still answers after the restart


def test_a_session_that_cannot_finish_is_marked_failed(cluster: Cluster) -> None:
    c = cluster
    previous = c.consortium.dkg_result()["nonce"]
    c.procs.stop("kgc3")
    try:
        opened = c.cli(
            "kgc", "dkg", "open", "--threshold", "3", "--phase-timeout", "2", "--wait", "--json"
        )
        assert opened.returncode == 4, opened.stderr
        state = json.loads(opened.stdout)
        assert state["phase"] == "failed"
        assert state["failure"]["cause"] == "only 2 of 3 dealers posted a deal; threshold is 3"
        assert state["failure"]["by"] in {"HospitalAMSP/kgc1", "HospitalBMSP/kgc2"}
        assert "dealers posted, threshold 3" in state["failure"]["reason"]
        assert c.session_state(state["nonce"])["phase"] == "failed"
        # Extraction keeps answering under the previous final result (τ=2: nodes 1 and 2).
        assert c.consortium.dkg_result()["nonce"] == previous
        enrolled, _, _ = c.enrol_new_member()
        assert enrolled.invalid == ()
        assert set(enrolled.used) == {1, 2}
        assert {c.current(n) for n in ("kgc1", "kgc2")} == {previous}
    finally:
        c.procs.start("kgc3")
    # The returning node reads the failed session's events and leaves it alone.
    _until(
        "kgc3 skips the failed session",
        lambda: f"dkg session {state['nonce'][:16]}: the session is failed" in c.log("kgc3"),
    )


def test_a_node_killed_mid_session_does_not_stop_tau_of_n(cluster: Cluster) -> None:
    c = cluster
    # Nodes 1 and 2 are paused (SIGSTOP, by pid) while node 3 deals, so the deal phase cannot
    # close before node 3 dies: it is killed after its deal and before its response.
    paused = [c.procs.pids[n] for n in ("kgc1", "kgc2")]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        opened = c.cli("kgc", "dkg", "open", "--threshold", "2", "--phase-timeout", "5", "--json")
        assert opened.returncode == 0, opened.stderr
        nonce = json.loads(opened.stdout)["nonce"]
        kgc3 = "HospitalCMSP/kgc3"
        _until("kgc3 posted its deal", lambda: kgc3 in c.session_state(nonce)["posted"])
        c.procs.stop("kgc3", kill=True)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    _until("the session is final", lambda: c.session_state(nonce)["result"]["final"])
    state = c.session_state(nonce)
    assert state["phase"] == "done"
    deal, response = state["closed"][:2]
    assert kgc3 in deal["posters"] and len(deal["posters"]) == 3  # it dealt before it died
    assert response["posters"] == ["HospitalAMSP/kgc1", "HospitalBMSP/kgc2"]
    assert response["timed_out"] is True
    _until(
        "nodes 1 and 2 answer under it",
        lambda: {c.current(n) for n in ("kgc1", "kgc2")} == {nonce},
    )
    enrolled, _, _ = c.enrol_new_member()
    assert enrolled.invalid == ()
    assert set(enrolled.used) == {1, 2}
