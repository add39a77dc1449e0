"""`ehrshare network up|down` for a local consortium: its service processes in the background.

``up`` starts one detached supervisor (``ehrshare consortium serve --state-file …``) that runs
every KGC node and proxy of the profile as child processes and writes ``run/network.json`` (its
pid and the services' pids and addresses) once all of them listen; ``down`` stops that
supervisor by the pid in the file, which stops its children by pid. A pid is signalled only
after checking, in ``/proc/<pid>/cmdline``, that it is still this profile's supervisor (pids
are reused). With a ``ledger: fabric`` profile whose ``ledger.network`` is a local network
(:mod:`ehrshare.fabricnet`), ``up`` first starts its orderers, peers and chaincode server and
``down`` stops them last. This module starts and stops processes; it must not touch the ledger,
the store or any key.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrshare.errors import Unavailable
from ehrshare.profile import Profile

if TYPE_CHECKING:
    from ehrshare.fabricnet import FabricNet

__all__ = ["NetworkControlError", "NetworkState", "network_down", "network_state", "network_up"]

_log = logging.getLogger(__name__)
STATE_FILE = "network.json"
LOG_FILE = "network.log"


class NetworkControlError(Unavailable, RuntimeError):
    """The services could not be started or stopped; the message says why and what to do."""


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
    return _services_state(profile_path, _fabric_state(profile_path))


def _services_state(profile_path: Path, fabric: dict[str, Any] | None = None) -> NetworkState:
    run = _run_dir(profile_path)
    state_file, log_file = run / STATE_FILE, run / LOG_FILE
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        pid = int(data["supervisor_pid"])
        services = dict(data.get("services", {}))
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


def _log_tail(log_file: Path, lines: int = 8) -> str:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def network_up(profile_path: Path, *, timeout: float = 90.0) -> NetworkState:
    """Start the profile's services in the background and wait until every one listens.

    Returns the state (``running`` and the services). If they are already up, returns that
    state without starting anything. Raises :class:`NetworkControlError` if the profile runs
    everything in-process, or the services do not come up within ``timeout`` seconds (then
    nothing is left running).
    """
    profile_path = profile_path.resolve()
    prof = Profile.load(profile_path)
    remote = [p for p in prof.proxies if not p.service.embedded] + [
        n for n in prof.kgc_nodes if not n.service.embedded
    ]
    fabric = _fabric_network(prof)
    if not remote and fabric is None:
        raise NetworkControlError(
            f"profile {profile_path} runs its KGC nodes and proxies in-process: there is nothing "
            "to start (create the consortium with `ehrshare consortium init --services processes`)"
        )
    started_fabric = False
    if fabric is not None and not fabric.running():
        try:
            fabric.start()
        except Exception as exc:
            fabric.stop()
            raise NetworkControlError(f"the Fabric network did not start: {exc}") from None
        started_fabric = True
    try:
        if remote:
            _start_services(profile_path, timeout)
    except BaseException:
        if started_fabric:  # nothing this call started is left running
            assert fabric is not None
            fabric.stop()
        raise
    return network_state(profile_path)


def _start_services(profile_path: Path, timeout: float) -> None:
    """Start the service supervisor unless it runs; wait until every service listens."""
    current = _services_state(profile_path)
    if current.running:
        return
    run = _run_dir(profile_path)
    run.mkdir(parents=True, exist_ok=True)
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
    ]
    with current.log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives this command and its terminal
        )
    _log.info("started the service supervisor (pid %d) for %s", proc.pid, profile_path)
    deadline = time.monotonic() + timeout
    while True:
        state = _services_state(profile_path)
        if state.running and state.supervisor_pid == proc.pid:
            return
        if proc.poll() is not None:
            raise NetworkControlError(
                f"the services did not start (supervisor exited with code {proc.returncode}): "
                f"{_log_tail(current.log_file)}; full log in {current.log_file}"
            )
        if time.monotonic() > deadline:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
            raise NetworkControlError(
                f"the services did not all listen within {timeout:.0f} s and were stopped: "
                f"{_log_tail(current.log_file)}; full log in {current.log_file}"
            )
        time.sleep(0.1)


def network_down(profile_path: Path, *, timeout: float = 30.0) -> NetworkState | None:
    """Stop the profile's background services (SIGTERM to the supervisor, by pid).

    Returns the state that was running, or None if nothing was. Raises
    :class:`NetworkControlError` if the supervisor does not exit within ``timeout`` seconds
    (it is then killed; its children die with it).
    """
    profile_path = profile_path.resolve()
    state = network_state(profile_path)
    fabric = _fabric_network(Profile.load(profile_path))
    if not state.running:
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
    from ehrshare.fabricnet import FabricNet

    return FabricNet.load(prof.fabric.network.parent)
