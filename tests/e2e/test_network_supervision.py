"""`ehrshare network up` supervises its services truthfully: a KGC node or proxy killed with
SIGKILL is noticed, logged with the signal, restarted and serves again; `network status` asks
each service over mutual TLS and exits 4 while one is not healthy; `network restart` restarts
one; a supervisor killed with SIGKILL is replaced by the next `network up`; a service that
always crashes is given up on, and `status` says so. Real processes, real sockets; everything
is stopped by pid at the end of each test."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect

pytestmark = pytest.mark.slow

PEOPLE = {"alice": ("HospitalA", "patient"), "dr-adams": ("HospitalA", "clinician")}


def _cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": "", "COLUMNS": "80"}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def _supervisors(root: Path) -> list[int]:
    """Every live `consortium serve` process of this profile, found in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"serve" in args and b"consortium" in args and str(root).encode() in b" ".join(args)
        if ours and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _status(root: Path) -> tuple[int, dict[str, Any]]:
    proc = _cli("network", "status", "--profile", str(root), "--json")
    return proc.returncode, json.loads(proc.stdout)["background_services"]


def _until(what: str, check: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def _state(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "run" / "network.json").read_text()))


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Path]:
    """A processes consortium; on teardown `network down`, then no process it ran is left."""
    root = tmp_path / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)) as c:
        for name, (hospital, role) in PEOPLE.items():
            c.add_member(name, hospital, role)
    yield root
    pids = set()
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids.add(int(_state(root)["supervisor_pid"]))
    log = root / "run" / "network.log"
    if log.exists():  # every child the supervisors started
        pids |= {int(p) for p in re.findall(r"\(pid (\d+)\)", log.read_text())}
    _cli("network", "down", "--profile", str(root))
    pids |= set(_supervisors(root))  # one a failed test may have left without a state file
    for pid in pids:
        if pid_alive(pid) and _is_ours(pid, root):
            os.kill(pid, signal.SIGKILL)
    _until("every process stopped", lambda: not any(pid_alive(p) for p in pids), 30)


def _is_ours(pid: int, root: Path) -> bool:
    try:
        return str(root) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _up(root: Path, *extra: str) -> dict[str, Any]:
    proc = _cli("network", "up", "--profile", str(root), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_killed_kgc_node_and_proxy_are_logged_restarted_and_serve_again(network: Path) -> None:
    root = network
    # The backoff is the window in which the test must see "restarting": each status is its own
    # CLI process, which on a loaded 2-core machine takes seconds; 8 s once proved too short.
    up = _up(root, "--restart-backoff", "20")
    old = {name: up["services"][name]["pid"] for name in ("kgc2", "proxy-hospitala")}
    # `up` returns once every service listens; under load a Health RPC may still time out for
    # a moment after that (status then exits 4), so wait for the first healthy answer.
    _until("status healthy after up", lambda: _status(root)[0] == 0, 60)
    rc, before = _status(root)
    assert rc == 0 and before["healthy"]
    assert {s["status"] for s in before["services"].values()} == {"running"}

    for pid in old.values():
        os.kill(pid, signal.SIGKILL)
    # The supervisor notices within a poll and waits 20 s before the restart: status tells it.
    _until(
        "status shows both restarting",
        lambda: all(
            s["status"] == "restarting (attempt 1, last exit: killed by SIGKILL)"
            for name, s in _status(root)[1]["services"].items()
            if name in old
        ),
        20,
    )
    text = _cli("network", "status", "--profile", str(root))
    assert text.returncode == 4
    lines = [line.strip() for line in text.stderr.splitlines()]
    for name in old:
        assert any(
            line.startswith(f"{name} (")
            and line.endswith("): restarting (attempt 1, last exit: killed by SIGKILL)")
            for line in lines
        ), text.stderr
    rc, during = _status(root)
    assert rc == 4 and not during["healthy"]
    assert during["services"]["kgc1"]["status"] == "running"
    assert not during["services"]["kgc2"]["answering"]

    _until("status healthy again", lambda: _status(root)[0] == 0, 90)
    rc, after = _status(root)
    for name, pid in old.items():
        svc = after["services"][name]
        assert svc["status"] == "running" and svc["answering"]
        assert svc["pid"] != pid and pid_alive(svc["pid"]) and not pid_alive(pid)
        assert svc["supervisor"]["restarts"] == 1
        assert svc["supervisor"]["last_exit"] == "killed by SIGKILL"
    log = (root / "run" / "network.log").read_text()
    for name, pid in old.items():
        assert (
            f"{name} (pid {pid}) died: killed by SIGKILL; restarting in 20.0 s (attempt 1)" in log
        )
    # `up` again starts nothing and names the live pids, not the dead ones.
    again = _up(root)
    assert again["already_running"]
    assert {again["services"][n]["pid"] for n in old} == {after["services"][n]["pid"] for n in old}

    # The restarted node extracts, the restarted proxy re-encrypts.
    sessions = {name: connect(root / "profile.yaml", name) for name in PEOPLE}
    try:
        alice, adams = sessions["alice"], sessions["dr-adams"]
        for s in (alice, adams):
            result = s.enroll(timeout=5)
            assert 2 in result.used and not result.failed
            s.publish_type_keys()
        ref = adams.put_record(lab_observation(), patient=alice.ibe_id)
        alice.grant(adams.ibe_id, "lab", expires=dt.timedelta(days=30))
        assert adams.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]

        # `network restart` goes through the supervisor: a new pid, the others untouched,
        # the re-key kept in the proxy's state directory.
        others = {n: s["pid"] for n, s in after["services"].items() if n != "proxy-hospitala"}
        restarted = _cli("network", "restart", "proxy-hospitala", "--profile", str(root), "--json")
        assert restarted.returncode == 0, restarted.stderr
        record = json.loads(restarted.stdout)
        assert record["state"] == "running" and record["restarts"] == 2
        assert record["pid"] != after["services"]["proxy-hospitala"]["pid"]
        rc, now = _status(root)
        assert rc == 0
        assert {n: s["pid"] for n, s in now["services"].items() if n in others} == others
        assert "restarting proxy-hospitala on request" in (root / "run" / "network.log").read_text()
        assert adams.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    finally:
        for s in sessions.values():
            s.close()

    # An unknown name is a usage error and changes nothing.
    state = _state(root)
    bad = _cli("network", "restart", "kgc9", "--profile", str(root))
    assert bad.returncode == 2
    assert "no service 'kgc9'" in bad.stderr and "Traceback" not in bad.stderr
    assert _state(root) == state


