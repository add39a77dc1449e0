"""The swarm's pure parts, without Kubo: the pin policy, the profile's ``storage.swarm`` section,
the ``swarm.key`` format, and the refusal of a node's repository that is not the swarm's."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.network.swarm import KuboSwarm, SwarmNode, SwarmVolumeError, swarm_key_text
from ehrshare.profile import Profile, ProfileError, StorageSwarm
from ehrshare.storage import StorageError
from ehrshare.storage.replicated import ReplicatedStore, placement

HOSPITALS = st.lists(
    st.text("ABCDEFGH", min_size=1, max_size=3), min_size=1, max_size=8, unique=True
)


@given(HOSPITALS, st.integers(0, 10), st.data())
def test_placement_is_the_origin_then_the_next_hospitals(
    hospitals: list[str], replicas: int, data: st.DataObject
) -> None:
    origin = data.draw(st.sampled_from(hospitals))
    nodes = placement(origin, hospitals, replicas)
    assert nodes[0] == origin
    assert len(nodes) == min(replicas + 1, len(hospitals))
    assert len(set(nodes)) == len(nodes)
    start = hospitals.index(origin)
    assert nodes == [hospitals[(start + i) % len(hospitals)] for i in range(len(nodes))]


def test_placement_examples() -> None:
    assert placement("B", ["A", "B", "C"], 1) == ["B", "C"]
    assert placement("C", ["A", "B", "C"], 1) == ["C", "A"]
    assert placement("C", ["A", "B", "C"], 5) == ["C", "A", "B"]
    assert placement("X", ["A", "B", "C"], 1) == ["A", "B"]  # an origin without a node
    with pytest.raises(ValueError, match="replicas must be 0 or more"):
        placement("A", ["A"], -1)


def test_swarm_key_is_libp2ps_format() -> None:
    key = bytes(range(32))
    assert swarm_key_text(key) == f"/key/swarm/psk/1.0.0/\n/base16/\n{key.hex()}\n"
    with pytest.raises(ValueError, match="32 bytes"):
        swarm_key_text(b"short")


def _profile_data(storage: dict[str, object]) -> dict[str, object]:
    return {
        "version": 1,
        "storage": storage,
        "proxies": [
            {
                "name": "proxy-a",
                "msp": "AMSP",
                "id": "AMSP/proxy",
                "address": "127.0.0.1:7070",
                "tls_ca": "ca.pem",
            }
        ],
        "kgc": {
            "threshold": 2,
            "nodes": [
                {"index": i, "address": f"127.0.0.1:{7060 + i}", "tls_ca": "ca.pem"} for i in (1, 2)
            ],
        },
    }


def test_the_swarm_section_reads_and_writes_back(tmp_path: Path) -> None:
    storage = {
        "backend": "kubo",
        "url": "http://127.0.0.1:5101",
        "swarm": "ipfs",
        "nodes": {"AMSP": "http://127.0.0.1:5101", "BMSP": "http://127.0.0.1:5102"},
        "replicas": 1,
    }
    path = tmp_path / "profile.yaml"
    profile = Profile.from_dict(_profile_data(storage), base=tmp_path, path=path)
    assert profile.swarm == StorageSwarm(
        tmp_path / "ipfs",
        (("AMSP", "http://127.0.0.1:5101"), ("BMSP", "http://127.0.0.1:5102")),
        1,
    )
    written = profile.to_dict()
    assert {k: written["storage"][k] for k in storage} == storage
    again = Profile.from_dict(yaml.safe_load(profile.to_yaml()), base=tmp_path, path=path)
    assert again == profile
    # Without a swarm section nothing changes: the single-node Kubo profile has no swarm.
    single = Profile.from_dict(
        _profile_data({"backend": "kubo", "url": "http://127.0.0.1:5001"}), base=tmp_path
    )
    assert single.swarm is None
    assert "swarm" not in single.to_dict(base=tmp_path)["storage"]


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"backend": "embedded", "swarm": "ipfs"}, "storage.swarm needs storage.backend kubo"),
        ({"backend": "kubo", "swarm": "ipfs"}, "storage.nodes must map each hospital"),
        (
            {"backend": "kubo", "swarm": "ipfs", "nodes": {"AMSP": "ftp://x"}},
            "storage.nodes must map each hospital",
        ),
        (
            {"backend": "kubo", "swarm": "ipfs", "nodes": {"AMSP": "http://a"}, "replicas": -1},
            "storage.replicas must be a whole number",
        ),
        (
            {"backend": "kubo", "swarm": "ipfs", "nodes": {"AMSP": "http://a"}, "replicas": True},
            "storage.replicas must be a whole number",
        ),
    ],
)
def test_a_bad_swarm_section_is_a_clear_error(
    tmp_path: Path, storage: dict[str, object], message: str
) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        Profile.from_dict(_profile_data(storage), base=tmp_path)
    assert info.value.exit_code == 3


def _config(peer_id: str, api: int = 5101) -> dict[str, object]:
    addresses = {
        "API": f"/ip4/127.0.0.1/tcp/{api}",
        "Gateway": "/ip4/127.0.0.1/tcp/5102",
        "Swarm": ["/ip4/127.0.0.1/tcp/5103"],
    }
    return {"Identity": {"PeerID": peer_id}, "Addresses": addresses}


def _fake_swarm(tmp_path: Path) -> KuboSwarm:
    root = tmp_path / "ipfs"
    (root / "AMSP").mkdir(parents=True)
    key = swarm_key_text(bytes(32))
    (root / "swarm.key").write_text(key)
    (root / "AMSP" / "swarm.key").write_text(key)
    (root / "AMSP" / "config").write_text(json.dumps(_config("12D3KooWA")))
    node = SwarmNode("AMSP", "12D3KooWA", 5101, 5102, 5103)
    (root / "swarm.json").write_text(json.dumps({"nodes": [node.as_dict()]}))
    return KuboSwarm.load(root, binary=tmp_path / "no-ipfs")


def test_a_repository_that_is_not_the_swarms_is_refused(tmp_path: Path) -> None:
    swarm = _fake_swarm(tmp_path)
    swarm.check_volume("AMSP")  # as made
    repo = swarm.repo("AMSP")
    (repo / "swarm.key").write_text(swarm_key_text(bytes([1]) * 32))
    with pytest.raises(SwarmVolumeError, match=r"foreign swarm\.key") as info:
        swarm.check_volume("AMSP")
    assert info.value.exit_code == 3
    (repo / "swarm.key").unlink()
    with pytest.raises(SwarmVolumeError, match=r"has no swarm\.key"):
        swarm.check_volume("AMSP")
    (repo / "swarm.key").write_text(swarm_key_text(bytes(32)))
    (repo / "config").write_text(json.dumps(_config("12D3KooWB")))
    with pytest.raises(SwarmVolumeError, match="is node 12D3KooWB, not AMSP's node 12D3KooWA"):
        swarm.check_volume("AMSP")
    (repo / "config").write_text(json.dumps(_config("12D3KooWA", api=5999)))
    with pytest.raises(SwarmVolumeError, match=r"API port 5999 \(swarm\.json: 5101\)"):
        swarm.check_volume("AMSP")
    (repo / "config").write_text(json.dumps({"Identity": {"PeerID": "12D3KooWA"}}))
    with pytest.raises(SwarmVolumeError, match="config is damaged"):
        swarm.check_volume("AMSP")
    (repo / "config").unlink()
    with pytest.raises(SwarmVolumeError, match="is missing; not creating an empty node"):
        swarm.start()
    assert not (repo / "config").exists()
    with pytest.raises(SwarmVolumeError, match="has no IPFS node"):
        swarm.check_volume("ZMSP")
    with pytest.raises(SwarmVolumeError, match="already holds an IPFS swarm"):
        KuboSwarm.create(swarm.root, ["AMSP"])
    with pytest.raises(SwarmVolumeError, match=r"swarm\.json is missing"):
        KuboSwarm.load(tmp_path / "elsewhere")


class _Node:
    """A node's store that waits at a barrier in ``pin``: only pins made at once get through."""

    def __init__(self, barrier: threading.Barrier, down: bool = False) -> None:
        self.barrier, self.down, self.pinned = barrier, down, list[str]()

    def pin(self, cid: str) -> None:
        self.barrier.wait()  # BrokenBarrierError (a test failure) if pins ran one by one
        if self.down:
            raise StorageError("connection refused")
        self.pinned.append(cid)


