"""The story through a remote-services profile: 3 ``ehrshare kgc serve`` and 3 ``ehrshare proxy
serve`` processes (one per hospital) on 127.0.0.1, reached by ``connect(profile, wallet)`` over
gRPC and mutual TLS.

One KGC node is killed (SIGKILL) mid-way and hospital B's proxy is restarted mid-flow; the
fixture's finaliser stops every process by pid and fails if one is left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from ehrshare.demo import SECRET_MARKER, lab_observation
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect
from ehrshare.session import AccessDenied, Session

pytestmark = pytest.mark.slow

PEOPLE = {
    "alice": ("HospitalA", "patient"),
    "dr-adams": ("HospitalA", "clinician"),
    "dr-baker": ("HospitalB", "clinician"),
    "dr-chen": ("HospitalC", "clinician"),
}


@dataclass
class Deployment:
    root: Path
    profile: Path
    procs: ServiceProcesses


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    root = tmp_path / "consortium"
    c = Consortium.init(root, services="processes", ports=free_loopback_ports(6))
    for name, (hospital, role) in PEOPLE.items():
        c.add_member(name, hospital, role)
    c.close()
    procs = ServiceProcesses(
        Profile.load(root / "profile.yaml"), root / "run", die_with_parent=True
    )
    try:
        procs.start()
        yield Deployment(root, root / "profile.yaml", procs)
    finally:
        started = list(procs.started_pids)
        procs.stop_all()
        left = [pid for pid in started if pid_alive(pid)]
        assert not left, f"service processes still running: {left}"


def test_profile_points_at_processes_not_in_process_services(deployment: Deployment) -> None:
    profile = Profile.load(deployment.profile)
    assert all(n.service.address for n in profile.kgc_nodes)
    assert profile.proxy.address is not None
    with Consortium.open(profile) as c:
        assert c.remote_services and c.kgc_nodes == []
    # Each node's long-term key is outside its state directory; TLS keys are mode 0600.
    for n in profile.kgc_nodes:
        svc = n.service
        assert svc.key_file is not None and svc.state is not None and svc.tls_key is not None
        assert not svc.key_file.resolve().is_relative_to(svc.state.resolve())
        assert svc.tls_key.stat().st_mode & 0o777 == 0o600
    addresses = {c.address for c in deployment.procs.commands.values()}
    assert all(a.startswith("127.0.0.1:") for a in addresses) and len(addresses) == 6


def test_story_over_grpc_with_a_node_killed_and_the_proxy_restarted(
    deployment: Deployment,
) -> None:
    procs = deployment.procs
    s: dict[str, Session] = {}
    try:
        for name in PEOPLE:
            s[name] = connect(deployment.profile, name)
        for name in ("alice", "dr-adams"):
            result = s[name].enroll(timeout=5)
            assert result.used == (1, 2) and not result.failed
            s[name].publish_type_keys()

        # A KGC node crashes: τ = 2 of the 3 remain, enrolment goes on without it.
        assert procs.stop("kgc1", kill=True) == -9
        for name in ("dr-baker", "dr-chen"):
            result = s[name].enroll(timeout=5)
            assert result.used == (2, 3)
            assert list(result.failed) == [1]
            s[name].publish_type_keys()

        alice, adams, baker, chen = (s[n] for n in PEOPLE)
        ref = adams.put_record(lab_observation(), patient=alice.ibe_id)
        grant = alice.grant(baker.ibe_id, "lab", expires=dt.timedelta(days=30), max_hops=2)
        assert baker.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]

        # Hospital B's proxy (it holds Alice's grant to Baker) restarts between the first read
        # and the referral: its sealed re-keys and consumed approvals survive in its state
        # directory.
        old_pid = procs.pids["proxy-hospitalb"]
        assert procs.stop("proxy-hospitalb") == 0
        assert not pid_alive(old_pid)
        procs.start("proxy-hospitalb")
        assert procs.pids["proxy-hospitalb"] != old_pid

        forwarded = baker.forward(ref, chen.ibe_id)
        assert forwarded.hop == 1
        assert chen.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
        assert baker.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]

        alice.revoke(grant)
        for reader in (baker, chen):
            with pytest.raises(AccessDenied, match="revoked"):
                reader.read_record(ref)

        verdict = alice.verify_audit()
        assert verdict.valid, verdict.reason
        actions = [e["action"] for e in alice.audit().entries]
        # Reports: Baker's reads by B's proxy (before and after its restart), Chen's by B's
        # proxy then C's.
        assert actions.count("ReportReencryption") == 4
        assert actions.count("AccessDecision") == 5
    finally:
        for session in s.values():
            session.close()

    # The processes logged to their state directories; nothing readable at rest anywhere.
    procs.stop_all()
    root = deployment.root
    assert "extraction node=2" in (root / "kgc" / "node2" / "kgc.log").read_text()
    for hospital in ("hospitalb", "hospitalc"):
        assert (root / "proxy" / hospital / "proxy.log").stat().st_size > 0
    files = [p for d in ("ledger", "store", "kgc", "proxy", "run") for p in (root / d).rglob("*")]
    leaked = [p for p in files if p.is_file() and SECRET_MARKER.encode() in p.read_bytes()]
    assert leaked == []


def test_a_certificate_of_no_consortium_ca_is_refused_by_the_services(
    deployment: Deployment, tmp_path: Path
) -> None:
    from ehrshare.identity import LocalCA
    from ehrshare.services.kgc import KgcUnavailable
    from ehrshare.services.proxy import ProxyUnavailable
    from ehrshare.wallet import Wallet

    # Same MSP id as a real hospital, but a CA the consortium does not trust: the services'
    # mutual TLS refuses the client certificate before any call is served.
    rogue_ca = LocalCA.create("HospitalAMSP")
    identity, signer = rogue_ca.issue("mallory", role="patient")
    wallet = Wallet(tmp_path / "mallory")
    wallet.save_identity(identity, signer)
    wallet.save_tls(*rogue_ca.issue_tls_client("mallory"))
    with Consortium.open(deployment.profile) as c:
        with c.session("alice") as control:
            assert len(control.proxy.public_key()) == 32
        rogue = c.runtime.session(identity, signer, wallet)
        try:
            for client in rogue.kgc:
                with pytest.raises(KgcUnavailable):
                    client.extract(b"\x00" * 8, timeout=3)
            with pytest.raises(ProxyUnavailable):
                rogue.proxy.public_key()
        finally:
            rogue.close()


def test_cli_demo_with_service_processes(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "ehrshare", "demo", "--services", "processes", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["backend"]["services"] == "processes"
    for check in (
        "enrol_dr-baker_without_node_1",
        "enrol_dr-chen_without_node_1",
        "proxy_clean_stop",
        "grant_at_b_proxy",
        "forward_at_c_proxy",
        "service_processes_stopped",
        "hop2_read_lab",
        "denied_after_revoke",
        "audit_valid",
    ):
        assert summary["checks"][check] is True, check
    titles = [s["title"] for s in summary["steps"]]
    assert "Hospital B's proxy process restarts (SIGTERM, then again)" in titles


def test_consortium_serve_starts_every_service_and_stops_them_on_sigterm(tmp_path: Path) -> None:
    import re
    import signal
    import time

    root = tmp_path / "c"
    Consortium.init(root, services="processes", ports=free_loopback_ports(6)).close()
    serve = subprocess.Popen(
        [sys.executable, "-m", "ehrshare", "consortium", "serve", "-p", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        assert serve.stderr is not None
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = serve.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "serving;" in line:
                break
        text = "".join(lines)
        children = [int(p) for p in re.findall(r"pid (\d+) on 127\.0\.0\.1:\d+", text)]
        assert len(children) == 6, text
        assert all(pid_alive(pid) for pid in children)
        with Consortium.open(root) as c, c.session("proxy-hospitala") as s:
            assert len(s.proxy.public_key()) == 32  # answered over gRPC by the child process
        os.kill(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    assert [pid for pid in children if pid_alive(pid)] == []
