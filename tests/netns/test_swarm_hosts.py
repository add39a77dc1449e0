"""A private IPFS swarm across hosts: each hospital's Kubo node in its own network namespace on
its own address; a hospital cut off mid-run (real Kubo, three hospitals).

While hospital C is cut off, the others read what is replicated on their side and get a
"try later" error (exit 4: a timeout, never "not found" or "altered") for what only C holds;
when C is back, its blocks are reachable again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.errors import EXIT_UNAVAILABLE
from ehrshare.network.kubo import kubo_binary
from ehrshare.network.netns import HostLayout
from ehrshare.network.supervisor import pid_alive
from ehrshare.network.swarm import KuboSwarm
from ehrshare.storage import KuboClient, KuboStore
from ehrshare.storage.errors import (
    ContentNotFound,
    IntegrityError,
    StorageError,
    StorageUnavailable,
)
from ehrshare.storage.replicated import ReplicatedStore

pytestmark = [pytest.mark.netns, pytest.mark.ipfs, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


@pytest.fixture
def hosted(
    tmp_path: Path, machine_before: tuple[list[str], list[str]]
) -> Iterator[tuple[HostLayout, KuboSwarm]]:
    assert kubo_binary().is_file(), "Kubo is not installed: run `make tools`"
    layout = HostLayout.create(list(MSPS), state_dir=tmp_path / "netns-state")
    pids: list[int] = []
    try:
        swarm = KuboSwarm.create(tmp_path / "ipfs", MSPS, hosts=layout.placements())
        try:
            swarm.start()
            pids = list(swarm.pids().values())
            swarm.wait_connected()
            yield layout, swarm
        finally:
            swarm.stop()
    finally:
        layout.teardown()
    assert pids and not [p for p in pids if pid_alive(p)], "a Kubo node outlived the test"


def _store(swarm: KuboSwarm, msp: str, timeout: float = 5.0) -> KuboStore:
    return KuboStore(KuboClient(swarm.node(msp).api_url, timeout=timeout))


def test_each_node_runs_on_its_host_and_binds_only_its_address(
    hosted: tuple[HostLayout, KuboSwarm],
) -> None:
    layout, swarm = hosted
    for msp, pid in swarm.pids().items():
        ns = subprocess.run(
            ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert ns == [layout.host(msp).netns]
        node = swarm.node(msp)
        assert node.api_url == f"http://{layout.address(msp)}:{node.api_port}"
        listening = subprocess.run(
            ["ip", "netns", "exec", layout.host(msp).netns, "ss", "-ltnH"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
        assert addresses == {layout.address(msp)}, (msp, addresses)
        # It peers with the others at their hosts' addresses, not at loopback.
        config = (swarm.repo(msp) / "config").read_text(encoding="utf-8")
        assert "127.0.0.1" not in config


def test_a_cut_off_hospital_leaves_replicated_blobs_readable_and_the_rest_clearly_unavailable(
    hosted: tuple[HostLayout, KuboSwarm],
) -> None:
    layout, swarm = hosted
    a, b, c = MSPS
    stores = {m: _store(swarm, m) for m in MSPS}
    # A record of A kept at A and B (replicas 1); one of C kept only at C (replicas 0).
    replicated = ReplicatedStore(a, stores, MSPS, replicas=1).put(b"kept at A and B " * 64)
    only_c = ReplicatedStore(c, stores, MSPS, replicas=0).put(b"kept only at C " * 64)
    layout.cut(c)
    try:
        for reader in (a, b):
            assert _store(swarm, reader).get(replicated) == b"kept at A and B " * 64
        started = time.monotonic()
        with pytest.raises(StorageError, match="timed out") as info:
            _store(swarm, a, timeout=5.0).get(only_c)
        # Exit 4 (try later): A's node asked its peers and none sent the blocks in time; not a
        # dangling pointer or altered bytes.
        assert info.value.exit_code == EXIT_UNAVAILABLE
        assert not isinstance(info.value, ContentNotFound | IntegrityError)
        assert time.monotonic() - started < 30
        # The cut hospital's node itself is out of reach, said as such.
        with pytest.raises(StorageUnavailable):
            _store(swarm, c, timeout=3.0).get(replicated)
    finally:
        layout.heal(c)
    # Back: the blocks only C holds reach the others again (over bitswap once they reconnect).
    deadline = time.monotonic() + 60
    while True:
        try:
            assert _store(swarm, a, timeout=5.0).get(only_c) == b"kept only at C " * 64
            break
        except StorageError:
            assert time.monotonic() < deadline, "A never reached C's blocks after the cut"
            time.sleep(1)
