"""A private IPFS swarm, one real Kubo node per hospital (``consortium init --storage swarm``).

Three hospitals' nodes on loopback with the consortium's swarm key; a record registered at
hospital A is pinned at A and the next hospital (``replicas=1`` here, so the third hospital's
node holds no copy and must fetch over bitswap); reads go through the reader's own hospital's
node. Every node is stopped by pid at the end (``Consortium.close``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ehrshare.demo import lab_observation
from ehrshare.network.kubo import KuboDaemon
from ehrshare.network.supervisor import pid_alive
from ehrshare.network.swarm import KuboSwarm, SwarmVolumeError, swarm_key_text
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.replication import repair_swarm, swarm_status
from ehrshare.session import Session
from ehrshare.storage import KuboClient
from ehrshare.storage.replicated import ReplicatedStore, placement

pytestmark = [pytest.mark.ipfs, pytest.mark.slow]

A, B, C = "HospitalAMSP", "HospitalBMSP", "HospitalCMSP"


@dataclass
class World:
    consortium: Consortium
    swarm: KuboSwarm
    profile: Profile
    s: dict[str, Session]

    @property
    def root(self) -> Path:
        assert self.profile.path is not None
        return self.profile.path.parent


def _cli(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args, "--profile", str(root)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def world(kubo_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    del kubo_binary  # installed (EHRSHARE_BIN_DIR) before the swarm looks for it
    root = tmp_path_factory.mktemp("swarm") / "c"
    c = Consortium.init(root, storage="swarm", replicas=1)
    swarm = KuboSwarm.load(root / "ipfs")
    pids = list(swarm.pids().values())
    try:
        sessions = {}
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("adams", "HospitalA", "clinician"),
            ("chen", "HospitalC", "clinician"),
        ):
            c.add_member(name, hospital, role)
            sessions[name] = c.session(name)
            sessions[name].enroll()
            sessions[name].publish_type_keys(["lab"])
        yield World(c, swarm, c.profile, sessions)
    finally:
        for s in locals().get("sessions", {}).values():
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


def test_three_hospitals_form_a_private_swarm(world: World, tmp_path: Path) -> None:
    w = world
    assert sorted(w.swarm.nodes) == [A, B, C]
    assert stat.S_IMODE(os.stat(w.swarm.key_file).st_mode) == 0o600
    w.swarm.wait_connected(timeout=30)
    ids = {n.peer_id for n in w.swarm.nodes.values()}
    for msp, node in w.swarm.nodes.items():
        assert set(w.swarm.peers(msp)) == ids - {node.peer_id}
        config = json.loads((w.swarm.repo(msp) / "config").read_text())
        assert config["Bootstrap"] == []
        assert config["Addresses"]["API"].startswith("/ip4/127.0.0.1/")
        assert config["Addresses"]["Swarm"] == [node.swarm_addr]
        assert {p["ID"] for p in config["Peering"]["Peers"]} == ids - {node.peer_id}
        env = (Path(f"/proc/{w.swarm.pids()[msp]}/environ")).read_bytes().split(b"\0")
        assert b"LIBP2P_FORCE_PNET=1" in env
    # The profile names each hospital's node.
    assert w.profile.swarm is not None
    assert dict(w.profile.swarm.nodes) == {m: n.api_url for m, n in w.swarm.nodes.items()}

    # A node without the key, and one with another key, cannot connect; one given the
    # consortium's key can (so the refusals are the key's doing).
    target = w.swarm.nodes[A]
    member_key = w.swarm.key_file.read_bytes()
    for name, key in (("keyless", None), ("foreign", os.urandom(32)), ("keyed", member_key)):
        outsider = KuboDaemon(tmp_path / name, name=name, offline=False, die_with_parent=True)
        outsider.init()
        if key is not None:
            text = key.decode() if name == "keyed" else swarm_key_text(key)
            (tmp_path / name / "swarm.key").write_text(text)
        with outsider:
            r = httpx.post(
                outsider.api_url + "/api/v0/swarm/connect",
                params={"arg": f"{target.swarm_addr}/p2p/{target.peer_id}"},
                timeout=30,
            )
            if name == "keyed":
                assert r.status_code == 200, r.text
            else:
                assert r.status_code != 200, f"the {name} node connected: {r.text}"
        assert outsider.pid is None


def test_a_record_is_read_through_another_hospital_and_with_its_origin_stopped(
    world: World,
) -> None:
    w = world
    alice, adams, chen = w.s["alice"], w.s["adams"], w.s["chen"]
    assert isinstance(chen.store, ReplicatedStore) and chen.store.home == C
    assert isinstance(adams.store, ReplicatedStore) and adams.store.home == A
    first = adams.put_record(lab_observation(value=4.1), patient=alice.ibe_id)
    # Pinned at its origin and the next hospital (replicas=1), not at C.
    assert _pinned_at(w, first.cid) == sorted(placement(A, [A, B, C], 1)) == [A, B]
    grant = alice.grant(chen.ibe_id, "lab", expires=dt.timedelta(days=1))
    # The grant pins the records it covers at the grantee's hospital, which the policy now
    # counts while the grant is valid (tests/storage/test_swarm_repair.py for its repair).
    assert _pinned_at(w, first.cid) == [A, B, C]
    (v,) = swarm_status(w.profile, record=first.record_id).versions
    assert (v["policy"], v["grantees"], v["extra"], v["missing"]) == ([A, B], [C], [], [])
    assert v["grants"] == {C: [grant.grant_id]}

    started = time.monotonic()
    ref = adams.put_record(lab_observation(value=4.2), patient=alice.ibe_id)
    put_s = time.monotonic() - started
    assert _pinned_at(w, ref.cid) == [A, B]  # a put does not know the grants (repair does)
    started = time.monotonic()
    assert chen.read_record(ref).status == "final"  # type: ignore[attr-defined]
    read_s = time.monotonic() - started
    print(f"put+replicate {put_s:.3f} s, read through C's node (bitswap) {read_s:.3f} s")
    assert _pinned_at(w, ref.cid) == [A, B]  # C fetched it, did not pin it
    with KuboClient(w.swarm.nodes[C].api_url, offline=True, timeout=10) as local:
        assert len(local.cat(ref.cid)) > 0  # the blocks came to C's node: the read went there

    # Hospital A's node stopped: the record is still readable at C, through B's copy.
    w.swarm.stop([A], kill=True)
    try:
        with KuboClient(w.swarm.nodes[C].api_url, timeout=20) as client:
            client.repo_gc()  # C's fetched blocks were not pinned there: gone now
        assert chen.read_record(ref).status == "final"  # type: ignore[attr-defined]
    finally:
        w.swarm.start([A])
        w.swarm.wait_connected()
    alice.revoke(grant)  # the copy at C is an extra one now, left where it is
    (v,) = swarm_status(w.profile, record=first.record_id).versions
    assert (v["grantees"], v["extra"], v["missing"]) == ([], [C], [])


def test_a_forward_pins_what_it_covers_at_the_forwardees_hospital(world: World) -> None:
    w = world
    alice, adams, chen = w.s["alice"], w.s["adams"], w.s["chen"]
    ref = adams.put_record(lab_observation(value=4.7), patient=alice.ibe_id)
    assert _pinned_at(w, ref.cid) == [A, B]
    held = alice.grant(adams.ibe_id, "lab", expires=dt.timedelta(days=1), max_hops=1)
    assert _pinned_at(w, ref.cid) == [A, B]  # adams is at A, which holds it already
    adams.forward(held, chen.ibe_id)
    assert _pinned_at(w, ref.cid) == [A, B, C]  # pinned where chen reads
    (v,) = swarm_status(w.profile, record=ref.record_id).versions
    assert (v["policy"], v["grantees"], v["extra"], v["missing"]) == ([A, B], [C], [], [])
    alice.revoke(held)  # ends the forward below it: C's copy is an extra one, not removed
    (v,) = swarm_status(w.profile, record=ref.record_id).versions
    assert (v["grantees"], v["extra"], v["missing"]) == ([], [C], [])
    assert _pinned_at(w, ref.cid) == [A, B, C]


def test_gc_never_drops_a_pinned_record(world: World) -> None:
    w = world
    ref = w.s["adams"].put_record(lab_observation(value=5.5), patient=w.s["alice"].ibe_id)
    for node in w.swarm.nodes.values():
        with KuboClient(node.api_url, timeout=20) as client:
            client.repo_gc()
    assert _pinned_at(w, ref.cid) == [A, B]
    with KuboClient(w.swarm.nodes[B].api_url, offline=True, timeout=20) as client:
        assert len(client.cat(ref.cid)) > 0  # held locally, no network asked


def test_status_shows_a_wiped_node_and_repair_restores_its_pins(world: World) -> None:
    w = world
    ref = w.s["adams"].put_record(lab_observation(value=6.1), patient=w.s["alice"].ibe_id)
    assert swarm_status(w.profile).healthy
    # B's disk content lost: every pin gone, blocks collected.
    with KuboClient(w.swarm.nodes[B].api_url, timeout=30) as client:
        for cid in client.pins():
            client.unpin(cid)
        client.repo_gc()
    report = swarm_status(w.profile)
    assert not report.healthy
    lost = {(v["record_id"], tuple(v["missing"])) for v in report.under_replicated}
    assert (ref.record_id, (B,)) in lost
    one = swarm_status(w.profile, record=ref.record_id)
    assert [v["missing"] for v in one.versions] == [[B]]

    done = _cli(w.root, "store", "status", "--json")
    assert done.returncode == 5, done.stderr
    assert json.loads(done.stdout)["under_replicated"] == len(report.under_replicated)

    done = _cli(w.root, "store", "repair", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["healthy"] and {r["node"] for r in out["repaired"]} == {B}
    assert _pinned_at(w, ref.cid) == [A, B]
    assert _cli(w.root, "store", "status").returncode == 0


def test_repair_killed_after_its_first_pin_finishes_on_the_next_run(world: World) -> None:
    w = world
    refs = [
        w.s["adams"].put_record(lab_observation(value=7.0 + i), patient=w.s["alice"].ibe_id)
        for i in range(2)
    ]
    with KuboClient(w.swarm.nodes[B].api_url, timeout=30) as client:
        for ref in refs:
            client.unpin(ref.cid)
        client.repo_gc()
    missing = len(swarm_status(w.profile).under_replicated)
    assert missing >= 2
    done = _cli(w.root, "store", "repair", env={"EHRSHARE_FAULT_AT": "swarm.repair.after_pin"})
    assert done.returncode == -9
    # One pin made, the rest not: nothing half-pinned, nothing lost.
    assert len(swarm_status(w.profile).under_replicated) == missing - 1
    report = repair_swarm(w.profile)
    assert report.healthy and len(report.repaired) == missing - 1


def test_a_node_killed_during_a_put_loses_nothing_and_the_next_put_succeeds(
    world: World,
) -> None:
    w = world
    adams, alice = w.s["adams"], w.s["alice"]
    before = len(alice.list_records())
    # The replica's node dies before the put pins there: the record is registered,
    # under-replicated, and repair completes it once the node is back.
    w.swarm.stop([B], kill=True)
    try:
        ref = adams.put_record(lab_observation(value=8.8), patient=alice.ibe_id)
    finally:
        w.swarm.start([B])
        w.swarm.wait_connected()
    assert len(alice.list_records()) == before + 1
    assert _pinned_at(w, ref.cid) == [A]
    assert repair_swarm(w.profile).healthy
    assert _pinned_at(w, ref.cid) == [A, B]
    # The origin's node dies: the put fails with nothing on chain, the next one succeeds.
    w.swarm.stop([A], kill=True)
    try:
        with pytest.raises(Exception, match="nothing was registered on chain"):
            adams.put_record(lab_observation(value=9.9), patient=alice.ibe_id)
        assert len(alice.list_records()) == before + 1
    finally:
        w.swarm.start([A])
        w.swarm.wait_connected()
    again = adams.put_record(lab_observation(value=9.9), patient=alice.ibe_id)
    assert len(alice.list_records()) == before + 2
    assert _pinned_at(w, again.cid) == [A, B]


def test_a_put_killed_between_its_add_and_its_replication_leaves_nothing_on_chain(
    world: World, tmp_path: Path
) -> None:
    w = world
    alice = w.s["alice"]
    obs = tmp_path / "obs.json"
    obs.write_text(json.dumps(lab_observation(3.3)), encoding="utf-8")
    before = len(alice.list_records())
    with KuboClient(w.swarm.nodes[A].api_url, timeout=20) as client:
        pins_before = set(client.pins())
    put = ("record", "put", str(obs), "-w", "alice")
    done = _cli(w.root, *put, env={"EHRSHARE_FAULT_AT": "swarm.put.after_add"})
    assert done.returncode == -9
    assert len(alice.list_records()) == before  # nothing registered
    with KuboClient(w.swarm.nodes[A].api_url, timeout=20) as client:
        orphans = set(client.pins()) - pins_before
    assert len(orphans) == 1  # the ciphertext at the origin only: 'store gc' removes it
    (orphan,) = orphans
    assert _pinned_at(w, orphan) == [A]
    assert swarm_status(w.profile).healthy  # the ledger names no such record
    # store check sees the orphan across the swarm; store gc removes it from every node.
    assert _cli(w.root, "store", "check").returncode == 5
    done = _cli(w.root, "store", "gc", "--older-than", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == [orphan]
    assert _pinned_at(w, orphan) == []
    done = _cli(w.root, "store", "check")
    assert done.returncode == 0, done.stderr + done.stdout
    done = _cli(w.root, *put)
    assert done.returncode == 0, done.stderr
    assert len(alice.list_records()) == before + 1


def test_a_foreign_key_or_a_missing_repository_is_exit_3_not_a_new_node(world: World) -> None:
    w = world
    w.swarm.stop([C])
    key = w.swarm.repo(C) / "swarm.key"
    good = key.read_bytes()
    try:
        key.write_text(swarm_key_text(os.urandom(32)))
        with pytest.raises(SwarmVolumeError, match=r"foreign swarm\.key") as info:
            w.swarm.start([C])
        assert info.value.exit_code == 3
        done = _cli(w.root, "network", "up")
        assert done.returncode == 3 and "foreign swarm.key" in done.stderr
        assert "Traceback" not in done.stderr
        key.write_bytes(good)
        aside = w.swarm.repo(C).with_name("moved")
        w.swarm.repo(C).rename(aside)
        try:
            done = _cli(w.root, "network", "up")
            assert done.returncode == 3 and "is missing" in done.stderr, done.stderr
            assert not w.swarm.repo(C).exists()  # not silently re-created
        finally:
            aside.rename(w.swarm.repo(C))
    finally:
        key.write_bytes(good)
        w.swarm.start([C])
        w.swarm.wait_connected()


def test_hand_edits_of_swarm_json_are_exit_3_and_change_nothing(world: World) -> None:
    w = world
    layout = w.swarm.root / "swarm.json"
    good = layout.read_bytes()
    config = w.swarm.repo(C) / "config"
    config_before = config.read_bytes()
    w.swarm.stop([C])
    try:
        # Damaged: truncated mid-way.
        layout.write_bytes(good[: len(good) // 2])
        done = _cli(w.root, "network", "up")
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert "swarm.json is damaged" in done.stderr and "Traceback" not in done.stderr
        # Careful: C's API port moved to another free one; the repository still says the old one.
        data = json.loads(good)
        moved = next(n for n in data["nodes"] if n["msp"] == C)
        old_port = moved["api_port"]
        moved["api_port"] = old_port + 7
        layout.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        done = _cli(w.root, "network", "up")
        assert done.returncode == 3, done.stderr
        assert f"API port {old_port} (swarm.json: {old_port + 7})" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert C not in KuboSwarm.load(w.swarm.root).pids()  # nothing started on either port
        # Another hospital's peer id for C: the repository is refused as someone else's.
        data = json.loads(good)
        ids = {n["msp"]: n["peer_id"] for n in data["nodes"]}
        next(n for n in data["nodes"] if n["msp"] == C)["peer_id"] = ids[A]
        layout.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        done = _cli(w.root, "network", "up")
        assert done.returncode == 3 and f"not {C}'s node {ids[A]}" in done.stderr, done.stderr
        assert config.read_bytes() == config_before  # the repository itself untouched
    finally:
        layout.write_bytes(good)
    done = _cli(w.root, "network", "up")  # the next attempt, with the file restored, succeeds
    assert done.returncode == 0, done.stderr
    w.swarm.wait_connected()


def test_a_lost_or_edited_run_json_neither_duplicates_nor_orphans_a_node(world: World) -> None:
    w = world
    run = w.swarm.root / "run.json"
    pids = w.swarm.pids()
    assert set(pids) == {A, B, C}
    # Edited: C's entry names this test's own process; lost: the whole file deleted.
    state = json.loads(run.read_text())
    state[C]["pid"] = os.getpid()
    run.write_text(json.dumps(state))
    assert KuboSwarm.load(w.swarm.root).pids()[C] == pids[C]  # found again, not this process
    run.unlink()
    again = KuboSwarm.load(w.swarm.root)
    assert again.pids() == pids  # every node found by its repository, and recorded again
    assert json.loads(run.read_text())[C]["pid"] == pids[C]
    run.write_text("{not json")
    done = _cli(w.root, "network", "up")  # nothing to start: no second daemon on a repository
    assert done.returncode == 0, done.stderr
    assert KuboSwarm.load(w.swarm.root).pids() == pids
    # `network down` with run.json gone stops the nodes it finds (none orphaned), and only them.
    run.unlink()
    done = _cli(w.root, "network", "down")
    assert done.returncode == 0, done.stderr
    assert not [p for p in pids.values() if pid_alive(p)] and pid_alive(os.getpid())
    done = _cli(w.root, "network", "up")
    assert done.returncode == 0, done.stderr
    w.swarm.wait_connected()


def test_network_down_up_and_a_lost_node_made_anew(world: World) -> None:
    """Last in the module: it stops and restarts every node through the CLI."""
    w = world
    done = _cli(w.root, "network", "status", "--json")
    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)["storage"]["nodes"]
    assert {m: n["reachable"] for m, n in nodes.items()} == {A: True, B: True, C: True}
    pids = w.swarm.pids()
    done = _cli(w.root, "network", "down")
    assert done.returncode == 0, done.stderr
    assert w.swarm.pids() == {} and not [p for p in pids.values() if pid_alive(p)]
    assert _cli(w.root, "network", "status").returncode == 4

    # B's repository is lost for good: made anew on purpose, then repaired from A's copies.
    old = w.swarm.nodes[B].peer_id
    shutil.rmtree(w.swarm.repo(B))
    assert _cli(w.root, "network", "up").returncode == 3
    done = _cli(w.root, "store", "recreate-node", B, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peer_id"] != old
    swarm = KuboSwarm.load(w.swarm.root)
    assert swarm.nodes[B].api_url == w.swarm.nodes[B].api_url  # same ports: profile unchanged
    done = _cli(w.root, "network", "up")
    assert done.returncode == 0, done.stderr
    swarm.wait_connected()
    assert _cli(w.root, "store", "status").returncode == 5
    done = _cli(w.root, "store", "repair", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["healthy"]
    w.swarm = swarm  # the module fixture stops what runs now
