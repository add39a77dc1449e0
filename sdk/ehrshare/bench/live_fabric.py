"""The live-Fabric targets of ``ehrshare bench consensus --live-fabric``: start a real Fabric
network with Raft (2.3+) or SmartBFT (3.x, four orderers) ordering configured from a round, and
hand the harness one ``submit`` function per client (:func:`fabric_targets`).

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

import concurrent.futures
import hashlib
import logging
import re
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ehrshare.closing import Closing
from ehrshare.contract.client import EhrContract, register_record_args
from ehrshare.identity import LocalCA
from ehrshare_consensus.live import LiveUnavailable, Submit, TxOutcome
from ehrshare_consensus.runner import RunSpec

if TYPE_CHECKING:
    from ehrshare.ledgers import FabricBackend
    from ehrshare.network.fabric import FabricNet

__all__ = [
    "FabricSession",
    "FabricTarget",
    "check_fabric_tools",
    "fabric_targets",
    "peer_commit_path_ms",
    "record_args",
    "record_submitter",
]

log = logging.getLogger(__name__)

PATIENT = "patient"
MSP_ID = "Org1MSP"
FUNCTION = "RegisterRecord"


def check_fabric_tools() -> Path:
    """The Fabric bin directory (``network.binaries.fabric_bin_dir()``), or LiveUnavailable
    naming what is missing and `make tools`."""
    # Imported here: the launcher is heavy, and a plain `ehrshare bench consensus` (simulated)
    # should not pay for it.
    from ehrshare.network import fabric as fabricnet
    from ehrshare.network.binaries import fabric_bin_dir

    where = fabric_bin_dir()
    missing = fabricnet.missing_binaries(where)
    if missing:
        raise LiveUnavailable(
            f"the Fabric binaries {', '.join(missing)} are missing from {where}: run "
            "`make tools` (it builds Fabric 2.3 into network/build/fabric23) or set "
            "EHRSHARE_FABRIC_BIN"
        )
    return where


# What Fabric's peer (2.1 and 2.3) logs at INFO for every block it commits (txvalidator/v20 and
# kvledger): its validation time, then the block store and state DB writes. Their sum is the
# commit path between the orderer's Deliver and the client's commit notification.
_VALIDATED = re.compile(r"\[(?P<ch>[^\]\[\s]+)\] Validated block \[(?P<b>\d+)\] in (?P<ms>\d+)ms")
_COMMITTED = re.compile(
    r"\[(?P<ch>[^\]\[\s]+)\] Committed block \[(?P<b>\d+)\] with \d+ transaction\(s\) "
    r"in (?P<ms>\d+)ms"
)


def peer_commit_path_ms(log_text: str, channel: str, blocks: Sequence[int]) -> float | None:
    """Median over ``blocks`` of the peer's logged validation + commit time (ms) on
    ``channel``; None if the log holds neither line for any of them."""
    wanted = set(blocks)
    validated: dict[int, int] = {}
    committed: dict[int, int] = {}
    for line in log_text.splitlines():
        for pattern, into in ((_VALIDATED, validated), (_COMMITTED, committed)):
            m = pattern.search(line)
            if m and m["ch"] == channel and int(m["b"]) in wanted:
                into[int(m["b"])] = int(m["ms"])
    both = [validated[b] + committed[b] for b in wanted if b in validated and b in committed]
    return float(statistics.median(both)) if both else None


class Proposer(Protocol):
    """A contract with the fine-grained flow (embedded and Fabric contracts both have it)."""

    def new_proposal(self, name: str, *args: str | bytes) -> Any: ...


def record_args(owner: str, run_tag: str, client: int, seq: int) -> tuple[str, ...]:
    """RegisterRecord's arguments for transaction ``seq`` of ``client``: a fresh record id,
    a syntactically valid CID and digest, a 64-byte capsule (the size of a real one)."""
    body = f"{run_tag}/{client}/{seq}".encode()
    digest = hashlib.sha256(body).hexdigest()
    return register_record_args(
        record_id=f"bench-{run_tag}-{client}-{seq}",
        owner=owner,
        label="bench",
        cid="bafkrei" + digest[:52],
        sha256=digest,
        capsule=hashlib.sha512(body).digest(),
        format_version="1",
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


class FabricSession(Closing):
    """A running Fabric network and its clients; close() stops every process it started."""

    def __init__(
        self,
        net: FabricNet,
        backend: FabricBackend,
        clients: list[Submit],
        root: Path,
        info: dict[str, Any],
        peer_logs: Sequence[Path],
    ) -> None:
        self._net = net
        self._backend = backend
        self._clients = clients
        self._root = root
        self._info = info
        self._peer_logs = list(peer_logs)

    @property
    def clients(self) -> Sequence[Submit]:
        """One submit function per client."""
        return self._clients

    def commit_path_ms(self, blocks: Sequence[int]) -> float | None:
        """The median of the peers' logged validation + commit times for these blocks (the
        slowest peer's figure when there are several: the client waits for its own org's)."""
        found = []
        for path in self._peer_logs:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                log.warning("cannot read the peer log %s: %s", path, exc.strerror)
                continue
            value = peer_commit_path_ms(text, str(self._info["channel"]), blocks)
            if value is not None:
                found.append(value)
        return max(found) if found else None

    def describe(self) -> dict[str, Any]:
        """Endpoints, versions and block cutting of the network."""
        return dict(self._info)

    def close(self) -> None:
        """Close the gateways, stop the network's processes and remove its directory."""
        _teardown(self._backend, self._net, self._root)


