"""The supervisor's rules (:meth:`ServiceProcesses.check`): a death is noticed and described, the
restart waits a doubling backoff, a stable run resets it, a service that keeps failing is given
up on, a request restarts one at once. Real child processes of a stand-in service program (it
listens, crashes or hangs as told), driven step by step."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import (
    Program,
    RestartPolicy,
    Supervisor,
    SupervisorError,
    describe_exit,
    free_loopback_ports,
    pid_alive,
)
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium

# Stands in for `ehrshare kgc|proxy serve`: reads what to do from <state dir>/fake-mode.
FAKE = """\
import pathlib, sys, time
a = sys.argv
state = pathlib.Path(a[a.index("--state-dir") + 1])
port = pathlib.Path(a[a.index("--port-file") + 1])
mode_file = state / "fake-mode"
mode = mode_file.read_text().strip() if mode_file.exists() else "serve"
if mode == "crash":
    sys.exit(3)
if mode != "hang":
    port.write_text("1")
time.sleep(600)
"""


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    root = tmp_path_factory.mktemp("supervision") / "c"
    Consortium.init(root, services="processes", ports=free_loopback_ports(6)).close()
    return Profile.load(root / "profile.yaml")


@pytest.fixture
def make(profile: Profile, tmp_path: Path) -> Iterator[Callable[..., ServiceProcesses]]:
    fake = tmp_path / "fake_service.py"
    fake.write_text(FAKE)
    made: list[ServiceProcesses] = []

    def build(policy: RestartPolicy, start_timeout: float = 30.0) -> ServiceProcesses:
        procs = ServiceProcesses(
            profile,
            tmp_path / "run",
            executable=(sys.executable, str(fake)),
            start_timeout=start_timeout,
            policy=policy,
        )
        made.append(procs)
        return procs

    yield build
    for procs in made:
        started = list(procs.started_pids)
        procs.stop_all()
        assert not [p for p in started if pid_alive(p)]
    for cmd in ServiceProcesses(profile, tmp_path / "run").commands.values():
        (cmd.state / "fake-mode").unlink(missing_ok=True)


def _mode(procs: ServiceProcesses, name: str, mode: str) -> None:
    (procs.commands[name].state / "fake-mode").write_text(mode)


def _until(
    procs: ServiceProcesses, what: str, cond: Callable[[], bool], seconds: float = 20
) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        procs.check()
        time.sleep(0.02)


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(-99) == "killed by signal 99"


def test_backoff_doubles_up_to_its_bound() -> None:
    policy = RestartPolicy(backoff=0.5, backoff_max=30.0)
    assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backoff": 0}, "0 < backoff <= backoff_max"),
        ({"backoff": 5, "backoff_max": 1}, "0 < backoff <= backoff_max"),
        ({"stable_after": 0}, "stable_after > 0"),
        ({"give_up_after": 0}, "give_up_after must be at least 1, got 0"),
    ],
)
def test_a_nonsense_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_killed_service_is_logged_and_restarted_after_the_backoff(
    make: Callable[..., ServiceProcesses], caplog: pytest.LogCaptureFixture
) -> None:
    procs = make(RestartPolicy(backoff=0.6, backoff_max=5, stable_after=30, give_up_after=5))
    procs.start()
    assert {s.state for s in procs.status.values()} == {"running"}
    assert procs.check() is False  # nothing happened, nothing changed
    old = procs.pids["kgc2"]
    caplog.set_level(logging.INFO, logger="ehrshare.network")
    os.kill(procs.pids["kgc2"], signal.SIGKILL)
    _until(procs, "death noticed", lambda: procs.status["kgc2"].state != "running")
    noticed = time.monotonic()
    st = procs.status["kgc2"]
    assert (st.state, st.attempt, st.last_exit, st.pid) == (
        "restarting",
        1,
        "killed by SIGKILL",
        None,
    )
    snap = procs.snapshot()["kgc2"]
    assert snap["state"] == "restarting" and 0 < snap["retry_in"] <= 0.6
    assert f"kgc2 (pid {old}) died: killed by SIGKILL; restarting in 0.6 s (attempt 1)" in (
        caplog.text
    )
    _until(procs, "running again", lambda: procs.status["kgc2"].state == "running")
    assert time.monotonic() - noticed >= 0.5  # it waited the backoff
    assert procs.pids["kgc2"] != old and procs.status["kgc2"].restarts == 1
    assert {n: s.state for n, s in procs.status.items() if n != "kgc2"} == {
        n: "running" for n in procs.commands if n != "kgc2"
    }


def test_quick_failures_back_off_doubling_then_give_up(
    make: Callable[..., ServiceProcesses], caplog: pytest.LogCaptureFixture
) -> None:
    procs = make(RestartPolicy(backoff=0.1, backoff_max=0.3, stable_after=30, give_up_after=4))
    procs.start()
    caplog.set_level(logging.INFO, logger="ehrshare.network")
    _mode(procs, "proxy-hospitalb", "crash")
    os.kill(procs.pids["proxy-hospitalb"], signal.SIGKILL)
    _until(procs, "given up", lambda: procs.status["proxy-hospitalb"].state == "failed")
    st = procs.status["proxy-hospitalb"]
    assert (st.attempt, st.restarts, st.last_exit) == (4, 3, "exit code 3")
    assert "restarting in 0.1 s (attempt 1)" in caplog.text
    assert "restarting in 0.2 s (attempt 2)" in caplog.text
    assert "restarting in 0.3 s (attempt 3)" in caplog.text  # bounded
    assert "gave up after 4 quick failures in a row" in caplog.text
    # Given up: it stays down however long the supervisor runs.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        procs.check()
        time.sleep(0.02)
    assert procs.status["proxy-hospitalb"].state == "failed" and st.restarts == 3
    # A request (the fix made) starts it again with a fresh count.
    _mode(procs, "proxy-hospitalb", "serve")
    procs.request_file("proxy-hospitalb").touch()
    assert procs.check() is True
    assert not procs.request_file("proxy-hospitalb").exists()
    _until(procs, "running again", lambda: procs.status["proxy-hospitalb"].state == "running")
    assert (st.attempt, st.restarts) == (0, 4)


def test_a_stable_run_resets_the_backoff(make: Callable[..., ServiceProcesses]) -> None:
    procs = make(RestartPolicy(backoff=0.1, backoff_max=1, stable_after=0.5, give_up_after=2))
    procs.start()
    os.kill(procs.pids["kgc1"], signal.SIGKILL)
    st = procs.status["kgc1"]
    _until(procs, "back", lambda: st.restarts == 1 and st.state == "running")
    # One quick failure so far; once it has run stable_after, the count is forgotten.
    assert procs.status["kgc1"].attempt == 1
    _until(procs, "stable", lambda: procs.status["kgc1"].attempt == 0, 5)
    # So the next death is attempt 1 again, not the give-up at 2.
    os.kill(procs.pids["kgc1"], signal.SIGKILL)
    _until(procs, "noticed", lambda: procs.status["kgc1"].state != "running")
    assert procs.status["kgc1"].state == "restarting" and procs.status["kgc1"].attempt == 1


def test_a_requested_restart_stops_cleanly_and_starts_again(
    make: Callable[..., ServiceProcesses],
) -> None:
    procs = make(RestartPolicy())
    procs.start()
    old = procs.children["proxy-hospitala"]
    others = {n: p for n, p in procs.pids.items() if n != "proxy-hospitala"}
    procs.request_file("proxy-hospitala").touch()
    procs.check()
    assert old.returncode == -signal.SIGTERM  # a clean stop, not counted as a failure
    _until(procs, "running", lambda: procs.status["proxy-hospitala"].state == "running")
    st = procs.status["proxy-hospitala"]
    assert (st.attempt, st.restarts, st.last_exit) == (0, 1, None)
    assert {n: p for n, p in procs.pids.items() if n != "proxy-hospitala"} == others


def test_a_restart_that_never_listens_is_killed_and_counted(
    make: Callable[..., ServiceProcesses],
) -> None:
    procs = make(RestartPolicy(backoff=0.1, give_up_after=5), start_timeout=1.0)
    procs.start()
    _mode(procs, "kgc3", "hang")
    os.kill(procs.pids["kgc3"], signal.SIGKILL)
    _until(procs, "restarted", lambda: procs.status["kgc3"].state == "starting")
    hung = procs.pids["kgc3"]
    _until(procs, "timed out", lambda: procs.status["kgc3"].attempt == 2)
    assert procs.status["kgc3"].last_exit == "did not listen within 1 s"
    assert not pid_alive(hung)


def test_supervise_stops_when_told_and_reports_changes(
    make: Callable[..., ServiceProcesses],
) -> None:
    import threading

    procs = make(RestartPolicy(backoff=0.05))
    procs.start()
    procs.request_file("kgc1").touch()  # left by an earlier supervisor: not acted on
    stop = threading.Event()
    changes: list[str] = []

    def on_change() -> None:
        changes.append(procs.status["kgc2"].state)
        if procs.status["kgc2"].state == "running" and procs.status["kgc2"].restarts:
            stop.set()

    os.kill(procs.pids["kgc2"], signal.SIGKILL)
    first_kgc1 = procs.pids["kgc1"]
    thread = threading.Thread(
        target=procs.supervise, args=(stop, on_change), kwargs={"interval": 0.02}
    )
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert changes[0] == "restarting" and changes[-1] == "running"
    assert procs.pids["kgc1"] == first_kgc1


def test_a_failed_start_is_explained_by_its_own_run_of_the_log(tmp_path: Path) -> None:
    # Each run appends to the same stderr file; the explanation must be this run's fatal line,
    # not the first one of an earlier run.
    script = (
        "import pathlib, sys\n"
        "n = pathlib.Path(sys.argv[1])\n"
        "k = int(n.read_text()) if n.exists() else 0\n"
        "n.write_text(str(k + 1))\n"
        "print(f'run {k}: Fatal error {k}', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    program = Program(
        argv=(sys.executable, "-c", script, str(tmp_path / "runs")),
        log=tmp_path / "p.stderr",
        ready=lambda: False,
    )
    with Supervisor({"p": program}, tmp_path / "run") as supervisor:
        with pytest.raises(
            SupervisorError, match=r"p exited with code 3: .*: run 0: Fatal error 0$"
        ):
            supervisor.start()
        with pytest.raises(
            SupervisorError, match=r"p exited with code 3: .*: run 1: Fatal error 1$"
        ):
            supervisor.start()
    assert supervisor.status["p"].last_exit == "exit code 3"
