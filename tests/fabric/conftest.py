"""The Fabric v2.1.1 probe network, started once per test session for every tests/fabric module.

network/fabric-2.1-probe/run-all.sh starts one Raft orderer and one peer on 127.0.0.1 (fixed
ports), deploys `ehrshare chaincode serve` as a ccaas package (plain, then mutual TLS) and drives
contract functions with the `peer` CLI; stop.sh stops every process by pid afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric_probe import FAB, PORTS, PROBE, Run, port_free

from ehrshare.processes import pid_alive


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The probe network, up for the session's Fabric tests; stopped by pid afterwards."""
    assert (FAB / "bin" / "peer").is_file(), "Fabric v2.1.1 is not built: run `make tools`"
    busy = [p for p in PORTS if not port_free(p)]
    assert busy == [], f"ports {busy} on 127.0.0.1 are taken; the probe network needs them"
    net = tmp_path_factory.mktemp("fabric21") / "net"
    env = {
        **os.environ,
        "FAB": str(FAB),
        "NET": str(net),
        "PY": sys.executable,
        "EHRSHARE": str(Path(sys.executable).parent / "ehrshare"),
        "WITH_TLS": "1",
    }
    pids: list[int] = []
    try:
        run = subprocess.run(
            ["bash", str(PROBE / "run-all.sh")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        pids = [int(p.read_text()) for p in net.glob("*.pid")]
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        yield Run(net, run.stdout, output, pids)
    finally:
        pids = pids or [int(p.read_text()) for p in net.glob("*.pid")]
        subprocess.run(["bash", str(PROBE / "stop.sh")], env=env, timeout=120, check=False)
        deadline = time.monotonic() + 30
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert pids and not any(pid_alive(p) for p in pids), "the probe left processes running"
