"""Creating a Fabric network (:meth:`FabricMaterial.create`): everything the Fabric binaries
need under ``<consortium>/fabric``, from the consortium's own hospital CAs
(``<consortium>/ca/<MSP>``), not cryptogen:

- per hospital an MSP directory (``cacerts``, ``tlscacerts``, ``config.yaml`` with NodeOUs), a
  peer identity (NodeOU ``peer``) with a TLS certificate for its host's address (or
  127.0.0.1/localhost) and its server name, and an org admin identity (NodeOU ``admin``) that
  runs the lifecycle, with a TLS client certificate of its own for the ``peer`` CLI;
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
- Fabric's common connection profile per hospital (``connection-<MSP>.json``, see
  :mod:`.profiles`) for standard tools;
- each organisation's nodes on its host's address (``FabricNetSpec.hosts``, e.g. network
  namespaces of :mod:`ehrshare.network.netns`) or on 127.0.0.1;
- free loopback ports for every listener (each orderer's admin endpoint its own), recorded
  with everything else in ``network.json``.

It must not log key material or write keys other than as mode-0600 files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Self

import yaml

from ehrshare.identity import LocalCA
from ehrshare.network.binaries import fabric_bin_dir
from ehrshare.network.fabric.channel import ChannelAdmin
from ehrshare.network.fabric.layout import _lower, _State
from ehrshare.network.fabric.profiles import connection_profile
from ehrshare.network.fabric.spec import (
    _CC_VERSION,
    ORDERER_MSP,
    FabricNetError,
    FabricNetSpec,
    Progress,
    _sampleconfig,
    fabric_ca_problem,
    fabric_version,
    missing_binaries,
)
from ehrshare.network.supervisor import (
    free_loopback_ports,
)
from ehrshare.services.tls import issue_tls_certificate
from ehrshare.services.vault import atomic_write

__all__ = ["FabricMaterial", "write_ccaas_package"]

_log = logging.getLogger(__name__)

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


class FabricMaterial(ChannelAdmin):
    """Creating a Fabric network: crypto material, channel artefacts, configs, the package."""

    @classmethod
    def create(cls, spec: FabricNetSpec, progress: Progress | None = None) -> Self:
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
        if spec.bft and version[0] < 3:
            raise FabricNetError(
                f"SmartBFT orderers need Fabric 3.x; {bin_dir} has "
                f"{'.'.join(map(str, version))} (set EHRSHARE_FABRIC_BIN to 3.x binaries, or "
                "use Raft)"
            )
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
    ) -> Self:
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
            "orderer_type": spec.orderer_type,
            "hosts": {
                label: {"address": h.address, "netns": h.netns} for label, h in spec.hosts.items()
            },
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

        say("connection profiles (one per hospital)")
        for msp in spec.msp_ids:
            profile = connection_profile(net, msp)
            path = net.connection_profile_path(msp)
            path.write_text(json.dumps(profile, indent=2) + "\n", encoding="utf-8")

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

    def _write_tls(self, tls_dir: Path, ca: LocalCA, server_name: str, label: str) -> None:
        # On its own host a node's certificate names that host's address, not loopback.
        address = self.host(label)
        names = ("127.0.0.1", "localhost") if address == "127.0.0.1" else (address,)
        cert, key = issue_tls_certificate(
            ca, server_name, hosts=(*names, server_name), client_auth=True
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
        self._write_tls(org / "peer" / "tls", ca, self.server_name(msp), msp)
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

    def _write_orderer_org(self, ca: LocalCA) -> None:
        self._write_msp(self.org_dir(ORDERER_MSP) / "msp", ca)
        for i in range(self.spec.orderers):
            node = self._orderer_dir(i)
            ident, key = ca.issue(self._orderer_name(i), node_ou="orderer")
            self._write_msp(node / "msp", ca, signer=(ident.credentials, key.to_secret_bytes()))
            self._write_tls(node / "tls", ca, self._orderer_name(i), ORDERER_MSP)
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
                    {"Host": self.host(msp), "Port": self._state.ports["peers"][msp]["listen"]}
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
                {
                    "Host": self.host(ORDERER_MSP),
                    "Port": port,
                    "ClientTLSCert": tls,
                    "ServerTLSCert": tls,
                }
            )
        orderer: dict[str, Any] = {
            "OrdererType": spec.orderer_type,
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
        if spec.bft:
            # SmartBFT names each consenter by its own identity: id, MSP, signing certificate
            # (it verifies the consenters' signatures on blocks), client and server TLS.
            del orderer["EtcdRaft"]
            orderer["ConsenterMapping"] = [
                {
                    "ID": i + 1,
                    "Host": self.host(ORDERER_MSP),
                    "Port": self._state.ports["orderers"][i]["listen"],
                    "MSPID": ORDERER_MSP,
                    "Identity": str(self._orderer_dir(i) / "msp" / "signcerts" / "cert.pem"),
                    "ClientTLSCert": str(self._orderer_dir(i) / "tls" / "server.crt"),
                    "ServerTLSCert": str(self._orderer_dir(i) / "tls" / "server.crt"),
                }
                for i in range(spec.orderers)
            ]
            # Fabric's sample values, with our batch interval and a leader found dead in 10 s
            # rather than a minute; the forward timeout is what a transaction sent to a follower
            # only waits (clients send to every orderer).
            orderer["SmartBFT"] = {
                "RequestBatchMaxCount": spec.max_message_count,
                "RequestBatchMaxInterval": spec.batch_timeout,
                "RequestForwardTimeout": "2s",
                "RequestComplainTimeout": "10s",
                "RequestAutoRemoveTimeout": "3m0s",
                "ViewChangeResendInterval": "5s",
                "ViewChangeTimeout": "20s",
                "LeaderHeartbeatTimeout": "10s",
                "LeaderHeartbeatCount": 10,
                "CollectTimeout": "1s",
                "IncomingMessageBufferSize": 200,
                "RequestPoolSize": 100000,
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
        cc_dir = self.dir / "chaincode"
        tls_ca = LocalCA.create("ChaincodeTLS")
        tls_ca.save(cc_dir / "tls-ca")
        package_id, _ = write_ccaas_package(
            cc_dir,
            tls_ca,
            label=f"{self.spec.chaincode}_{_CC_VERSION}",
            address=f"{self.host(ORDERER_MSP)}:{self._state.ports['ccaas']}",
        )
        return package_id


def write_ccaas_package(
    directory: Path, tls_ca: LocalCA, *, label: str, address: str
) -> tuple[str, Path]:
    """Write a ccaas package for a chaincode server at ``address`` (``host:port``) into
    ``directory``: the server's TLS certificate and key from ``tls_ca`` (``server.crt``,
    ``server.key``, valid for the host), and ``<label>.tgz`` whose ``connection.json`` has the
    peers dial ``address`` over mutual TLS with a client certificate of ``tls_ca``.

    Returns the package id and the package's path. Fabric 2.x's package id is ``<label>:``
    sha256 of the package file, known before install, so the server can start before the peers.
    """
    directory.mkdir(parents=True, exist_ok=True)
    host = address.rsplit(":", 1)[0]
    names = ("127.0.0.1", "localhost") if host == "127.0.0.1" else (host,)
    server_cert, server_key = issue_tls_certificate(tls_ca, "chaincode.ehrshare", hosts=names)
    (directory / "server.crt").write_bytes(server_cert)
    atomic_write(directory / "server.key", server_key, mode=0o600)
    client, client_key = tls_ca.issue_tls_client("peers")
    connection = {
        "address": address,
        "dial_timeout": "10s",
        "tls_required": True,
        "client_auth_required": True,
        "root_cert": tls_ca.certificate_pem.decode(),
        "client_cert": client.credentials.decode(),
        "client_key": client_key.to_secret_bytes().decode(),
    }
    code = _tgz({"connection.json": json.dumps(connection, indent=2).encode()})
    metadata = json.dumps({"path": "", "type": "ccaas", "label": label}).encode()
    package = _tgz({"metadata.json": metadata, "code.tar.gz": code})
    # The package holds the peers' TLS client key for the chaincode connection.
    path = directory / f"{label}.tgz"
    atomic_write(path, package, mode=0o600)
    return f"{label}:{hashlib.sha256(package).hexdigest()}", path


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False)


def _tgz(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
