"""Start and stop a consortium's KGC nodes and proxy as real processes, from its profile.

A profile written by ``Consortium.init(..., services="processes")`` names, for each KGC node and
the proxy, its loopback address, state directory, long-term key file (outside the state
directory), ledger wallet and TLS server certificate. :func:`service_commands` turns that into
the ``ehrshare kgc serve …`` / ``ehrshare proxy serve …`` command lines (what an operator runs by
hand, see ``docs/operations.md``); :class:`ServiceProcesses` runs them as child processes, waits
until each listens, and stops them by pid (SIGTERM, then SIGKILL after a grace period).

Each process logs to its state directory (``kgc.log`` / ``proxy.log``); its stderr goes to
``<run dir>/<name>.stderr``. :meth:`ServiceProcesses.supervise` is the one supervisor of these
processes (what ``consortium serve`` / ``network up`` run): it notices a child that died, logs
its exit status or signal, restarts it after a bounded exponential backoff
(:class:`RestartPolicy`), gives up on a service that keeps failing, and restarts one on request
(a ``<run dir>/<name>.restart`` file). This module must not read any key file (the processes
do) and must never signal a process it did not start.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from ehrshare.errors import Unavailable
from ehrshare.faults import fault_point
from ehrshare.profile import Profile, ProfileError, ServiceConfig

__all__ = [
    "RESTART_REQUEST_SUFFIX",
    "RestartPolicy",
    "ServiceCommand",
    "ServiceProcessError",
    "ServiceProcesses",
    "ServiceStatus",
    "describe_exit",
    "free_loopback_ports",
    "pid_alive",
    "service_commands",
]

_log = logging.getLogger(__name__)

DEFAULT_EXECUTABLE: Final = (sys.executable, "-m", "ehrshare")
RESTART_REQUEST_SUFFIX: Final = ".restart"
"""``<run dir>/<name>.restart``: asks a supervising :class:`ServiceProcesses` to restart one."""


# Sets PR_SET_PDEATHSIG in a small launcher that then execs the service (the pid stays the
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


class ServiceProcessError(Unavailable, RuntimeError):
    """A service process did not start (the message carries the tail of its stderr)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id still runs (a zombie, exited but not reaped, counts as
    gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name is in parentheses and may contain spaces; the state follows it.
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def describe_exit(returncode: int) -> str:
    """A process's exit status as people read it: ``exit code 1``, ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When the supervisor restarts a service that died.

    The first restart waits ``backoff`` seconds, each further *quick* failure (the service ran
    less than ``stable_after`` seconds) doubles the wait up to ``backoff_max``; a service that
    ran ``stable_after`` seconds starts from ``backoff`` again. After ``give_up_after`` quick
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
    """What the supervisor knows of one service.

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


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (the kernel picks
    them; another program could still take one before the service binds it)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True, slots=True)
class ServiceCommand:
    """One service process: its name (``kgc1`` …, ``proxy-hospitala`` …), address and
    arguments."""

    name: str
    address: str
    args: tuple[str, ...]
    state: Path
    service: ServiceConfig | None = None
    """Where the profile says it runs (its wallet and TLS CA: what a client needs to call it)."""

    def argv(self, executable: Sequence[str] = DEFAULT_EXECUTABLE) -> list[str]:
        """The full command line."""
        return [*executable, *self.args]


def _need(svc: ServiceConfig, what: str) -> tuple[Path, Path, Path, Path, Path, str]:
    fields = {
        "state": svc.state,
        "key": svc.key_file,
        "wallet": svc.wallet,
        "tls_cert": svc.tls_cert,
        "tls_key": svc.tls_key,
    }
    missing = [k for k, v in fields.items() if v is None]
    if svc.address is None or missing:
        raise ProfileError(
            f"{what} cannot be started from this profile: it needs an address and "
            f"{', '.join(missing) or 'nothing else'} (write one with "
            "'ehrshare consortium init --services processes')"
        )
    assert svc.state and svc.key_file and svc.wallet and svc.tls_cert and svc.tls_key
    return svc.state, svc.key_file, svc.wallet, svc.tls_cert, svc.tls_key, svc.address


