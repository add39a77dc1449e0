"""A real Hyperledger Fabric peer runs the contract through our chaincode server.

Fabric v2.1.1 — the newest release the Go module proxy serves here (the pinned 3.1 answers 403) —
built by `make tools` into network/build/fabric21. network/fabric-2.1-probe/run-all.sh starts one
Raft orderer and one peer on 127.0.0.1, deploys `ehrshare chaincode serve` as a ccaas package
(plain, then mutual TLS) and drives contract functions with the `peer` CLI; stop.sh stops every
process by pid. This proves the chaincode server against a real peer; the Gateway client and
SmartBFT need Fabric >= 2.4 / 3.0 and are not exercised here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrshare.processes import pid_alive

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "network" / "fabric-2.1-probe"
FAB = ROOT / "network" / "build" / "fabric21"
PORTS = (7050, 7051, 7052, 9443, 9444, 9998, 9999)  # fixed in the probe's configs


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_real_fabric_peer_runs_the_contract_through_our_chaincode_server(
    tmp_path: Path,
) -> None:
    assert (FAB / "bin" / "peer").is_file(), "Fabric v2.1.1 is not built: run `make tools`"
    busy = [p for p in PORTS if not _port_free(p)]
    assert busy == [], f"ports {busy} on 127.0.0.1 are taken; the probe network needs them"
    net = tmp_path / "net"
    env = {
        **os.environ,
        "FAB": str(FAB),
        "NET": str(net),
        "PY": sys.executable,
        "EHRSHARE": str(Path(sys.executable).parent / "ehrshare"),
        "WITH_TLS": "1",
    }
    try:
        run = subprocess.run(
            ["bash", str(PROBE / "run-all.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
    finally:
        pids = [int(p.read_text()) for p in net.glob("*.pid")]
        subprocess.run(["bash", str(PROBE / "stop.sh")], env=env, timeout=120, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]

    # The peer launched both packages by connecting to our server: REGISTER, then READY.
    peer_log = (net / "peer.log").read_text(encoding="utf-8", errors="replace")
    for label in ("ehrshare_1", "ehrshare_tls"):
        assert f"Got REGISTER for chaincodeID = {label}:" in peer_log
        assert f"sending READY for chaincode {label}:" in peer_log

    # Per chaincode (plain, then mutual TLS): the contract's refusal comes back through the peer
    # as status 500 with its message; RegisterOrgCA commits; a second one is refused; an
    # identity registered by the admin is read back with the role from its certificate.
    assert out.count('status:500 message:"the ca of Org1MSP is not registered"') == 2
    assert out.count("the ca of Org1MSP is already registered") == 2
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    cas = [r for r in records if "ca_pem" in r]
    identities = [r for r in records if "cert_sha256" in r and "role" in r]
    assert len(cas) == 2 and all(r["msp_id"] == "Org1MSP" for r in cas)
    assert [(r["ibe_id"], r["role"]) for r in identities] == [
        ("Org1MSP/Admin@org1.example.com", "admin")
    ] * 2

    # Everything the run started is stopped.
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids and not any(pid_alive(p) for p in pids)
