"""`ehrshare network up|down|restart|status` for a local consortium, its processes kept running.

``up`` starts one detached supervisor (``ehrshare consortium serve --state-file …``) that runs
every KGC node and proxy of the profile as child processes
(:class:`~ehrshare.network.services.ServiceProcesses`) and writes ``run/network.json`` (its pid
and the services' pids and addresses) once all of them listen; ``down`` stops that supervisor by
the pid in the file, which stops its children by pid. A pid is signalled only after checking, in
``/proc/<pid>/cmdline``, that it is still this profile's supervisor (pids are reused). With a
``ledger: fabric`` profile whose ``ledger.network`` is a local network
(:mod:`ehrshare.network.fabric`), ``up`` first starts its orderers, peers and chaincode server and
``down`` stops them last. :func:`restart_service` asks the supervisor to restart one service;
:func:`ehrshare.network.health.check_services` tells the truth about each. It starts and stops
processes; it must not touch the ledger or the store, and reads no key.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrshare.errors import Unavailable, UsageError
from ehrshare.faults import fault_point
from ehrshare.network.consortium_hosts import ensure_hosts, remove_hosts
from ehrshare.network.services import ServiceCommand, service_commands
from ehrshare.network.supervisor import (
    RELOAD_REQUEST,
    RESTART_REQUEST_SUFFIX,
    Child,
    RestartPolicy,
    log_tail,
    pid_alive,
    start_child,
    stop_process,
)
from ehrshare.network.swarm import KuboSwarm
from ehrshare.profile import Profile

if TYPE_CHECKING:
    from ehrshare.network.fabric import FabricNet

__all__ = [
    "NetworkControlError",
    "NetworkState",
    "UnknownService",
    "hold_supervisor_lock",
    "network_down",
    "network_state",
    "network_up",
    "restart_service",
    "sync_services",
]

_log = logging.getLogger(__name__)
STATE_FILE = "network.json"
LOG_FILE = "network.log"
LOCK_FILE = "network.lock"


class NetworkControlError(Unavailable, RuntimeError):
    """The services could not be started or stopped; the message says why and what to do."""


class UnknownService(UsageError, NetworkControlError):
    """``network restart`` named a service the supervisor does not run (a usage error)."""

    hint = "'ehrshare network status' lists the services"


@dataclass(frozen=True)
class NetworkState:
    """What ``run/network.json`` says, checked against the running processes."""

    running: bool
    supervisor_pid: int | None
    services: dict[str, dict[str, Any]]
    state_file: Path
    log_file: Path
    fabric: dict[str, Any] | None = None
    """The profile's local Fabric network: ``running``, ``pids`` by process, ``logs``."""
    stale_supervisor_pid: int | None = None
    """The pid a state file names whose supervisor is gone (killed, crashed)."""
    ready: bool = False
    """Whether the live supervisor has seen every service listen once (its first start done)."""
    swarm: dict[str, Any] | None = None
    """The profile's private IPFS swarm: ``running`` (every node), ``pids`` by hospital."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``--json`` output."""
        out = {
            "running": self.running,
            "supervisor_pid": self.supervisor_pid,
            "services": self.services,
            "state_file": str(self.state_file),
            "log_file": str(self.log_file),
        }
        if self.fabric is not None:
            out["fabric"] = self.fabric
        if self.swarm is not None:
            out["swarm"] = self.swarm
        if self.stale_supervisor_pid is not None:
            out["stale_supervisor_pid"] = self.stale_supervisor_pid
        return out


def _run_dir(profile_path: Path) -> Path:
    return profile_path.parent / "run"


def _is_our_supervisor(pid: int, profile_path: Path) -> bool:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return (
        "consortium" in args
        and "serve" in args
        and "--state-file" in args
        and str(profile_path) in args
    )


def network_state(profile_path: Path) -> NetworkState:
    """Whether this profile's services are up (a live supervisor named in the state file),
    and its local Fabric network's state."""
    state = _services_state(profile_path, _fabric_state(profile_path))
    swarm = _swarm_of(profile_path)
    if swarm is None:
        return state
    pids = swarm.pids()
    info = {
        "running": len(pids) == len(swarm.nodes),
        "pids": pids,
        "logs": str(swarm.root / "logs"),
    }
    return replace(state, swarm=info)


