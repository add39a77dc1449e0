"""'consortium add-hospital' on a consortium whose KGC nodes and proxies run as processes
('consortium init --services processes', started by 'network up'): the new hospital's KGC node
and proxy get TLS server certificates from its own CA in its own directory, the supervisor
starts them, the running services take the new CA from their client-CA directory without a
restart (same pids, and they answer the new hospital's members), the node processes reshare to
a committee with the new node, and a clinician of the new hospital reads a record granted
afterwards through the new hospital's proxy process. A profile written before the client-CA
directory gets it on its next join (its services restart once). Embedded ledger, real
processes over mutual TLS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_world import state_digest
from test_add_hospital import _secrets

from cliproc import run_ehrshare
from ehrshare.demo import lab_observation
from ehrshare.hospital import init_hospital
from ehrshare.network.services import service_commands
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient
from ehrshare.services.tls import ClientTls
from ehrshare.wallet import Wallet

pytestmark = pytest.mark.slow

DR_DEE = "HospitalDMSP/drdee"
NEW_SERVICES = ("kgc4", "proxy-hospitald")


def ehrshare(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_ehrshare(*args, fault=fault, timeout=400)


def consortium_up_with_a_record(base: Path, ledger: str = "embedded") -> None:
    """At ``base/c``: three hospitals with their services as processes, running under 'network
    up' (and with ``ledger="fabric"`` their Fabric network); alice with one lab record (its id
    in ``base/record``), admins of A and B."""
    root = base / "c"
    with Consortium.init(
        root, ledger=ledger, services="processes", ports=free_loopback_ports(6)
    ) as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("admin-b", "HospitalB", "admin")
    up = ehrshare("network", "up", "-p", str(root))
    assert up.returncode == 0, up.stderr
    with (
        Consortium.open(root / "profile.yaml") as c,
        c.session(Wallet(root / "wallets" / "alice", use_env=False)) as s,
    ):
        s.enroll()
        s.publish_type_keys()
        (base / "record").write_text(s.put_record(lab_observation()).record_id, "utf-8")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three hospitals as processes (alice: one lab record; admins of A and B), stopped."""
    base = tmp_path_factory.mktemp("join-proc")
    try:
        consortium_up_with_a_record(base)
    finally:
        down = ehrshare("network", "down", "-p", str(base / "c"))
        assert down.returncode == 0, down.stderr
    return base


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the template (the same ports: one test at a time) plus hospital D at ``hd``;
    whatever a test started is stopped by 'network down'."""
    base = tmp_path / "w"
    shutil.copytree(template, base)
    init_hospital(base / "hd", "HospitalD")
    yield base
    ehrshare("network", "down", "-p", str(base / "c"))


def add_hospital(base: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    request = str(base / "hd" / "join-request.json")
    signs = ("--sign-with", "admin", "--sign-with", "admin-b")
    args = ("consortium", "add-hospital", request, "--hospital-dir", str(base / "hd"))
    update = base / "hd" / "join-request.update.json"
    return ehrshare(
        *args, *(() if update.exists() else signs), "-p", str(base / "c"), "--json", fault=fault
    )


def status(base: Path) -> dict[str, dict[str, object]]:
    got = ehrshare("network", "status", "-p", str(base / "c"), "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    services: dict[str, dict[str, object]] = json.loads(got.stdout)["background_services"][
        "services"
    ]
    return services


def committee(base: Path) -> list[str]:
    with Consortium.open(base / "c" / "profile.yaml") as c:
        return [str(m) for m in c.dkg_result()["roster"]]


def clinician_reads(base: Path, name: str = "drdee", *, grant: bool = True) -> dict[str, object]:
    """A clinician of D (issued by D's CA in D's directory) enrols; alice grants her lab
    records to D's clinicians' proxy; the clinician reads alice's record. The enrolment's
    answer is returned."""
    profile = str(base / "c")
    wallet = base / "hd" / "wallets" / name
    if not wallet.exists():
        issued = ehrshare("hospital", "add-member", str(base / "hd"), name, "--role", "clinician")
        assert issued.returncode == 0, issued.stderr
    enrolled = ehrshare("enroll", "-p", profile, "-w", str(wallet), "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    if grant:
        granted = ehrshare(
            "grant",
            "give",
            f"HospitalDMSP/{name}",
            "lab",
            "--days",
            "1",
            "-p",
            profile,
            "-w",
            "alice",
        )
        assert granted.returncode == 0, granted.stderr
        assert "re-key at HospitalDMSP/proxy" in granted.stderr  # the new proxy holds it
    record = (base / "record").read_text(encoding="utf-8")
    read = ehrshare("record", "get", record, "-p", profile, "-w", str(wallet), "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["valueQuantity"]["value"] == 13.2
    answer: dict[str, object] = json.loads(enrolled.stdout)
    return answer


OLD_SERVICES = (
    "kgc1",
    "kgc2",
    "kgc3",
    *sorted(("proxy-hospitala", "proxy-hospitalb", "proxy-hospitalc")),
)


def service_pids(base: Path) -> dict[str, object]:
    return {name: svc["pid"] for name, svc in status(base).items()}


def answers_as(
    base: Path, wallet: Path, names: tuple[str, ...] = OLD_SERVICES
) -> dict[str, dict[str, object]]:
    """What each named service's Health call answers a caller with ``wallet``'s TLS client
    certificate (mutual TLS: the service must trust the certificate's CA)."""
    identity, signer = Wallet(wallet, use_env=False).load_tls()
    answers = {}
    for cmd in service_commands(Profile.load(base / "c" / "profile.yaml")):
        if cmd.name not in names:
            continue
        assert cmd.service is not None and cmd.service.tls_ca is not None
        tls = ClientTls.for_member(identity, signer, [cmd.service.tls_ca.read_bytes()])
        client: GrpcKgcClient | GrpcProxyClient
        if cmd.args[0] == "kgc":
            client = GrpcKgcClient(cmd.address, index=0, tls=tls)
        else:
            client = GrpcProxyClient(cmd.address, tls=tls)
        with client:
            answers[cmd.name] = client.health(timeout=10)
    return answers


def _pids(base: Path) -> list[int]:
    state = json.loads((base / "c" / "run" / "network.json").read_text(encoding="utf-8"))
    return [state["supervisor_pid"], *(s["pid"] for s in state["services"].values())]


def test_a_hospital_joins_a_consortium_of_service_processes(world: Path) -> None:
    c = world / "c"
    assert ehrshare("network", "up", "-p", str(c)).returncode == 0
    before = status(world)
    assert sorted(before) == list(OLD_SERVICES)
    commands_before = {c.name: c.args for c in service_commands(Profile.load(c / "profile.yaml"))}
    joined = add_hospital(world)
    assert joined.returncode == 0, joined.stderr
    outcome = json.loads(joined.stdout)
    assert outcome["performed"] == [
        "config",
        "register",
        "client-cas",
        "profile",
        "services",
        "reshare",
    ]
    assert (c / "client-cas" / "HospitalDMSP.pem").read_bytes() == (
        world / "hd" / "ca" / "HospitalDMSP" / "ca-cert.pem"
    ).read_bytes()
    assert "HospitalDMSP/kgc" in committee(world)
    # Its services run under the same supervisor, answer Health over mutual TLS, and present
    # certificates from the hospital's own CA, made in its directory.
    after = status(world)
    for name in NEW_SERVICES:
        assert after[name]["status"] == "running", after[name]
        assert after[name]["healthy"] is True
    assert all(s["status"] == "running" for s in after.values())
    for service in ("kgc", "proxy"):
        assert (world / "hd" / "tls" / f"{service}.pem").is_file()
        key = world / "hd" / "keys" / f"{service}-tls.key"
        assert key.stat().st_mode & 0o077 == 0
    # No private key of the new hospital in any file outside its directory (the consortium's
    # profile, ledger, run directory with the services' logs, joins/, the update file).
    secrets_of = _secrets(world / "hd")
    assert {"keys/kgc-tls.key", "keys/proxy-tls.key", "ca/HospitalDMSP/ca-key.pem"} <= set(
        secrets_of
    )
    outside = [p for p in world.rglob("*") if p.is_file() and world / "hd" not in p.parents]
    contents = {p: p.read_bytes() for p in outside}
    for name, needles in secrets_of.items():
        for path, data in contents.items():
            assert not any(n in data for n in needles), f"{name} of HospitalD found in {path}"
    # The other services kept running (same processes, same command lines) and trust the new
    # CA: a member of the new hospital is answered by every one of them.
    assert {n: after[n]["pid"] for n in before} == {n: before[n]["pid"] for n in before}
    commands_after = {c.name: c.args for c in service_commands(Profile.load(c / "profile.yaml"))}
    assert {n: commands_after[n] for n in commands_before} == commands_before
    issued = ehrshare("hospital", "add-member", str(world / "hd"), "drdee", "--role", "clinician")
    assert issued.returncode == 0, issued.stderr
    answers = answers_as(world, world / "hd" / "wallets" / "drdee")
    assert sorted(answers) == list(OLD_SERVICES)
    assert [answers[f"kgc{i}"] for i in (1, 2, 3)] == [
        {"service": "kgc", "index": i} for i in (1, 2, 3)
    ]
    assert answers["proxy-hospitala"] == {"service": "proxy", "name": "proxy-hospitala"}
    # The new node holds its share of the final resharing.
    with Consortium.open(c / "profile.yaml") as cons:
        session = str(cons.dkg_result()["nonce"])
    assert (world / "hd" / "kgc" / "current-session").read_text().strip() == session
    # Her enrolment extracts key shares from KGC nodes of the old hospitals too (τ = 2 of 4).
    assert set(clinician_reads(world)["kgc_nodes_used"]) & {1, 2, 3}  # type: ignore[arg-type]
    assert {n: p for n, p in service_pids(world).items() if n in before} == {
        n: before[n]["pid"] for n in before
    }
    again = add_hospital(world)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["performed"] == []

    # Down and up again: the new services come back with the others.
    started = _pids(world)
    assert ehrshare("network", "down", "-p", str(c)).returncode == 0
    assert not [p for p in started if pid_alive(p)]
    # Node 4 answers with its new share: with nodes 1 and 2 down, nodes 3 and 4 serve an
    # enrolment (τ = 2), started by hand from the commands the profile implies.
    commands = json.loads(ehrshare("consortium", "service-commands", "-p", str(c), "--json").stdout)
    by_hand = []
    try:
        for cmd in commands:
            if cmd["name"] in ("kgc3", "kgc4"):
                port_file = world / f"{cmd['name']}.port"
                argv = [
                    sys.executable,
                    "-m",
                    "ehrshare",
                    *cmd["argv"][1:],
                    "--port-file",
                    str(port_file),
                ]
                by_hand.append((subprocess.Popen(argv, stderr=subprocess.DEVNULL), port_file))
        for proc, port_file in by_hand:
            _until(lambda pf=port_file: pf.exists(), proc)
        enrolled = clinician_reads_enrol_only(world, "drdoe")
        assert enrolled["kgc_nodes_used"] == [3, 4], enrolled
    finally:
        for proc, _ in by_hand:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    up = ehrshare("network", "up", "-p", str(c), "--json")
    assert up.returncode == 0, up.stderr
    assert set(NEW_SERVICES) <= set(json.loads(up.stdout)["services"])
    final = status(world)
    assert all(s["status"] == "running" for s in final.values()), final
    clinician_reads(world, grant=False)


def clinician_reads_enrol_only(base: Path, name: str) -> dict[str, object]:
    issued = ehrshare("hospital", "add-member", str(base / "hd"), name, "--role", "clinician")
    assert issued.returncode == 0, issued.stderr
    enrolled = ehrshare(
        "enroll", "-p", str(base / "c"), "-w", str(base / "hd" / "wallets" / name), "--json"
    )
    assert enrolled.returncode == 0, enrolled.stderr
    answer: dict[str, object] = json.loads(enrolled.stdout)
    return answer


def _until(check: object, proc: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, "did not listen in time"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "fault",
    [
        "add_hospital.after_client_cas",
        "add_hospital.after_profile",
        "add_hospital.after_services",
        "add_hospital.reshare_opened",
        "add_hospital.after_reshare",
    ],
)
def test_kill_at_each_new_step_and_the_next_run_completes(world: Path, fault: str) -> None:
    c = world / "c"
    assert ehrshare("network", "up", "-p", str(c)).returncode == 0
    before = service_pids(world)
    killed = add_hospital(world, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if fault == "add_hospital.after_client_cas":
        # Killed right after the CA was written: whole, and trusted by the running services.
        assert (c / "client-cas" / "HospitalDMSP.pem").read_bytes() == (
            world / "hd" / "ca" / "HospitalDMSP" / "ca-cert.pem"
        ).read_bytes()
        d_kgc = world / "hd" / "wallets" / "kgc"  # a TLS client certificate of D's CA
        assert sorted(answers_as(world, d_kgc)) == list(OLD_SERVICES)
    # The members keep being served: alice reads her record.
    record = (world / "record").read_text(encoding="utf-8")
    own = ehrshare("record", "get", record, "-p", str(c), "-w", "alice", "--json")
    assert own.returncode == 0, own.stderr
    if fault == "add_hospital.after_profile":
        # With the services down, the next run's services step starts them all.
        assert ehrshare("network", "down", "-p", str(c)).returncode == 0
    finished = add_hospital(world)
    assert finished.returncode == 0, finished.stderr
    assert "HospitalDMSP/kgc" in committee(world)
    if fault == "add_hospital.reshare_opened":
        # The rerun waited for the session the killed run opened rather than opening another.
        recorded = json.loads((c / "joins" / "HospitalDMSP.json").read_text(encoding="utf-8"))
        with Consortium.open(c / "profile.yaml") as cons:
            assert recorded["reshare"] == str(cons.dkg_result()["nonce"])
    after = status(world)
    assert all(after[n]["status"] == "running" for n in NEW_SERVICES), after
    if fault != "add_hospital.after_profile":  # (that one stopped them all)
        # Neither the killed run nor the one that finished restarted the running services.
        assert {n: after[n]["pid"] for n in before} == before
    clinician_reads(world)


def test_a_profile_from_before_the_client_ca_directory_migrates_on_its_next_join(
    world: Path,
) -> None:
    """A profile written before 'client_cas:' (each CA a --client-ca of its own) still starts;
    its next join writes the directory and names it, and its services restart once with it."""
    c = world / "c"
    profile = c / "profile.yaml"
    text = profile.read_text(encoding="utf-8")
    assert "client_cas: client-cas\n" in text
    profile.write_text(text.replace("client_cas: client-cas\n", ""), encoding="utf-8")
    shutil.rmtree(c / "client-cas")
    old_args = {cmd.name: cmd.args for cmd in service_commands(Profile.load(profile))}
    assert all("--client-ca" in a and "--client-ca-dir" not in a for a in old_args.values())
    assert ehrshare("network", "up", "-p", str(c)).returncode == 0
    before = service_pids(world)
    joined = add_hospital(world)
    assert joined.returncode == 0, joined.stderr
    assert "client-cas" in json.loads(joined.stdout)["performed"]
    assert Profile.load(profile).client_ca_dir == c / "client-cas"
    assert sorted(p.name for p in (c / "client-cas").glob("*.pem")) == [
        f"Hospital{x}MSP.pem" for x in "ABCD"
    ]
    after = service_pids(world)
    assert all(after[n] != before[n] for n in before)  # restarted once, with the directory
    new_args = {cmd.name: cmd.args for cmd in service_commands(Profile.load(profile))}
    assert all("--client-ca-dir" in a and "--client-ca" not in a for a in new_args.values())
    clinician_reads(world)


@pytest.mark.parametrize(
    ("endpoints", "code", "says"),
    [
        ({"kgc": "203.0.113.9:7070"}, 3, "not on this machine's loopback"),
        ({"proxy": "no-port"}, 6, "is not host:port"),
        ({"kgc": "127.0.0.1:7071", "proxy": "127.0.0.1:7071"}, 3, "the same address"),
        ({"kgc": "taken"}, 3, "already listens on that port"),
    ],
)
def test_bad_service_endpoints_are_refused_and_change_nothing(
    world: Path, endpoints: dict[str, str], code: int, says: str
) -> None:
    c = world / "c"
    if endpoints.get("kgc") == "taken":
        with Consortium.open(c / "profile.yaml") as cons:
            endpoints = {"kgc": str(cons.profile.kgc_nodes[0].service.address)}
    shutil.rmtree(world / "hd")
    init_hospital(world / "hd", "HospitalD", endpoints)
    before = state_digest(c), (c / "profile.yaml").read_text(encoding="utf-8")
    refused = add_hospital(world)
    assert refused.returncode == code, refused.stderr
    assert says in refused.stderr and "Traceback" not in refused.stderr
    assert (state_digest(c), (c / "profile.yaml").read_text(encoding="utf-8")) == before
    assert not (c / "run" / "network.json").exists()  # nothing was started
    assert os.listdir(world / "hd" / "kgc") == []