def test_pins_of_a_put_and_of_a_grant_run_at_once_and_a_down_node_is_only_logged() -> None:
    barrier = threading.Barrier(3, timeout=10)
    nodes = {m: _Node(barrier, down=(m == "C")) for m in "ABCD"}
    store = ReplicatedStore("A", cast(Any, nodes), list("ABCD"), replicas=3)
    assert store.pin_many((m, "cid1") for m in "BCD") == [True, False, True]
    assert nodes["B"].pinned == nodes["D"].pinned == ["cid1"] and nodes["C"].pinned == []
    assert store.pin_many([("B", "cid2"), ("B", "cid3"), ("D", "cid2")]) == [True, True, True]
    assert sorted(nodes["B"].pinned) == ["cid1", "cid2", "cid3"]


def test_repair_rounds_go_on_after_a_failed_round_at_the_interval_and_stop_when_told() -> None:
    from ehrshare.replication import SwarmReport, repair_every

    stop = threading.Event()
    seen: list[tuple[int, bool, str, float]] = []
    started = time.monotonic()

    def round_() -> SwarmReport:
        if len(seen) == 1:
            raise StorageError("node A does not answer")
        return SwarmReport(1)

    def report(n: int, result: SwarmReport | None, error: str) -> None:
        seen.append((n, result is not None, error, time.monotonic() - started))
        if n == 3:
            stop.set()

    assert repair_every(round_, 1.0, stop, report) == 3
    assert [(n, ok, err) for n, ok, err, _ in seen] == [
        (1, True, ""),
        (2, False, "StorageError: node A does not answer"),
        (3, True, ""),
    ]
    assert seen[1][3] >= 0.9 and seen[2][3] >= 1.9  # an interval between rounds, failed or not


@pytest.mark.parametrize("interval", [0.0, 0.5, -1.0, 31 * 86400.0])
def test_a_repair_interval_out_of_range_is_a_usage_error_before_any_round(
    interval: float,
) -> None:
    from ehrshare.errors import UsageError
    from ehrshare.replication import SwarmReport, repair_every

    calls: list[int] = []

    def round_() -> SwarmReport:
        calls.append(1)
        return SwarmReport(1)

    with pytest.raises(UsageError, match=r"repair interval must be 1 s to 30 days, got ") as info:
        repair_every(round_, interval, threading.Event(), lambda *_: None)
    assert info.value.exit_code == 2 and calls == []