def _swarm_of(profile_path: Path) -> KuboSwarm | None:
    """The private IPFS swarm a profile's store runs on, if it names one."""
    try:
        prof = Profile.load(profile_path)
    except ValueError:
        return None
    return None if prof.swarm is None else KuboSwarm.load(prof.swarm.path)


def _services_state(profile_path: Path, fabric: dict[str, Any] | None = None) -> NetworkState:
    run = _run_dir(profile_path)
    state_file, log_file = run / STATE_FILE, run / LOG_FILE
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        pid = int(data["supervisor_pid"])
        services = dict(data.get("services", {}))
        ready = bool(data.get("ready", False))
    except (OSError, ValueError, KeyError, TypeError):
        return NetworkState(False, None, {}, state_file, log_file, fabric)
    running = _is_our_supervisor(pid, profile_path)
    return NetworkState(
        running,
        pid if running else None,
        services if running else {},
        state_file,
        log_file,
        fabric,
        None if running else pid,
        running and ready,
    )


def _fabric_state(profile_path: Path) -> dict[str, Any] | None:
    try:
        network = _fabric_network(Profile.load(profile_path))
    except ValueError:  # no (valid) profile: no Fabric network to report
        return None
    if network is None:
        return None
    running = network.running()
    return {
        "running": running,
        "pids": network.pids() if running else {},
        "logs": str(network.dir / "logs"),
    }


def network_up(
    profile_path: Path,
    *,
    timeout: float = 90.0,
    policy: RestartPolicy | None = None,
    delay_ms: float | None = None,
) -> NetworkState:
    """Start the profile's services in the background and wait until every one listens.

    Returns the state (``running`` and the services). If they are already up, returns that
    state without starting anything. A state file whose supervisor is gone is cleared, and any
    of its services still alive are stopped first. The supervisor restarts a service that dies
    as ``policy`` says (default :class:`~ehrshare.network.supervisor.RestartPolicy`). Raises
    :class:`NetworkControlError` if the profile runs everything in-process, or the services do
    not come up within ``timeout`` seconds (then nothing is left running).
    """
    profile_path = profile_path.resolve()
    prof = Profile.load(profile_path)
    # Its hosts first (made again after 'network down'): every node runs in one of them.
    # ``delay_ms``: the one-way link delay into each host (recorded; None: the recorded one).
    ensure_hosts(profile_path.parent, delay_ms)
    remote = [p for p in prof.proxies if not p.service.embedded] + [
        n for n in prof.kgc_nodes if not n.service.embedded
    ]
    fabric = _fabric_network(prof)
    swarm = None if prof.swarm is None else KuboSwarm.load(prof.swarm.path)
    if swarm is not None:
        # Its repositories are checked before any node starts (exit 3 for a missing or
        # foreign one); the nodes run detached, like the Fabric processes.
        swarm.start()
        swarm.wait_connected()
    if not remote and fabric is None and swarm is not None:
        return network_state(profile_path)
    if not remote and fabric is None:
        raise NetworkControlError(
            f"profile {profile_path} runs its KGC nodes and proxies in-process: there is nothing "
            "to start (create the consortium with `ehrshare consortium init --services processes`)"
        )
    started_fabric = False
    if fabric is not None and not fabric.running():
        if fabric.live() and fabric.deployed:
            try:  # partly running: start only the processes that are gone
                fabric.repair()
            except Exception as exc:
                raise NetworkControlError(
                    f"the Fabric network's missing processes did not start again: {exc}"
                ) from None
        else:
            try:
                fabric.start()
            except Exception as exc:
                fabric.stop()
                raise NetworkControlError(f"the Fabric network did not start: {exc}") from None
            started_fabric = True
    try:
        if remote:
            _start_services(profile_path, timeout, policy or RestartPolicy())
    except BaseException:
        if started_fabric:  # nothing this call started is left running
            assert fabric is not None
            fabric.stop()
        raise
    return network_state(profile_path)