def _teardown(backend: FabricBackend | None, net: FabricNet | None, root: Path) -> None:
    """What a session or a failed start leaves: close the gateways, stop the processes, remove
    the temporary directory."""
    try:
        if backend is not None:
            backend.close()
        if net is not None:
            net.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fabric_targets() -> dict[str, FabricTarget]:
    """The live targets by protocol: Raft, and SmartBFT (which says why it cannot run before
    3.x binaries; see :meth:`FabricTarget.unavailable`)."""
    return {t.name: t for t in (FabricTarget(), FabricTarget(orderer_type="BFT"))}


class FabricTarget:
    """Starts Fabric configured from a RunSpec: spec.n orderers of ``orderer_type`` (Raft, or
    SmartBFT ×4 on 3.x), MaxMessageCount = spec.batch_size, BatchTimeout =
    spec.batch_timeout_s; one organisation and its peer. Clients connect as the network's
    profile would (``client``: the peers' Gateway on >= 2.4, which sends a SmartBFT transaction
    to every orderer). Each network lives in a temporary directory removed at close."""

    def __init__(self, orderer_type: str = "etcdraft") -> None:
        self.orderer_type = orderer_type
        self.name = "fabric-smartbft" if orderer_type == "BFT" else "fabric-raft"

    def unavailable(self) -> str | None:
        """Why this target cannot run with the binaries given (None: it can): SmartBFT needs
        Fabric 3.x."""
        if self.orderer_type != "BFT":
            return None
        from ehrshare.network import fabric as fabricnet
        from ehrshare.network.binaries import fabric_bin_dir

        where = fabric_bin_dir()
        if fabricnet.missing_binaries(where):
            return None  # open() says what is missing, as for Raft
        version = fabricnet.fabric_version(where)
        if version[0] >= 3:
            return None
        return (
            f"SmartBFT ordering exists only from Fabric 3.0; {where} has "
            f"{'.'.join(map(str, version))}: point EHRSHARE_FABRIC_BIN and "
            "EHRSHARE_FABRIC_SAMPLECONFIG at Fabric 3.x release binaries for this row"
        )

    def open(self, spec: RunSpec, clients: int) -> FabricSession:
        """Start the network, enrol and register one patient per client; stop it on failure."""
        bin_dir = check_fabric_tools()
        # Imported here: the launcher and the gRPC client are heavy, and a plain `ehrshare
        # bench consensus` (simulated) should not pay for them.
        from ehrshare.ledgers import FabricBackend
        from ehrshare.network import fabric as fabricnet

        root = Path(tempfile.mkdtemp(prefix="ehrshare-live-"))
        net: fabricnet.FabricNet | None = None
        backend: FabricBackend | None = None
        try:
            ca = LocalCA.create(MSP_ID)
            ca.save(root / "ca" / MSP_ID)
            net_spec = fabricnet.FabricNetSpec(
                root=root,
                msp_ids=(MSP_ID,),
                orderers=spec.n,
                batch_timeout=f"{round(spec.batch_timeout_s * 1000)}ms",
                max_message_count=spec.batch_size,
                bin_dir=bin_dir,
                orderer_type=self.orderer_type,
            )
            net = fabricnet.FabricNet.create(net_spec)
            net.start(timeout=180 if net_spec.bft else 120)
            conn = net.connection()
            backend = FabricBackend.from_connection(conn)
            channel, chaincode = conn["channel"], conn["chaincode"]
            run_tag = secrets.token_hex(4)
            contracts: list[tuple[Any, str]] = []
            for c in range(clients):
                identity, signer = ca.issue(f"bench-{run_tag}-{c}", role=PATIENT)
                # Peers and orderers require mutual TLS: a TLS client key of its own, as a
                # member's wallet holds.
                tls_identity, tls_key = ca.issue_tls_client(f"bench-{run_tag}-{c}")
                gw = backend.connect(
                    identity,
                    signer,
                    client_tls=(tls_identity.credentials, tls_key.to_secret_bytes()),
                )
                contracts.append((gw.get_network(channel).get_contract(chaincode), identity.ibe_id))
            # All at once: distinct identities write distinct keys, so the registrations share
            # blocks instead of waiting one batch timeout each.
            with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
                list(pool.map(lambda ci: EhrContract(ci[0]).register_identity(), contracts))
            submitters: list[Submit] = [
                record_submitter(contract, ibe_id, run_tag, c)
                for c, (contract, ibe_id) in enumerate(contracts)
            ]
            info = {
                "fabric": ".".join(map(str, net.version)),
                "consensus": self.orderer_type,
                "client": conn.get("client", "peer"),
                "orderer_quorum": conn.get("orderer_quorum"),
                "orderers": spec.n,
                "batch_timeout": net_spec.batch_timeout,
                "max_message_count": spec.batch_size,
                "msp_ids": [MSP_ID],
                "peers": [p["address"] for p in conn["peers"]],
                "orderer_addresses": [o["address"] for o in conn["orderers"]],
                "channel": channel,
                "chaincode": chaincode,
                "endorsers": conn.get("endorsers"),
                "workload": f"{FUNCTION} by a patient for itself, fresh record id per tx",
            }
            logs = sorted((Path(net.dir) / "logs").glob("peer*.log"))
            return FabricSession(net, backend, submitters, root, info, logs)
        except BaseException:
            _teardown(backend, net, root)
            raise
