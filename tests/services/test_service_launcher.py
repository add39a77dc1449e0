"""Service processes started with ``die_with_parent`` (through the PR_SET_PDEATHSIG launcher,
not a preexec_fn) keep their pid and go down with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.slow


def test_service_processes_die_with_their_starter(tmp_path: Path) -> None:
    root = tmp_path / "c"
    hospitals = ["HospitalA", "HospitalB"]
    Consortium.init(
        root, hospitals=hospitals, services="processes", ports=free_loopback_ports(4)
    ).close()
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ehrshare.network.services import ServiceProcesses\n"
        "from ehrshare.profile import Profile\n"
        "p = ServiceProcesses(Profile.load(sys.argv[1]), Path(sys.argv[2]), die_with_parent=True)\n"
        "p.start()\n"
        "cmd = {n: Path(f'/proc/{pid}/cmdline').read_bytes() for n, pid in p.pids.items()}\n"
        "assert all(b'serve' in c and b'prctl' not in c for c in cmd.values()), cmd\n"
        "print(' '.join(f'{n}={pid}' for n, pid in p.pids.items()), flush=True)\n"
        "os._exit(0)  # no stop_all(): the kernel must take the services down\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root / "profile.yaml"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    pids = dict(item.split("=") for item in done.stdout.split())
    assert sorted(pids) == ["kgc1", "kgc2", "proxy-hospitala", "proxy-hospitalb"]
    # (The starter checked that each pid it kept runs the service itself: the launcher exec'd
    # it in place.)
    deadline = time.monotonic() + 60
    while any(pid_alive(int(p)) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [int(p) for p in pids.values() if pid_alive(int(p))]
    for pid in left:  # never leave one behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"service processes survived their starter: {left}"
