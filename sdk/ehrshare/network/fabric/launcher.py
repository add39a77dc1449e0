"""A real multi-organisation Hyperledger Fabric network (2.3+) for a consortium, on 127.0.0.1.

:meth:`FabricNet.create` builds, under ``<consortium>/fabric``, everything the Fabric binaries
need — from the consortium's own hospital CAs (``<consortium>/ca/<MSP>``), not cryptogen:

- per hospital an MSP directory (``cacerts``, ``tlscacerts``, ``config.yaml`` with NodeOUs), a
  peer identity (NodeOU ``peer``) with a TLS certificate for 127.0.0.1/localhost/its server
  name, and an org admin identity (NodeOU ``admin``) that runs the lifecycle, with a TLS
  client certificate of its own for the ``peer`` CLI;
- an orderer organisation ``OrdererMSP`` with its own :class:`~ehrshare.identity.LocalCA`,
  1 or 3 Raft orderers (NodeOU ``orderer``) and their TLS certificates, and the TLS client
  certificate of the orderers' admin, the only one their admin endpoints accept;
- ``configtx.yaml`` for N organisations (each hospital's peer its anchor peer, the orderer
  organisation's ``OrdererEndpoints``, capabilities for the binaries' major version) and the
  application channel's genesis block (``configtxgen -outputBlock``: no system channel, no
  consortium), the peers' ``core.yaml`` (from Fabric's ``sampleconfig``, external builder
  added) and the orderers' ``orderer.yaml``;
- the chaincode as a ccaas package whose ``connection.json`` points at one
  ``ehrshare chaincode serve`` process over mutual TLS (its own small TLS CA), and the ccaas
  external builder;
- free loopback ports for every listener (each orderer's admin endpoint its own), recorded
  with everything else in ``network.json``.

Peers and orderers require mutual TLS: a client must present a TLS certificate (clientAuth)
issued by one of the hospital CAs or the orderer organisation's CA, or the handshake fails.
Peers and orderers dial each other (gossip, block delivery, Raft) with their own TLS
certificates, which carry clientAuth; SDK clients present their wallet's TLS certificate, and
Deliver requests carry its sha256 (Fabric binds them to the TLS session).

:meth:`FabricNet.start` runs the chaincode server, the orderers and one peer per hospital as
plain processes (logs in ``fabric/logs``), waits for each node's ``/healthz`` and the line it
logs once it serves. The first start also joins every orderer to the channel through the
channel participation API (HTTPS to each orderer's admin endpoint), waits for a Raft leader,
joins every peer with the genesis block, installs the package on every peer, approves it as
every hospital's admin and commits it (each step is recorded, and a step found done already
is skipped, so a start that failed half-way resumes). A later start reuses the ledgers: no
re-join, no re-deploy. :meth:`FabricNet.stop` stops by pid, after checking in ``/proc`` that
the pid is still the process this module started (same start time); a failed start stops what
it started and names the first panic or fatal line of the node's log.

Fabric 2.3 has no Gateway service (clients use ``ehrshare.ledger.peer``). What this module must
not do: signal a process it did not start, bind anything but 127.0.0.1, log key material, or
write keys other than as mode-0600 files.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import http.client
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ehrshare.errors import Unavailable
from ehrshare.faults import fault_point
from ehrshare.identity import LocalCA
from ehrshare.network.binaries import fabric_bin_dir
from ehrshare.network.supervisor import (
    Child,
    free_loopback_ports,
    log_tail,
    start_child,
    stop_process,
    wait_ready,
)
from ehrshare.services.tls import issue_tls_certificate
from ehrshare.services.vault import atomic_write

__all__ = [
    "ORDERER_MSP",
    "FabricNet",
    "FabricNetError",
    "FabricNetSpec",
    "fabric_ca_problem",
    "fabric_version",
    "missing_binaries",
]

_log = logging.getLogger(__name__)

Progress = Callable[[str], None]

ORDERER_MSP: Final = "OrdererMSP"
_P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
STATE_FILE: Final = "network.json"
# 2: channel participation (no system channel), per-orderer admin ports, the Fabric version.
_STATE_VERSION: Final = 2
_BINARIES: Final = ("peer", "orderer", "configtxgen")
_ENDORSEMENT_RULES: Final = ("MAJORITY", "ANY")
_CC_VERSION: Final = "1"
_CC_SEQUENCE: Final = "1"
# Fabric's ccaas external builder: the package carries only connection.json, the peer dials it.
_BUILDER: Final = {
    "detect": (
        "#!/bin/sh\n# detect CHAINCODE_SOURCE_DIR CHAINCODE_METADATA_DIR\nset -e\n"
        'grep -q \'"type"[[:space:]]*:[[:space:]]*"ccaas"\' "$2/metadata.json"\n'
    ),
    "build": (
        "#!/bin/sh\n# build CHAINCODE_SOURCE_DIR CHAINCODE_METADATA_DIR BUILD_OUTPUT_DIR\nset -e\n"
        '[ -f "$1/connection.json" ] || { echo "no connection.json in $1" >&2; exit 1; }\n'
        'cp "$1/connection.json" "$3/connection.json"\n'
    ),
    "release": (
        "#!/bin/sh\n# release BUILD_OUTPUT_DIR RELEASE_OUTPUT_DIR\nset -e\n"
        'mkdir -p "$2/chaincode/server"\n'
        'cp "$1/connection.json" "$2/chaincode/server/connection.json"\n'
    ),
}
# Refusals that mean a step of an interrupted first start had already happened: the deployment
# resumes past them (the orderer or the peer has the channel). Approvals and the definition are
# queried instead. Peers: "LedgerID already exists" up to 2.4, "ledger [ch] already exists with
# state [ACTIVE]" from 2.5; orderers: 405 "cannot join: channel already exists".
_JOINED = r"LedgerID already exists|already exists with state \[ACTIVE\]"
_ORDERER_JOINED = "channel already exists"
# Broadcast refusals that go away by themselves while Raft elects a leader or a peer catches up.
_TRANSIENT = re.compile(
    r"SERVICE_UNAVAILABLE|no Raft leader|connection refused|context deadline exceeded"
    r"|failed to create new connection|timed out waiting",
    re.IGNORECASE,
)


class FabricNetError(Unavailable, RuntimeError):
    """The network cannot be created, started or used; the message says which part and why."""

    hint = "see the process logs under <consortium>/fabric"


def fabric_version(bin_dir: Path | None = None) -> tuple[int, int, int]:
    """The (major, minor, patch) that ``peer version`` in ``bin_dir`` reports (default
    :func:`~ehrshare.network.binaries.fabric_bin_dir`): what a network's capabilities are
    chosen by."""
    peer = (fabric_bin_dir() if bin_dir is None else bin_dir) / "peer"
    try:
        done = subprocess.run(  # noqa: S603 - the Fabric binary we were pointed at
            [str(peer), "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FabricNetError(f"{peer} version did not run: {exc}") from None
    found = re.search(r"^\s*Version:\s*v?(\d+)\.(\d+)\.(\d+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        said = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise FabricNetError(f"{peer} version printed no version (exit {done.returncode}): {said}")
    major, minor, patch = (int(g) for g in found.groups())
    if (major, minor) < (2, 3):
        raise FabricNetError(
            f"{peer} is Fabric {major}.{minor}.{patch}; networks need 2.3 or later "
            "(channel participation): run `make tools`"
        )
    return major, minor, patch


def missing_binaries(bin_dir: Path | None = None) -> list[str]:
    """Which of ``peer``, ``orderer`` and ``configtxgen`` are not in ``bin_dir`` (default
    :func:`~ehrshare.network.binaries.fabric_bin_dir`): empty when a network can be built here.
    Use it before anything that needs Fabric, to say ``make tools`` instead of failing later."""
    where = fabric_bin_dir() if bin_dir is None else bin_dir
    return [b for b in _BINARIES if not (where / b).is_file()]


@dataclass(frozen=True)
class FabricNetSpec:
    """What network to build for a consortium directory (see :meth:`FabricNet.create`)."""

    root: Path
    msp_ids: tuple[str, ...]
    orderers: int = 1
    channel: str = "ehrshare"
    chaincode: str = "ehrshare"
    batch_timeout: str = "100ms"
    max_message_count: int = 10
    preferred_max_bytes: str = "512 KB"
    endorsement: str = "MAJORITY"
    bin_dir: Path | None = None

    def check(self) -> None:
        """Refuse a spec Fabric would refuse later, naming the field."""
        if not self.msp_ids:
            raise FabricNetError("msp_ids: a network needs at least one hospital MSP")
        if len(set(self.msp_ids)) != len(self.msp_ids):
            raise FabricNetError(f"msp_ids: {list(self.msp_ids)} has duplicates")
        for msp in self.msp_ids:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", msp) or msp == ORDERER_MSP:
                raise FabricNetError(
                    f"msp id {msp!r} must be letters, digits and '-' and not {ORDERER_MSP}"
                )
        if self.orderers not in (1, 3):
            raise FabricNetError(f"orderers is {self.orderers}; Raft runs with 1 or 3 here")
        for what, name in (("channel", self.channel), ("chaincode", self.chaincode)):
            if not re.fullmatch(r"[a-z][a-z0-9.-]{0,48}", name):
                raise FabricNetError(f"{what} name {name!r} must match [a-z][a-z0-9.-]*")
        if self.channel == "system-channel":
            raise FabricNetError("channel may not be named system-channel (the orderers' own)")
        if not re.fullmatch(r"\d+(ms|s)", self.batch_timeout):
            raise FabricNetError(f"batch_timeout {self.batch_timeout!r} must look like 100ms or 2s")
        if not 1 <= self.max_message_count <= 10000:
            raise FabricNetError(f"max_message_count {self.max_message_count} is not in 1..10000")
        if not re.fullmatch(r"\d+ (KB|MB)", self.preferred_max_bytes):
            raise FabricNetError(
                f"preferred_max_bytes {self.preferred_max_bytes!r} must look like '512 KB'"
            )
        if self.endorsement not in _ENDORSEMENT_RULES:
            raise FabricNetError(f"endorsement {self.endorsement!r} is not MAJORITY or ANY")


@dataclass
class _Proc:
    """A process this module started: pid plus its kernel start time (pids are reused)."""

    pid: int
    start_ticks: int
    log: str
    offset: int = 0  # where this run's lines start in the (appended) log


@dataclass
class _State:
    spec: dict[str, Any]
    ports: dict[str, Any]
    package_id: str
    genesis_sha256: str = ""
    done: list[str] = field(default_factory=list)
    processes: dict[str, _Proc] = field(default_factory=dict)


def _lower(msp: str) -> str:
    return msp.lower()


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False)


class FabricNet:
    """A Fabric network under ``<consortium>/fabric``: create once, start and stop many times."""

    def __init__(self, root: Path, state: _State) -> None:
        self.root = root
        self.dir = root / "fabric"
        self._state = state
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        spec = dict(state.spec)
        self.spec = FabricNetSpec(
            root=root,
            msp_ids=tuple(spec["msp_ids"]),
            orderers=int(spec["orderers"]),
            channel=spec["channel"],
            chaincode=spec["chaincode"],
            batch_timeout=spec["batch_timeout"],
            max_message_count=int(spec["max_message_count"]),
            preferred_max_bytes=spec["preferred_max_bytes"],
            endorsement=spec["endorsement"],
            bin_dir=Path(spec["bin_dir"]),
        )
        # The Fabric version the network was created for (``peer version`` then).
        major, minor, patch = (int(x) for x in str(spec["fabric_version"]).split("."))
        self.version = (major, minor, patch)

    # --- layout ------------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Where ``peer``, ``orderer`` and ``configtxgen`` are."""
        assert self.spec.bin_dir is not None
        return self.spec.bin_dir

    @property
    def package_id(self) -> str:
        """The chaincode package id (``label:sha256`` of the package file)."""
        return self._state.package_id

    def org_dir(self, msp: str) -> Path:
        """An organisation's directory (``msp``, ``peer``, ``admin`` below it)."""
        return self.dir / "orgs" / msp

    def admin_msp(self, msp: str) -> Path:
        """The local MSP directory of a hospital's admin (what ``peer`` CLI commands sign with)."""
        return self.org_dir(msp) / "admin" / "msp"

    def tls_ca(self, msp: str) -> Path:
        """The CA certificate that issued an organisation's TLS certificates."""
        return self.org_dir(msp) / "msp" / "tlscacerts" / "ca.pem"

    def admin_tls(self, msp: str) -> tuple[Path, Path]:
        """(certificate, key) files of the TLS client certificate a hospital's admin presents
        to peers and orderers (the ``peer`` CLI): they require mutual TLS."""
        tls = self.org_dir(msp) / "admin" / "tls"
        return tls / "client.crt", tls / "client.key"

    def client_root_cas(self) -> list[Path]:
        """The CA files peers and orderers accept TLS client certificates from: every
        hospital's CA (members, services, admins, peers) and the orderer organisation's."""
        return [self.tls_ca(m) for m in (*self.spec.msp_ids, ORDERER_MSP)]

    def server_name(self, msp: str) -> str:
        """The TLS server name of a hospital's peer (a SAN of its certificate)."""
        return f"peer0.{_lower(msp)}"

    def peer_address(self, msp: str) -> str:
        """``127.0.0.1:<port>`` of a hospital's peer."""
        return f"127.0.0.1:{self._state.ports['peers'][msp]['listen']}"

    def orderer_address(self, index: int = 0) -> str:
        """``127.0.0.1:<port>`` of an orderer (0-based)."""
        return f"127.0.0.1:{self._state.ports['orderers'][index]['listen']}"

    def orderer_admin_address(self, index: int = 0) -> str:
        """``127.0.0.1:<port>`` of an orderer's admin endpoint (channel participation API,
        HTTPS with mutual TLS; ``osnadmin -o``)."""
        return f"127.0.0.1:{self._state.ports['orderers'][index]['admin']}"

    def orderer_admin_tls(self) -> tuple[Path, Path]:
        """(certificate, key) of the orderer organisation admin's TLS client certificate: the
        only client the orderers' admin endpoints accept (their client CA is the orderer
        organisation's, not a hospital's)."""
        tls = self.org_dir(ORDERER_MSP) / "admin" / "tls"
        return tls / "client.crt", tls / "client.key"

    @property
    def genesis_block(self) -> Path:
        """The channel's genesis block (configtxgen): what orderers and peers join with."""
        return self.dir / f"{self.spec.channel}.block"

    @property
    def endorsers(self) -> int:
        """How many organisations' peers must endorse a transaction under the policy."""
        n = len(self.spec.msp_ids)
        return 1 if self.spec.endorsement == "ANY" else n // 2 + 1

    # --- create ------------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: FabricNetSpec, progress: Progress | None = None) -> FabricNet:
        """Write crypto material, channel artefacts, configs and the chaincode package.

        Starts no process. Refuses a consortium that already has a network, a missing hospital
        CA, or missing Fabric binaries; on any failure nothing is left under ``fabric/``.
        """
        say = progress or (lambda _msg: None)
        spec.check()
        root = Path(spec.root).resolve()
        bin_dir = Path(spec.bin_dir) if spec.bin_dir is not None else fabric_bin_dir()
        missing = missing_binaries(bin_dir)
        if missing:
            raise FabricNetError(
                f"Fabric binaries {missing} are not in {bin_dir}: run `make tools` "
                "(or set EHRSHARE_FABRIC_BIN)"
            )
        sampleconfig = _sampleconfig(bin_dir)
        cas = {}
        for msp in spec.msp_ids:
            ca_dir = root / "ca" / msp
            if not (ca_dir / "ca-key.pem").is_file():
                raise FabricNetError(f"hospital CA {ca_dir} does not exist (consortium init?)")
            cas[msp] = LocalCA.load(ca_dir)
            if cas[msp].msp_id != msp:
                raise FabricNetError(f"{ca_dir} is the CA of {cas[msp].msp_id}, not of {msp}")
            problem = fabric_ca_problem(cas[msp].certificate)
            if problem is not None:
                raise FabricNetError(
                    f"the CA in {ca_dir} cannot be a Fabric MSP root: {problem} (it predates "
                    "this check; create the consortium again)"
                )
        net_dir = root / "fabric"
        if net_dir.exists():
            raise FabricNetError(f"{net_dir} already exists; load it or remove it first")
        version = fabric_version(bin_dir)
        started = time.monotonic()
        try:
            net = cls._build(spec, root, bin_dir, version, sampleconfig, cas, say)
        except BaseException:
            shutil.rmtree(net_dir, ignore_errors=True)
            raise
        _log.info("created the Fabric network in %s (%.1f s)", net_dir, time.monotonic() - started)
        return net

    @classmethod
    def _build(
        cls,
        spec: FabricNetSpec,
        root: Path,
        bin_dir: Path,
        version: tuple[int, int, int],
        sampleconfig: Path,
        cas: Mapping[str, LocalCA],
        say: Progress,
    ) -> FabricNet:
        net_dir = root / "fabric"
        (net_dir / "logs").mkdir(parents=True)
        n_ports = 3 * spec.orderers + 3 * len(spec.msp_ids) + 1
        ports = iter(free_loopback_ports(n_ports))
        port_map: dict[str, Any] = {
            # Each orderer its own admin port: left to orderer.yaml, all bind 127.0.0.1:9443.
            "orderers": [
                {"listen": next(ports), "operations": next(ports), "admin": next(ports)}
                for _ in range(spec.orderers)
            ],
            "peers": {
                msp: {"listen": next(ports), "chaincode": next(ports), "operations": next(ports)}
                for msp in spec.msp_ids
            },
            "ccaas": next(ports),
        }
        spec_json = {
            "msp_ids": list(spec.msp_ids),
            "orderers": spec.orderers,
            "channel": spec.channel,
            "chaincode": spec.chaincode,
            "batch_timeout": spec.batch_timeout,
            "max_message_count": spec.max_message_count,
            "preferred_max_bytes": spec.preferred_max_bytes,
            "endorsement": spec.endorsement,
            "bin_dir": str(bin_dir.resolve()),
            "fabric_version": ".".join(map(str, version)),
        }
        net = cls(root, _State(spec_json, port_map, package_id=""))

        say("crypto material from the hospitals' CAs")
        for ca in cas.values():
            net._write_org(ca)
        orderer_ca = LocalCA.create(ORDERER_MSP)
        orderer_ca.save(net.org_dir(ORDERER_MSP) / "ca")
        net._write_orderer_org(orderer_ca)

        say("channel genesis block (configtxgen)")
        net._write_configtx()
        net._run(
            [
                str(bin_dir / "configtxgen"),
                "-profile",
                "Channel",
                "-channelID",
                spec.channel,
                "-outputBlock",
                str(net.genesis_block),
            ],
            env={"FABRIC_CFG_PATH": str(net.dir / "config" / "configtx")},
            what="configtxgen (channel genesis block)",
        )
        net._state.genesis_sha256 = hashlib.sha256(net.genesis_block.read_bytes()).hexdigest()
        net._write_node_configs(sampleconfig)

        say("chaincode package (ccaas)")
        net._state.package_id = net._write_package()
        net._save()
        return net

    def _write_msp(
        self,
        msp_dir: Path,
        ca: LocalCA,
        *,
        signer: tuple[bytes, bytes] | None = None,
    ) -> None:
        ca_pem = ca.certificate_pem
        for sub in ("cacerts", "tlscacerts"):
            (msp_dir / sub).mkdir(parents=True, exist_ok=True)
            (msp_dir / sub / "ca.pem").write_bytes(ca_pem)

        def ou(name: str) -> dict[str, str]:
            return {"Certificate": "cacerts/ca.pem", "OrganizationalUnitIdentifier": name}

        config = {
            "NodeOUs": {
                "Enable": True,
                "ClientOUIdentifier": ou("client"),
                "PeerOUIdentifier": ou("peer"),
                "AdminOUIdentifier": ou("admin"),
                "OrdererOUIdentifier": ou("orderer"),
            }
        }
        (msp_dir / "config.yaml").write_text(_dump(config), encoding="utf-8")
        if signer is not None:
            cert, key = signer
            (msp_dir / "signcerts").mkdir(exist_ok=True)
            (msp_dir / "signcerts" / "cert.pem").write_bytes(cert)
            atomic_write(msp_dir / "keystore" / "key.pem", key, mode=0o600)

    def _write_tls(self, tls_dir: Path, ca: LocalCA, server_name: str) -> None:
        cert, key = issue_tls_certificate(
            ca, server_name, hosts=("127.0.0.1", "localhost", server_name), client_auth=True
        )
        tls_dir.mkdir(parents=True, exist_ok=True)
        (tls_dir / "server.crt").write_bytes(cert)
        atomic_write(tls_dir / "server.key", key, mode=0o600)
        (tls_dir / "ca.crt").write_bytes(ca.certificate_pem)

    def _write_org(self, ca: LocalCA) -> None:
        msp = ca.msp_id
        org = self.org_dir(msp)
        self._write_msp(org / "msp", ca)
        peer, peer_key = ca.issue(self.server_name(msp), node_ou="peer")
        self._write_msp(
            org / "peer" / "msp", ca, signer=(peer.credentials, peer_key.to_secret_bytes())
        )
        self._write_tls(org / "peer" / "tls", ca, self.server_name(msp))
        admin, admin_key = ca.issue(f"fabric-admin.{_lower(msp)}", node_ou="admin", role="admin")
        self._write_msp(
            org / "admin" / "msp", ca, signer=(admin.credentials, admin_key.to_secret_bytes())
        )
        self._write_admin_tls(ca)

    def _write_admin_tls(self, ca: LocalCA) -> None:
        # A key of its own (clientAuth, OU tls), not the admin's signing key: the TLS key opens
        # connections, the signing key signs lifecycle transactions.
        cert_path, key_path = self.admin_tls(ca.msp_id)
        cert, key = ca.issue_tls_client(f"fabric-admin.{_lower(ca.msp_id)}")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(key_path, key.to_secret_bytes(), mode=0o600)
        cert_path.write_bytes(cert.credentials)

    def _orderer_name(self, index: int) -> str:
        return f"orderer{index + 1}.ordererorg"

    def _orderer_dir(self, index: int) -> Path:
        return self.org_dir(ORDERER_MSP) / f"orderer{index + 1}"

    def _write_orderer_org(self, ca: LocalCA) -> None:
        self._write_msp(self.org_dir(ORDERER_MSP) / "msp", ca)
        for i in range(self.spec.orderers):
            node = self._orderer_dir(i)
            ident, key = ca.issue(self._orderer_name(i), node_ou="orderer")
            self._write_msp(node / "msp", ca, signer=(ident.credentials, key.to_secret_bytes()))
            self._write_tls(node / "tls", ca, self._orderer_name(i))
        cert_path, key_path = self.orderer_admin_tls()
        cert, key = ca.issue_tls_client("orderer-admin")
        key_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(key_path, key.to_secret_bytes(), mode=0o600)
        cert_path.write_bytes(cert.credentials)

    def _write_configtx(self) -> None:
        spec = self.spec

        def sig(rule: str) -> dict[str, str]:
            return {"Type": "Signature", "Rule": rule}

        def meta(rule: str) -> dict[str, str]:
            return {"Type": "ImplicitMeta", "Rule": rule}

        orderer_addresses = [self.orderer_address(i) for i in range(spec.orderers)]
        orderer_org = {
            "Name": ORDERER_MSP,
            "ID": ORDERER_MSP,
            "MSPDir": str(self.org_dir(ORDERER_MSP) / "msp"),
            "Policies": {
                "Readers": sig(f"OR('{ORDERER_MSP}.member')"),
                "Writers": sig(f"OR('{ORDERER_MSP}.member')"),
                "Admins": sig(f"OR('{ORDERER_MSP}.admin')"),
            },
            "OrdererEndpoints": orderer_addresses,
        }
        orgs = [
            {
                "Name": msp,
                "ID": msp,
                "MSPDir": str(self.org_dir(msp) / "msp"),
                "Policies": {
                    "Readers": sig(f"OR('{msp}.member')"),
                    "Writers": sig(f"OR('{msp}.member')"),
                    "Admins": sig(f"OR('{msp}.admin')"),
                    "Endorsement": sig(f"OR('{msp}.peer')"),
                },
                # Each hospital's one peer is its anchor peer: without anchors, gossip never
                # learns the other organisations' peers (no cross-org membership, so service
                # discovery and a Gateway cannot plan endorsements across organisations).
                "AnchorPeers": [
                    {"Host": "127.0.0.1", "Port": self._state.ports["peers"][msp]["listen"]}
                ],
            }
            for msp in spec.msp_ids
        ]
        v2 = {"V2_0": True}
        # The channel capability follows the binaries: V3_0 on Fabric 3.x (which refuses the
        # global Orderer.Addresses; endpoints are per organisation here on every version).
        channel_caps = {"V3_0": True} if self.version[0] >= 3 else v2
        channel_policies = {
            "Readers": meta("ANY Readers"),
            "Writers": meta("ANY Writers"),
            "Admins": meta("MAJORITY Admins"),
        }
        consenters = []
        for i in range(spec.orderers):
            tls = str(self._orderer_dir(i) / "tls" / "server.crt")
            port = self._state.ports["orderers"][i]["listen"]
            consenters.append(
                {"Host": "127.0.0.1", "Port": port, "ClientTLSCert": tls, "ServerTLSCert": tls}
            )
        orderer = {
            "OrdererType": "etcdraft",
            "BatchTimeout": spec.batch_timeout,
            "BatchSize": {
                "MaxMessageCount": spec.max_message_count,
                "AbsoluteMaxBytes": "99 MB",
                "PreferredMaxBytes": spec.preferred_max_bytes,
            },
            "EtcdRaft": {
                "Consenters": consenters,
                # A 100 ms tick elects a leader within about a second on loopback (the
                # sample's 500 ms makes every start wait 5 s).
                "Options": {
                    "TickInterval": "100ms",
                    "ElectionTick": 10,
                    "HeartbeatTick": 1,
                    "MaxInflightBlocks": 5,
                    "SnapshotIntervalSize": "16 MB",
                },
            },
            "Organizations": [orderer_org],
            "Policies": {
                **channel_policies,
                "BlockValidation": meta("ANY Writers"),
            },
            "Capabilities": v2,
        }
        application = {
            "Organizations": orgs,
            "Policies": {
                **channel_policies,
                "LifecycleEndorsement": meta("MAJORITY Endorsement"),
                "Endorsement": meta(f"{spec.endorsement} Endorsement"),
            },
            "Capabilities": v2,
        }
        # One profile with Orderer and Application: the application channel's own genesis
        # block, joined through the channel participation API (no system channel, no
        # consortium).
        configtx = {
            "Profiles": {
                "Channel": {
                    "Policies": channel_policies,
                    "Capabilities": channel_caps,
                    "Orderer": orderer,
                    "Application": application,
                },
            }
        }
        out = self.dir / "config" / "configtx" / "configtx.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_dump(configtx), encoding="utf-8")

    def _write_node_configs(self, sampleconfig: Path) -> None:
        builder = self.dir / "builder"
        for name, text in _BUILDER.items():
            path = builder / "bin" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o755)
        core = yaml.safe_load((sampleconfig / "core.yaml").read_text(encoding="utf-8"))
        # No Docker: chaincode only through the ccaas external builder.
        core["vm"]["endpoint"] = ""
        core["chaincode"]["externalBuilders"] = [
            {"path": str(builder), "name": "ccaas-builder", "propagateEnvironment": ["HOME"]}
        ]
        peer_cfg = self.dir / "config" / "peer"
        peer_cfg.mkdir(parents=True, exist_ok=True)
        (peer_cfg / "core.yaml").write_text(_dump(core), encoding="utf-8")
        orderer_cfg = self.dir / "config" / "orderer"
        orderer_cfg.mkdir(parents=True, exist_ok=True)
        shutil.copy(sampleconfig / "orderer.yaml", orderer_cfg / "orderer.yaml")

    def _write_package(self) -> str:
        spec = self.spec
        cc_dir = self.dir / "chaincode"
        tls_ca = LocalCA.create("ChaincodeTLS")
        tls_ca.save(cc_dir / "tls-ca")
        server_cert, server_key = issue_tls_certificate(tls_ca, "chaincode.ehrshare")
        (cc_dir / "server.crt").write_bytes(server_cert)
        atomic_write(cc_dir / "server.key", server_key, mode=0o600)
        client, client_key = tls_ca.issue_tls_client("peers")
        connection = {
            "address": f"127.0.0.1:{self._state.ports['ccaas']}",
            "dial_timeout": "10s",
            "tls_required": True,
            "client_auth_required": True,
            "root_cert": tls_ca.certificate_pem.decode(),
            "client_cert": client.credentials.decode(),
            "client_key": client_key.to_secret_bytes().decode(),
        }
        label = f"{spec.chaincode}_{_CC_VERSION}"
        code = _tgz({"connection.json": json.dumps(connection, indent=2).encode()})
        metadata = json.dumps({"path": "", "type": "ccaas", "label": label}).encode()
        package = _tgz({"metadata.json": metadata, "code.tar.gz": code})
        # The package holds the peers' TLS client key for the chaincode connection.
        atomic_write(cc_dir / f"{label}.tgz", package, mode=0o600)
        # Fabric 2.x's package id: <label>:sha256 of the package file, known before install,
        # so the server can start before the peers.
        return f"{label}:{hashlib.sha256(package).hexdigest()}"

    # --- load / state ------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path) -> FabricNet:
        """Open the network created under ``root/fabric`` (its ``network.json``)."""
        root = Path(root).resolve()
        path = root / "fabric" / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FabricNetError(f"{path} does not exist: create the network first") from None
        except ValueError as exc:
            raise FabricNetError(f"{path} is not valid JSON: {exc}") from None
        if data.get("version") == 1:
            raise FabricNetError(
                f"{path} describes a Fabric 2.1 network (system channel), which Fabric 2.3+ "
                "cannot run: stop it with the old release, remove fabric/ and create it again"
            )
        if data.get("version") != _STATE_VERSION:
            raise FabricNetError(
                f"{path} has version {data.get('version')!r}, not {_STATE_VERSION}"
            )
        try:
            state = _State(
                spec=data["spec"],
                ports=data["ports"],
                package_id=data["package_id"],
                genesis_sha256=data["genesis_sha256"],
                done=list(data["done"]),
                processes={k: _Proc(**v) for k, v in data["processes"].items()},
            )
            return cls(root, state)
        except (KeyError, TypeError, ValueError) as exc:
            raise FabricNetError(f"{path} is missing or has a bad field: {exc}") from None

    def _save(self) -> None:
        s = self._state
        data = {
            "version": _STATE_VERSION,
            "spec": s.spec,
            "ports": s.ports,
            "package_id": s.package_id,
            "genesis_sha256": s.genesis_sha256,
            "done": s.done,
            "processes": {k: asdict(v) for k, v in s.processes.items()},
        }
        atomic_write(self.dir / STATE_FILE, json.dumps(data, indent=2).encode(), mode=0o644)

    def _mark(self, step: str) -> None:
        if step not in self._state.done:
            self._state.done.append(step)
            self._save()

    @property
    def deployed(self) -> bool:
        """Whether the channel exists and the chaincode is committed on it."""
        return "commit" in self._state.done

    # --- processes ---------------------------------------------------------------------------

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
                elif name.startswith("orderer"):
                    entry = ports["orderers"][int(name.removeprefix("orderer")) - 1]
                    ops, listen = int(entry["operations"]), int(entry["listen"])
                else:
                    entry = ports["peers"][name.removeprefix("peer-")]
                    ops, listen = int(entry["operations"]), int(entry["listen"])
                if ops is not None and not _healthy(ops, timeout=timeout):
                    status = f"not answering (/healthz on 127.0.0.1:{ops} failed)"
                elif not _connects(listen, timeout):
                    status = f"not answering (nothing accepts on 127.0.0.1:{listen})"
                else:
                    status = "running"
            out[name] = {"pid": proc.pid, "status": status, "healthy": status == "running"}
        return out

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> _Proc:
        # A session of its own: the network outlives the command that started it (`network
        # up`), and a Ctrl-C in that terminal does not reach it; stop() ends it by pid.
        log = self.dir / "logs" / f"{name}.log"
        child = start_child(name, argv, log, env=env, cwd=self.dir, new_session=True)
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

    # --- start -------------------------------------------------------------------------------

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
                say("waiting for a Raft leader")
                self._wait_leader(self.spec.channel, deadline)
            else:
                self._deploy(say, deadline)
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
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(cc / "server.crt"),
            "--tls-key",
            str(cc / "server.key"),
            "--client-ca",
            str(cc / "tls-ca" / "ca-cert.pem"),
            "--port-file",
            str(port_file),
        ]
        proc = self._spawn("ccaas", argv, {})

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
        return {
            "FABRIC_CFG_PATH": str(self.dir / "config" / "orderer"),
            "FABRIC_LOGGING_SPEC": "INFO",
            "ORDERER_GENERAL_LISTENADDRESS": "127.0.0.1",
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
            # No system channel: the orderer starts with no channel and is joined to the
            # application channel through its admin endpoint (channel participation API).
            "ORDERER_GENERAL_BOOTSTRAPMETHOD": "none",
            "ORDERER_CHANNELPARTICIPATION_ENABLED": "true",
            "ORDERER_ADMIN_LISTENADDRESS": f"127.0.0.1:{ports['admin']}",
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
            "ORDERER_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{ports['operations']}",
            "ORDERER_METRICS_PROVIDER": "disabled",
        }

    def _start_orderers(self, deadline: float, only: Collection[str] | None = None) -> None:
        started = []
        for i in range(self.spec.orderers):
            name = f"orderer{i + 1}"
            if only is not None and name not in only:
                continue
            proc = self._spawn(name, [str(self.bin_dir / "orderer")], self._orderer_env(i))
            started.append((name, proc, self._state.ports["orderers"][i]["operations"]))
        for name, proc, ops in started:
            self._wait_node(name, proc, ops, "Beginning to serve requests", deadline)

    def _peer_env(self, msp: str) -> dict[str, str]:
        ports = self._state.ports["peers"][msp]
        org = self.org_dir(msp)
        address = self.peer_address(msp)
        chaincode = f"127.0.0.1:{ports['chaincode']}"
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
            "CORE_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{ports['operations']}",
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
            proc = self._spawn(
                name, [str(self.bin_dir / "peer"), "node", "start"], self._peer_env(msp)
            )
            started.append((name, proc, self._state.ports["peers"][msp]["operations"]))
        for name, proc, ops in started:
            self._wait_node(name, proc, ops, "Started peer with ID=", deadline)

    def _wait_node(self, name: str, proc: _Proc, ops: int, marker: str, deadline: float) -> None:
        # /healthz answers before the node binds its gRPC port (a peer whose port is taken
        # answers, then exits), so also wait for the line the node logs once it serves.
        serving = re.compile(re.escape(marker))
        self._wait(lambda: _logged(proc, serving) and _healthy(ops), name, proc, deadline)

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
        pattern = re.compile(rf"Raft leader changed: \d+ -> [1-9]\d* channel={re.escape(channel)} ")
        for i in range(self.spec.orderers):
            name = f"orderer{i + 1}"
            proc = self._state.processes[name]
            leader = functools.partial(_logged, proc, pattern)
            self._wait(leader, name, proc, deadline, late="elected no Raft leader in time")

    # --- peer CLI and deployment -------------------------------------------------------------

    def cli_env(self, msp: str, *, peer: str | None = None) -> dict[str, str]:
        """Environment for the ``peer`` CLI acting as ``msp``'s admin against ``peer``'s peer
        (default: its own). Merge it over ``os.environ``."""
        target = peer or msp
        if msp not in self.spec.msp_ids or target not in self.spec.msp_ids:
            raise FabricNetError(f"{msp!r} or {target!r} is not one of {list(self.spec.msp_ids)}")
        return {
            "FABRIC_CFG_PATH": str(self.dir / "config" / "peer"),
            "FABRIC_LOGGING_SPEC": "WARNING",
            "CORE_PEER_LOCALMSPID": msp,
            "CORE_PEER_MSPCONFIGPATH": str(self.admin_msp(msp)),
            "CORE_PEER_ADDRESS": self.peer_address(target),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.tls_ca(target)),
            # Peers require a client certificate: the admin's TLS one (also for the peers
            # named with --peerAddresses).
            "CORE_PEER_TLS_CLIENTAUTHREQUIRED": "true",
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(self.admin_tls(msp)[0]),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(self.admin_tls(msp)[1]),
        }

    def orderer_args(self, msp: str | None = None) -> list[str]:
        """``-o <orderer> --tls --cafile <orderer TLS CA> --clientauth --certfile … --keyfile …``
        for ``peer`` CLI commands: orderers require mutual TLS, so the CLI presents the TLS
        client certificate of ``msp``'s admin (default: the first hospital's; the orderer
        authorises by the signature, the certificate only has to come from a consortium CA)."""
        if msp is not None and msp not in self.spec.msp_ids:
            raise FabricNetError(f"{msp!r} is not one of {list(self.spec.msp_ids)}")
        cert, key = self.admin_tls(msp or self.spec.msp_ids[0])
        return [
            "-o",
            self.orderer_address(0),
            "--tls",
            "--cafile",
            str(self.tls_ca(ORDERER_MSP)),
            "--clientauth",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
        ]

    def peer_args(self, msps: Sequence[str]) -> list[str]:
        """``--peerAddresses … --tlsRootCertFiles …`` for the given hospitals' peers (the
        client certificate presented to them comes from :meth:`cli_env`)."""
        out: list[str] = []
        for msp in msps:
            out += ["--peerAddresses", self.peer_address(msp)]
            out += ["--tlsRootCertFiles", str(self.tls_ca(msp))]
        return out

    def peer_cli(
        self,
        msp: str,
        args: Sequence[str],
        *,
        peer: str | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Run ``peer <args>`` as ``msp``'s admin; its standard output. Raises
        :class:`FabricNetError` with the error lines (or the output's tail) when it fails."""
        return self._run(
            [str(self.bin_dir / "peer"), *args],
            env=self.cli_env(msp, peer=peer),
            what=f"peer {' '.join(args[:3])} as {msp}",
            timeout=timeout,
        )

    def invoke(
        self, msp: str, args: Sequence[str], *, endorsers: Sequence[str], wait: bool = True
    ) -> str:
        """``peer chaincode invoke`` of our chaincode as ``msp``'s admin, endorsed by the peers
        of ``endorsers`` (``args``: the function, then its arguments); with ``wait``, returns
        once the endorsing peers committed it (call :meth:`wait_synced` before reading on
        another peer). Raises :class:`FabricNetError` with the peer's refusal."""
        return self.peer_cli(
            msp,
            [
                "chaincode",
                "invoke",
                *self.orderer_args(),
                "-C",
                self.spec.channel,
                "-n",
                self.spec.chaincode,
                *self.peer_args(endorsers),
                *(["--waitForEvent"] if wait else []),
                "-c",
                json.dumps({"Args": list(args)}),
            ],
        )

    def query(self, msp: str, args: Sequence[str], *, peer: str | None = None) -> str:
        """``peer chaincode query`` of our chaincode as ``msp``'s admin on ``peer``'s peer
        (default: its own); the chaincode's answer."""
        return self.peer_cli(
            msp,
            [
                "chaincode",
                "query",
                "-C",
                self.spec.channel,
                "-n",
                self.spec.chaincode,
                "-c",
                json.dumps({"Args": list(args)}),
            ],
            peer=peer,
        )

    def _run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        what: str,
        timeout: float = 60.0,
    ) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - binaries of this network
                list(argv),
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self.dir,
            )
        except subprocess.TimeoutExpired:
            raise FabricNetError(f"{what} did not finish in {timeout:.0f} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0:
            lines = output.strip().splitlines()
            # The CLI prints its usage after an error; the "Error:" line is what matters.
            errors = [line for line in lines if line.startswith("Error:")]
            tail = " | ".join(errors or lines[-6:])
            raise FabricNetError(f"{what} failed (exit {done.returncode}): {tail}")
        return done.stdout

    def _retry(
        self, action: Callable[[], str], deadline: float, done_already: str | None = None
    ) -> bool:
        """Run ``action`` until it succeeds (True), retrying transient refusals until the
        deadline; False when it fails with ``done_already`` (the step had happened)."""
        while True:
            try:
                action()
                return True
            except FabricNetError as exc:
                if done_already is not None and re.search(done_already, str(exc)):
                    _log.info("already done: %s", exc)
                    return False
                if not _TRANSIENT.search(str(exc)) or time.monotonic() > deadline:
                    raise
                self._check_alive()  # a dead node's refusals are not transient
                _log.info("retrying: %s", exc)
                time.sleep(0.5)

    def _each_org(
        self,
        step: str,
        action: Callable[[str], str],
        deadline: float,
        done_already: str | None = None,
    ) -> None:
        todo = [m for m in self.spec.msp_ids if f"{step}:{m}" not in self._state.done]
        if not todo:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(todo)) as pool:
            futures = {
                pool.submit(self._retry, functools.partial(action, m), deadline, done_already): m
                for m in todo
            }
            errors = []
            for future in concurrent.futures.as_completed(futures):
                msp = futures[future]
                try:
                    future.result()
                except FabricNetError as exc:
                    errors.append(str(exc))
                else:
                    self._mark(f"{step}:{msp}")
        if errors:
            raise FabricNetError("; ".join(errors))

    def _deploy(self, say: Progress, deadline: float) -> None:
        spec = self.spec
        first = spec.msp_ids[0]
        orderer = self.orderer_args()
        block = self._checked_genesis()
        say(f"joining every orderer to channel {spec.channel} (channel participation API)")
        for i in range(spec.orderers):
            if f"orderer-join:{i + 1}" in self._state.done:
                continue
            join = functools.partial(self._orderer_join, i, block)
            self._retry(join, deadline, _ORDERER_JOINED)
            fault_point("fabricnet.orderer_join.before_mark")
            self._mark(f"orderer-join:{i + 1}")
        say("waiting for a Raft leader")
        self._wait_leader(spec.channel, deadline)
        say("joining every peer")

        def peer_join(msp: str) -> str:
            out = self.peer_cli(msp, ["channel", "join", "-b", str(self.genesis_block)])
            fault_point("fabricnet.peer_join.before_mark")
            return out

        self._each_org("join", peer_join, deadline, _JOINED)
        label = self.package_id.split(":", 1)[0]
        package = self.dir / "chaincode" / f"{label}.tgz"
        say("installing the chaincode package on every peer")

        def install(msp: str) -> str:
            listed = self.peer_cli(msp, ["lifecycle", "chaincode", "queryinstalled"])
            if self.package_id in listed:
                return listed
            self.peer_cli(msp, ["lifecycle", "chaincode", "install", str(package)])
            listed = self.peer_cli(msp, ["lifecycle", "chaincode", "queryinstalled"])
            if self.package_id not in listed:
                raise FabricNetError(
                    f"the peer of {msp} does not list package {self.package_id} after "
                    "installing it: " + " | ".join(listed.strip().splitlines()[-3:])
                )
            return listed

        self._each_org("install", install, deadline)
        definition = [
            "-C",
            spec.channel,
            "-n",
            spec.chaincode,
            "-v",
            _CC_VERSION,
            "--sequence",
            _CC_SEQUENCE,
        ]
        if self._committed():
            # An earlier start committed the definition but was interrupted before recording it.
            self._mark("commit")
            return
        approve = ["lifecycle", "chaincode", "approveformyorg", *definition]
        approve += ["--package-id", self.package_id, "--waitForEvent"]
        readiness = ["lifecycle", "chaincode", "checkcommitreadiness", *definition]
        readiness += ["--output", "json"]

        def approve_once(msp: str) -> str:
            approvals = json.loads(self.peer_cli(msp, readiness)).get("approvals", {})
            if approvals.get(msp) is True:
                return "approved already"
            return self.peer_cli(msp, [*approve, *self.orderer_args(msp)])

        say("approving the chaincode as every hospital's admin")
        self._each_org("approve", approve_once, deadline)
        say("committing the chaincode definition")
        commit = ["lifecycle", "chaincode", "commit", *orderer, *definition]
        commit += [*self.peer_args(spec.msp_ids), "--waitForEvent"]
        self._retry(lambda: self.peer_cli(first, commit), deadline)
        self._mark("commit")

    def _checked_genesis(self) -> bytes:
        """The genesis block's bytes, refused when missing or not the ones create() wrote."""
        path = self.genesis_block
        try:
            block = path.read_bytes()
        except OSError as exc:
            raise FabricNetError(
                f"the channel's genesis block {path} cannot be read ({exc.strerror}): "
                "create the network again"
            ) from None
        digest = hashlib.sha256(block).hexdigest()
        if digest != self._state.genesis_sha256:
            raise FabricNetError(
                f"the channel's genesis block {path} was changed after the network was created "
                f"(sha256 {digest[:16]}…, created {self._state.genesis_sha256[:16]}…): "
                "restore it or create the network again"
            )
        return block

    def _orderer_join(self, index: int, block: bytes) -> str:
        """POST the genesis block to an orderer's channel participation API, as the orderer
        organisation's admin (mutual TLS). Python rather than ``osnadmin``: one HTTPS request
        whose status and JSON error we read directly, the same on 2.3, 2.5 and 3.x."""
        name = f"orderer{index + 1}"
        address = self.orderer_admin_address(index)
        status, body = self._admin_request(index, "POST", "/participation/v1/channels", block)
        if status != 201:
            try:
                reason = str(json.loads(body)["error"])
            except (ValueError, KeyError, TypeError):
                reason = body.decode("utf-8", errors="replace").strip()[:200]
            raise FabricNetError(f"joining {name} ({address}) to the channel: {status} {reason}")
        return body.decode("utf-8", errors="replace")

    def _admin_request(
        self, index: int, method: str, path: str, block: bytes | None = None
    ) -> tuple[int, bytes]:
        cert, key = self.orderer_admin_tls()
        context = ssl.create_default_context(cafile=str(self.tls_ca(ORDERER_MSP)))
        context.load_cert_chain(str(cert), str(key))
        host, port = self.orderer_admin_address(index).rsplit(":", 1)
        headers: dict[str, str] = {}
        data = None
        if block is not None:
            boundary = secrets.token_hex(16)
            data = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="config-block"; '
                    f'filename="{self.spec.channel}.block"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + block
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise FabricNetError(
                f"orderer{index + 1}'s admin endpoint {host}:{port}: {exc}"
            ) from None
        finally:
            connection.close()

    def orderer_channels(self, index: int = 0) -> list[str]:
        """The channels an orderer is a member of, from its channel participation API."""
        status, body = self._admin_request(index, "GET", "/participation/v1/channels")
        if status != 200:
            raise FabricNetError(f"orderer{index + 1} lists no channels: {status} {body[:200]!r}")
        listed = json.loads(body).get("channels") or []
        return [str(c["name"]) for c in listed]

    def _committed(self) -> bool:
        query = ["lifecycle", "chaincode", "querycommitted"]
        query += ["-C", self.spec.channel, "-n", self.spec.chaincode]
        try:
            self.peer_cli(self.spec.msp_ids[0], query)
        except FabricNetError as exc:
            if f"namespace {self.spec.chaincode} is not defined" in str(exc):
                return False
            raise
        return True

    def heights(self) -> dict[str, int]:
        """Each hospital's peer's block height on the channel (``peer channel getinfo``)."""
        out = {}
        for msp in self.spec.msp_ids:
            info = self.peer_cli(msp, ["channel", "getinfo", "-c", self.spec.channel])
            found = re.search(r'"height":(\d+)', info)
            if found is None:
                raise FabricNetError(f"the peer of {msp} gave no block height: {info.strip()!r}")
            out[msp] = int(found.group(1))
        return out

    def wait_synced(self, timeout: float = 30.0) -> int:
        """Wait until every peer has the blocks the most advanced one had when called; the
        height. A transaction's ``--waitForEvent`` covers only the peers that endorsed it,
        and the others commit its block a moment later: read on them after this."""
        target = max(self.heights().values())
        deadline = time.monotonic() + timeout
        while True:
            heights = self.heights()
            if min(heights.values()) >= target:
                return target
            if time.monotonic() > deadline:
                raise FabricNetError(f"peers did not reach block height {target}: {heights}")
            time.sleep(0.05)

    # --- for clients -------------------------------------------------------------------------

    def connection(self) -> dict[str, Any]:
        """What a client profile needs: peers (address, MSP, TLS CA path, server name),
        orderers, channel, chaincode, how many organisations must endorse, and that clients
        must present a TLS client certificate (``client_auth``)."""
        return {
            "peers": [
                {
                    "address": self.peer_address(msp),
                    "msp": msp,
                    "tls_ca": str(self.tls_ca(msp)),
                    "server_name": self.server_name(msp),
                }
                for msp in self.spec.msp_ids
            ],
            "orderers": [
                {
                    "address": self.orderer_address(i),
                    "tls_ca": str(self.tls_ca(ORDERER_MSP)),
                    "server_name": self._orderer_name(i),
                }
                for i in range(self.spec.orderers)
            ],
            "channel": self.spec.channel,
            "chaincode": self.spec.chaincode,
            "endorsers": self.endorsers,
            # Peers and orderers refuse clients without a consortium TLS client certificate.
            "client_auth": True,
        }

    def __repr__(self) -> str:
        return f"FabricNet({self.dir}, orgs={list(self.spec.msp_ids)})"


