"""A hospital joining a consortium on several hosts ('consortium init --ledger fabric --hosts
netns') gets a host of its own: the layout's next namespace and address, recorded in hosts.json
before it is made (so a killed join, or 'network down' meanwhile, leaves the next run or 'network
up' to make it). On Fabric its peer, Kubo node, KGC node and proxy run in that namespace, bound to
its address, and a clinician of the new hospital reads a record granted to them afterwards."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostcheck import fabric_consortium_on_hosts, run_cli

from ehrshare.demo import lab_observation
from ehrshare.network.consortium_hosts import (
    HOSTS_FILE,
    add_host,
    ensure_hosts,
    load_hosts,
    next_host,
    record_hosts,
    remove_hosts,
)
from ehrshare.network.linkrelay import netem_available
from ehrshare.network.netns import HostLayout, our_namespaces
from ehrshare.network.supervisor import Child

pytestmark = pytest.mark.netns


_cli = run_cli


def _answers(address: str, port: int) -> bool:
    """A server inside the host answers a connection from the root namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=2) as conn:
                return conn.recv(2) == b"hi"
        except OSError:
            time.sleep(0.1)
    return False


_ADD = (
    "import sys\n"
    "from pathlib import Path\n"
    "from ehrshare.network.consortium_hosts import add_host\n"
    "add_host(Path(sys.argv[1]), 'HospitalDMSP')\n"
)


@pytest.mark.parametrize("down", [False, True], ids=["hosts-up", "hosts-down"])
def test_a_joining_hospital_gets_the_next_host_recorded_before_it_is_made(
    tmp_path: Path,
    machine_before: object,
    state_dir: Path,
    down: bool,
    serve: Callable[[HostLayout, str, int], Child],
) -> None:
    root = tmp_path / "c"
    root.mkdir()
    layout = HostLayout.create(["HospitalAMSP", "OrdererMSP"], state_dir=state_dir)
    record_hosts(root, layout)
    try:
        planned = next_host(root, "HospitalDMSP")
        assert planned.address == str(layout.subnet.network_address + 12)
        assert load_hosts(root).hosts.keys() == {"HospitalAMSP", "OrdererMSP"}  # type: ignore[union-attr]
        if down:
            remove_hosts(root)
        # Killed after recording it, before making it: nothing is lost.
        env = {**os.environ, "EHRSHARE_FAULT_AT": "hosts.add.after_record"}
        killed = subprocess.run(
            [sys.executable, "-c", _ADD, str(root)], env=env, capture_output=True, check=False
        )
        assert killed.returncode == -9, killed.stderr
        record = load_hosts(root)
        assert record is not None and record.hosts["HospitalDMSP"]["address"] == planned.address
        if down:
            assert planned.netns not in our_namespaces()
            ensure_hosts(root)  # what 'network up' does: every recorded host, same addresses
        else:
            assert add_host(root, "HospitalDMSP") == planned
        assert planned.netns in our_namespaces()
        current = HostLayout.load(state_dir / f"{layout.tag}.json")
        serve(current, "HospitalDMSP", 7130)
        assert _answers(planned.address, 7130)
        assert add_host(root, "HospitalDMSP") == planned  # idempotent
        assert next_host(root, "HospitalDMSP") == planned
        remove_hosts(root)
        assert planned.netns not in our_namespaces()
        again = ensure_hosts(root)
        assert again is not None and again.address("HospitalDMSP") == planned.address
    finally:
        remove_hosts(root)


DR_DEE = "HospitalDMSP/drdee"