def test_supervisor_killed_with_sigkill_is_replaced_by_the_next_up(network: Path) -> None:
    root = network
    up = _up(root)
    children = [s["pid"] for s in up["services"].values()]
    os.kill(up["supervisor_pid"], signal.SIGKILL)
    _until("the supervisor is gone", lambda: not pid_alive(up["supervisor_pid"]), 10)

    # At once, while its children may still be shutting down: `up` does not say "already
    # running", waits for (or stops) the orphans, and starts a fresh supervisor.
    again = _up(root)
    assert not again["already_running"]
    assert again["supervisor_pid"] != up["supervisor_pid"]
    assert not any(pid_alive(p) for p in children)
    rc, status = _status(root)
    assert rc == 0 and status["running"] and status["healthy"]
    assert status["supervisor_pid"] == again["supervisor_pid"]
    assert not set(children) & {s["pid"] for s in status["services"].values()}
    with connect(root / "profile.yaml", "alice") as alice:
        assert alice.enroll(timeout=5).used


def test_supervisor_gone_status_says_so_and_exits_4(network: Path) -> None:
    root = network
    up = _up(root)
    children = [s["pid"] for s in up["services"].values()]
    os.kill(up["supervisor_pid"], signal.SIGKILL)
    # Its children die with it (SIGTERM from the kernel): nothing answers any more.
    _until("the children stopped", lambda: not any(pid_alive(p) for p in children), 30)
    rc, status = _status(root)
    assert rc == 4 and not status["running"] and not status["healthy"]
    assert status["stale_supervisor_pid"] == up["supervisor_pid"]
    assert {s["status"] for s in status["services"].values()} == {
        f"down (its supervisor, pid {up['supervisor_pid']}, is gone)"
    }
    restart = _cli("network", "restart", "kgc1", "--profile", str(root))
    assert restart.returncode == 4 and "network up" in restart.stderr


