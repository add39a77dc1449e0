"""The one process supervisor: how every process of the network is started, watched and stopped.

Fabric's orderers, peers and chaincode server (:mod:`ehrshare.network.fabric`), Kubo
(:mod:`ehrshare.network.kubo`), the KGC nodes and proxies (:mod:`ehrshare.network.services`) and
the detached ``consortium serve`` (:mod:`ehrshare.network.control`) all start through
:func:`start_child` (its log file, its own session, the parent-death signal; a helper that
talks over pipes for as long as its caller holds them, through :func:`start_piped`), are known by a
:class:`Child` (pid plus kernel start time: pids are reused), wait with :func:`wait_ready`, stop
with :func:`stop_process` (SIGTERM, then SIGKILL after a grace period) and explain a death with
:func:`log_tail`. :class:`Supervisor` restarts named programs that die, after a bounded backoff
(:class:`RestartPolicy`), and on request (a ``<run dir>/<name>.restart`` file).

This module must never signal a process it did not start, and reads no key material.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from ehrshare.errors import Unavailable
from ehrshare.faults import fault_point
from ehrshare.network.procinfo import (
    describe_exit,
    free_loopback_ports,
    log_tail,
    pid_alive,
    start_ticks,
)

__all__ = [
    "RELOAD_REQUEST",
    "RESTART_REQUEST_SUFFIX",
    "Child",
    "Program",
    "RestartPolicy",
    "ServiceStatus",
    "Supervisor",
    "SupervisorError",
    "describe_exit",
    "free_loopback_ports",
    "log_tail",
    "pid_alive",
    "start_child",
    "start_piped",
    "start_ticks",
    "stop_process",
    "wait_ready",
]

_log = logging.getLogger(__name__)

RESTART_REQUEST_SUFFIX: Final = ".restart"
"""``<run dir>/<name>.restart``: asks a supervising :class:`Supervisor` to restart one."""
RELOAD_REQUEST: Final = "reload.request"
"""``<run dir>/reload.request``: asks a supervising :class:`Supervisor` with a ``reload``
callback to take its programs anew (see :meth:`Supervisor.apply`)."""

# Sets PR_SET_PDEATHSIG in a small launcher that then execs the program (the pid stays the
# same), instead of in a preexec_fn: a preexec_fn forces a plain fork(), whose pthread_atfork
# handlers restart gRPC's poller in the child before exec, and with the parent's gRPC channels
# open that child can abort on a closed epoll fd (grpc/grpc#43055) — seen when a proxy is
# restarted while sessions hold channels to every proxy. Without preexec_fn CPython uses vfork.
_PDEATHSIG_LAUNCHER: Final = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(70)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

# The first line of a log that says why its process died: Fabric's logger.Panic*/Fatal* (levels
# PANI and FATA), Go's own "panic:", or the "Fatal error" some commands print. Go prints the
# goroutine stacks after it, so the last lines of the log rarely include it.


class SupervisorError(Unavailable, RuntimeError):
    """A supervised process did not start (the message carries the tail of its log)."""


# --- one child ---------------------------------------------------------------------------------


@dataclass
class Child:
    """A process started by :func:`start_child`: its pid, kernel start time, log and where this
    run's lines start in it (logs are appended to). ``popen`` is set in the process that
    started it (a child of another process, known from a state file, has none)."""

    name: str
    pid: int
    ticks: int | None
    log: Path
    offset: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """Whether it still runs and is the process started (not a stranger with its pid)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid) and (self.ticks is None or start_ticks(self.pid) == self.ticks)

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited and was reaped here (None otherwise)."""
        return None if self.popen is None else self.popen.poll()

    def tail(self, lines: int = 8, sep: str = " | ") -> str:
        """:func:`log_tail` of this run's part of its log."""
        return log_tail(self.log, self.offset, lines, sep)

    def stop(self, *, grace: float = 10.0, kill: bool = False) -> int | None:
        """:func:`stop_process` for this child."""
        return stop_process(self, grace=grace, kill=kill)


