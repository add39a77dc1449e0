"""The SDK on a real Fabric network: the demo story, `network up|down` with the CLI, bench e2e.

Each test builds a Fabric 2.3 network for a fresh consortium (`Consortium.init(ledger=
"fabric")`: MSPs from the hospitals' own CAs, one peer per hospital, a Raft orderer, our chaincode
as a ccaas server; all on free loopback ports) and checks every process it started is gone by pid
at the end. Needs the binaries `make tools` builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ehrshare.commands.bench_e2e import run_e2e_bench
from ehrshare.demo import run_demo
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.provisioning import Consortium

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

STORY_CHECKS = {
    "dkg_all_qualified",
    "members_enrolled",
    "records_typed",
    "grant_revoked",
    "grant_at_b_proxy",
    "forward_at_c_proxy",
    "hop1_read_lab",
    "hop2_read_lab",
    "imaging_denied",
    "denied_after_revoke",
    "forward_denied_after_revoke",
    "audit_valid",
    "no_plaintext_at_rest",
    "tamper_detected",
    "careful_edit_detected",
    "truncation_detected",
    "fabric_processes_stopped",
}


def _wait_dead(pids: list[int], seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_the_demo_story_holds_on_a_real_fabric_network(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "c", ledger="fabric", keep=True)
    failed = {k for k, v in result.checks.items() if not v}
    assert set(result.checks) == STORY_CHECKS and not failed, result.to_dict()
    assert result.to_dict()["backend"]["ledger"] == "fabric"
    # The same operation log as on the embedded ledger: hop 1 at B's proxy; hop 2 at B then C.
    reports = [e["detail"] for e in result.audit if e["action"] == "ReportReencryption"]
    assert [(r["proxy"], r["applied"]) for r in reports] == [
        ("HospitalBMSP/proxy", 1),
        ("HospitalBMSP/proxy", 1),
        ("HospitalCMSP/proxy", 2),
    ]
    assert [e["outcome"] for e in result.audit if e["action"] == "AccessDecision"] == [
        "allow",
        "allow",
        "deny",
        "deny",
        "deny",
    ]
    # The ledger the story ran on is the peers' (block files under fabric/), not an embedded one.
    root = tmp_path / "c"
    assert not (root / "ledger").exists()
    assert any(p.name.startswith("blockfile") for p in (root / "fabric").rglob("*"))


def test_the_story_holds_on_fabric_with_the_services_as_processes(tmp_path: Path) -> None:
    # KGC nodes and proxies as `kgc serve` / `proxy serve` processes reading the Fabric channel
    # (the proxies follow its events); one KGC node is killed, hospital B's proxy restarted.
    result = run_demo(tmp_path / "c", ledger="fabric", services="processes", keep=True)
    failed = {k for k, v in result.checks.items() if not v}
    assert not failed, result.to_dict()
    assert set(result.checks) >= STORY_CHECKS
    assert {"service_processes_stopped", "proxy_clean_stop"} <= set(result.checks)


def _wait_for(what: str, condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""},
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_network_up_runs_fabric_and_the_services_and_down_stops_them(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(
        root, ledger="fabric", services="processes", ports=free_loopback_ports(6)
    ) as c:
        assert c.network is not None and c.network.running()
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("dr-adams", "HospitalA", "clinician")
        init_pids = list(c.network.pids().values())
    # init leaves nothing running.
    assert _wait_dead(init_pids) == []
    started: list[int] = []
    try:
        up = json.loads(_cli("network", "up", "--profile", str(root), "--json").stdout)
        assert up["running"] and up["fabric"]["running"]
        started = [up["supervisor_pid"], *(s["pid"] for s in up["services"].values())]
        started += list(up["fabric"]["pids"].values())
        assert all(pid_alive(p) for p in started)

        status = json.loads(_cli("network", "status", "--profile", str(root), "--json").stdout)
        assert status["ledger"]["backend"] == "fabric" and status["ledger"]["running"] is True
        assert [p["msp"] for p in status["ledger"]["peers"]] == [
            "HospitalAMSP",
            "HospitalBMSP",
            "HospitalCMSP",
        ]

        # A member works through the CLI: enrolment from τ KGC processes that read the Fabric
        # channel, a record stored (registered on chain after the store) and read back.
        for who in ("alice", "dr-adams"):
            _cli("enroll", "--profile", str(root), "--wallet", who)
        record = tmp_path / "obs.json"
        record.write_text(
            json.dumps(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"text": "Haemoglobin"},
                    "valueQuantity": {"value": 12.5, "unit": "g/dL"},
                }
            ),
            encoding="utf-8",
        )
        ref = json.loads(
            _cli(
                "record", "put", str(record), "--patient", "HospitalAMSP/alice",
                "-p", str(root), "-w", "dr-adams", "--json",
            ).stdout
        )  # fmt: skip
        got = json.loads(
            _cli("record", "get", ref["record_id"], "-p", str(root), "-w", "alice", "--json").stdout
        )
        assert got["valueQuantity"]["value"] == 12.5

        # The channel's blocks, delivered by the peers of every hospital, agree and are signed
        # by the orderer organisation; audit verify runs the same check.
        checked = json.loads(
            _cli("ledger", "verify", "-p", str(root), "-w", "alice", "--json").stdout
        )
        assert checked["valid"] is True and checked["backend"] == "fabric"
        assert sorted(checked["peers"]) == ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"]
        assert checked["orderer_organisations"] == ["OrdererMSP"]
        # ... and every hospital's peer holds the same world state (its StateDigest).
        assert checked["state"]["function"] == "StateDigest"
        assert checked["state"]["organisations"] == ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"]
        audit = json.loads(_cli("audit", "verify", "-p", str(root), "-w", "alice", "--json").stdout)
        assert audit["valid"] is True and audit["checks"]["ledger"]["height"] >= checked["height"]
        # ... and alice's audit chain as answered by one peer of every hospital, compared.
        (compared,) = audit["checks"]["ledger"]["state_compared"]
        assert compared["function"] == "VerifyAuditTrail"
        assert compared["organisations"] == ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"]
        head = tmp_path / "alice-saw.json"
        _cli("ledger", "head", "--out", str(head), "-p", str(root), "-w", "alice")
        again = json.loads(
            _cli(
                "ledger", "verify", "--against", str(head), "-p", str(root), "-w", "alice",
                "--json",
            ).stdout
        )  # fmt: skip
        assert again["witnesses"][0]["witness"] == "HospitalAMSP/alice"

        # The consortium has a record, so a new DKG (a new mpk) is refused; a resharing to
        # τ=2, opened on chain by the org admin and run by the three `kgc serve` processes over
        # the channel's events (their posts meet in blocks: read conflicts are proposed again),
        # keeps the mpk, and a member enrolled afterwards gets a key under it.
        old = json.loads(
            _cli("kgc", "dkg", "status", "-p", str(root), "-w", "admin", "--json").stdout
        )
        refused = _cli(
            "kgc", "dkg", "open", "--threshold", "2", "-p", str(root), "-w", "admin", check=False
        )  # fmt: skip
        assert refused.returncode == 1 and "kgc reshare" in refused.stderr, refused.stderr
        reshared = json.loads(
            _cli(
                "kgc", "reshare", "--threshold", "2", "--phase-timeout", "30", "--wait",
                "--wait-timeout", "120", "-p", str(root), "-w", "admin", "--json",
            ).stdout
        )  # fmt: skip
        assert reshared["kind"] == "reshare" and reshared["result"]["final"] is True
        assert reshared["nonce"] != old["nonce"]
        assert all(len(p["posters"]) == 3 for p in reshared["closed"][:2]), reshared["closed"]
        _cli("consortium", "add-member", "carol", "--hospital", "HospitalC", "--role",
             "patient", "-p", str(root))  # fmt: skip
        _wait_for(
            "every KGC node to answer under the new session",
            lambda: _cli("enroll", "-p", str(root), "-w", "carol", check=False).returncode == 0,
        )
        kept = json.loads(
            _cli("record", "get", ref["record_id"], "-p", str(root), "-w", "alice", "--json").stdout
        )
        assert kept["valueQuantity"]["value"] == 12.5

        # Hospital C's peer dies: status says which process, by pid and by connecting, and
        # exits 4; the services (on the other peers) still answer.
        dead = up["fabric"]["pids"]["peer-HospitalCMSP"]
        os.kill(dead, signal.SIGKILL)
        _wait_for("the peer to die", lambda: not pid_alive(dead))
        broken = _cli("network", "status", "--profile", str(root), "--json", check=False)
        assert broken.returncode == 4
        ledger = json.loads(broken.stdout)["ledger"]
        assert ledger["running"] is False
        assert ledger["processes"]["peer-HospitalCMSP"]["status"] == f"down (pid {dead} is gone)"
        assert {n: p["status"] for n, p in ledger["processes"].items() if "CMSP" not in n} == {
            "ccaas": "running",
            "orderer1": "running",
            "peer-HospitalAMSP": "running",
            "peer-HospitalBMSP": "running",
        }
        assert json.loads(broken.stdout)["background_services"]["healthy"] is True
        text = _cli("network", "status", "--profile", str(root), check=False)
        assert f"peer-HospitalCMSP (pid {dead}): down (pid {dead} is gone)" in text.stderr

        # `network up` starts again only what is gone; the rest keeps its pids.
        repaired = json.loads(_cli("network", "up", "--profile", str(root), "--json").stdout)
        assert repaired["already_running"] and repaired["fabric"]["running"]
        new_peer = repaired["fabric"]["pids"]["peer-HospitalCMSP"]
        assert new_peer != dead and pid_alive(new_peer)
        started.append(new_peer)
        assert {n: p for n, p in repaired["fabric"]["pids"].items() if "CMSP" not in n} == {
            n: p for n, p in up["fabric"]["pids"].items() if "CMSP" not in n
        }
        healed = _cli("network", "status", "--profile", str(root), "--json", check=False)
        assert healed.returncode == 0, healed.stderr
        _cli("enroll", "-p", str(root), "-w", "carol")
    finally:
        down = _cli("network", "down", "--profile", str(root), "--json", check=False)
    assert down.returncode == 0, down.stderr
    assert _wait_dead(started) == []
    status = json.loads(
        _cli("network", "status", "--profile", str(root), "--json", check=False).stdout
    )
    assert status["ledger"]["running"] is False
    # With the network down, a command that needs the ledger says so (exit 4), not "refused".
    # (add-member no longer writes to the ledger: init publishes every hospital's CA.)
    proc = _cli("record", "list", "-p", str(root), "-w", "alice", check=False)
    flat = " ".join(proc.stderr.replace("│", " ").split())
    assert proc.returncode == 4, proc.stderr
    assert "could not reach any peer" in flat and "ehrshare network up" in flat
    proc = _cli("ledger", "verify", "-p", str(root), "-w", "alice", check=False)
    assert proc.returncode == 4, proc.stderr
    assert "did not deliver blocks" in proc.stderr


def test_bench_e2e_runs_on_fabric(tmp_path: Path) -> None:
    result = run_e2e_bench(
        repeat=2,
        repeat_large=1,
        warmup=0,
        large_bytes=64 * 1024,
        directory=tmp_path,
        ledger="fabric",
    )
    assert result["backend"]["ledger"] == "fabric"
    assert result["backend"]["fabric"]["peers"] == 3
    for name in (
        "put_record_10KB",
        "put_record_10MB",
        "grant",
        "read_record_hop1",
        "read_record_hop3",
    ):
        row = result["results"][name]
        assert row["n"] >= 1 and 0 < row["p50_ms"] <= row["p95_ms"]
