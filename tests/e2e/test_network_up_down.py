"""`ehrshare network up|down`: a local consortium's services started in the background, used by
a member through the CLI, and stopped by pid — real processes, real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.slow


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def _wait_dead(pids: list[int], seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_network_up_serves_members_and_down_stops_every_process(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)) as c:
        c.add_member("alice", "HospitalA", "patient")
    started: list[int] = []
    try:
        up = json.loads(_cli("network", "up", "--profile", str(root), "--json").stdout)
        assert up["running"] and not up["already_running"]
        services = up["services"]
        assert sorted(services) == [
            "kgc1",
            "kgc2",
            "kgc3",
            "proxy-hospitala",
            "proxy-hospitalb",
            "proxy-hospitalc",
        ]
        started = [up["supervisor_pid"], *(s["pid"] for s in services.values())]
        assert all(pid_alive(p) for p in started)
        assert all(_listening(s["address"]) for s in services.values())

        # A second `up` starts nothing new.
        again = json.loads(_cli("network", "up", "--profile", str(root), "--json").stdout)
        assert again["already_running"] and again["supervisor_pid"] == up["supervisor_pid"]

        # The services answer a member: enrolment extracts the key from τ KGC processes.
        _cli("enroll", "--profile", str(root), "--wallet", "alice")
        status = json.loads(_cli("network", "status", "--profile", str(root), "--json").stdout)
        assert status["background_services"]["running"] is True
        assert status["background_services"]["supervisor_pid"] == up["supervisor_pid"]
    finally:
        down = _cli("network", "down", "--profile", str(root), "--json", check=False)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped"] is True
    assert _wait_dead(started) == []
    assert not (root / "run" / "network.json").exists()
    # Nothing runs now: `down` again is a no-op, `status` says so.
    assert json.loads(_cli("network", "down", "--profile", str(root), "--json").stdout) == {
        "stopped": False,
        "services": {},
    }
    # … and exits 4: the services this profile runs as processes do not answer.
    stopped = _cli("network", "status", "--profile", str(root), "--json", check=False)
    assert stopped.returncode == 4
    status = json.loads(stopped.stdout)["background_services"]
    assert status["running"] is False and status["healthy"] is False
    assert {s["status"] for s in status["services"].values()} == {"down"}


def test_network_up_refuses_an_in_process_profile(tmp_path: Path) -> None:
    root = tmp_path / "c"
    Consortium.init(root).close()
    proc = _cli("network", "up", "--profile", str(root), check=False)
    assert proc.returncode == 4
    flat = " ".join(proc.stderr.replace("│", " ").split())
    assert "nothing to start" in flat and "--services processes" in flat
    assert not (root / "run" / "network.json").exists()


def test_a_stale_state_file_does_not_stop_a_stranger(tmp_path: Path) -> None:
    # A state file left by a supervisor that died names a pid that may now be someone else's:
    # `down` must not signal it, only clear the file.
    root = tmp_path / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)):
        pass
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = root / "run"
        run.mkdir(exist_ok=True)
        (run / "network.json").write_text(
            json.dumps({"supervisor_pid": stranger.pid, "services": {}})
        )
        down = json.loads(_cli("network", "down", "--profile", str(root), "--json").stdout)
        assert down["stopped"] is False
        assert stranger.poll() is None  # still running: not ours, not signalled
        assert not (run / "network.json").exists()
    finally:
        stranger.kill()
        stranger.wait()
