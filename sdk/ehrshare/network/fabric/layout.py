"""Where everything of a Fabric network is (:class:`FabricLayout`: directories, ports, addresses,
TLS material by organisation) and its recorded state, ``<consortium>/fabric/network.json``
(ports, the steps of the first start that are done, the pids of its processes).

The other modules of this package add to :class:`FabricLayout`: :mod:`.channel` (the ``peer``
CLI, joining and deploying), :mod:`.material` (creating the network) and :mod:`.launcher` (its
processes). This module runs nothing; it writes only ``network.json``.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Self

from ehrshare.network.fabric.spec import (
    ORDERER_MSP,
    FabricNetError,
    FabricNetSpec,
    NodeHost,
    bft_quorum,
    default_client,
)
from ehrshare.services.vault import atomic_write

__all__ = ["STATE_FILE", "FabricLayout"]

_log = logging.getLogger(__name__)

STATE_FILE: Final = "network.json"
# 2: channel participation (no system channel), per-orderer admin ports, the Fabric version.
_STATE_VERSION: Final = 2


@dataclass
class _Proc:
    """A process the launcher started: pid plus its kernel start time (pids are reused)."""

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
    # Organisations that joined later keep their material in their own directory.
    org_dirs: dict[str, str] = field(default_factory=dict)


def _lower(msp: str) -> str:
    return msp.lower()


class FabricLayout:
    """A Fabric network under ``<consortium>/fabric``: its layout and recorded state."""

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
            orderer_type=str(spec.get("orderer_type", "etcdraft")),
            hosts={
                label: NodeHost(str(h["address"]), h.get("netns"))
                for label, h in dict(spec.get("hosts") or {}).items()
            },
        )
        # The Fabric version the network was created for (``peer version`` then).
        major, minor, patch = (int(x) for x in str(spec["fabric_version"]).split("."))
        self.version = (major, minor, patch)

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
        """An organisation's directory (``msp``, ``peer``, ``admin`` below it): under
        ``fabric/orgs``, or for a hospital that joined later its own (``<hospital>/fabric``)."""
        joined = self._state.org_dirs.get(msp)
        return Path(joined) if joined is not None else self.dir / "orgs" / msp

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

    def host(self, label: str) -> str:
        """The address an organisation's nodes bind (``label``: a hospital MSP, or
        :data:`ORDERER_MSP` for the orderers and the chaincode server): its host's, or
        127.0.0.1 when the network runs in one namespace."""
        placed = self.spec.hosts.get(label)
        return "127.0.0.1" if placed is None else placed.address

    def netns(self, label: str) -> str | None:
        """The network namespace an organisation's nodes run in (None: this process's)."""
        placed = self.spec.hosts.get(label)
        return None if placed is None else placed.netns

    def peer_address(self, msp: str) -> str:
        """``<host>:<port>`` of a hospital's peer."""
        return f"{self.host(msp)}:{self._state.ports['peers'][msp]['listen']}"

    def orderer_address(self, index: int = 0) -> str:
        """``<host>:<port>`` of an orderer (0-based)."""
        return f"{self.host(ORDERER_MSP)}:{self._state.ports['orderers'][index]['listen']}"

    def orderer_admin_address(self, index: int = 0) -> str:
        """``<host>:<port>`` of an orderer's admin endpoint (channel participation API,
        HTTPS with mutual TLS; ``osnadmin -o``)."""
        return f"{self.host(ORDERER_MSP)}:{self._state.ports['orderers'][index]['admin']}"

    def orderer_admin_tls(self) -> tuple[Path, Path]:
        """(certificate, key) of the orderer organisation admin's TLS client certificate: the
        only client the orderers' admin endpoints accept (their client CA is the orderer
        organisation's, not a hospital's)."""
        tls = self.org_dir(ORDERER_MSP) / "admin" / "tls"
        return tls / "client.crt", tls / "client.key"

    def connection_profile_path(self, msp: str) -> Path:
        """Fabric's common connection profile for ``msp``'s clients, next to ``network.json``
        (written by create; see :mod:`ehrshare.network.fabric.profiles`)."""
        return self.dir / f"connection-{msp}.json"

    @property
    def genesis_block(self) -> Path:
        """The channel's genesis block (configtxgen): what orderers and peers join with."""
        return self.dir / f"{self.spec.channel}.block"

    @property
    def endorsers(self) -> int:
        """How many organisations' peers must endorse a transaction under the policy."""
        n = len(self.spec.msp_ids)
        return 1 if self.spec.endorsement == "ANY" else n // 2 + 1

    def _orderer_name(self, index: int) -> str:
        return f"orderer{index + 1}.ordererorg"

    def _orderer_dir(self, index: int) -> Path:
        return self.org_dir(ORDERER_MSP) / f"orderer{index + 1}"

    @classmethod
    def load(cls, root: Path) -> Self:
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
                org_dirs=dict(data.get("org_dirs") or {}),
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
        if s.org_dirs:
            data["org_dirs"] = s.org_dirs
        atomic_write(self.dir / STATE_FILE, json.dumps(data, indent=2).encode(), mode=0o644)

    def _mark(self, step: str) -> None:
        if step not in self._state.done:
            self._state.done.append(step)
            self._save()

    @property
    def deployed(self) -> bool:
        """Whether the channel exists and the chaincode is committed on it."""
        return "commit" in self._state.done

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
            "orderer_type": self.spec.orderer_type,
            # SmartBFT: a broadcast goes to every orderer and needs this many acknowledgements.
            "orderer_quorum": bft_quorum(self.spec.orderers) if self.spec.bft else None,
            # Peers and orderers refuse clients without a consortium TLS client certificate.
            "client_auth": True,
            # The peers' Gateway service where the release has one, else the client-side one.
            "client": default_client(self.version),
        }

    def __repr__(self) -> str:
        return f"FabricNet({self.dir}, orgs={list(self.spec.msp_ids)})"

    # --- what the launcher provides (declared here: the deployment waits on its processes) ---

    def _check_alive(self) -> None:
        """Raise :class:`FabricNetError` naming a process of the network that died."""
        raise NotImplementedError

    def _wait_leader(self, channel: str, deadline: float) -> None:
        """Wait until every orderer knows a Raft leader of ``channel``."""
        raise NotImplementedError
