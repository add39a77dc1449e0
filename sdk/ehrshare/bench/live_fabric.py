"""The live-Fabric target of ``ehrshare bench consensus --live-fabric``: start a real Fabric
v2.1.1 network with Raft ordering configured from a round, and hand the harness one
``submit`` function per client.

The harness (``ehrshare_consensus.live``) runs the load, summarises it and asks the simulator
for its prediction; this module supplies what needs the SDK: identities from the network's own
CAs, contract calls through the Gateway-shaped client, and the network's processes. The
workload is ``RegisterRecord`` by a patient for itself with a fresh record id per transaction:
a real write of the application (five keys: record, first version, owner index, log entry,
log head) whose keys no other client touches, so concurrent clients never collide on MVCC.
One patient per client and one transaction in flight per client keep each patient's log
chain sequential.

This module must not run the load or compute figures (the harness does), must not leave a
process running (``FabricSession.close`` stops the network, also after a failure), and must
not log transaction arguments.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ehrshare.identity import LocalCA
from ehrshare_consensus.live import LiveUnavailable, Submit, TxOutcome
from ehrshare_consensus.runner import RunSpec

__all__ = [
    "FABRIC_BINARIES",
    "FabricSession",
    "FabricTarget",
    "check_fabric_tools",
    "fabric_bin_dir",
    "record_args",
    "record_submitter",
]

log = logging.getLogger(__name__)

FABRIC_BINARIES = ("peer", "orderer", "configtxgen")
PATIENT = "patient"
FUNCTION = "RegisterRecord"


def fabric_bin_dir() -> Path:
    """Where ``make tools`` puts Fabric v2.1.1: ``$EHRSHARE_FABRIC_BIN_DIR``, else
    ``<repo>/network/build/fabric21/bin``."""
    env = os.environ.get("EHRSHARE_FABRIC_BIN_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "network" / "build" / "fabric21" / "bin"


def check_fabric_tools(bin_dir: Path | None = None) -> Path:
    """The Fabric bin directory, or LiveUnavailable naming what is missing and `make tools`."""
    where = bin_dir or fabric_bin_dir()
    missing = [b for b in FABRIC_BINARIES if not os.access(where / b, os.X_OK)]
    if missing:
        raise LiveUnavailable(
            f"the Fabric binaries {', '.join(missing)} are missing from {where}: run "
            "`make tools` (it builds Fabric v2.1.1 into network/build/fabric21) or set "
            "EHRSHARE_FABRIC_BIN_DIR"
        )
    return where


class _Status(Protocol):
    @property
    def code(self) -> str: ...

    @property
    def block_number(self) -> int: ...


class _Committed(Protocol):
    def get_status(self) -> _Status: ...


class _Endorsed(Protocol):
    def submit(self) -> _Committed: ...


class _Proposal(Protocol):
    def endorse(self) -> _Endorsed: ...


class Proposer(Protocol):
    """A contract with the fine-grained flow (embedded and Fabric contracts both have it)."""

    def new_proposal(self, name: str, *args: str | bytes) -> Any: ...


def record_args(owner: str, run_tag: str, client: int, seq: int) -> tuple[str, ...]:
    """RegisterRecord's arguments for transaction ``seq`` of ``client``: a fresh record id,
    a syntactically valid CID and digest, a 64-byte capsule (the size of a real one)."""
    body = f"{run_tag}/{client}/{seq}".encode()
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"bench-{run_tag}-{client}-{seq}",
        owner,
        "bench",
        "bafkrei" + digest[:52],
        digest,
        base64.b64encode(hashlib.sha512(body).digest()).decode(),
        "1",
    )


def record_submitter(
    contract: Proposer,
    owner: str,
    run_tag: str,
    client: int,
    clock: Callable[[], float] = time.perf_counter,
) -> Submit:
    """A submit function for the harness: endorse, submit, wait for the commit status, and
    time each stage. A rejected endorsement or submission raises (the harness records it)."""

    def submit(seq: int) -> TxOutcome:
        proposal = contract.new_proposal(FUNCTION, *record_args(owner, run_tag, client, seq))
        t0 = clock()
        endorsed = proposal.endorse()
        t1 = clock()
        committed = endorsed.submit()
        t2 = clock()
        status = committed.get_status()
        t3 = clock()
        envelope = getattr(endorsed, "envelope", None)
        size = int(envelope.ByteSize()) if envelope is not None else None
        return TxOutcome(
            block=int(status.block_number),
            code=str(status.code),
            endorse_s=t1 - t0,
            submit_s=t2 - t1,
            commit_s=t3 - t2,
            tx_bytes=size,
        )

    return submit


class FabricSession:
    """A running Fabric network and its clients; close() stops every process it started."""

    def __init__(
        self,
        net: Any,
        gateways: list[Any],
        clients: list[Submit],
        root: Path,
        owns_root: bool,
        info: dict[str, Any],
        metrics: Callable[[], float | None] | None,
    ) -> None:
        self._net = net
        self._gateways = gateways
        self._clients = clients
        self._root = root
        self._owns_root = owns_root
        self._info = info
        self._metrics = metrics

    @property
    def clients(self) -> Sequence[Submit]:
        """One submit function per client."""
        return self._clients

    def commit_path_ms(self) -> float | None:
        """The peer's mean block processing time, when the network exposes its metrics."""
        if self._metrics is None:
            return None
        try:
            return self._metrics()
        except Exception as exc:  # metrics are optional: say so and predict without them
            log.warning("could not read the peer's metrics: %s", exc)
            return None

    def describe(self) -> dict[str, Any]:
        """Endpoints, versions and block cutting of the network."""
        return dict(self._info)

    def close(self) -> None:
        """Close the gateways and stop the network's processes."""
        for gw in self._gateways:
            try:
                gw.close()
            except Exception as exc:  # keep stopping the rest
                log.warning("closing a gateway failed: %s", exc)
        try:
            self._net.stop()
        finally:
            if self._owns_root:
                shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> FabricSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FabricTarget:
    """Starts Fabric v2.1.1 (Raft) configured from a RunSpec: spec.n orderers, MaxMessageCount
    = spec.batch_size, BatchTimeout = spec.batch_timeout_s; one peer per organisation."""

    name = "fabric-raft"

    def __init__(
        self,
        root: Path | None = None,
        msp_ids: Sequence[str] = ("Org1MSP",),
        bin_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.msp_ids = tuple(msp_ids)
        self.bin_dir = bin_dir

    def open(self, spec: RunSpec, clients: int) -> FabricSession:
        """Start the network, enrol and register one patient per client; stop it on failure."""
        check_fabric_tools(self.bin_dir)
        try:
            # The launcher and the peer client are separate parts of the SDK: name the missing
            # one rather than fail on a bare import error.
            fabricnet: Any = importlib.import_module("ehrshare.fabricnet")
            peer: Any = importlib.import_module("ehrshare.ledger.peer")
        except ImportError as exc:
            raise LiveUnavailable(
                f"this build has no Fabric launcher or peer client ({exc.name} is missing): "
                "the live driver needs ehrshare.fabricnet and ehrshare.ledger.peer"
            ) from exc
        owns = self.root is None
        root = Path(tempfile.mkdtemp(prefix="ehrshare-live-")) if self.root is None else self.root
        for msp in self.msp_ids:
            ca_dir = root / "ca" / msp
            if not ca_dir.is_dir():
                LocalCA.create(msp).save(ca_dir)
        net_spec = fabricnet.FabricNetSpec(
            root=root,
            msp_ids=list(self.msp_ids),
            orderers=spec.n,
            batch_timeout=f"{round(spec.batch_timeout_s * 1000)}ms",
            max_message_count=spec.batch_size,
        )
        net = fabricnet.FabricNet.create(net_spec)
        gateways: list[Any] = []
        try:
            net.start()
            conn = net.connection()
            channel, chaincode = conn["channel"], conn["chaincode"]
            run_tag = secrets.token_hex(4)
            submitters: list[Submit] = []
            for c in range(clients):
                msp = self.msp_ids[c % len(self.msp_ids)]
                ca = LocalCA.load(root / "ca" / msp)
                identity, signer = ca.issue(f"bench-{run_tag}-{c}", role=PATIENT)
                gw = peer.connect(identity, signer, peers=conn["peers"], orderers=conn["orderers"])
                gateways.append(gw)
                contract = gw.get_network(channel).get_contract(chaincode)
                contract.submit_transaction("RegisterIdentity")
                submitters.append(record_submitter(contract, identity.ibe_id, run_tag, c))
            info = {
                "fabric": "v2.1.1",
                "orderers": spec.n,
                "consensus": "etcdraft",
                "batch_timeout": net_spec.batch_timeout,
                "max_message_count": spec.batch_size,
                "msp_ids": list(self.msp_ids),
                "channel": channel,
                "chaincode": chaincode,
                "workload": f"{FUNCTION} by a patient for itself, fresh record id per tx",
            }
            metrics = getattr(net, "peer_block_processing_ms", None)
            return FabricSession(net, gateways, submitters, root, owns, info, metrics)
        except BaseException:
            for gw in gateways:
                try:
                    gw.close()
                except Exception as exc:
                    log.warning("closing a gateway failed: %s", exc)
            net.stop()
            if owns:
                shutil.rmtree(root, ignore_errors=True)
            raise
