"""``ehrshare consortium init --hosts netns`` and ``network up/down`` of such a consortium: the
hosts outlive init (recorded in hosts.json), ``network up`` starts every node inside its host
and makes the hosts again after ``network down`` removed them, with the same addresses; a Kubo
node's repository deleted on its host is made anew and ``store repair`` restores its pins from
the other hospitals' nodes (real Fabric 2.3 and Kubo, three hospitals; the tests run in order
on one consortium)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostcheck import fabric_consortium_on_hosts, run_cli

from ehrshare.demo import lab_observation
from ehrshare.network.consortium_hosts import HOSTS_FILE, load_hosts
from ehrshare.network.netns import HostLayout, our_namespaces
from ehrshare.network.supervisor import pid_alive
from ehrshare.network.swarm import KuboSwarm
from ehrshare.provisioning import Consortium
from ehrshare.storage import KuboClient

pytestmark = pytest.mark.netns


_cli = run_cli


@pytest.fixture
def netns_env(state_dir: Path) -> dict[str, str]:
    """The CLI's layouts record themselves in this test's state directory."""
    return {"EHRSHARE_NETNS_STATE": str(state_dir)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "netns"], "--hosts netns needs --ledger fabric"),
        (["--hosts", "cloud", "--ledger", "fabric"], "--hosts 'cloud' is not local or netns"),
        (
            ["--hosts", "netns", "--ledger", "fabric", "--storage", "kubo"],
            "--hosts netns runs a swarm and service processes",
        ),
    ],
    ids=["needs-fabric", "unknown", "needs-swarm"],
)
def test_bad_hosts_options_are_usage_errors_that_make_nothing(
    tmp_path: Path,
    args: list[str],
    message: str,
    machine_before: object,
    netns_env: dict[str, str],
) -> None:
    directory = tmp_path / "c"
    done = _cli("consortium", "init", str(directory), *args, env=netns_env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not directory.exists()


def test_help_explains_hosts_and_how_they_are_removed(netns_env: dict[str, str]) -> None:
    done = _cli("consortium", "init", "--help", env=netns_env)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--hosts" in text and "network namespace" in text and "'network down'" in text


def _pids(netns: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
    ).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """One consortium made with ``consortium init --hosts netns`` for the module's tests (its
    directory and the CLI's environment), removed whatever happens."""
    with fabric_consortium_on_hosts(tmp_path_factory.mktemp("cli-hosts"), up=False) as made:
        yield made


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_init_with_hosts_then_network_up_runs_every_node_in_its_host_and_down_removes_them(
    hosted: tuple[Path, dict[str, str]],
) -> None:
    directory, netns_env = hosted
    record = load_hosts(directory)
    assert record is not None
    assert sorted(record.hosts) == ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP", "OrdererMSP"]
    spaces = {label: h["netns"] for label, h in record.hosts.items()}
    # The hosts outlive init (kept), with nothing running in them until 'network up'.
    assert set(spaces.values()) <= set(our_namespaces())
    assert all(_pids(ns) == [] for ns in spaces.values())

    up = _cli("network", "up", "-p", str(directory), "--json", env=netns_env)
    assert up.returncode == 0, up.stderr[-3000:]
    state = json.loads(up.stdout)
    addresses = {h["address"] for h in record.hosts.values()}
    assert state["services"] and all(
        svc["address"].rsplit(":", 1)[0] in addresses for svc in state["services"].values()
    ), state["services"]
    for label, ns in spaces.items():
        inside = _pids(ns)
        # Each hospital's peer, Kubo node, KGC node and proxy; the orderer and chaincode server.
        assert len(inside) >= 2, (label, inside)
    status = _cli("network", "status", "-p", str(directory), "--json", env=netns_env)
    assert status.returncode == 0, status.stderr[-2000:]

    down = _cli("network", "down", "-p", str(directory), env=netns_env)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not set(spaces.values()) & set(our_namespaces())
    assert (directory / HOSTS_FILE).exists()  # the record stays: 'up' makes them again

    again = _cli("network", "up", "-p", str(directory), "--json", env=netns_env)
    assert again.returncode == 0, again.stderr[-3000:]
    back = load_hosts(directory)
    assert back is not None and back.hosts == record.hosts
    assert all(len(_pids(ns)) >= 2 for ns in spaces.values())


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_a_kubo_repository_deleted_on_its_host_is_made_anew_and_repaired_from_the_others(
    hosted: tuple[Path, dict[str, str]],
) -> None:
    """After the test above (the network is up): records put across hosts, hospital B's Kubo
    repository deleted, ``store recreate-node`` and ``store repair`` restore its pins."""
    directory, env = hosted
    if _cli("network", "up", "-p", str(directory), env=env).returncode != 0:
        pytest.fail("the network does not come up")
    c = Consortium.open(directory / "profile.yaml")
    try:
        people = {}
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("adams", "HospitalA", "clinician"),
        ):
            c.add_member(name, hospital, role)
            people[name] = c.session(name)
            people[name].enroll()
            people[name].publish_type_keys(["lab"])
        refs = [
            people["adams"].put_record(
                lab_observation(value=5.0 + i), patient=people["alice"].ibe_id
            )
            for i in range(2)
        ]
        for sess in people.values():
            sess.close()
    finally:
        c.close()
    swarm = KuboSwarm.load(directory / "ipfs")
    b = "HospitalBMSP"
    assert all(b in _pinned_at(swarm, ref.cid) for ref in refs)
    assert _cli("store", "status", "-p", str(directory), env=env).returncode == 0

    assert _cli("network", "down", "-p", str(directory), env=env).returncode == 0
    old = swarm.nodes[b].peer_id
    shutil.rmtree(swarm.repo(b))
    lost = _cli("network", "up", "-p", str(directory), env=env)
    assert lost.returncode == 3 and "Traceback" not in lost.stderr, lost.stderr[-2000:]
    made = _cli("store", "recreate-node", b, "-p", str(directory), "--json", env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads(made.stdout)["peer_id"] != old
    up = _cli("network", "up", "-p", str(directory), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    swarm = KuboSwarm.load(directory / "ipfs")
    swarm.wait_connected()
    assert swarm.node(b).host == load_hosts(directory).hosts[b]["address"]  # type: ignore[union-attr]
    assert not any(b in _pinned_at(swarm, ref.cid) for ref in refs)
    assert _cli("store", "status", "-p", str(directory), env=env).returncode == 5
    done = _cli("store", "repair", "-p", str(directory), "--json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["healthy"] and {r["node"] for r in out["repaired"]} == {b}
    assert all(b in _pinned_at(swarm, ref.cid) for ref in refs)
    assert _cli("store", "status", "-p", str(directory), env=env).returncode == 0


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_status_shows_the_hosts_and_the_cli_sets_a_delay_between_them(
    hosted: tuple[Path, dict[str, str]],
) -> None:
    """After the tests above: 'network status' lists each host (namespace, address, link),
    'network up --delay-ms' remakes the hosts with the delay (on the link relay where the
    kernel has no netem) and every node serves across the delayed links, 'network delay'
    changes it live, and 'network down' removes the hosts and the relay."""
    directory, env = hosted
    assert _cli("network", "up", "-p", str(directory), env=env).returncode == 0
    record = load_hosts(directory)
    assert record is not None
    status = _cli("network", "status", "-p", str(directory), "--json", env=env)
    assert status.returncode == 0, status.stderr[-2000:]
    hosts = json.loads(status.stdout)["hosts"]
    assert hosts["up"] is True and hosts["delay_ms"] == 0
    assert {
        label: (h["netns"], h["address"], h["link"]) for label, h in hosts["hosts"].items()
    } == {label: (h["netns"], h["address"], "up") for label, h in record.hosts.items()}
    assert _cli("network", "down", "-p", str(directory), env=env).returncode == 0
    up = _cli("network", "up", "-p", str(directory), "--delay-ms", "10", env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    status = _cli("network", "status", "-p", str(directory), "--json", env=env)
    assert status.returncode == 0, status.stdout[-3000:]  # every node answers, 10 ms apart
    hosts = json.loads(status.stdout)["hosts"]
    assert hosts["delay_ms"] == 10.0 and hosts["up"] is True
    assert {h["link"] for h in hosts["hosts"].values()} == {"up"}
    relay = hosts.get("relay_pid")
    layout = HostLayout.load(record.state_file)
    assert [h.address for h in layout.hosts.values()] == [
        h["address"] for h in record.hosts.values()
    ]
    live = _cli("network", "delay", "--ms", "0", "-p", str(directory), "--json", env=env)
    assert live.returncode == 0, live.stderr[-2000:]
    assert json.loads(live.stdout)["applied"] is True
    assert _cli("network", "status", "-p", str(directory), env=env).returncode == 0
    assert _cli("network", "down", "-p", str(directory), env=env).returncode == 0
    assert not {h["netns"] for h in record.hosts.values()} & set(our_namespaces())
    if relay is not None:
        assert not pid_alive(relay)  # stopped by pid (a zombie until init reaps it counts)


def _pinned_at(swarm: KuboSwarm, cid: str) -> list[str]:
    held = []
    for msp, node in swarm.nodes.items():
        with KuboClient(node.api_url, timeout=20) as client:
            if cid in client.pins():
                held.append(msp)
    return held


def test_init_killed_while_making_its_hosts_leaves_them_to_be_swept(
    tmp_path: Path, machine_before: object, netns_env: dict[str, str], state_dir: Path
) -> None:
    directory = tmp_path / "c"
    done = _cli(
        "consortium", "init", str(directory), "--ledger", "fabric", "--hosts", "netns",
        env={**netns_env, "EHRSHARE_FAULT_AT": "netns.create.after_host"},
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (directory / HOSTS_FILE).exists()  # never recorded, so never kept
    (state,) = state_dir.glob("*.json")
    assert [n for n in our_namespaces() if n.startswith(f"ehr{state.stem}")]
    # Its owner is gone: the next layout made on this machine removes it first.
    HostLayout.create(["X"], state_dir=state_dir).teardown()
    assert not list(state_dir.glob("*.json"))
    assert not [n for n in our_namespaces() if n.startswith(f"ehr{state.stem}")]