def start_child(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: Literal["log", "null"] = "log",
    new_session: bool = False,
    die_with_parent: bool = False,
    netns: str | None = None,
) -> Child:
    """Start ``argv`` with its output appended to ``log`` (stderr always, stdout unless
    ``stdout="null"``), ``env`` merged over this process's environment.

    ``new_session``: the child outlives the command that started it, and a Ctrl-C in that
    terminal does not reach it (stop it by pid). ``die_with_parent``: Linux sends it SIGTERM
    when the thread that started it dies (a killed test run leaves nothing behind); leave it
    off when starting from short-lived threads. ``netns``: run it inside that network
    namespace (``ip netns exec``, which execs: the pid is the program's; see
    :mod:`ehrshare.network.netns`). Raises OSError if the program cannot run.
    """
    full = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
    if die_with_parent:
        full = [sys.executable, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *full]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        offset = out.seek(0, os.SEEK_END)
        popen = subprocess.Popen(  # noqa: S603 - our own programs, arguments from our config
            full,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out if stdout == "log" else subprocess.DEVNULL,
            stderr=out,
            cwd=cwd,
            start_new_session=new_session,
        )
    child = Child(name, popen.pid, start_ticks(popen.pid), log, offset, popen)
    _log.info("started %s (pid %d), log %s (from byte %d)", name, popen.pid, log, offset)
    return child


