"""Grantee copies in the pin policy and periodic repair, on three real Kubo nodes.

A record of hospital A's patient is pinned at A and B (``replicas=1``); granted to a clinician
of hospital C, C's node must hold it too while the grant is valid (``ListGrantPins``), and
``store repair`` restores that copy when it is lost. A revoked or expired grant's copy is an
extra one, reported and never removed. ``store repair --every`` runs rounds until SIGTERM; the
process is stopped by pid (and the consortium's nodes by ``Consortium.close``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_swarm import _cli

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.network.supervisor import pid_alive
from ehrshare.network.swarm import KuboSwarm
from ehrshare.provisioning import Consortium
from ehrshare.replication import repair_swarm, swarm_status
from ehrshare.session import Session
from ehrshare.storage import KuboClient

pytestmark = [pytest.mark.ipfs, pytest.mark.slow]

A, B, C = "HospitalAMSP", "HospitalBMSP", "HospitalCMSP"
_REPAIR = (sys.executable, "-m", "ehrshare", "store", "repair")


@dataclass
class World:
    consortium: Consortium
    swarm: KuboSwarm
    root: Path
    s: dict[str, Session]


@pytest.fixture(scope="module")
def world(kubo_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    del kubo_binary  # installed (EHRSHARE_BIN_DIR) before the swarm looks for it
    root = tmp_path_factory.mktemp("swarm-repair") / "c"
    c = Consortium.init(root, storage="swarm", replicas=1)
    swarm = KuboSwarm.load(root / "ipfs")
    pids = list(swarm.pids().values())
    sessions: dict[str, Session] = {}
    try:
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("adams", "HospitalA", "clinician"),
            ("chen", "HospitalC", "clinician"),
        ):
            c.add_member(name, hospital, role)
            sessions[name] = c.session(name)
            sessions[name].enroll()
            sessions[name].publish_type_keys(["lab"])
        yield World(c, swarm, root, sessions)
    finally:
        for s in sessions.values():
            s.close()
        c.close()
        assert not [p for p in pids if pid_alive(p)], "a swarm node outlived the consortium"


def _pinned_at(w: World, cid: str) -> list[str]:
    out = []
    for msp, node in w.swarm.nodes.items():
        with KuboClient(node.api_url, timeout=10) as client:
            if client.has(cid):
                out.append(msp)
    return out


def _lose(w: World, msp: str, *cids: str) -> None:
    """The node's copies gone: unpinned and its blocks collected."""
    with KuboClient(w.swarm.nodes[msp].api_url, timeout=30) as client:
        for cid in cids:
            client.unpin(cid)
        client.repo_gc()


def _version(w: World, record_id: str) -> dict[str, Any]:
    (v,) = swarm_status(w.consortium.profile, record=record_id).versions
    return v