def test_a_service_that_always_crashes_is_given_up_on_and_restart_retries_it(
    network: Path,
) -> None:
    root = network
    db = root / "proxy" / "hospitalc" / "proxy.db"
    good = db.read_bytes()
    up = _up(root, "--restart-backoff", "0.2", "--give-up-after", "3", "--stable-after", "30")
    pid = up["services"]["proxy-hospitalc"]["pid"]
    # A corrupted state directory: the proxy cannot open its database and exits at start.
    db.write_bytes(b"this is not an sqlite database" * 100)
    os.kill(pid, signal.SIGKILL)
    _until(
        "the supervisor gives up",
        lambda: _status(root)[1]["services"]["proxy-hospitalc"]["status"].startswith("failed"),
        60,
    )
    rc, status = _status(root)
    svc = status["services"]["proxy-hospitalc"]
    assert rc == 4 and not svc["answering"]
    assert svc["supervisor"]["state"] == "failed" and svc["supervisor"]["attempt"] == 3
    assert svc["status"].startswith("failed (gave up after 3 quick failures, last exit: exit code")
    assert "'ehrshare network restart proxy-hospitalc'" in svc["status"]
    assert {s["status"] for n, s in status["services"].items() if n != "proxy-hospitalc"} == {
        "running"
    }
    log = (root / "run" / "network.log").read_text()
    assert f"proxy-hospitalc (pid {pid}) died: killed by SIGKILL" in log
    assert "gave up after 3 quick failures in a row" in log
    # It stays down: no further restarts once given up.
    restarts = svc["supervisor"]["restarts"]
    time.sleep(1.5)
    assert _state(root)["services"]["proxy-hospitalc"]["restarts"] == restarts == 2

    # Still broken: `network up` retries it (it is not running) and says it did not come back.
    retried = _cli("network", "up", "--profile", str(root))
    assert retried.returncode == 4 and "proxy-hospitalc did not come back" in retried.stderr
    assert "Traceback" not in retried.stderr
    _until(
        "given up again",
        lambda: _state(root)["services"]["proxy-hospitalc"]["state"] == "failed",
        60,
    )

    # Fixed by hand, `network restart` retries it at once with a fresh count.
    db.write_bytes(good)
    done = _cli("network", "restart", "proxy-hospitalc", "--profile", str(root), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["attempt"] == 0
    rc, status = _status(root)
    assert rc == 0 and status["services"]["proxy-hospitalc"]["status"] == "running"


def test_kill_9_at_each_step_of_up_restart_and_the_supervisor_leaves_one_working_network(
    network: Path,
) -> None:
    root = network
    # `network up` dies right after starting the supervisor: the supervisor carries on, and the
    # next `up` waits for that one instead of starting a second.
    died = _cli("network", "up", "--profile", str(root), fault="netctl.up.after_spawn")
    assert died.returncode == -signal.SIGKILL
    again = _up(root)
    assert _supervisors(root) == [again["supervisor_pid"]]
    rc, status = _status(root)
    assert rc == 0 and status["healthy"]

    # `network restart` dies right after asking: the supervisor still restarts the node.
    old = status["services"]["kgc1"]["pid"]
    died = _cli(
        "network", "restart", "kgc1", "--profile", str(root), fault="netctl.restart.after_request"
    )
    assert died.returncode == -signal.SIGKILL
    _until(
        "kgc1 restarted",
        lambda: (
            _state(root)["services"]["kgc1"]["restarts"] == 1
            and _state(root)["services"]["kgc1"]["state"] == "running"
        ),
        30,
    )
    rc, status = _status(root)
    assert rc == 0 and status["services"]["kgc1"]["pid"] != old

    # The supervisor dies between stopping a service and starting it again: its other children
    # die with it, status says so, and the next `up` brings everything back.
    assert _cli("network", "down", "--profile", str(root)).returncode == 0
    up = _faulty_up(root, "supervisor.restart.after_stop")
    children = [s["pid"] for s in up["services"].values()]
    lost = _cli("network", "restart", "proxy-hospitala", "--profile", str(root))
    assert lost.returncode == 4 and "supervisor stopped" in lost.stderr
    assert "Traceback" not in lost.stderr
    _until("its children died with it", lambda: not any(pid_alive(p) for p in children), 30)
    rc, status = _status(root)
    assert rc == 4 and status["stale_supervisor_pid"] == up["supervisor_pid"]
    back = _up(root)
    assert not back["already_running"] and _supervisors(root) == [back["supervisor_pid"]]
    rc, status = _status(root)
    assert rc == 0 and {s["status"] for s in status["services"].values()} == {"running"}
    with connect(root / "profile.yaml", "alice") as alice:
        assert alice.enroll(timeout=5).used


def _faulty_up(root: Path, fault: str) -> dict[str, Any]:
    """`network up` whose supervisor (it inherits the environment) dies at ``fault``."""
    proc = _cli("network", "up", "--profile", str(root), "--json", fault=fault)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_two_network_up_at_once_start_one_supervisor(network: Path) -> None:
    root = network
    env = {**os.environ, "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""}
    env.pop(FAULT_ENV, None)
    argv = [sys.executable, "-m", "ehrshare", "network", "up", "--profile", str(root), "--json"]
    racers = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=180) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], [o[1] for o in outs]
    pids = {json.loads(o[0])["supervisor_pid"] for o in outs}
    assert len(pids) == 1 and _supervisors(root) == list(pids)
    rc, status = _status(root)
    assert rc == 0 and status["healthy"]