def _alice_and_her_record(directory: Path, env: dict[str, str]) -> None:
    """Patient alice of HospitalA (enrolled) with one lab record, whose id is kept in
    ``record-id`` beside the consortium's directory, and HospitalB's admin-b."""
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("admin-b", "HospitalB", "admin"),
    ):
        made = _cli(
            "consortium", "add-member", name, "--hospital", hospital, "--role", role,
            "-p", str(directory), env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
    assert _cli("enroll", "-p", str(directory), "-w", "alice", env=env).returncode == 0
    record = directory.parent / "lab.json"
    record.write_text(json.dumps(lab_observation()), encoding="utf-8")
    put = _cli("record", "put", str(record), "-p", str(directory), "-w", "alice", "--json", env=env)
    assert put.returncode == 0, put.stderr[-2000:]
    (directory.parent / "record-id").write_text(json.loads(put.stdout)["record_id"], "utf-8")


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A Fabric consortium on hosts with alice's record, its network up; torn down whatever
    happens, the machine's namespaces as before."""
    tmp = tmp_path_factory.mktemp("join-hosts")
    with fabric_consortium_on_hosts(tmp, up=True) as (directory, env):
        _alice_and_her_record(directory, env)
        yield directory, env


def _secrets(hospital: Path) -> dict[str, list[bytes]]:
    """Every private key file under the hospital's directory, with what would betray a copy:
    its bytes, and for PEM each long line of its body and the body decoded (as in
    tests/sdk/test_add_hospital.py)."""
    found: dict[str, list[bytes]] = {}
    for path in hospital.rglob("*"):
        if not path.is_file() or path.suffix not in (".pem", ".key", ".sealed"):
            continue
        data = path.read_bytes()
        if path.suffix == ".pem" and b"PRIVATE KEY" not in data:
            continue
        needles = [data]
        if b"-----BEGIN" in data:
            body = [ln for ln in data.splitlines() if ln and not ln.startswith(b"-----")]
            needles += [ln for ln in body if len(ln) >= 40]
            needles.append(base64.b64decode(b"".join(body)))
        found[str(path.relative_to(hospital))] = needles
    # The swarm's key is the consortium's, given to every member's node: not the hospital's.
    found.pop("ipfs/swarm.key", None)
    config = hospital / "ipfs" / "config"
    if config.is_file():  # its Kubo node's libp2p identity
        found["ipfs/config"] = [json.loads(config.read_text())["Identity"]["PrivKey"].encode()]
    return found


def _pids(netns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True)
    return {int(p) for p in out.stdout.split()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_a_hospital_joins_a_consortium_on_hosts_on_a_host_of_its_own(
    hosted: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    directory, env = hosted
    # A peer endpoint that is not the new host's address: refused before anything changes.
    he = directory.parent / "he"
    made = _cli(
        "hospital", "init", str(he), "--name", "HospitalD", "--endpoint", "peer=127.0.0.1:7999",
        env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    before = (directory / HOSTS_FILE).read_text(encoding="utf-8")
    refused = _cli(
        "consortium", "add-hospital", str(he / "join-request.json"), "-p", str(directory),
        env=env,
    )  # fmt: skip
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "its own host's" in refused.stderr and "Traceback" not in refused.stderr
    assert not (he / "join-request.update.json").exists()
    assert (directory / HOSTS_FILE).read_text(encoding="utf-8") == before
    hd = directory.parent / "hd"
    made = _cli("hospital", "init", str(hd), "--name", "HospitalD", env=env)
    assert made.returncode == 0, made.stderr
    request = hd / "join-request.json"
    join = ("consortium", "add-hospital", str(request), "-p", str(directory), "--json")
    signs = ("--sign-with", "admin", "--sign-with", "admin-b")
    # Killed after its host was recorded (the config update committed), then after its peer
    # started in that host: each next run goes on, and the third completes.
    record_id = (directory.parent / "record-id").read_text(encoding="utf-8")
    for fault in ("hosts.add.after_record", "add_hospital.peer_started"):
        killed = _cli(*join, *(signs if fault.startswith("hosts") else ()), env=env, fault=fault)
        assert killed.returncode == -9, killed.stderr[-3000:]
        own = _cli("record", "get", record_id, "-p", str(directory), "-w", "alice", env=env)
        assert own.returncode == 0, own.stderr[-2000:]  # the members are served meanwhile
    joined = _cli(*join, env=env)
    assert joined.returncode == 0, joined.stderr[-4000:]
    performed = json.loads(joined.stdout)["performed"]
    assert performed == [
        "peer",
        "register",
        "storage",
        "client-cas",
        "profile",
        "services",
        "reshare",
    ]
    record = load_hosts(directory)
    assert record is not None and "HospitalDMSP" in record.hosts
    d = record.hosts["HospitalDMSP"]
    assert d["address"] not in {
        h["address"] for k, h in record.hosts.items() if k != "HospitalDMSP"
    }
    # Its peer, Kubo node, KGC node and proxy run in its namespace, bound to its address.
    inside = " ".join(_cmdline(p) for p in _pids(d["netns"]))
    assert "peer node start" in inside and "ipfs" in inside, inside
    assert "kgc serve" in inside and "proxy serve" in inside, inside
    status = _cli("network", "status", "-p", str(directory), "--json", env=env)
    assert status.returncode == 0, status.stdout[-3000:]
    st = json.loads(status.stdout)
    services = st["background_services"]["services"]
    assert services["kgc4"]["address"].startswith(d["address"] + ":")
    assert services["proxy-hospitald"]["address"].startswith(d["address"] + ":")
    assert st["hosts"]["hosts"]["HospitalDMSP"]["link"] == "up"
    assert any(p["address"].startswith(d["address"] + ":") for p in st["ledger"]["peers"])
    # Its clinician enrols, is granted alice's lab records, and reads through its proxy.
    issued = _cli("hospital", "add-member", str(hd), "drdee", "--role", "clinician", env=env)
    assert issued.returncode == 0, issued.stderr
    dee = str(hd / "wallets" / "drdee")
    enrolled = _cli("enroll", "-p", str(directory), "-w", dee, env=env)
    assert enrolled.returncode == 0, enrolled.stderr[-2000:]
    granted = _cli(
        "grant", "give", DR_DEE, "lab", "--days", "1", "-p", str(directory), "-w", "alice", env=env
    )
    assert granted.returncode == 0, granted.stderr[-2000:]
    assert "re-key at HospitalDMSP/proxy" in granted.stderr
    read = _cli("record", "get", record_id, "-p", str(directory), "-w", dee, "--json", env=env)
    assert read.returncode == 0, read.stderr[-2000:]
    assert json.loads(read.stdout)["valueQuantity"]["value"] == 13.2
    # No private key of the new hospital (CA, node keys, TLS, Fabric peer and admin, Kubo
    # identity) in any file outside its directory.
    secrets_of = _secrets(hd)
    assert any(name.startswith("fabric/") for name in secrets_of), sorted(secrets_of)
    assert "ipfs/config" in secrets_of and "keys/kgc-tls.key" in secrets_of
    root = directory.parent
    outside = [p for p in root.rglob("*") if p.is_file() and hd not in p.parents]
    for name, needles in secrets_of.items():
        for path in outside:
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"{name} of HospitalD found in {path}"
    # Down removes its host with the others; up makes it again and starts its nodes in it.
    assert _cli("network", "down", "-p", str(directory), env=env).returncode == 0
    assert d["netns"] not in our_namespaces()
    up = _cli("network", "up", "-p", str(directory), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    assert "kgc serve" in " ".join(_cmdline(p) for p in _pids(d["netns"]))
    again = _cli("record", "get", record_id, "-p", str(directory), "-w", dee, "--json", env=env)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.parametrize("down", [False, True], ids=["hosts-up", "hosts-down"])
def test_a_joining_hospital_gets_a_host_on_hosts_linked_through_the_relay(
    tmp_path: Path,
    machine_before: object,
    state_dir: Path,
    down: bool,
    serve: Callable[[HostLayout, str, int], Child],
) -> None:
    """Hosts on the link relay (a delay on a kernel without netem): up, the running relay opens
    a port for the new host; down, it is recorded and the next 'network up' makes every host
    with a relay."""
    root = tmp_path / "c"
    root.mkdir()
    layout = HostLayout.create(
        ["HospitalAMSP", "OrdererMSP"],
        state_dir=state_dir,
        links="relay",
        delay_ms=5,
        detached_relay=True,
    )
    record_hosts(root, layout)
    relay = layout.relay
    assert relay is not None
    try:
        data = json.loads((root / HOSTS_FILE).read_text(encoding="utf-8"))
        assert data["links"] == "relay"
        data["delay_ms"] = 5.0  # as 'network delay --ms 5' records it
        (root / HOSTS_FILE).write_text(json.dumps(data), encoding="utf-8")
        planned = next_host(root, "HospitalDMSP")
        assert planned.address == str(layout.subnet.network_address + 12)
        if down:
            remove_hosts(root)
            assert not relay.alive()
        assert add_host(root, "HospitalDMSP") == planned
        assert load_hosts(root).hosts["HospitalDMSP"]["address"] == planned.address  # type: ignore[union-attr]
        if down:
            assert planned.netns not in our_namespaces()  # only recorded
            ensure_hosts(root)  # what 'network up' does: every recorded host, on a relay
        assert planned.netns in our_namespaces()
        current = HostLayout.load(state_dir / f"{layout.tag}.json")
        assert current.links == "relay" and current.relay is not None
        assert current.relay.alive() and (current.relay.pid == relay.pid) is not down
        stats = current.relay_stats()
        assert stats is not None and stats["delay_ms"] == 5.0
        assert current.host("HospitalDMSP").inside in stats["ports"]
        serve(current, "HospitalDMSP", 7131)
        assert _answers(planned.address, 7131)
        assert add_host(root, "HospitalDMSP") == planned  # idempotent
    finally:
        remove_hosts(root)


@pytest.fixture(scope="module")
def hosted_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A Fabric consortium on hosts 10 ms apart, with alice's record: 'network up --delay-ms
    10' after 'network down' (on a kernel without netem the hosts are then on the link relay);
    torn down whatever happens, the machine's namespaces as before."""
    tmp = tmp_path_factory.mktemp("join-relay")
    with fabric_consortium_on_hosts(tmp, up=False) as (directory, env):
        assert _cli("network", "down", "-p", str(directory), env=env).returncode == 0
        up = _cli("network", "up", "-p", str(directory), "--delay-ms", "10", env=env)
        assert up.returncode == 0, up.stderr[-3000:]
        _alice_and_her_record(directory, env)
        yield directory, env


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_a_hospital_joins_a_consortium_on_hosts_10_ms_apart(
    hosted_relay: tuple[Path, dict[str, str]],
) -> None:
    """With a delay set (the link relay on this kernel): the join gives the hospital a host
    the running relay opens a port for (the same relay: the members' connections go on), a
    join killed right after that is completed by the next run, and its clinician reads."""
    directory, env = hosted_relay
    before = load_hosts(directory)
    assert before is not None and before.delay_ms == 10.0
    layout = HostLayout.load(before.state_file)
    relay = layout.relay if layout.links == "relay" else None
    assert layout.links == ("bridge" if netem_available() else "relay")
    if layout.links == "relay":
        assert relay is not None and relay.alive()
    hd = directory.parent / "hd"
    made = _cli("hospital", "init", str(hd), "--name", "HospitalD", env=env)
    assert made.returncode == 0, made.stderr
    join = (
        "consortium", "add-hospital", str(hd / "join-request.json"), "-p", str(directory),
        "--json",
    )  # fmt: skip
    signs = ("--sign-with", "admin", "--sign-with", "admin-b")
    fault = "netns.add_host.after_ports" if relay is not None else "hosts.add.after_record"
    killed = _cli(*join, *signs, env=env, fault=fault)
    assert killed.returncode == -9, killed.stderr[-3000:]
    joined = _cli(*join, env=env)
    assert joined.returncode == 0, joined.stderr[-4000:]
    record = load_hosts(directory)
    assert record is not None and record.links == layout.links and record.delay_ms == 10.0
    d = record.hosts["HospitalDMSP"]
    inside = " ".join(_cmdline(p) for p in _pids(d["netns"]))
    assert "peer node start" in inside and "kgc serve" in inside, inside
    current = HostLayout.load(record.state_file)
    if relay is not None:
        assert current.relay is not None and current.relay.pid == relay.pid and relay.alive()
        stats = current.relay_stats()
        assert stats is not None and stats["delay_ms"] == 10.0
        assert stats["ports"][d["inside"]]["frames_out"] > 0  # the new host's traffic
    status = _cli("network", "status", "-p", str(directory), "--json", env=env)
    assert status.returncode == 0, status.stdout[-3000:]
    assert json.loads(status.stdout)["hosts"]["hosts"]["HospitalDMSP"]["link"] == "up"
    issued = _cli("hospital", "add-member", str(hd), "drdee", "--role", "clinician", env=env)
    assert issued.returncode == 0, issued.stderr
    dee = str(hd / "wallets" / "drdee")
    enrolled = _cli("enroll", "-p", str(directory), "-w", dee, env=env)
    assert enrolled.returncode == 0, enrolled.stderr[-2000:]
    granted = _cli(
        "grant", "give", DR_DEE, "lab", "--days", "1", "-p", str(directory), "-w", "alice", env=env
    )
    assert granted.returncode == 0, granted.stderr[-2000:]
    record_id = (directory.parent / "record-id").read_text(encoding="utf-8")
    read = _cli("record", "get", record_id, "-p", str(directory), "-w", dee, "--json", env=env)
    assert read.returncode == 0, read.stderr[-2000:]
    assert json.loads(read.stdout)["valueQuantity"]["value"] == 13.2
