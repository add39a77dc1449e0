""":meth:`Supervisor.apply` (what a ``reload.request`` triggers): a new program is started, a
removed one stopped, and programs whose command line changed are restarted one at a time, each
only once the one before listens. Real child processes, driven step by step."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ehrshare.network.supervisor import RELOAD_REQUEST, Program, Supervisor, pid_alive

# Listens (writes its ready file) after a short delay, then sleeps.
SLOW_READY = (
    "import pathlib, sys, time; time.sleep(0.3); pathlib.Path(sys.argv[1]).touch(); time.sleep(600)"
)


def program(run: Path, name: str, version: int) -> Program:
    ready = run / f"{name}.ready"
    return Program(
        argv=(sys.executable, "-c", SLOW_READY, str(ready), f"v{version}"),
        log=run / f"{name}.log",
        ready=ready.exists,
        before_start=lambda: ready.unlink(missing_ok=True),
        info={"version": version},
    )


def test_a_reload_starts_new_programs_stops_removed_ones_and_rolls_changed_ones(
    tmp_path: Path,
) -> None:
    versions = {"a": 1, "b": 1, "gone": 1}

    def programs() -> dict[str, Program]:
        return {n: program(tmp_path, n, v) for n, v in versions.items()}

    with Supervisor(programs(), tmp_path, reload=programs) as sup:
        sup.start()
        first = dict(sup.pids)
        versions.update(a=2, b=2, new=1)
        del versions["gone"]
        (tmp_path / RELOAD_REQUEST).touch()
        starting_at_once = 0
        deadline = time.monotonic() + 30
        while True:
            sup.check()
            starting_at_once = max(
                starting_at_once, sum(st.state == "starting" for st in sup.status.values())
            )
            snap = sup.snapshot()
            done = all(s["state"] == "running" for s in snap.values()) and all(
                snap[n]["version"] == 2 for n in ("a", "b")
            )
            if done:
                break
            assert time.monotonic() < deadline, snap
            time.sleep(0.05)
        assert not (tmp_path / RELOAD_REQUEST).exists()
        assert sorted(snap) == ["a", "b", "new"]
        assert not pid_alive(first["gone"])
        assert sup.pids["a"] != first["a"] and sup.pids["b"] != first["b"]
        assert not pid_alive(first["a"]) and not pid_alive(first["b"])
        # "new" starts at once beside the first restart; a and b never restart together.
        assert starting_at_once <= 2
        assert snap["a"]["restarts"] == 1 and snap["b"]["restarts"] == 1


def test_a_reload_that_fails_leaves_the_programs_running(tmp_path: Path) -> None:
    def broken() -> dict[str, Program]:
        raise ValueError("the profile does not parse")

    with Supervisor({"a": program(tmp_path, "a", 1)}, tmp_path, reload=broken) as sup:
        sup.start()
        pid = sup.pids["a"]
        (tmp_path / RELOAD_REQUEST).touch()
        sup.check()
        assert sup.pids == {"a": pid} and pid_alive(pid)
        assert sup.status["a"].state == "running"
