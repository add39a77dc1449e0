"""Running a Fabric network (:class:`FabricNet`): its chaincode server, orderers and one peer
per hospital as processes of the one supervisor (:mod:`ehrshare.network.supervisor`).

:meth:`FabricNet.start` runs them (logs in ``fabric/logs``), waits for each node's ``/healthz``
and the line it logs once it serves; the first start also deploys the channel and the chaincode
(:mod:`.channel`). A later start reuses the ledgers: no re-join, no re-deploy.
:meth:`FabricNet.stop` stops by pid, after checking in ``/proc`` that the pid is still the
process started here (same start time); a failed start stops what it started and names the
first panic or fatal line of the node's log. :meth:`FabricNet.repair` starts again only the
processes that are gone.

Peers and orderers require mutual TLS: a client must present a TLS certificate (clientAuth)
issued by one of the hospital CAs or the orderer organisation's CA, or the handshake fails.
Peers and orderers dial each other (gossip, block delivery, Raft) with their own TLS
certificates, which carry clientAuth; SDK clients present their wallet's TLS certificate, and
Deliver requests carry its sha256 (Fabric binds them to the TLS session). Fabric 2.3 has no
Gateway service (clients use ``ehrshare.ledger.peer``). Each organisation's nodes run on its
host (``FabricNetSpec.hosts``: an address and a network namespace, see
:mod:`ehrshare.network.netns`; the orderers and the chaincode server on the orderer
organisation's) or all on 127.0.0.1. What this module must not do: signal a process it did not
start, bind anything but its organisation's host address, or log key material.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.identity import Signer
from ehrshare.ledger.fabric.discovery import (
    DiscoveryFailed,
    DiscoveryMissing,
    missing_orgs,
    peer_membership,
)
from ehrshare.network.fabric.gossip import missing_members
from ehrshare.network.fabric.layout import _Proc
from ehrshare.network.fabric.material import FabricMaterial
from ehrshare.network.fabric.spec import (
    GATEWAY_SINCE,
    ORDERER_MSP,
    FabricNetError,
    Progress,
)
from ehrshare.network.supervisor import (
    Child,
    log_tail,
    start_child,
    stop_process,
    wait_ready,
)

__all__ = ["FabricNet"]

_log = logging.getLogger(__name__)


class FabricNet(FabricMaterial):
    """A Fabric network under ``<consortium>/fabric``: create once, start and stop many times
    (see the modules of :mod:`ehrshare.network.fabric` for each concern)."""

    def _child(self, name: str, proc: _Proc) -> Child:
        """The supervisor's view of a recorded process (its Popen if this process started it)."""
        popen = self._children.get(proc.pid)
        return Child(name, proc.pid, proc.start_ticks, Path(proc.log), proc.offset, popen)

    def _ours(self, proc: _Proc) -> bool:
        # The recorded start time, not a Popen: another process may have started it.
        return Child("", proc.pid, proc.start_ticks, Path(proc.log)).alive()

    def running(self) -> bool:
        """True when every process of the network runs (and is the one this module started)."""
        procs = self._state.processes
        expected = 1 + self.spec.orderers + len(self.spec.msp_ids)
        return len(procs) == expected and all(self._ours(p) for p in procs.values())

    def live(self) -> list[str]:
        """Names of the processes that still run (checked in ``/proc`` with their start time)."""
        return [name for name, p in self._state.processes.items() if self._ours(p)]

    def pids(self) -> dict[str, int]:
        """The recorded pid of each process, by name (``ccaas``, ``orderer1``, ``peer-<MSP>``)."""
        return {name: p.pid for name, p in self._state.processes.items()}

    def health(self, *, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
        """Each process of the network as it is now, by name: ``pid`` (recorded, or None),
        ``status`` and ``healthy``. A process is checked in ``/proc`` (its pid, with the start
        time recorded, so a reused pid does not count) and by connecting: a peer's or orderer's
        operations ``/healthz`` and its gRPC port, the chaincode server's port. ``status`` is
        ``running``, ``not answering (…)``, ``down (pid N is gone)`` or ``down`` (not started)."""
        expected = ["ccaas"]
        expected += [f"orderer{i + 1}" for i in range(self.spec.orderers)]
        expected += [f"peer-{msp}" for msp in self.spec.msp_ids]
        ports = self._state.ports
        out: dict[str, dict[str, Any]] = {}
        for name in expected:
            proc = self._state.processes.get(name)
            if proc is None:
                out[name] = {"pid": None, "status": "down", "healthy": False}
                continue
            if not self._ours(proc):
                status = f"down (pid {proc.pid} is gone)"
            else:
                if name == "ccaas":
                    ops, listen = None, int(ports["ccaas"])
                    host = self.host(ORDERER_MSP)
                elif name.startswith("orderer"):
                    entry = ports["orderers"][int(name.removeprefix("orderer")) - 1]
                    ops, listen = int(entry["operations"]), int(entry["listen"])
                    host = self.host(ORDERER_MSP)
                else:
                    entry = ports["peers"][name.removeprefix("peer-")]
                    ops, listen = int(entry["operations"]), int(entry["listen"])
                    host = self.host(name.removeprefix("peer-"))
                if ops is not None and not _healthy(host, ops, timeout=timeout):
                    status = f"not answering (/healthz on {host}:{ops} failed)"
                elif not _connects(host, listen, timeout):
                    status = f"not answering (nothing accepts on {host}:{listen})"
                else:
                    status = "running"
            out[name] = {"pid": proc.pid, "status": status, "healthy": status == "running"}
        return out

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], label: str) -> _Proc:
        # A session of its own: the network outlives the command that started it (`network
        # up`), and a Ctrl-C in that terminal does not reach it; stop() ends it by pid.
        # ``label``: the organisation whose host (network namespace) it runs on.
        log = self.dir / "logs" / f"{name}.log"
        child = start_child(
            name, argv, log, env=env, cwd=self.dir, new_session=True, netns=self.netns(label)
        )
        assert child.popen is not None
        if child.ticks is None:
            child.popen.wait()
            raise FabricNetError(
                f"{name} exited at once (code {child.popen.returncode}): {child.tail()}"
            )
        self._children[child.pid] = child.popen
        proc = _Proc(child.pid, child.ticks, str(log), child.offset)
        self._state.processes[name] = proc
        self._save()
        return proc

    def _stop_one(self, name: str, proc: _Proc, grace: float = 15.0) -> None:
        if not self._ours(proc):
            _log.info("%s (pid %d) is not running", name, proc.pid)
            return
        stop_process(self._child(name, proc), grace=grace)
        self._children.pop(proc.pid, None)

    def _reap(self, pid: int, *, block: bool = False) -> None:
        child = self._children.get(pid)
        if child is None:
            return
        try:
            child.wait(timeout=10 if block else 0)
        except subprocess.TimeoutExpired:
            return
        self._children.pop(pid, None)

    def stop(self) -> None:
        """Stop every process of the network by pid: peers, then orderers, then the chaincode
        server. Idempotent; never signals a pid that is no longer the process started here."""
        procs = self._state.processes
        order = sorted(procs, key=lambda n: (not n.startswith("peer"), n == "ccaas", n))
        for name in order:
            self._stop_one(name, procs[name])
        procs.clear()
        if self.dir.exists():
            self._save()

    def start(self, progress: Progress | None = None, *, timeout: float = 120.0) -> None:
        """Run the chaincode server, the orderers and the peers; the first start also joins
        the orderers and the peers to the channel and deploys the chaincode.

        Returns when the network accepts transactions. Refuses to start a network that is
        already (partly) running, and a first start whose genesis block is missing or altered
        (before any process runs). On failure every process started here is stopped and the
        error names the step and the log concerned: its first panic or fatal line, else its
        last lines.
        """
        say = progress or (lambda _msg: None)
        if any(self._ours(p) for p in self._state.processes.values()):
            if self.running():
                raise FabricNetError(f"the network in {self.dir} is already running")
            raise FabricNetError(
                f"the network in {self.dir} is partly running: stop it before starting it"
            )
        self._state.processes.clear()
        if not self.deployed:
            self._checked_genesis()  # before any process runs: a bad block starts nothing
        deadline = time.monotonic() + timeout
        try:
            say("chaincode server")
            self._start_ccaas(deadline)
            say(f"{self.spec.orderers} orderer(s)")
            self._start_orderers(deadline)
            say(f"{len(self.spec.msp_ids)} peer(s)")
            self._start_peers(deadline)
            if self.deployed:
                say("waiting for a consensus leader")
                self._wait_leader(self.spec.channel, deadline)
            else:
                self._deploy(say, deadline)
            self._wait_gossip(say, deadline)
        except BaseException:
            self.stop()
            raise

    def repair(self, progress: Progress | None = None, *, timeout: float = 120.0) -> list[str]:
        """Start again the processes of a deployed, partly running network that are gone (a
        peer or orderer that crashed or was killed), leaving the live ones alone; returns their
        names. Waits as :meth:`start` does. On failure what this call started is stopped again
        and the error names the process and the tail of its log."""
        if not self.deployed:
            raise FabricNetError(
                f"the network in {self.dir} was never fully deployed: stop it, then start it"
            )
        say = progress or (lambda _msg: None)
        expected = ["ccaas", *(f"orderer{i + 1}" for i in range(self.spec.orderers))]
        expected += [f"peer-{msp}" for msp in self.spec.msp_ids]
        procs = self._state.processes
        gone = [n for n in expected if n not in procs or not self._ours(procs[n])]
        for name in gone:
            old = procs.pop(name, None)
            if old is not None:
                self._reap(old.pid)
        if not gone:
            return []
        _log.warning("restarting %s of the Fabric network in %s", ", ".join(gone), self.dir)
        deadline = time.monotonic() + timeout
        try:
            if "ccaas" in gone:
                say("chaincode server")
                self._start_ccaas(deadline)
            say(", ".join(gone))
            self._start_orderers(deadline, only=gone)
            self._start_peers(deadline, only=gone)
            if any(n.startswith("orderer") for n in gone):
                self._wait_leader(self.spec.channel, deadline)
            if any(n.startswith("peer-") for n in gone):
                self._wait_gossip(say, deadline)
        except BaseException:
            for name in gone:
                if name in procs:
                    self._stop_one(name, procs.pop(name))
            self._save()
            raise
        return gone

    def _start_ccaas(self, deadline: float) -> None:
        exe = Path(sys.executable).parent / "ehrshare"
        if not exe.is_file():
            raise FabricNetError(f"the ehrshare command is not at {exe} (next to {sys.executable})")
        cc = self.dir / "chaincode"
        port = self._state.ports["ccaas"]
        # The server writes its port once it listens: a stranger on the port is not mistaken
        # for it.
        port_file = cc / "ccaas.port"
        port_file.unlink(missing_ok=True)
        argv = [
            str(exe),
            "chaincode",
            "serve",
            "--package-id",
            self.package_id,
            "--listen",
            f"{self.host(ORDERER_MSP)}:{port}",
            "--tls-cert",
            str(cc / "server.crt"),
            "--tls-key",
            str(cc / "server.key"),
            "--client-ca",
            str(cc / "tls-ca" / "ca-cert.pem"),
            "--port-file",
            str(port_file),
        ]
        proc = self._spawn("ccaas", argv, {}, ORDERER_MSP)

        def listening() -> bool:
            try:
                return bool(int(port_file.read_text(encoding="ascii")) == port)
            except (OSError, ValueError):
                return False

        self._wait(listening, "ccaas", proc, deadline)

    def _orderer_env(self, i: int) -> dict[str, str]:
        node = self._orderer_dir(i)
        ports = self._state.ports["orderers"][i]
        ca = str(self.org_dir(ORDERER_MSP) / "msp" / "tlscacerts" / "ca.pem")
        data = self.dir / "orderers" / f"orderer{i + 1}"
        host = self.host(ORDERER_MSP)
        return {
            "FABRIC_CFG_PATH": str(self.dir / "config" / "orderer"),
            "FABRIC_LOGGING_SPEC": "INFO",
            "ORDERER_GENERAL_LISTENADDRESS": host,
            "ORDERER_GENERAL_LISTENPORT": str(ports["listen"]),
            "ORDERER_GENERAL_LOCALMSPID": ORDERER_MSP,
            "ORDERER_GENERAL_LOCALMSPDIR": str(node / "msp"),
            "ORDERER_GENERAL_TLS_ENABLED": "true",
            "ORDERER_GENERAL_TLS_PRIVATEKEY": str(node / "tls" / "server.key"),
            "ORDERER_GENERAL_TLS_CERTIFICATE": str(node / "tls" / "server.crt"),
            "ORDERER_GENERAL_TLS_ROOTCAS": f"[{ca}]",
            # Mutual TLS: only clients with a certificate from a consortium CA get a connection.
            "ORDERER_GENERAL_TLS_CLIENTAUTHREQUIRED": "true",
            "ORDERER_GENERAL_TLS_CLIENTROOTCAS": f"[{','.join(map(str, self.client_root_cas()))}]",
            "ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE": str(node / "tls" / "server.crt"),
            "ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY": str(node / "tls" / "server.key"),
            "ORDERER_GENERAL_CLUSTER_ROOTCAS": f"[{ca}]",
            # BFT: an orderer that missed blocks catches up from one other orderer (the cluster
            # block puller binds its Deliver requests to its TLS certificate). The default
            # "consensus" policy's deliverer does not, so orderers requiring mutual TLS refuse
            # it ("client didn't include its TLS cert hash") and a restarted orderer never
            # catches up (test_fabric_bft.py). Raft ignores the setting.
            "ORDERER_GENERAL_CLUSTER_REPLICATIONPOLICY": "simple",
            # No system channel: the orderer starts with no channel and is joined to the
            # application channel through its admin endpoint (channel participation API).
            "ORDERER_GENERAL_BOOTSTRAPMETHOD": "none",
            "ORDERER_CHANNELPARTICIPATION_ENABLED": "true",
            "ORDERER_ADMIN_LISTENADDRESS": f"{host}:{ports['admin']}",
            "ORDERER_ADMIN_TLS_ENABLED": "true",
            "ORDERER_ADMIN_TLS_CERTIFICATE": str(node / "tls" / "server.crt"),
            "ORDERER_ADMIN_TLS_PRIVATEKEY": str(node / "tls" / "server.key"),
            # Only the orderer organisation's admin (a TLS client certificate from its CA)
            # may join or remove channels; hospitals' certificates are refused.
            "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED": "true",
            "ORDERER_ADMIN_TLS_CLIENTROOTCAS": f"[{ca}]",
            "ORDERER_FILELEDGER_LOCATION": str(data / "ledger"),
            "ORDERER_CONSENSUS_WALDIR": str(data / "etcdraft" / "wal"),
            "ORDERER_CONSENSUS_SNAPDIR": str(data / "etcdraft" / "snap"),
            "ORDERER_OPERATIONS_LISTENADDRESS": f"{host}:{ports['operations']}",
            "ORDERER_METRICS_PROVIDER": "disabled",
        }

    def _start_orderers(self, deadline: float, only: Collection[str] | None = None) -> None:
        started = []
        for i in range(self.spec.orderers):
            name = f"orderer{i + 1}"
            if only is not None and name not in only:
                continue
            argv = [str(self.bin_dir / "orderer")]
            proc = self._spawn(name, argv, self._orderer_env(i), ORDERER_MSP)
            started.append((name, proc, self._state.ports["orderers"][i]["operations"]))
        for name, proc, ops in started:
            ready = "Beginning to serve requests"
            self._wait_node(name, proc, self.host(ORDERER_MSP), ops, ready, deadline)

    def _peer_env(self, msp: str) -> dict[str, str]:
        ports = self._state.ports["peers"][msp]
        org = self.org_dir(msp)
        address = self.peer_address(msp)
        chaincode = f"{self.host(msp)}:{ports['chaincode']}"
        return {
            "FABRIC_CFG_PATH": str(self.dir / "config" / "peer"),
            "FABRIC_LOGGING_SPEC": "INFO",
            "CORE_PEER_ID": self.server_name(msp),
            "CORE_PEER_ADDRESS": address,
            "CORE_PEER_LISTENADDRESS": address,
            "CORE_PEER_CHAINCODEADDRESS": chaincode,
            "CORE_PEER_CHAINCODELISTENADDRESS": chaincode,
            "CORE_PEER_GOSSIP_BOOTSTRAP": address,
            "CORE_PEER_GOSSIP_EXTERNALENDPOINT": address,
            # One peer per organisation: it pulls blocks from the orderers itself at once,
            # instead of electing itself leader after a grace period of several seconds.
            "CORE_PEER_GOSSIP_USELEADERELECTION": "false",
            "CORE_PEER_GOSSIP_ORGLEADER": "true",
            "CORE_PEER_LOCALMSPID": msp,
            "CORE_PEER_MSPCONFIGPATH": str(org / "peer" / "msp"),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_CERT_FILE": str(org / "peer" / "tls" / "server.crt"),
            "CORE_PEER_TLS_KEY_FILE": str(org / "peer" / "tls" / "server.key"),
            "CORE_PEER_TLS_ROOTCERT_FILE": str(org / "peer" / "tls" / "ca.crt"),
            # Mutual TLS: members, services, admins and the other peers (gossip) present a
            # certificate from a consortium CA. The peer dials others with its own TLS
            # certificate (it has clientAuth), named here rather than left to the default.
            "CORE_PEER_TLS_CLIENTAUTHREQUIRED": "true",
            "CORE_PEER_TLS_CLIENTROOTCAS_FILES": " ".join(map(str, self.client_root_cas())),
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(org / "peer" / "tls" / "server.crt"),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(org / "peer" / "tls" / "server.key"),
            "CORE_PEER_FILESYSTEMPATH": str(self.dir / "peers" / msp),
            "CORE_OPERATIONS_LISTENADDRESS": f"{self.host(msp)}:{ports['operations']}",
            "CORE_METRICS_PROVIDER": "disabled",
            "CORE_VM_ENDPOINT": "",
            "CORE_LEDGER_STATE_STATEDATABASE": "goleveldb",
        }

    def _start_peers(self, deadline: float, only: Collection[str] | None = None) -> None:
        started = []
        for msp in self.spec.msp_ids:
            name = f"peer-{msp}"
            if only is not None and name not in only:
                continue
            argv = [str(self.bin_dir / "peer"), "node", "start"]
            proc = self._spawn(name, argv, self._peer_env(msp), msp)
            started.append((name, proc, msp, self._state.ports["peers"][msp]["operations"]))
        for name, proc, msp, ops in started:
            self._wait_node(name, proc, self.host(msp), ops, "Started peer with ID=", deadline)

    def _wait_node(
        self, name: str, proc: _Proc, host: str, ops: int, marker: str, deadline: float
    ) -> None:
        # /healthz answers before the node binds its gRPC port (a peer whose port is taken
        # answers, then exits), so also wait for the line the node logs once it serves.
        serving = re.compile(re.escape(marker))
        self._wait(lambda: _logged(proc, serving) and _healthy(host, ops), name, proc, deadline)

    def _check_alive(self) -> None:
        for name, proc in self._state.processes.items():
            if not self._ours(proc):
                self._reap(proc.pid, block=True)
                raise FabricNetError(f"{name} exited: {_tail(proc)}")

    def _wait(
        self,
        ready: Callable[[], bool],
        name: str,
        proc: _Proc,
        deadline: float,
        late: str = "is not ready in time",
    ) -> None:
        """Poll ``ready`` until it holds; FabricNetError (``name`` ``late``) at the deadline
        or once ``proc`` has exited, with the tail of its log."""
        outcome = wait_ready(ready, lambda: self._ours(proc), deadline)
        if outcome == "died":
            self._reap(proc.pid, block=True)
            raise FabricNetError(f"{name} exited while starting: {_tail(proc)}")
        if outcome == "late":
            raise FabricNetError(f"{name} {late}: {_tail(proc)}")

    def _wait_leader(self, channel: str, deadline: float) -> None:
        # Every orderer logs the leader it learns, per channel; until then broadcasts fail.
        # SmartBFT logs the role it takes in a view (leader or follower) and that view's leader.
        if self.spec.bft:
            pattern = re.compile(
                r"Changing to (?:leader|follower) role, current view: \d+, current leader: "
                rf"[1-9]\d* channel={re.escape(channel)}\b"
            )
            late = "took no SmartBFT role (leader or follower) in time"
        else:
            pattern = re.compile(
                rf"Raft leader changed: \d+ -> [1-9]\d* channel={re.escape(channel)} "
            )
            late = "elected no Raft leader in time"
        for i in range(self.spec.orderers):
            name = f"orderer{i + 1}"
            if name not in self._state.processes:
                continue
            proc = self._state.processes[name]
            leader = functools.partial(_logged, proc, pattern)
            self._wait(leader, name, proc, deadline, late=late)

    def _wait_gossip(self, say: Progress, deadline: float) -> None:
        """Where peers run the Gateway service (Fabric >= 2.4), wait until every peer's channel
        membership view holds every other organisation's peer (learnt through the anchor
        peers: seconds after a start), so the first Gateway submit can plan its endorsements.
        Each peer is asked itself, through its discovery service as its hospital's admin
        (:mod:`ehrshare.ledger.fabric.discovery`); only a peer without one is judged by its
        log's membership lines. Fabric 2.3 clients endorse on the peers they name and need no
        gossip view."""
        if self.version[:2] < GATEWAY_SINCE or len(self.spec.msp_ids) < 2:
            return
        msps = list(self.spec.msp_ids)
        say(f"waiting for gossip: each of {len(msps)} peers to see the other hospitals'")
        started = time.monotonic()
        missing: dict[str, set[str]] = {}
        errors: dict[str, str] = {}
        by_log: set[str] = set()  # peers without a discovery service
        reported = -1
        while True:
            self._check_alive()
            missing, errors = self._gossip_missing(msps, by_log, deadline)
            if not missing:
                how = "their logs" if by_log else "discovery"
                _log.info(
                    "gossip membership complete after %.1f s (%s)", time.monotonic() - started, how
                )
                return
            if len(missing) != reported:
                reported = len(missing)
                say(f"gossip: {len(msps) - len(missing)} of {len(msps)} peers see all")
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        said = "; ".join(
            f"peer-{m} does not see {', '.join(sorted(a))}"
            + (f" (discovery: {errors[m]})" if m in errors else "")
            for m, a in missing.items()
        )
        raise FabricNetError(
            f"gossip did not converge in {time.monotonic() - started:.0f} s ({said}): the "
            "Gateway cannot plan endorsements across hospitals until it does; check the anchor "
            "peers and the peers' logs under fabric/logs"
        )

    def _gossip_missing(
        self, msps: list[str], by_log: set[str], deadline: float
    ) -> tuple[dict[str, set[str]], dict[str, str]]:
        """Whom each running peer does not see (by MSP id; a peer of ``by_log``, or one found
        to have no discovery service and added to it, by its log's lines, by address), and the
        discovery error of each peer that did not answer."""
        views: dict[str, dict[str, set[str]]] = {}
        errors: dict[str, str] = {}
        logs: dict[str, str] = {}
        for msp in msps:
            proc = self._state.processes.get(f"peer-{msp}")
            if proc is None:
                continue
            if msp not in by_log:
                try:
                    views[msp] = self._discover(msp, deadline)
                    continue
                except DiscoveryMissing as exc:
                    _log.info("peer-%s has no discovery service (%s): reading its log", msp, exc)
                    by_log.add(msp)
                except DiscoveryFailed as exc:
                    views[msp], errors[msp] = {}, str(exc)  # starting, or not yet joined
                    continue
            logs[msp] = _read_from(proc)
        missing = missing_orgs(views, msps)
        if logs:
            addresses = {m: self.peer_address(m) for m in msps}
            missing.update(missing_members(logs, addresses))
        return missing, errors

    def _discover(self, msp: str, deadline: float) -> dict[str, set[str]]:
        """``msp``'s peer's channel view through its discovery service, as its admin."""
        admin = self.admin_msp(msp)
        key = serialization.load_pem_private_key(
            (admin / "keystore" / "key.pem").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        tls_cert, tls_key = self.admin_tls(msp)
        return peer_membership(
            self.peer_address(msp),
            tls_ca_pem=self.tls_ca(msp).read_bytes(),
            server_name=self.server_name(msp),
            channel=self.spec.channel,
            msp_id=msp,
            certificate_pem=(admin / "signcerts" / "cert.pem").read_bytes(),
            sign=Signer(key).sign,
            client_tls=(tls_cert.read_bytes(), tls_key.read_bytes()),
            timeout=max(0.5, min(5.0, deadline - time.monotonic())),
        )


def _read_from(proc: _Proc) -> str:
    """A node's log from this run's start ('' when it cannot be read yet)."""
    try:
        with open(proc.log, "rb") as log:
            log.seek(proc.offset)
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _logged(proc: _Proc, pattern: re.Pattern[str]) -> bool:
    try:
        with open(proc.log, "rb") as log:
            log.seek(proc.offset)
            return pattern.search(log.read().decode("utf-8", errors="replace")) is not None
    except OSError:
        return False


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _healthy(host: str, port: int, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(  # our node's operations endpoint
            f"http://{host}:{port}/healthz", timeout=timeout
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(proc: _Proc) -> str:
    """:func:`~ehrshare.network.supervisor.log_tail` of a node's log from this run's start."""
    return log_tail(Path(proc.log), proc.offset)