def fabric_ca_problem(cert: x509.Certificate) -> str | None:
    """Why Fabric's MSP (2.1, 2.3) would refuse this root CA certificate, or None.

    It needs a subject key identifier, and (built with Go >= 1.15) a low-S self-signature.
    """
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return "it has no subject key identifier"
    if decode_dss_signature(cert.signature)[1] > _P256_N // 2:
        return "its self-signature has a high S"
    return None


def _sampleconfig(bin_dir: Path) -> Path:
    env = os.environ.get("EHRSHARE_FABRIC_SAMPLECONFIG")
    path = Path(env) if env else bin_dir.parent / "src" / "fabric" / "sampleconfig"
    if not (path / "core.yaml").is_file() or not (path / "orderer.yaml").is_file():
        raise FabricNetError(
            f"Fabric's sampleconfig (core.yaml, orderer.yaml) is not in {path}: run `make tools` "
            "or set EHRSHARE_FABRIC_SAMPLECONFIG"
        )
    return path


def _tgz(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _logged(proc: _Proc, pattern: re.Pattern[str]) -> bool:
    try:
        with open(proc.log, "rb") as log:
            log.seek(proc.offset)
            return pattern.search(log.read().decode("utf-8", errors="replace")) is not None
    except OSError:
        return False


def _connects(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _healthy(port: int, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(  # our loopback operations endpoint
            f"http://127.0.0.1:{port}/healthz", timeout=timeout
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(proc: _Proc) -> str:
    """:func:`~ehrshare.network.supervisor.log_tail` of a node's log from this run's start."""
    return log_tail(Path(proc.log), proc.offset)