def hold_supervisor_lock(run_dir: Path) -> int | None:
    """Take ``<run dir>/network.lock`` for the calling supervisor for as long as it lives (the
    kernel drops it when the process dies, however it dies). Returns the open descriptor, or
    None if another live supervisor of this profile holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _supervisor_alive(run_dir: Path) -> bool:
    """Whether some supervisor holds this profile's lock (it may not have written its state
    file yet)."""
    if not (run_dir / LOCK_FILE).exists():
        return False
    fd = hold_supervisor_lock(run_dir)
    if fd is None:
        return True
    os.close(fd)  # closing drops the lock again
    return False


def _start_services(profile_path: Path, timeout: float, policy: RestartPolicy) -> None:
    """Start the service supervisor unless one runs; wait until every service listens."""
    run = _run_dir(profile_path)
    current = _services_state(profile_path)
    if current.running or _supervisor_alive(run):
        _wait_ready(profile_path, None, timeout)
        # What the supervisor gave up on does not run: `up` retries it, as `restart` would.
        for name, record in _services_state(profile_path).services.items():
            if record.get("state") == "failed":
                restart_service(profile_path, name, timeout=timeout)
        # A profile changed under a running supervisor (a hospital joined): take it.
        if _out_of_date(profile_path, listening=False):
            sync_services(profile_path, timeout=timeout)
        return
    run.mkdir(parents=True, exist_ok=True)
    if current.stale_supervisor_pid is not None:
        _log.warning(
            "the service supervisor (pid %d) is gone; starting a new one",
            current.stale_supervisor_pid,
        )
        _stop_orphans(profile_path, current.state_file)
    current.state_file.unlink(missing_ok=True)  # stale: its supervisor is gone
    argv = [
        sys.executable,
        "-m",
        "ehrshare",
        "consortium",
        "serve",
        "--profile",
        str(profile_path),
        "--state-file",
        str(current.state_file),
        "--restart-backoff",
        str(policy.backoff),
        "--restart-backoff-max",
        str(policy.backoff_max),
        "--stable-after",
        str(policy.stable_after),
        "--give-up-after",
        str(policy.give_up_after),
    ]
    # A session of its own: it outlives this command and its terminal.
    child = start_child("the service supervisor", argv, current.log_file, new_session=True)
    fault_point("netctl.up.after_spawn")
    _wait_ready(profile_path, child, timeout)


def _wait_ready(profile_path: Path, proc: Child | None, timeout: float) -> None:
    """Wait until a live supervisor reports every service listening: ours (``proc``), or one
    another ``network up`` started (then its own caller stops it if it fails)."""
    run = _run_dir(profile_path)
    log_file = run / LOG_FILE
    deadline = time.monotonic() + timeout
    while True:
        state = _services_state(profile_path)
        if state.ready:
            return
        if proc is not None and proc.returncode is not None:
            if _supervisor_alive(run):  # another `network up` won the race: wait for it
                proc = None
                continue
            raise NetworkControlError(
                f"the services did not start (supervisor exited with code {proc.returncode}): "
                f"{log_tail(log_file)}; full log in {log_file}"
            )
        if proc is None and not state.running and not _supervisor_alive(run):
            raise NetworkControlError(
                f"the service supervisor another 'network up' started is gone: "
                f"{log_tail(log_file)}; run 'ehrshare network up' again"
            )
        if time.monotonic() > deadline:
            if proc is not None:
                stop_process(proc, grace=15)
                raise NetworkControlError(
                    f"the services did not all listen within {timeout:.0f} s and were stopped: "
                    f"{log_tail(log_file)}; full log in {log_file}"
                )
            raise NetworkControlError(
                f"the services another 'network up' is starting did not all listen within "
                f"{timeout:.0f} s; see {log_file}"
            )
        time.sleep(0.1)


def _out_of_date(profile_path: Path, *, listening: bool = True) -> list[str]:
    """The profile's services the live supervisor does not run as the profile says (missing,
    another command line, or with ``listening`` not listening yet); [] when it runs every
    one."""
    services = _services_state(profile_path).services
    return [
        cmd.name
        for cmd in service_commands(Profile.load(profile_path))
        if services.get(cmd.name, {}).get("args_sha256") != cmd.args_sha256
        or (listening and services.get(cmd.name, {}).get("state") != "running")
    ]


def sync_services(profile_path: Path, *, timeout: float = 120.0) -> str:
    """Make the running services match the profile (``consortium add-hospital`` after it named
    a hospital's KGC node and proxy, and gave every service a new client CA).

    With a live supervisor: ask it to read the profile again (``run/reload.request``): it starts
    the new services and restarts the changed ones one at a time; wait until each runs the
    profile's command line and listens (``"reloaded"``, or ``"current"`` if it already did).
    Without one: :func:`network_up` (``"started"``). Raises :class:`NetworkControlError` when
    they are not all running within ``timeout`` seconds.
    """
    from ehrshare.services.vault import atomic_write

    profile_path = profile_path.resolve()
    state = _services_state(profile_path)
    if not state.running and not _supervisor_alive(_run_dir(profile_path)):
        network_up(profile_path, timeout=timeout)
        return "started"
    if not state.ready:
        _wait_ready(profile_path, None, timeout)
    if not _out_of_date(profile_path):
        return "current"
    request = _run_dir(profile_path) / RELOAD_REQUEST
    deadline = time.monotonic() + timeout
    asked = 0.0
    while True:
        behind = _out_of_date(profile_path)
        if not behind:
            return "reloaded"
        now = _services_state(profile_path)
        if not now.running:
            raise NetworkControlError(
                f"the service supervisor stopped while taking the new profile; see {now.log_file}"
            )
        failed = [n for n in behind if now.services.get(n, {}).get("state") == "failed"]
        if failed:
            raise NetworkControlError(
                f"{', '.join(failed)} did not start and the supervisor gave up; see "
                f"{now.log_file} and run/<name>.stderr, then 'ehrshare network restart'"
            )
        if not request.exists() and time.monotonic() - asked > 5.0:
            # Asked again when a supervisor that started meanwhile cleared the request.
            atomic_write(request, b"", mode=0o644)
            asked = time.monotonic()
        if time.monotonic() > deadline:
            raise NetworkControlError(
                f"{', '.join(behind)} did not run the profile's command line within "
                f"{timeout:.0f} s; see {now.log_file}"
            )
        time.sleep(0.1)


def network_down(profile_path: Path, *, timeout: float = 30.0) -> NetworkState | None:
    """Stop the profile's background services (SIGTERM to the supervisor, by pid), then its
    hosts' namespaces if it has any (``consortium init --hosts netns``).

    Returns the state that was running, or None if nothing was. Raises
    :class:`NetworkControlError` if the supervisor does not exit within ``timeout`` seconds
    (it is then killed; its children die with it).
    """
    profile_path = profile_path.resolve()
    state = _network_down(profile_path, timeout)
    removed = remove_hosts(profile_path.parent)
    if removed:
        _log.info("removed the consortium's hosts: %s", ", ".join(removed))
    return state


def _network_down(profile_path: Path, timeout: float) -> NetworkState | None:
    state = network_state(profile_path)
    fabric = _fabric_network(Profile.load(profile_path))
    swarm = _swarm_of(profile_path)
    if swarm is not None and swarm.pids():
        swarm.stop()
        if not state.running and (fabric is None or not fabric.running()):
            _stop_orphans(profile_path, state.state_file)
            return state
    if not state.running:
        _stop_orphans(profile_path, state.state_file)
        state.state_file.unlink(missing_ok=True)
        if fabric is not None and fabric.running():
            fabric.stop()
            return state
        return None
    assert state.supervisor_pid is not None
    pid = state.supervisor_pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_our_supervisor(pid, profile_path):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            state.state_file.unlink(missing_ok=True)
            raise NetworkControlError(
                f"the service supervisor (pid {pid}) ignored SIGTERM for {timeout:.0f} s and was "
                f"killed; see {state.log_file}"
            )
        time.sleep(0.1)
    state.state_file.unlink(missing_ok=True)
    if fabric is not None:
        fabric.stop()
    return state


def _fabric_network(prof: Profile) -> FabricNet | None:
    """The local Fabric network a ``ledger: fabric`` profile runs, if it names one."""
    if prof.fabric is None or prof.fabric.network is None:
        return None
    from ehrshare.network.fabric import FabricNet

    return FabricNet.load(prof.fabric.network.parent)


def _is_our_service(pid: int, cmd: ServiceCommand) -> bool:
    """Whether ``pid`` is still this service's process (its command line names its state
    directory), not a stranger that got the pid."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return "serve" in args and "--state-dir" in args and str(cmd.state) in args


