"""The consortium's KGC nodes and proxies as processes, from its profile.

A profile written by ``Consortium.init(..., services="processes")`` names, for each KGC node and
the proxy, its loopback address, state directory, long-term key file (outside the state
directory), ledger wallet and TLS server certificate. :func:`service_commands` turns that into
the ``ehrshare kgc serve …`` / ``ehrshare proxy serve …`` command lines (what an operator runs by
hand, see ``docs/operations.md``); :class:`ServiceProcesses` runs them under the one
:class:`~ehrshare.network.supervisor.Supervisor`: it waits until each listens (its port file),
restarts one that dies or is asked to restart, and stops them by pid.

Each process logs to its state directory (``kgc.log`` / ``proxy.log``); its stderr goes to
``<run dir>/<name>.stderr``. This module must not read any key file (the processes do) and must
never signal a process it did not start.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ehrshare.network.supervisor import Program, RestartPolicy, Supervisor, SupervisorError
from ehrshare.profile import Profile, ProfileError, ServiceConfig

__all__ = [
    "CLIENT_CA_DIR",
    "ServiceCommand",
    "ServiceProcessError",
    "ServiceProcesses",
    "service_commands",
    "write_client_cas",
]

DEFAULT_EXECUTABLE: Final = (sys.executable, "-m", "ehrshare")
CLIENT_CA_DIR: Final = "client-cas"
"""The directory (in the consortium directory) of the services' client CAs: ``client_cas:``."""


class ServiceProcessError(SupervisorError):
    """A service process did not start (the message carries the tail of its stderr)."""


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

    @property
    def args_sha256(self) -> str:
        """A digest of its arguments: what the state file shows, so a caller can tell that the
        process runs the profile's current command line."""
        return hashlib.sha256("\0".join(self.args).encode()).hexdigest()

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
        if profile.fabric is not None and profile.fabric.endorsers is not None:
            # Read from the profile only at start: on the command line, a join that changes it
            # (a majority of one more organisation) restarts the services, which the client
            # CA directory otherwise spares (--client-ca-dir).
            args += ["--ledger-endorsers", str(profile.fabric.endorsers)]
    else:
        args += ["--ledger", str(profile.ledger_path)]
    if profile.consortium_id:
        # The process refuses a ledger of another consortium (exit 3) before serving.
        args += ["--consortium-id", profile.consortium_id]
    args += ["--channel", profile.channel, "--chaincode", profile.chaincode]
    args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    if profile.client_ca_dir is not None:
        # The same command line whatever CAs the directory holds: a hospital's join writes its
        # CA there and the running services trust it without a restart.
        args += ["--client-ca-dir", str(profile.client_ca_dir)]
    else:  # a profile written before 'client_cas': one option per CA
        for ca in profile.ca_files:
            args += ["--client-ca", str(ca)]
    return args, state, address


def write_client_cas(directory: Path, ca_files: Sequence[Path]) -> list[Path]:
    """Copy each CA certificate of ``ca_files`` to ``directory/<MSP id>.pem`` (the MSP id is
    the certificate's organisation name), each by an atomic write and only when it differs:
    the running services read the directory again when it changes (``--client-ca-dir``), and
    a kill leaves each file whole, old or new. Returns the files written."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from ehrshare.services.vault import atomic_write

    written = []
    for ca in ca_files:
        pem = ca.read_bytes()
        names = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(
            NameOID.ORGANIZATION_NAME
        )
        if not names:
            raise ProfileError(f"{ca} has no organisation name (the MSP id)")
        target = directory / f"{names[0].value!s}.pem"
        if target.is_file() and target.read_bytes() == pem:
            continue
        atomic_write(target, pem, mode=0o644)
        written.append(target)
    return written


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


class ServiceProcesses(Supervisor):
    """The consortium's service processes, started from its profile and stopped by pid.

    A :class:`~ehrshare.network.supervisor.Supervisor` of the profile's serve commands (see
    there for ``die_with_parent``, :meth:`supervise` and restart requests). ``run_dir`` holds
    port files and each process's stderr.
    """

    error = ServiceProcessError

    def __init__(
        self,
        profile: Profile,
        run_dir: Path,
        *,
        executable: Sequence[str] = DEFAULT_EXECUTABLE,
        start_timeout: float = 60.0,
        die_with_parent: bool = False,
        policy: RestartPolicy | None = None,
        netns: Mapping[str, str | None] | None = None,
    ) -> None:
        self.commands = {c.name: c for c in service_commands(profile)}
        if not self.commands:
            raise ProfileError("the profile names no service to run as a process")
        self.executable = tuple(executable)
        self.profile_path = profile.path
        # ``netns``: per host address, the network namespace a service bound to it runs in.
        self.spaces = dict(netns or {})
        self.run_dir = run_dir
        super().__init__(
            self._programs(),
            run_dir,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
            policy=policy,
            reload=self._reload if profile.path is not None else None,
        )

    def _programs(self) -> dict[str, Program]:
        return {
            name: _program(cmd, self.run_dir, self.executable, self._netns(cmd))
            for name, cmd in self.commands.items()
        }

    def _netns(self, cmd: ServiceCommand) -> str | None:
        return self.spaces.get(_host(cmd.address))

    def _reload(self) -> dict[str, Program]:
        """The profile read again (``<run dir>/reload.request``, written by ``consortium
        add-hospital``): its services as programs; the supervisor starts new ones and restarts
        changed ones (with ``client_cas`` a join changes no running service's command line;
        with a profile written before it, a new CA changed every one)."""
        from ehrshare.network.consortium_hosts import hosts_netns

        assert self.profile_path is not None
        commands = {c.name: c for c in service_commands(Profile.load(self.profile_path))}
        if self.spaces:  # a hospital that joined may have a host of its own now
            self.spaces = dict(hosts_netns(self.profile_path.parent) or {})
        if not commands:
            raise ProfileError("the profile names no service to run as a process")
        self.commands = commands
        return self._programs()


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def _program(
    cmd: ServiceCommand, run_dir: Path, executable: Sequence[str], netns: str | None = None
) -> Program:
    # The service writes its port file once it listens: a stranger on the port is not mistaken
    # for it.
    port_file = run_dir / f"{cmd.name}.port"
    return Program(
        argv=(*cmd.argv(executable), "--port-file", str(port_file)),
        log=run_dir / f"{cmd.name}.stderr",
        ready=port_file.exists,
        address=cmd.address,
        before_start=lambda: port_file.unlink(missing_ok=True),
        info={"address": cmd.address, "args_sha256": cmd.args_sha256},
        netns=netns,
    )