def _common(profile: Profile, svc: ServiceConfig, what: str) -> tuple[list[str], Path, str]:
    state, _, wallet, tls_cert, tls_key, address = _need(svc, what)
    if not profile.ca_files:
        raise ProfileError(f"{what}: the profile lists no consortium CAs ('cas')")
    msp = (wallet / "msp-id").read_text(encoding="utf-8").strip()
    args = ["--state-dir", str(state), "--listen", address]
    args += ["--msp-id", msp, "--cert", str(wallet / "cert.pem"), "--key", str(wallet / "key.pem")]
    if profile.ledger_backend == "fabric":
        assert profile.path is not None
        args += ["--profile", str(profile.path)]
        if (wallet / "tls-cert.pem").is_file():
            # The wallet's TLS client certificate for peers and orderers under mutual TLS (a
            # profile with ledger.client_auth makes the process refuse to start without it).
            args += ["--ledger-tls-cert", str(wallet / "tls-cert.pem")]
            args += ["--ledger-tls-key", str(wallet / "tls-key.pem")]
    else:
        args += ["--ledger", str(profile.ledger_path)]
    if profile.consortium_id:
        # The process refuses a ledger of another consortium (exit 3) before serving.
        args += ["--consortium-id", profile.consortium_id]
    args += ["--channel", profile.channel, "--chaincode", profile.chaincode]
    args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    for ca in profile.ca_files:
        args += ["--client-ca", str(ca)]
    return args, state, address


def service_commands(profile: Profile) -> list[ServiceCommand]:
    """The serve commands of every remote KGC node, then every remote proxy (one per
    hospital; named as in the profile)."""
    out = []
    for node in profile.kgc_nodes:
        if node.service.embedded:
            continue
        what = f"KGC node {node.index}"
        args, state, address = _common(profile, node.service, what)
        assert node.service.key_file is not None
        head = ["kgc", "serve", "--index", str(node.index)]
        head += ["--node-key-file", str(node.service.key_file)]
        name = f"kgc{node.index}"
        out.append(ServiceCommand(name, address, tuple(head + args), state, node.service))
    for px in profile.proxies:
        if px.service.embedded:
            continue
        args, state, address = _common(profile, px.service, f"proxy {px.name}")
        assert px.service.key_file is not None
        head = ["proxy", "serve", "--key-file", str(px.service.key_file), "--name", px.name]
        out.append(ServiceCommand(px.name, address, tuple(head + args), state, px.service))
    return out