def _stop_orphans(profile_path: Path, state_file: Path, grace: float = 10.0) -> None:
    """Stop the services a dead supervisor's state file names that still run (by pid, after the
    /proc check): they die with it (SIGTERM), but may still be shutting down and holding their
    ports when a new supervisor starts theirs."""
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        recorded = {str(k): v.get("pid") for k, v in dict(data.get("services", {})).items()}
        commands = {c.name: c for c in service_commands(Profile.load(profile_path))}
    except (OSError, ValueError, TypeError, AttributeError):
        return
    left = {
        name: int(pid)
        for name, pid in recorded.items()
        if isinstance(pid, int) and name in commands and _is_our_service(pid, commands[name])
    }

    def gone_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            for name, pid in list(left.items()):
                if not pid_alive(pid) or not _is_our_service(pid, commands[name]):
                    del left[name]
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    if gone_within(grace):
        return
    for name, pid in left.items():
        _log.warning("%s (pid %d) outlived its supervisor; killing it", name, pid)
        os.kill(pid, signal.SIGKILL)
    if not gone_within(grace):
        raise NetworkControlError(
            f"{', '.join(left)} of a dead supervisor survived SIGKILL for {grace:.0f} s "
            f"(pids {', '.join(map(str, left.values()))}); nothing was started"
        )


