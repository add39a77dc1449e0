"""``ehrshare network status`` for services run as processes: each one asked by its ``Health``
RPC over mutual TLS, beside what the supervisor of ``network up`` says about it
(:mod:`ehrshare.network.control`).

This module only reads: it starts, stops and signals nothing, and reads a service's own TLS
wallet only to open that one connection.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrshare.network.control import _services_state
from ehrshare.network.services import ServiceCommand, service_commands
from ehrshare.network.supervisor import pid_alive
from ehrshare.profile import Profile
from ehrshare.wallet import Wallet

__all__ = ["ServiceHealth", "check_services"]


@dataclass(frozen=True)
class ServiceHealth:
    """One service as ``network status`` reports it: what the supervisor says and whether the
    service answered a ``Health`` call. ``status`` is the one-line truth (``running``,
    ``restarting (attempt 3, last exit: killed by SIGKILL)``, ``failed (…)``, ``starting``,
    ``not answering (…)``, ``down``)."""

    name: str
    address: str
    status: str
    healthy: bool
    answering: bool
    pid: int | None
    supervisor: dict[str, Any] | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "address": self.address,
            "status": self.status,
            "healthy": self.healthy,
            "answering": self.answering,
            "pid": self.pid,
            "supervisor": self.supervisor,
            "detail": self.detail,
        }


def _probe(cmd: ServiceCommand, timeout: float) -> tuple[bool, str]:
    """Call the service's Health RPC as the service's own wallet; (answered, what it said)."""
    from ehrshare.services.kgc import KgcError
    from ehrshare.services.proxy import ProxyError
    from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient
    from ehrshare.services.tls import ClientTls

    svc = cmd.service
    if svc is None or svc.wallet is None or svc.tls_ca is None:
        return False, "cannot check: the profile names no wallet or TLS CA for it"
    try:
        identity, signer = Wallet(svc.wallet, use_env=False).load_tls()
        tls = ClientTls.for_member(identity, signer, [svc.tls_ca.read_bytes()])
    except (OSError, ValueError) as exc:
        return False, f"cannot check: {exc}"
    client: GrpcKgcClient | GrpcProxyClient
    if cmd.args[0] == "kgc":
        client = GrpcKgcClient(cmd.address, index=0, tls=tls, server_name=svc.server_name)
    else:
        client = GrpcProxyClient(cmd.address, tls=tls, server_name=svc.server_name)
    try:
        with client:
            answer = client.health(timeout=timeout)
    except (KgcError, ProxyError) as exc:
        return False, str(exc)
    return True, json.dumps(answer, sort_keys=True)


def _describe(name: str, record: dict[str, Any]) -> str:
    state = str(record.get("state"))
    attempt, last = record.get("attempt", 0), record.get("last_exit")
    if state == "restarting":
        return f"restarting (attempt {attempt}, last exit: {last})"
    if state == "failed":
        return (
            f"failed (gave up after {attempt} quick failures, last exit: {last}; fix it, then "
            f"'ehrshare network restart {name}')"
        )
    if state == "starting" and attempt:
        return f"starting (attempt {attempt}, last exit: {last})"
    return state


def check_services(profile_path: Path, *, timeout: float = 2.0) -> list[ServiceHealth]:
    """Every service the profile runs as a process, checked by calling it (``Health`` over
    mutual TLS, ``timeout`` seconds each, all at once) and by what the supervisor says. A
    service is healthy when it answers and, under a supervisor, is ``running``."""
    profile_path = profile_path.resolve()
    commands = service_commands(Profile.load(profile_path))
    if not commands:
        return []
    state = _services_state(profile_path)
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        probes = list(pool.map(lambda c: _probe(c, timeout), commands))
    out = []
    for cmd, (answering, detail) in zip(commands, probes, strict=True):
        record = state.services.get(cmd.name) if state.running else None
        pid = record.get("pid") if record else None
        if record is None:
            status = "running (not under 'network up')" if answering else "down"
            if not answering and state.stale_supervisor_pid is not None:
                status += f" (its supervisor, pid {state.stale_supervisor_pid}, is gone)"
            healthy = answering
        elif record.get("state") == "running":
            if isinstance(pid, int) and not pid_alive(pid):
                status = f"down (pid {pid} exited; the supervisor restarts it)"
            else:
                status = "running" if answering else f"not answering ({detail})"
            healthy = answering and status == "running"
        else:
            status, healthy = _describe(cmd.name, record), False
        out.append(
            ServiceHealth(cmd.name, cmd.address, status, healthy, answering, pid, record, detail)
        )
    return out