class ServiceProcesses:
    """The consortium's service processes, started from its profile and stopped by pid.

    Use as a context manager (everything still running is stopped on exit). ``run_dir`` holds
    port files and each process's stderr. ``die_with_parent=True`` asks Linux to SIGTERM the
    children if the thread that started them dies (a killed test run or demo leaves nothing
    behind); leave it off when starting services from short-lived threads, and call
    :meth:`supervise` from the thread that called :meth:`start`.
    """

    def __init__(
        self,
        profile: Profile,
        run_dir: Path,
        *,
        executable: Sequence[str] = DEFAULT_EXECUTABLE,
        start_timeout: float = 60.0,
        die_with_parent: bool = False,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.die_with_parent = die_with_parent
        self.commands = {c.name: c for c in service_commands(profile)}
        if not self.commands:
            raise ProfileError("the profile names no service to run as a process")
        self.run_dir = run_dir
        self.executable = tuple(executable)
        self.start_timeout = start_timeout
        self.policy = policy or RestartPolicy()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.status = {name: ServiceStatus() for name in self.commands}
        self.started_pids: list[int] = []

    @property
    def pids(self) -> dict[str, int]:
        """Pids of the processes started and not yet stopped."""
        return {name: p.pid for name, p in self._procs.items()}

    def _port_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.port"

    def _spawn(self, name: str) -> None:
        if name in self._procs:
            raise ServiceProcessError(f"{name} is already running (pid {self._procs[name].pid})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        port_file = self._port_file(name)
        port_file.unlink(missing_ok=True)
        argv = [*self.commands[name].argv(self.executable), "--port-file", str(port_file)]
        if self.die_with_parent:
            argv = [sys.executable, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *argv]
        with (self.run_dir / f"{name}.stderr").open("ab") as err:
            proc = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from the profile
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._procs[name] = proc
        self.started_pids.append(proc.pid)
        st = self.status[name]
        st.state, st.pid, st.started_at, st.retry_at = "starting", proc.pid, time.monotonic(), None
        _log.info("started %s (pid %d) on %s", name, proc.pid, self.commands[name].address)

    def start(self, *names: str) -> None:
        """Start the named services (all by default) and wait until each listens."""
        todo = list(names or self.commands)
        unknown = [n for n in todo if n not in self.commands]
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {sorted(self.commands)}")
        for name in todo:
            self._spawn(name)
        deadline = time.monotonic() + self.start_timeout
        waiting = list(todo)
        while waiting:
            for name in list(waiting):
                if self._port_file(name).exists():
                    waiting.remove(name)
                    self.status[name].state = "running"
                    continue
                proc = self._procs[name]
                if proc.poll() is not None:
                    self._procs.pop(name)
                    st = self.status[name]
                    st.state, st.pid, st.last_exit = "stopped", None, describe_exit(proc.returncode)
                    raise ServiceProcessError(
                        f"{name} exited with code {proc.returncode}: {self._stderr_tail(name)}"
                    )
            if waiting and time.monotonic() > deadline:
                raise ServiceProcessError(
                    f"{', '.join(waiting)} did not listen within {self.start_timeout:.0f} s"
                )
            if waiting:
                time.sleep(0.05)

    def _stderr_tail(self, name: str) -> str:
        try:
            text = (self.run_dir / f"{name}.stderr").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no stderr)"
        return " | ".join(text.strip().splitlines()[-5:])

    def stop(self, name: str, *, kill: bool = False, grace: float = 10.0) -> int:
        """Stop one service by pid: SIGTERM (a clean stop) or, with ``kill``, SIGKILL (a crash).
        Returns its exit code."""
        proc = self._procs.pop(name, None)
        if proc is None:
            raise ValueError(f"{name} is not running")
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        st = self.status[name]
        st.state, st.pid, st.retry_at = "stopped", None, None
        _log.info("stopped %s (pid %d): exit %s", name, proc.pid, proc.returncode)
        return proc.returncode

    def restart(self, name: str) -> None:
        """Stop (SIGTERM) and start one service again on the same address."""
        self.stop(name)
        self.start(name)

    def stop_all(self) -> dict[str, int]:
        """Stop everything still running; returns each exit code."""
        codes = {}
        for name in list(self._procs):
            try:
                codes[name] = self.stop(name)
            except (OSError, subprocess.TimeoutExpired) as exc:
                _log.warning("stopping %s: %s", name, exc)
        return codes

    # --- supervision ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every service's address and :class:`ServiceStatus`, JSON-ready."""
        now = time.monotonic()
        return {
            name: {"address": cmd.address, **self.status[name].as_dict(now)}
            for name, cmd in self.commands.items()
        }

    def request_file(self, name: str) -> Path:
        """The file whose existence asks :meth:`supervise` to restart ``name``."""
        return self.run_dir / f"{name}{RESTART_REQUEST_SUFFIX}"

    def check(self) -> bool:
        """One supervision step: handle restart requests, notice deaths, start what is due.

        Returns True if any service's status changed. Never blocks longer than a requested
        restart's clean stop.
        """
        changed = False
        for name in self.commands:
            changed |= self._check_one(name, time.monotonic())
        return changed

    def _check_one(self, name: str, now: float) -> bool:
        st = self.status[name]
        request = self.request_file(name)
        if request.exists():
            request.unlink(missing_ok=True)
            _log.warning("restarting %s on request", name)
            if name in self._procs:
                self.stop(name)
            fault_point("supervisor.restart.after_stop")
            st.attempt = 0
            st.restarts += 1
            self._try_spawn(name, now)
            return True
        proc = self._procs.get(name)
        if proc is not None:
            code = proc.poll()
            if code is not None:
                self._procs.pop(name)
                self._died(name, describe_exit(code), now)
                return True
            if st.state == "starting":
                if self._port_file(name).exists():
                    st.state = "running"
                    _log.info(
                        "%s (pid %d) listens on %s", name, proc.pid, self.commands[name].address
                    )
                    return True
                if now - st.started_at > self.start_timeout:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                    self._procs.pop(name)
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
        tail = self._stderr_tail(name)
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
        """Watch the started services until ``stop`` is set: restart the ones that die (see
        :class:`RestartPolicy`) and the ones asked for by :meth:`request_file`, calling
        ``on_change`` after every change. Call it from the thread that called :meth:`start`
        (with ``die_with_parent`` the children die with that thread)."""
        for name in self.commands:
            self.request_file(name).unlink(missing_ok=True)  # asked of a previous supervisor
        while not stop.is_set():
            if self.check():
                on_change()
            stop.wait(interval)

    def __enter__(self) -> ServiceProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