def _wait(what: str, done: Callable[[], bool], timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - started


class Repairer:
    """``ehrshare store repair --every N --json`` in the background, output in files."""

    def __init__(self, w: World, tmp: Path, every: str, env: dict[str, str] | None = None) -> None:
        self.out, self.err = tmp / "repair.out", tmp / "repair.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*_REPAIR, "--every", every, "--json", "--profile", str(w.root)],
                stdout=out,
                stderr=err,
                env={**os.environ, "COLUMNS": "200", **(env or {})},
            )

    def rounds(self) -> list[dict[str, Any]]:
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> int:
        """SIGTERM by pid; its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def test_a_grantees_copy_is_in_the_policy_repaired_when_lost_and_extra_once_revoked(
    world: World,
) -> None:
    w = world
    alice, adams, chen = w.s["alice"], w.s["adams"], w.s["chen"]
    ref = adams.put_record(lab_observation(value=4.1), patient=alice.ibe_id)
    assert _pinned_at(w, ref.cid) == [A, B]
    grant = alice.grant(chen.ibe_id, "lab", expires=dt.timedelta(days=1))
    assert _pinned_at(w, ref.cid) == [A, B, C]  # the grant pinned it where chen reads
    v = _version(w, ref.record_id)
    assert (v["policy"], v["grantees"], v["grants"]) == ([A, B], [C], {C: [grant.grant_id]})
    assert (v["missing"], v["extra"]) == ([], [])
    done = _cli(w.root, "store", "status", ref.record_id)
    assert done.returncode == 0, done.stderr
    assert f"policy {A}, {B} + {C} (grants); pinned at {A}, {B}, {C}" in done.stderr

    # C's copy lost: under-replicated for the grant; a record put after the grant too (a put
    # does not know the grants).
    later = adams.put_record(lab_observation(value=4.2), patient=alice.ibe_id)
    assert _pinned_at(w, later.cid) == [A, B]
    _lose(w, C, ref.cid)
    done = _cli(w.root, "store", "status", "--json")
    assert done.returncode == 5, done.stderr
    out = {v["record_id"]: v for v in json.loads(done.stdout)["versions"]}
    for r in (ref, later):
        assert (out[r.record_id]["grantees"], out[r.record_id]["missing"]) == ([C], [C])
    assert f"missing at {C}" in _cli(w.root, "store", "status", ref.record_id).stderr

    done = _cli(w.root, "store", "repair", "--json")
    assert done.returncode == 0, done.stderr
    repaired = {(r["record_id"], r["node"]) for r in json.loads(done.stdout)["repaired"]}
    assert repaired == {(ref.record_id, C), (later.record_id, C)}
    assert _pinned_at(w, ref.cid) == _pinned_at(w, later.cid) == [A, B, C]
    with KuboClient(w.swarm.nodes[C].api_url, offline=True, timeout=20) as local:
        assert len(local.cat(ref.cid)) > 0  # held at C, no network asked

    # Revoked: C's copies are extra ones, reported and left; repair pins nothing.
    alice.revoke(grant)
    v = _version(w, ref.record_id)
    assert (v["grantees"], v["grants"], v["missing"], v["extra"]) == ([], {}, [], [C])
    done = _cli(w.root, "store", "repair", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["repaired"] == []
    assert f"extra at {C}" in _cli(w.root, "store", "status", ref.record_id).stderr
    assert _pinned_at(w, ref.cid) == _pinned_at(w, later.cid) == [A, B, C]

    # Expired: the same, without anyone revoking.
    short = alice.grant(chen.ibe_id, "lab", expires=dt.timedelta(seconds=4))
    assert _version(w, ref.record_id)["grants"] == {C: [short.grant_id]}
    _wait("the grant's expiry", lambda: not _version(w, ref.record_id)["grants"], timeout=30)
    v = _version(w, ref.record_id)
    assert (v["missing"], v["extra"]) == ([], [C])
    assert swarm_status(w.consortium.profile).healthy


def test_periodic_repair_repins_through_a_node_outage_and_stops_on_sigterm(
    world: World, tmp_path: Path
) -> None:
    w = world
    ref = w.s["adams"].put_record(lab_observation(value=5.1), patient=w.s["alice"].ibe_id)
    assert swarm_status(w.consortium.profile).healthy
    _lose(w, B, ref.cid)
    w.swarm.stop([B], kill=True)  # the first rounds find B down: reported, not fatal
    rep = Repairer(w, tmp_path, "1")
    try:
        _wait(
            "a round with B down", lambda: any(not r.get("nodes", {B: 1})[B] for r in rep.rounds())
        )
        assert rep.proc.poll() is None
        w.swarm.start([B])
        w.swarm.wait_connected()
        took = _wait("B's pin restored", lambda: B in _pinned_at(w, ref.cid))
        print(f"re-pinned {took:.1f} s after B came back")
        assert rep.stop() == 0
    finally:
        rep.kill()
        if B not in w.swarm.pids():
            w.swarm.start([B])
    rounds = rep.rounds()
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert any(
        {"record_id": ref.record_id, "version": "1", "node": B} in r.get("repaired", [])
        for r in rounds
    )
    # Rounds a second apart at most once (no busy loop).
    stamps = [dt.datetime.fromisoformat(r["at"]) for r in rounds]
    assert len(rounds) <= (stamps[-1] - stamps[0]).total_seconds() + 2
    err = rep.err.read_text(encoding="utf-8")
    assert "Traceback" not in err
    assert f"stopped after {len(rounds)} rounds" in err
    assert swarm_status(w.consortium.profile).healthy


def test_a_periodic_repair_killed_mid_round_is_completed_by_the_next(
    world: World, tmp_path: Path
) -> None:
    w = world
    refs = [
        w.s["adams"].put_record(lab_observation(value=6.0 + i), patient=w.s["alice"].ibe_id)
        for i in range(2)
    ]
    _lose(w, B, *(r.cid for r in refs))
    missing = len(swarm_status(w.consortium.profile).under_replicated)
    assert missing == 2
    rep = Repairer(w, tmp_path, "1", env={FAULT_ENV: "swarm.repair.after_pin"})
    assert rep.proc.wait(timeout=120) == -9
    assert len(swarm_status(w.consortium.profile).under_replicated) == missing - 1
    rep = Repairer(w, tmp_path, "1")
    try:
        _wait("the rest re-pinned", lambda: all(B in _pinned_at(w, r.cid) for r in refs))
        assert rep.stop() == 0
    finally:
        rep.kill()
    assert repair_swarm(w.consortium.profile).repaired == []
    assert swarm_status(w.consortium.profile).healthy


@pytest.mark.parametrize("every", ["0", "0.5", "-3", "soon", "31d"])
def test_a_bad_interval_is_exit_2_and_changes_nothing(world: World, every: str) -> None:
    w = world
    ref = w.s["adams"].put_record(lab_observation(value=7.0), patient=w.s["alice"].ibe_id)
    _lose(w, B, ref.cid)
    try:
        done = _cli(w.root, "store", "repair", "--every", every)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "--every" in done.stderr
        assert done.stdout == ""
        assert _pinned_at(w, ref.cid) == [A]  # nothing repaired
    finally:
        repair_swarm(w.consortium.profile)


def test_periodic_repair_with_an_unusable_wallet_exits_at_once_not_every_round(
    world: World,
) -> None:
    done = _cli(world.root, "store", "repair", "--every", "1", "--wallet", "nobody")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "round" not in done.stderr