def restart_service(profile_path: Path, name: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Ask the running supervisor to restart one service (SIGTERM, then start again, with its
    failure count reset: also how to retry a service it gave up on) and wait until it listens.

    Returns the service's new record from the state file. Raises :class:`UnknownService` for a
    name the supervisor does not run, :class:`NetworkControlError` if no supervisor runs or the
    service does not come back within ``timeout`` seconds.
    """
    profile_path = profile_path.resolve()
    state = _services_state(profile_path)
    if not state.running:
        raise NetworkControlError(
            "the services are not running (no live supervisor): start them with "
            "'ehrshare network up'"
        )
    if not state.ready:  # still starting: a request now would be cleared with the old ones
        _wait_ready(profile_path, None, timeout)
        state = _services_state(profile_path)
    if name not in state.services:
        raise UnknownService(
            f"no service {name!r} in this network; known: {', '.join(sorted(state.services))}"
        )
    before = int(state.services[name].get("restarts", 0))
    request = _run_dir(profile_path) / f"{name}{RESTART_REQUEST_SUFFIX}"
    from ehrshare.services.vault import atomic_write

    atomic_write(request, b"", mode=0o644)
    fault_point("netctl.restart.after_request")
    deadline = time.monotonic() + timeout
    while True:
        now = _services_state(profile_path)
        if not now.running:
            raise NetworkControlError(
                f"the service supervisor stopped while restarting {name}; see {now.log_file}"
            )
        record = now.services.get(name, {})
        if int(record.get("restarts", 0)) > before and not request.exists():
            if record.get("state") == "running":
                return dict(record)
            if record.get("state") == "restarting":
                raise NetworkControlError(
                    f"{name} did not come back ({record.get('last_exit')}); the supervisor "
                    f"tries again after its backoff; see {now.log_file} and "
                    f"{now.log_file.parent / (name + '.stderr')}"
                )
            if record.get("state") == "failed":
                raise NetworkControlError(
                    f"{name} did not come back ({record.get('last_exit')}) and the supervisor "
                    f"gave up on it; see {now.log_file} and "
                    f"{now.log_file.parent / (name + '.stderr')}"
                )
        if time.monotonic() > deadline:
            raise NetworkControlError(
                f"{name} was not listening again within {timeout:.0f} s; see {now.log_file}"
            )
        time.sleep(0.1)
