"""What Fabric network to build (:class:`FabricNetSpec`), the one error of this package, and
what the Fabric binaries in a directory can do (:func:`fabric_version`, :func:`missing_binaries`,
:func:`fabric_ca_problem`). Runs nothing but ``peer version``; writes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ehrshare.errors import Unavailable
from ehrshare.network.binaries import fabric_bin_dir
from ehrshare.network.netns import NodeHost

__all__ = [
    "GATEWAY_SINCE",
    "ORDERER_MSP",
    "ORDERER_TYPES",
    "FabricNetError",
    "FabricNetSpec",
    "NodeHost",
    "Progress",
    "bft_quorum",
    "default_client",
    "fabric_ca_problem",
    "fabric_version",
    "missing_binaries",
]

_log = logging.getLogger(__name__)

Progress = Callable[[str], None]
"""What a long step reports its progress to (one line per stage)."""

ORDERER_MSP: Final = "OrdererMSP"
_P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_BINARIES: Final = ("peer", "orderer", "configtxgen")
_ENDORSEMENT_RULES: Final = ("MAJORITY", "ANY")
ORDERER_TYPES: Final = ("etcdraft", "BFT")
"""Consensus of the ordering service: Raft (1 or 3 orderers) or SmartBFT (4, Fabric 3.x only)."""
GATEWAY_SINCE: Final = (2, 4)
"""The first Fabric release whose peers run the Gateway service."""
_CC_VERSION: Final = "1"
_CC_SEQUENCE: Final = "1"


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


def default_client(version: tuple[int, int, int]) -> str:
    """The profile's ``ledger.client`` for a network of this Fabric version: ``gateway`` where
    the peers run the Gateway service (2.4 and later), else ``peer`` (the client-side one)."""
    return "gateway" if version[:2] >= GATEWAY_SINCE else "peer"


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
    orderer_type: str = "etcdraft"
    hosts: Mapping[str, NodeHost] = field(default_factory=dict)
    """Per hospital MSP, and :data:`ORDERER_MSP` for the orderers and the chaincode server,
    where its nodes run; empty: everything on 127.0.0.1 in this namespace."""

    @property
    def bft(self) -> bool:
        """Whether the orderers run SmartBFT (Fabric 3.x): clients broadcast to every orderer
        and wait for a quorum of acknowledgements (see :func:`bft_quorum`)."""
        return self.orderer_type == "BFT"

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
        if self.orderer_type not in ORDERER_TYPES:
            raise FabricNetError(f"orderer_type {self.orderer_type!r} is not etcdraft or BFT")
        if self.bft and self.orderers != 4:
            raise FabricNetError(f"orderers is {self.orderers}; SmartBFT runs with 4 here (f=1)")
        if not self.bft and self.orderers not in (1, 3):
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
        if self.hosts:
            missing = [m for m in (*self.msp_ids, ORDERER_MSP) if m not in self.hosts]
            extra = [m for m in self.hosts if m not in (*self.msp_ids, ORDERER_MSP)]
            if missing or extra:
                raise FabricNetError(f"hosts: missing {missing}, unknown {extra}")
            for label, host in self.hosts.items():
                try:
                    ipaddress.IPv4Address(host.address)
                except ValueError:
                    raise FabricNetError(
                        f"hosts: {label}'s address {host.address!r} is not an IPv4 address"
                    ) from None


def bft_quorum(orderers: int) -> int:
    """How many of ``orderers`` SmartBFT orderers must acknowledge a broadcast: 2f+1 of 3f+1
    (f the faults tolerated), so at least f+1 honest ones hold the transaction."""
    f = (orderers - 1) // 3
    return orderers - f


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