def start_piped(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start a helper that talks over its standard input and output (text lines), for as long
    as its caller holds the pipes: it ends when its input is closed, and the caller kills it by
    the returned process's pid if it does not (``bench fhir``'s client driver). Its standard
    error goes to this process's. Not for services: those start with :func:`start_child`."""
    popen = subprocess.Popen(  # noqa: S603 - our own programs, arguments from our code
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    _log.info("started %s (pid %d) on pipes", argv[0], popen.pid)
    return popen


def stop_process(child: Child, *, grace: float = 10.0, kill: bool = False) -> int | None:
    """Stop a child by pid: SIGTERM (a clean stop; with ``kill``, SIGKILL: a crash), then
    SIGKILL if it still runs after ``grace`` seconds. Does nothing to a pid that is no longer
    the child's. Returns its exit status when it was started by this process, else None
    (``subprocess.TimeoutExpired`` if it outlives SIGKILL by ``grace``)."""
    if child.alive():
        os.kill(child.pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not _gone_within(child, grace):
            _log.warning(
                "%s (pid %d) ignored SIGTERM for %.0f s; killing it", child.name, child.pid, grace
            )
            os.kill(child.pid, signal.SIGKILL)
            _gone_within(child, grace)
    if child.popen is None:
        return None
    return child.popen.wait(timeout=grace)


def _gone_within(child: Child, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while child.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_ready(
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    deadline: float,
    *,
    interval: float = 0.1,
    backoff_from: float | None = None,
) -> Literal["ready", "died", "late"]:
    """Poll ``ready`` until it holds (``ready``), the process stops being ``alive`` (``died``)
    or the monotonic ``deadline`` passes (``late``). ``backoff_from``: start polling that often
    and double up to ``interval`` (for a readiness check that costs little the first times)."""
    delay = interval if backoff_from is None else backoff_from
    while True:
        if ready():
            return "ready"
        if not alive():
            return "died"
        if time.monotonic() > deadline:
            return "late"
        time.sleep(delay)
        delay = min(delay * 2, interval)


# --- restart ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When the supervisor restarts a program that died.

    The first restart waits ``backoff`` seconds, each further *quick* failure (it ran less than
    ``stable_after`` seconds) doubles the wait up to ``backoff_max``; one that ran
    ``stable_after`` seconds starts from ``backoff`` again. After ``give_up_after`` quick
    failures in a row it is left down (state ``failed``) until restarted by request.
    """

    backoff: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 60.0
    give_up_after: int = 5

    def __post_init__(self) -> None:
        if not (0 < self.backoff <= self.backoff_max) or self.stable_after <= 0:
            raise ValueError(
                "restart policy needs 0 < backoff <= backoff_max and stable_after > 0, got "
                f"{self.backoff}, {self.backoff_max}, {self.stable_after}"
            )
        if self.give_up_after < 1:
            raise ValueError(f"give_up_after must be at least 1, got {self.give_up_after}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based) of a quick-failing run."""
        return float(min(self.backoff * 2 ** max(attempt - 1, 0), self.backoff_max))


@dataclass(slots=True)
class ServiceStatus:
    """What the supervisor knows of one program.

    ``state``: ``starting`` (spawned, not listening yet), ``running`` (listening),
    ``restarting`` (died; restart ``attempt`` due at ``retry_at``), ``failed`` (gave up after
    ``attempt`` quick failures) or ``stopped``. ``last_exit`` is the last death
    (:func:`describe_exit`), ``restarts`` how many times it was started again.
    """

    state: str = "stopped"
    pid: int | None = None
    attempt: int = 0
    restarts: int = 0
    last_exit: str | None = None
    started_at: float = 0.0
    retry_at: float | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready form (``retry_in``: seconds until the next restart, if one is due)."""
        return {
            "state": self.state,
            "pid": self.pid,
            "attempt": self.attempt,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "retry_in": None if self.retry_at is None else round(max(self.retry_at - now, 0), 2),
        }


@dataclass(frozen=True)
class Program:
    """One supervised program: its command line, its log (its stderr), how to tell that it
    listens, what to clear before each start, and what :meth:`Supervisor.snapshot` shows of
    it (``info``, e.g. its address); ``netns``: the network namespace it runs in (None: this
    process's)."""

    argv: tuple[str, ...]
    log: Path
    ready: Callable[[], bool]
    address: str = ""
    before_start: Callable[[], None] = lambda: None
    info: Mapping[str, Any] = field(default_factory=dict)
    netns: str | None = None


class Supervisor:
    """Named programs started as children, watched and restarted; stopped by pid.

    Use as a context manager (everything still running is stopped on exit). ``run_dir`` holds
    restart request files. ``die_with_parent=True`` asks Linux to SIGTERM the children if the
    thread that started them dies; leave it off when starting from short-lived threads, and
    call :meth:`supervise` from the thread that called :meth:`start`.
    """

    error: type[SupervisorError] = SupervisorError
    """What :meth:`start` raises (subclasses name their own)."""

    def __init__(
        self,
        programs: Mapping[str, Program],
        run_dir: Path,
        *,
        start_timeout: float = 60.0,
        die_with_parent: bool = False,
        policy: RestartPolicy | None = None,
        reload: Callable[[], Mapping[str, Program]] | None = None,
    ) -> None:
        self.programs = dict(programs)
        self.run_dir = run_dir
        self.reload = reload
        self._rolling: list[str] = []  # changed programs still to restart, one at a time
        self._spawned: dict[str, Program] = {}  # what each program's current process runs
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.policy = policy or RestartPolicy()
        self._children: dict[str, Child] = {}
        self._log_offsets: dict[str, int] = {}  # where each program's last run starts in its log
        self.status = {name: ServiceStatus() for name in self.programs}
        self.started_pids: list[int] = []

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the processes started and not yet stopped."""
        return {name: c.pid for name, c in self._children.items()}

    @property
    def children(self) -> dict[str, Child]:
        """The processes started and not yet stopped, by name."""
        return dict(self._children)

    def _spawn(self, name: str) -> None:
        if name in self._children:
            raise self.error(f"{name} is already running (pid {self._children[name].pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        program = self.programs[name]
        program.before_start()
        child = start_child(
            name,
            program.argv,
            program.log,
            stdout="null",
            die_with_parent=self.die_with_parent,
            netns=program.netns,
        )
        self._children[name] = child
        self._spawned[name] = program
        self._log_offsets[name] = child.offset
        self.started_pids.append(child.pid)
        st = self.status[name]
        st.state, st.pid, st.started_at, st.retry_at = "starting", child.pid, time.monotonic(), None
        _log.info("started %s (pid %d) on %s", name, child.pid, program.address)

    def start(self, *names: str) -> None:
        """Start the named programs (all by default) and wait until each listens."""
        todo = list(names or self.programs)
        unknown = [n for n in todo if n not in self.programs]
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {sorted(self.programs)}")
        for name in todo:
            self._spawn(name)
        deadline = time.monotonic() + self.start_timeout
        waiting = list(todo)
        while waiting:
            for name in list(waiting):
                if self.programs[name].ready():
                    waiting.remove(name)
                    self.status[name].state = "running"
                    continue
                child = self._children[name]
                code = child.returncode
                if code is not None:
                    self._children.pop(name)
                    st = self.status[name]
                    st.state, st.pid, st.last_exit = "stopped", None, describe_exit(code)
                    raise self.error(f"{name} exited with code {code}: {self._tail(name)}")
            if waiting and time.monotonic() > deadline:
                raise self.error(
                    f"{', '.join(waiting)} did not listen within {self.start_timeout:.0f} s"
                )
            if waiting:
                time.sleep(0.05)

    def _tail(self, name: str) -> str:
        return log_tail(self.programs[name].log, self._log_offsets.get(name, 0), lines=5)

    def stop(self, name: str, *, kill: bool = False, grace: float = 10.0) -> int:
        """Stop one program by pid: SIGTERM (a clean stop) or, with ``kill``, SIGKILL (a crash).
        Returns its exit code."""
        child = self._children.pop(name, None)
        if child is None:
            raise ValueError(f"{name} is not running")
        code = stop_process(child, grace=grace, kill=kill)
        st = self.status[name]
        st.state, st.pid, st.retry_at = "stopped", None, None
        _log.info("stopped %s (pid %d): exit %s", name, child.pid, code)
        assert code is not None
        return code

    def restart(self, name: str) -> None:
        """Stop (SIGTERM) and start one program again."""
        self.stop(name)
        self.start(name)

    def stop_all(self) -> dict[str, int]:
        """Stop everything still running; returns each exit code."""
        codes = {}
        for name in list(self._children):
            try:
                codes[name] = self.stop(name)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _log.warning("stopping %s: %s", name, exc)
        return codes

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every program's ``info`` and :class:`ServiceStatus`, JSON-ready."""
        now = time.monotonic()
        return {
            # The info of the program its process was started as (a changed one waiting for
            # its turn in a rolling restart still shows the old command line's).
            name: {**self._spawned.get(name, program).info, **self.status[name].as_dict(now)}
            for name, program in self.programs.items()
        }

    def request_file(self, name: str) -> Path:
        """The file whose existence asks :meth:`supervise` to restart ``name``."""
        return self.run_dir / f"{name}{RESTART_REQUEST_SUFFIX}"

    def apply(self, programs: Mapping[str, Program]) -> None:
        """Take ``programs`` as the set to run: start the new ones, stop the ones gone, and
        restart the ones whose command line changed — one at a time, each once the one before
        listens (a rolling restart: of n KGC nodes, n-1 keep answering)."""
        for name in [n for n in self.programs if n not in programs]:
            if name in self._children:
                self.stop(name)
            del self.programs[name]
            del self.status[name]
            self._spawned.pop(name, None)
            _log.warning("stopped %s: no longer in the profile", name)
        for name, program in programs.items():
            old = self.programs.get(name)
            self.programs[name] = program
            if old is None:
                self.status[name] = ServiceStatus()
                _log.warning("starting %s: new in the profile", name)
                self._try_spawn(name, time.monotonic())
            elif old.argv != program.argv and name not in self._rolling:
                self._rolling.append(name)

    def _roll(self) -> bool:
        """Restart the next program of a rolling restart once nothing is starting."""
        if not self._rolling or any(st.state == "starting" for st in self.status.values()):
            return False
        name = self._rolling.pop(0)
        _log.warning("restarting %s: its command line changed", name)
        if name in self._children:
            self.stop(name)
        st = self.status[name]
        st.attempt = 0
        st.restarts += 1
        self._try_spawn(name, time.monotonic())
        return True

    def check(self) -> bool:
        """One supervision step: handle reload and restart requests, notice deaths, start what
        is due.

        Returns True if any program's status changed. Never blocks longer than a requested
        restart's clean stop.
        """
        changed = False
        reload = self.run_dir / RELOAD_REQUEST
        if self.reload is not None and reload.exists():
            reload.unlink(missing_ok=True)
            try:
                self.apply(self.reload())
            except Exception as exc:  # a broken profile: keep running what runs
                _log.error("reload refused, the services are left as they were: %s", exc)
            changed = True
        for name in list(self.programs):
            changed |= self._check_one(name, time.monotonic())
        changed |= self._roll()
        return changed

    def _check_one(self, name: str, now: float) -> bool:
        st = self.status[name]
        request = self.request_file(name)
        if request.exists():
            request.unlink(missing_ok=True)
            _log.warning("restarting %s on request", name)
            if name in self._children:
                self.stop(name)
            fault_point("supervisor.restart.after_stop")
            st.attempt = 0
            st.restarts += 1
            self._try_spawn(name, now)
            return True
        child = self._children.get(name)
        if child is not None:
            code = child.returncode
            if code is not None:
                self._children.pop(name)
                self._died(name, describe_exit(code), now)
                return True
            if st.state == "starting":
                if self.programs[name].ready():
                    st.state = "running"
                    _log.info(
                        "%s (pid %d) listens on %s", name, child.pid, self.programs[name].address
                    )
                    return True
                if now - st.started_at > self.start_timeout:
                    stop_process(child, kill=True)
                    self._children.pop(name)
                    why = f"did not listen within {self.start_timeout:.0f} s"
                    self._died(name, why, now)
                    return True
            elif st.attempt and now - st.started_at >= self.policy.stable_after:
                st.attempt = 0  # stable: the next death starts the backoff afresh
                return True
            return False
        if st.state == "restarting" and st.retry_at is not None and now >= st.retry_at:
            st.restarts += 1
            self._try_spawn(name, now)
            return True
        return False

    def _try_spawn(self, name: str, now: float) -> None:
        try:
            self._spawn(name)
        except OSError as exc:  # no executable, no file descriptors: counts as a death
            self.status[name].started_at = now
            self._died(name, f"could not start: {exc}", now)

    def _died(self, name: str, why: str, now: float) -> None:
        st = self.status[name]
        quick = now - st.started_at < self.policy.stable_after
        st.attempt = st.attempt + 1 if quick else 1
        st.last_exit, pid, st.pid = why, st.pid, None
        tail = self._tail(name)
        if st.attempt >= self.policy.give_up_after:
            st.state, st.retry_at = "failed", None
            _log.error(
                "%s (pid %s) died: %s; gave up after %d quick failures in a row (last stderr: "
                "%s); fix it and run 'ehrshare network restart %s'",
                name,
                pid,
                why,
                st.attempt,
                tail,
                name,
            )
            return
        delay = self.policy.delay(st.attempt)
        st.state, st.retry_at = "restarting", now + delay
        _log.warning(
            "%s (pid %s) died: %s; restarting in %.1f s (attempt %d)",
            name,
            pid,
            why,
            delay,
            st.attempt,
        )

    def supervise(
        self,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
        *,
        interval: float = 0.2,
    ) -> None:
        """Watch the started programs until ``stop`` is set: restart the ones that die (see
        :class:`RestartPolicy`) and the ones asked for by :meth:`request_file`, calling
        ``on_change`` after every change. Call it from the thread that called :meth:`start`
        (with ``die_with_parent`` the children die with that thread)."""
        for name in self.programs:
            self.request_file(name).unlink(missing_ok=True)  # asked of a previous supervisor
        (self.run_dir / RELOAD_REQUEST).unlink(missing_ok=True)  # this one read the profile now
        while not stop.is_set():
            if self.check():
                on_change()
            stop.wait(interval)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
