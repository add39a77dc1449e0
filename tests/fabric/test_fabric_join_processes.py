"""'consortium add-hospital' on a real Fabric network whose KGC nodes and proxies run as
processes under 'network up' (on loopback; the same on hosts is tests/netns/test_hosts_join.py):
the config update signed by a majority, the new peer started, joined and caught up, the new
hospital's CA trusted by the running services without restarting them, its KGC node and proxy
started by the supervisor, the resharing run by the node processes, and a clinician of the new
hospital reading a record granted afterwards through its own proxy process."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.hospital import init_hospital
from ehrshare.network.fabric import FabricNet
from ehrshare.network.services import service_commands
from ehrshare.profile import Profile

sys.path.insert(0, str(Path(__file__).parents[1] / "sdk"))
from test_add_hospital_processes import (
    NEW_SERVICES,
    OLD_SERVICES,
    add_hospital,
    answers_as,
    clinician_reads,
    committee,
    consortium_up_with_a_record,
    ehrshare,
    status,
)

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

NEW = "HospitalDMSP"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three hospitals on Fabric with their services as processes, all running under 'network
    up' (alice: one lab record; admins of A and B), and hospital D made at ``hd``."""
    base = tmp_path_factory.mktemp("fabjoinproc")
    root = base / "c"
    try:
        consortium_up_with_a_record(base, ledger="fabric")
        init_hospital(base / "hd", "HospitalD")
        yield base
    finally:
        down = ehrshare("network", "down", "-p", str(root))
        assert down.returncode == 0, down.stderr


def test_a_hospital_joins_fabric_with_the_services_as_processes(
    world: Path,
) -> None:
    c = world / "c"
    before = status(world)
    assert sorted(before) == list(OLD_SERVICES)
    commands_before = {s.name: s.args for s in service_commands(Profile.load(c / "profile.yaml"))}
    joined = add_hospital(world)
    assert joined.returncode == 0, joined.stderr
    outcome = json.loads(joined.stdout)
    assert outcome["performed"] == [
        "config",
        "peer",
        "register",
        "client-cas",
        "profile",
        "services",
        "reshare",
    ]
    assert f"{NEW}/kgc" in committee(world)
    # The new peer is on the channel and caught up; its services run under the supervisor.
    net = FabricNet.load(c)
    assert f"peer-{NEW}" in net.live()
    heights = net.heights()
    assert heights[NEW] >= min(h for m, h in heights.items() if m != NEW) - 1, heights
    after = status(world)
    for name in NEW_SERVICES:
        assert after[name]["status"] == "running" and after[name]["healthy"] is True, after
    # The old services trust the new CA from the client-CA directory. With the Gateway client
    # (Fabric >= 2.4) they keep their processes and command lines; with the peer client (2.3)
    # the join changes the endorsement count they read at start (a majority of four), which
    # their command lines carry, so each restarted once with only that changed.
    fabric = Profile.load(c / "profile.yaml").fabric
    assert fabric is not None
    commands_after = {s.name: s.args for s in service_commands(Profile.load(c / "profile.yaml"))}
    old_pids = {n: before[n]["pid"] for n in before}
    if fabric.endorsers is None:
        assert {n: after[n]["pid"] for n in before} == old_pids
        assert {n: commands_after[n] for n in commands_before} == commands_before
    else:
        assert fabric.endorsers == 3
        assert all(after[n]["pid"] != old_pids[n] for n in before), (before, after)
        for name, args in commands_before.items():
            now, i = commands_after[name], args.index("--ledger-endorsers") + 1
            assert (args[i], now[i]) == ("2", "3")
            assert args[:i] + args[i + 1 :] == now[:i] + now[i + 1 :]
        old_pids = {n: after[n]["pid"] for n in before}
    issued = ehrshare("hospital", "add-member", str(world / "hd"), "drdee", "--role", "clinician")
    assert issued.returncode == 0, issued.stderr
    answers = answers_as(world, world / "hd" / "wallets" / "drdee")
    assert sorted(answers) == list(OLD_SERVICES)
    # Dr Dee enrols (key shares from old hospitals' KGC processes too), alice grants her lab
    # records through D's proxy process, and Dr Dee reads the record written before the join.
    assert set(clinician_reads(world)["kgc_nodes_used"]) & {1, 2, 3}
    assert {n: s["pid"] for n, s in status(world).items() if n in before} == old_pids
    again = add_hospital(world)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["performed"] == []
