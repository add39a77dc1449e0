"""A hospital's proxy process is down: reads under the grants it holds fail with an error that
names that hospital's proxy and the grant, the CLI exits 4 (a service outage), reads that do not
pass through it still work, and the read works again once it is back.

Real ``ehrshare kgc serve`` / ``proxy serve`` processes on 127.0.0.1 (gRPC, mutual TLS); the
proxy is stopped by its pid.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect
from ehrshare.session import ProxyUnreachable, Session

pytestmark = pytest.mark.slow

PEOPLE = {
    "alice": ("HospitalA", "patient"),
    "dr-baker": ("HospitalB", "clinician"),
    "dr-chen": ("HospitalC", "clinician"),
}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[Path, ServiceProcesses]]:
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
        yield root, procs
    finally:
        started = list(procs.started_pids)
        procs.stop_all()
        assert [pid for pid in started if pid_alive(pid)] == []


def test_a_stopped_proxy_is_named_with_the_grant_it_holds(
    services: tuple[Path, ServiceProcesses],
) -> None:
    root, procs = services
    s: dict[str, Session] = {}
    try:
        for name in PEOPLE:
            s[name] = connect(root / "profile.yaml", name)
            s[name].enroll(timeout=5)
            s[name].publish_type_keys(["lab"])
        alice, baker, chen = s["alice"], s["dr-baker"], s["dr-chen"]
        ref = alice.put_record(lab_observation())
        to_baker = alice.grant(baker.ibe_id, "lab", expires=dt.timedelta(days=1), max_hops=1)
        to_chen = baker.forward(ref, chen.ibe_id)
        assert (to_baker.proxy, to_chen.proxy) == ("HospitalBMSP/proxy", "HospitalCMSP/proxy")

        pid = procs.pids["proxy-hospitalc"]
        assert procs.stop("proxy-hospitalc") == 0  # SIGTERM to that pid
        assert not pid_alive(pid)

        with pytest.raises(ProxyUnreachable) as info:
            chen.read_record(ref)
        err = info.value
        assert (err.proxy, err.msp_id, err.grant_ids) == (
            "HospitalCMSP/proxy",
            "HospitalCMSP",
            (to_chen.grant_id,),
        )
        message = str(err)
        assert "proxy of hospital HospitalCMSP (HospitalCMSP/proxy) is unreachable" in message
        assert f"it holds the re-key of grant {to_chen.grant_id}" in message

        # The CLI says the same and exits 4, as for the other service outages.
        result = CliRunner().invoke(
            app, ["record", "get", ref.record_id, "-p", str(root), "-w", "dr-chen"]
        )
        assert result.exit_code == 4, result.output
        assert "HospitalCMSP/proxy" in result.stderr and to_chen.grant_id in result.stderr
        assert "ask hospital HospitalCMSP to start its proxy" in result.stderr

        # Baker's own grant sits at hospital B's proxy: its reads do not need C's.
        assert baker.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]

        procs.start("proxy-hospitalc")
        with connect(root / "profile.yaml", "dr-chen") as again:
            assert again.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
        # Each failed read was requested and logged on chain; none was served.
        decisions = [e for e in alice.audit().entries if e["action"] == "AccessDecision"]
        assert len(decisions) == 4
    finally:
        for session in s.values():
            session.close()
