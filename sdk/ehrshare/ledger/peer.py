"""The Fabric client for peers without a Gateway service (Fabric < 2.4): the Gateway's work, here.

Fabric 2.1–2.3 peers have no ``gateway.Gateway`` service, so :class:`LocalGateway` does on the
client what Fabric's gateway does on the peer (``internal/pkg/gateway``) and what
fabric-sdk-go/-node do before it, and plugs into
:class:`ehrshare.ledger.fabric.FabricGateway` as its
:class:`~ehrshare.ledger.fabric.GatewayCalls`:

- evaluate: ``protos.Endorser/ProcessProposal`` on one peer, the caller's own organisation first;
- endorse: ProcessProposal on the endorsing peers (every peer, or ``endorsers`` organisations, one
  peer each, own organisation first, another organisation standing in for an unreachable one),
  every response 200 and every ``proposal_response_payload`` byte-identical, then the transaction
  envelope assembled as ``protoutil.CreateSignedTx`` does (:func:`assemble_transaction`);
- submit: ``orderer.AtomicBroadcast/Broadcast`` of the signed envelope, the next orderer when one
  is unreachable or has no leader;
- commit status: one ``protos.Deliver/DeliverFiltered`` listener per channel, started and
  positioned before the channel's first broadcast, reconnecting from the next block after a
  peer restart, that records each transaction's validation code and block;
- chaincode events: ``protos.Deliver/Deliver`` full blocks, events of VALID transactions of one
  chaincode (:func:`block_chaincode_events`), resumable from a checkpoint.

Failures raise :class:`~ehrshare.ledger.fabric.GatewayFailure` shaped as the Gateway's errors, so
the SDK sees the same error types and messages on both paths (a chaincode refusal's message is
the chaincode's own). Tested against a real Fabric 2.3 peer and orderer (tests/fabric).

This module must not hold private keys beyond the :class:`~ehrshare.identity.Signer` it was
given (the client TLS key excepted, handed to gRPC), must not sign a transaction it did not
propose, must not log arguments or results (they may be personal data), and must not leave a
thread or channel behind after :meth:`FabricGateway.close`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.orderer import ab_pb2_grpc as _ab_pb2_grpc
from fabric_protos.peer import chaincode_event_pb2 as _event_pb2
from fabric_protos.peer import events_pb2 as _events_pb2
from fabric_protos.peer import events_pb2_grpc as _events_pb2_grpc
from fabric_protos.peer import peer_pb2_grpc as _peer_pb2_grpc
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import proposal_response_pb2 as _response_pb2
from fabric_protos.peer import transaction_pb2 as _transaction_pb2

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import NONCE_SIZE, serialize_identity
from ehrshare.ledger.fabric import (
    Clock,
    EventStream,
    FabricGateway,
    GatewayFailure,
    Timeouts,
    chaincode_action_of,
    dial,
)

__all__ = [
    "LocalGateway",
    "OrdererEndpoint",
    "PeerEndpoint",
    "assemble_transaction",
    "block_chaincode_events",
    "connect",
    "seek_envelope",
    "skip_through",
]

common: Any = _common_pb2
gw: Any = _gateway_pb2
ab: Any = _ab_pb2
eventpb: Any = _event_pb2
eventspb: Any = _events_pb2
proposalpb: Any = _proposal_pb2
responsepb: Any = _response_pb2
txpb: Any = _transaction_pb2
_ab_grpc: Any = _ab_pb2_grpc
_events_grpc: Any = _events_pb2_grpc
_peer_grpc: Any = _peer_pb2_grpc

_log = logging.getLogger(__name__)

_MAX_BLOCK = 2**64 - 1
_VALID = int(txpb.TxValidationCode.Value("VALID"))
_ENDORSER_TRANSACTION = int(common.HeaderType.Value("ENDORSER_TRANSACTION"))
_TRANSACTIONS_FILTER = int(common.BlockMetadataIndex.Value("TRANSACTIONS_FILTER"))
_SUCCESS = int(common.Status.Value("SUCCESS"))
_SERVICE_UNAVAILABLE = int(common.Status.Value("SERVICE_UNAVAILABLE"))
# A peer or orderer that is down or too slow: try the next one. Anything else is an answer.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_COMMITS_KEPT = 65536  # validation codes remembered per channel (oldest forgotten first)
_RETRY_MAX = 5.0  # seconds between a commit listener's reconnection attempts, at most
_FOLLOWER_WAIT = 5.0  # seconds a commit waits for another endorsing peer to have its block
# In gRPC's UNAVAILABLE text when TLS refused us: "Handshake failed" under TLS 1.2 (Fabric 2.1);
# under TLS 1.3 (Fabric >= 2.3) the server refuses the client certificate after the client's
# half of the handshake, and its alert surfaces on the first read as TSI_DATA_CORRUPTED.
_TLS_REFUSED = ("handshake failed", "tsi_data_corrupted")


@dataclass(frozen=True)
class PeerEndpoint:
    """A peer: ``host:port``, its organisation's MSP id, its TLS CA and the name on its cert."""

    address: str
    msp_id: str
    tls_ca_pem: bytes
    server_name: str | None = None


@dataclass(frozen=True)
class OrdererEndpoint:
    """An orderer: ``host:port``, its TLS CA and the name on its certificate."""

    address: str
    tls_ca_pem: bytes
    server_name: str | None = None


def connect(
    identity: Identity,
    signer: Signer,
    *,
    peers: Sequence[PeerEndpoint],
    orderers: Sequence[OrdererEndpoint],
    endorsers: int | None = None,
    client_tls: tuple[bytes, bytes] | None = None,
    timeouts: Timeouts | None = None,
    clock: Clock | None = None,
) -> FabricGateway:
    """A gateway to Fabric peers and orderers that have no Gateway service (Fabric < 2.4).

    ``endorsers`` is how many organisations endorse a submitted transaction, one peer each, the
    caller's own organisation first (None: every peer given endorses; the consortium's MAJORITY
    of three organisations needs 2). ``client_tls`` is (certificate PEM, key PEM) of a TLS
    client certificate (clientAuth) when peers and orderers require mutual TLS; Deliver
    requests then carry its sha256, as Fabric's binding check wants. The gateway dials every
    endpoint now (gRPC connects lazily) and closes the channels and its listener threads in
    :meth:`FabricGateway.close`.
    """
    clock = clock or time.time_ns
    local = LocalGateway(
        identity,
        signer,
        peers=peers,
        orderers=orderers,
        endorsers=endorsers,
        client_tls=client_tls,
        clock=clock,
    )
    return FabricGateway(identity, signer, local, timeouts or Timeouts(), clock)


def seek_envelope(
    creator: bytes,
    signer: Signer,
    *,
    channel: str,
    start: Any,
    timestamp_ns: int,
    stop: Any = None,
    tls_cert_hash: bytes = b"",
) -> Any:
    """A signed ``DELIVER_SEEK_INFO`` envelope (protoutil.CreateSignedEnvelopeWithTLSBinding).

    Seeks from ``start`` to ``stop`` (default: no end), blocking until blocks are ready. The
    peer checks the signature against the channel's Readers policy, the timestamp against its
    time window, and under mutual TLS that ``tls_cert_hash`` is sha256 of the client TLS cert.
    """
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    channel_header = common.ChannelHeader(
        type=common.HeaderType.Value("DELIVER_SEEK_INFO"),
        channel_id=channel,
        epoch=0,
        tls_cert_hash=tls_cert_hash,
    )
    channel_header.timestamp.seconds = seconds
    channel_header.timestamp.nanos = nanos
    stop = stop or ab.SeekPosition(specified=ab.SeekSpecified(number=_MAX_BLOCK))
    seek = ab.SeekInfo(
        start=start, stop=stop, behavior=ab.SeekInfo.SeekBehavior.Value("BLOCK_UNTIL_READY")
    )
    payload = common.Payload(
        header=common.Header(
            channel_header=channel_header.SerializeToString(),
            signature_header=common.SignatureHeader(
                creator=creator, nonce=os.urandom(NONCE_SIZE)
            ).SerializeToString(),
        ),
        data=seek.SerializeToString(),
    ).SerializeToString()
    return common.Envelope(payload=payload, signature=signer.sign(payload))


def assemble_transaction(proposal_bytes: bytes, responses: Sequence[Any]) -> Any:
    """The unsigned transaction envelope for endorsed ``responses`` (protoutil.CreateSignedTx).

    ``Payload{header = the proposal's header, data = Transaction{actions = [TransactionAction{
    header = its signature header, payload = ChaincodeActionPayload{chaincode_proposal_payload
    = the proposal's payload without its transient map, action = ChaincodeEndorsedAction{
    proposal_response_payload, endorsements}}}]}}``. The caller has checked that the responses
    succeeded and agree (:meth:`LocalGateway.endorse`); the signature is the submitter's.
    """
    if not responses:
        raise ValueError("a transaction needs at least one endorsement")
    proposal = proposalpb.Proposal.FromString(proposal_bytes)
    header = common.Header.FromString(proposal.header)
    proposal_payload = proposalpb.ChaincodeProposalPayload.FromString(proposal.payload)
    # The transient map carries private inputs for the endorsers only; never into the block.
    proposal_payload.ClearField("TransientMap")
    action_payload = txpb.ChaincodeActionPayload(
        chaincode_proposal_payload=proposal_payload.SerializeToString(),
        action=txpb.ChaincodeEndorsedAction(
            proposal_response_payload=responses[0].payload,
            endorsements=[r.endorsement for r in responses],
        ),
    )
    transaction = txpb.Transaction(
        actions=[
            txpb.TransactionAction(
                header=header.signature_header, payload=action_payload.SerializeToString()
            )
        ]
    )
    payload = common.Payload(header=header, data=transaction.SerializeToString())
    return common.Envelope(payload=payload.SerializeToString())


def block_chaincode_events(block: Any, chaincode: str) -> list[Any]:
    """The chaincode events (``peer.ChaincodeEvent``) of ``chaincode`` in a block, in order.

    Only transactions the peer validated as VALID count (block metadata TRANSACTIONS_FILTER);
    entries that are not endorser transactions or do not parse are skipped.
    """
    metadata = block.metadata.metadata
    flags = bytes(metadata[_TRANSACTIONS_FILTER]) if len(metadata) > _TRANSACTIONS_FILTER else b""
    events: list[Any] = []
    for index, raw in enumerate(block.data.data):
        if index >= len(flags) or flags[index] != _VALID:
            continue
        try:
            payload = common.Payload.FromString(common.Envelope.FromString(raw).payload)
            channel_header = common.ChannelHeader.FromString(payload.header.channel_header)
            if channel_header.type != _ENDORSER_TRANSACTION:
                continue
            transaction = txpb.Transaction.FromString(payload.data)
            for action in transaction.actions:
                chaincode_action = chaincode_action_of(action)
                if not chaincode_action.events:
                    continue
                event = eventpb.ChaincodeEvent.FromString(chaincode_action.events)
                if event.chaincode_id == chaincode:
                    events.append(event)
        except Exception:  # one odd transaction must not stop the stream
            _log.debug("skipping a block entry that does not parse")
    return events


def skip_through(events: list[Any], transaction_id: str) -> list[Any]:
    """The events after the last one of ``transaction_id`` (a checkpoint's resume point).

    If the transaction is not among them, every event is kept: repeating events a consumer has
    seen is recoverable (they carry transaction ids), losing them is not.
    """
    for index in range(len(events) - 1, -1, -1):
        if events[index].tx_id == transaction_id:
            return events[index + 1 :]
    _log.warning("checkpoint transaction %s is not in its block; replaying it", transaction_id)
    return events


class _Peer:
    """One peer: its endpoint and the gRPC channel the gateway opened to it."""

    def __init__(self, endpoint: PeerEndpoint, channel: grpc.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.endorser = _peer_grpc.EndorserStub(channel)
        self.deliver = _events_grpc.DeliverStub(channel)

    @property
    def label(self) -> str:
        return f"peer {self.endpoint.address} ({self.endpoint.msp_id})"

    def detail(self, message: str) -> Any:
        return gw.ErrorDetail(
            address=self.endpoint.address, msp_id=self.endpoint.msp_id, message=message
        )


def _tls_cert_hash(cert_pem: bytes) -> bytes:
    """sha256 of a TLS client certificate's DER, which Deliver requests carry under mutual TLS.

    Refuses a certificate without the clientAuth extended key usage, as the services do
    (``ClientTls.for_member``): a ledger signing certificate (no extended key usage, which a
    Fabric node would take) must not open TLS connections, and a server-only one would be
    refused in the handshake without a word why.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError("client_tls: the certificate is not a PEM X.509 certificate") from None
    try:
        usage = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usage = []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ValueError(
            f"client_tls: the certificate of {cert.subject.rfc4514_string()} has no clientAuth "
            "extended key usage (a ledger signing certificate may not be used for TLS)"
        )
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


def _text(exc: grpc.RpcError) -> str:
    return (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""


def _chaincode_failure(peer: _Peer, response: Any, stage: str) -> GatewayFailure:
    # The Gateway's wording, so _stage_error lifts the chaincode's own message out of it.
    said = f"chaincode response {response.response.status}, {response.response.message}"
    return GatewayFailure(
        grpc.StatusCode.ABORTED,
        f"{stage} call to {peer.label} returned error: {said}",
        (peer.detail(said),),
    )


def _unreachable(text: str, failed: Sequence[Any], where: str) -> GatewayFailure:
    """No endpoint answered: UNAVAILABLE (an outage, worth retrying), unless every one failed
    in the TLS handshake. That is configuration, not an outage: peers and orderers that require
    mutual TLS refused the client certificate (none, or not from a consortium CA), or the TLS
    CA given is not theirs; retrying or restarting the network would not help."""
    if failed and all(any(m in str(d.message).lower() for m in _TLS_REFUSED) for d in failed):
        return GatewayFailure(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{text}: every TLS handshake failed (peers and orderers that require mutual TLS "
            "take only a TLS client certificate from a consortium CA; or the profile's tls_ca "
            "is not the CA of their certificates)",
            tuple(failed),
        )
    return GatewayFailure(grpc.StatusCode.UNAVAILABLE, text, tuple(failed), where=where)


def _orderer_detail(orderer: OrdererEndpoint, message: str) -> Any:
    return gw.ErrorDetail(address=orderer.address, message=message)


class LocalGateway:
    """:class:`~ehrshare.ledger.fabric.GatewayCalls` done by the client: see the module doc.

    Made by :func:`connect`; it owns its gRPC channels and commit listeners and releases them
    in :meth:`close`.
    """

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        *,
        peers: Sequence[PeerEndpoint],
        orderers: Sequence[OrdererEndpoint],
        endorsers: int | None,
        client_tls: tuple[bytes, bytes] | None,
        clock: Clock,
    ) -> None:
        if not peers:
            raise ValueError("connect needs at least one peer")
        if not orderers:
            raise ValueError("connect needs at least one orderer")
        endpoints: list[PeerEndpoint | OrdererEndpoint] = [*peers, *orderers]
        for endpoint in endpoints:
            if not endpoint.address:
                raise ValueError("an endpoint has an empty address")
            if not endpoint.tls_ca_pem:
                raise ValueError(f"endpoint {endpoint.address} has no TLS CA certificate")
        for peer_endpoint in peers:
            if not peer_endpoint.msp_id:
                raise ValueError(f"peer {peer_endpoint.address} has no MSP id")
        orgs: list[str] = []
        for peer_endpoint in sorted(peers, key=lambda p: p.msp_id != identity.msp_id):
            if peer_endpoint.msp_id not in orgs:
                orgs.append(peer_endpoint.msp_id)
        if endorsers is not None and not 1 <= endorsers <= len(orgs):
            raise ValueError(
                f"endorsers is {endorsers}; the peers given belong to {len(orgs)} organisations"
            )
        self._signer = signer
        self._creator = serialize_identity(identity)
        self._clock = clock
        self._endorsers = endorsers
        cert_pem, key_pem = client_tls if client_tls is not None else (None, None)
        self._tls_cert_hash = b""
        if cert_pem is not None:
            self._tls_cert_hash = _tls_cert_hash(cert_pem)

        def open_channel(address: str, ca: bytes, name: str | None) -> grpc.Channel:
            return dial(
                address,
                tls_ca_pem=ca,
                server_name=name,
                client_cert_pem=cert_pem,
                client_key_pem=key_pem,
            )

        # Own organisation first (a stable sort keeps the caller's order within each group).
        self._peers = [
            _Peer(p, open_channel(p.address, p.tls_ca_pem, p.server_name))
            for p in sorted(peers, key=lambda p: p.msp_id != identity.msp_id)
        ]
        self._orgs = orgs
        self._orderers = []
        for o in orderers:
            channel = open_channel(o.address, o.tls_ca_pem, o.server_name)
            self._orderers.append((o, channel, _ab_grpc.AtomicBroadcastStub(channel)))
        self._orderer_first = 0
        self._lock = threading.Lock()
        self._listeners: dict[str, _CommitListener] = {}
        # Height watchers of the other peers that may endorse (see commit_status).
        self._followers: dict[str, list[_CommitListener]] = {}
        self._events_peer = 0  # index of the peer event streams come from
        self._closed = False

    # --- helpers ---------------------------------------------------------------------------

    def _seek(self, channel: str, start: Any) -> Any:
        return seek_envelope(
            self._creator,
            self._signer,
            channel=channel,
            start=start,
            timestamp_ns=self._clock(),
            tls_cert_hash=self._tls_cert_hash,
        )

    def _peers_of(self, orgs: Sequence[str]) -> list[list[_Peer]]:
        return [[p for p in self._peers if p.endpoint.msp_id == org] for org in orgs]

    def _check_orgs(self, orgs: Sequence[str]) -> None:
        unknown = [org for org in orgs if org not in self._orgs]
        if unknown:
            raise GatewayFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"no peer of organisation(s) {', '.join(unknown)} was given to connect",
            )

    # --- GatewayCalls ----------------------------------------------------------------------

    def evaluate(self, request: Any, timeout: float) -> Any:
        """ProcessProposal on one peer (own organisation first; the next if unreachable)."""
        targets = list(request.target_organizations)
        self._check_orgs(targets)
        candidates = [p for group in self._peers_of(targets) for p in group] or self._peers
        deadline = time.monotonic() + timeout
        unreachable: list[Any] = []
        for peer in candidates:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = peer.endorser.ProcessProposal(
                    request.proposed_transaction, timeout=remaining
                )
            except grpc.RpcError as exc:
                if _code(exc) in _UNREACHABLE:
                    _log.info("%s could not evaluate: %s", peer.label, _code(exc))
                    unreachable.append(peer.detail(_text(exc)))
                    continue
                raise GatewayFailure(
                    _code(exc), _text(exc), (peer.detail(_text(exc)),), where=peer.label
                ) from None
            if not 200 <= response.response.status < 400:
                raise _chaincode_failure(peer, response, "evaluate")
            return gw.EvaluateResponse(result=response.response)
        raise _unreachable(f"no peer answered ({len(unreachable)} tried)", unreachable, "any peer")

    def endorse(self, request: Any, timeout: float) -> Any:
        """ProcessProposal on the endorsing peers, checked, assembled into an unsigned envelope."""
        signed = request.proposed_transaction
        wanted = list(request.endorsing_organizations)
        self._check_orgs(wanted)
        if wanted:
            slots, need = self._peers_of(wanted), len(wanted)
        elif self._endorsers is None:
            slots, need = [[p] for p in self._peers], len(self._peers)
        else:
            slots, need = self._peers_of(self._orgs), self._endorsers
        endorsed = self._collect(signed, slots, need, time.monotonic() + timeout)
        payloads: dict[bytes, list[_Peer]] = {}
        for peer, response in endorsed:
            payloads.setdefault(bytes(response.payload), []).append(peer)
        if len(payloads) > 1:
            groups = [", ".join(p.endpoint.address for p in group) for group in payloads.values()]
            raise GatewayFailure(
                grpc.StatusCode.ABORTED,
                "the endorsing peers returned different results (ProposalResponsePayloads "
                "differ): " + " | ".join(groups),
                tuple(
                    peer.detail(f"result sha256 {hashlib.sha256(payload).hexdigest()[:16]}")
                    for payload, group in payloads.items()
                    for peer in group
                ),
            )
        envelope = assemble_transaction(signed.proposal_bytes, [r for _, r in endorsed])
        return gw.EndorseResponse(prepared_transaction=envelope)

    def _collect(
        self, signed: Any, slots: list[list[_Peer]], need: int, deadline: float
    ) -> list[tuple[_Peer, Any]]:
        """One successful endorsement per slot for ``need`` slots; spare slots stand in for ones
        whose peers are all unreachable. A refusal by any peer fails the whole endorsement."""
        pending: list[Iterator[_Peer]] = [iter(slot) for slot in slots[:need]]
        spares = iter(slots[need:])
        endorsed: list[tuple[_Peer, Any]] = []
        unreachable: list[Any] = []
        while pending:
            calls: list[tuple[Iterator[_Peer], _Peer, Any]] = []
            for peers in pending:
                peer = next(peers, None)
                while peer is None:
                    spare = next(spares, None)
                    if spare is None:
                        break
                    peers = iter(spare)
                    peer = next(peers, None)
                if peer is None:
                    continue  # this slot cannot be filled; counted below
                remaining = max(deadline - time.monotonic(), 0.001)
                future = peer.endorser.ProcessProposal.future(signed, timeout=remaining)
                calls.append((peers, peer, future))
            pending = []
            for index, (peers, peer, future) in enumerate(calls):
                try:
                    response = future.result()
                except grpc.RpcError as exc:
                    if _code(exc) in _UNREACHABLE:
                        _log.info("%s could not endorse: %s", peer.label, _code(exc))
                        unreachable.append(peer.detail(_text(exc)))
                        pending.append(peers)
                        continue
                    for _, _, other in calls[index + 1 :]:
                        other.cancel()
                    raise GatewayFailure(
                        _code(exc), _text(exc), (peer.detail(_text(exc)),), where=peer.label
                    ) from None
                if not 200 <= response.response.status < 400:
                    for _, _, other in calls[index + 1 :]:
                        other.cancel()
                    raise _chaincode_failure(peer, response, "endorse")
                endorsed.append((peer, response))
        if len(endorsed) < need:
            raise _unreachable(
                f"{len(endorsed)} of the {need} endorsements needed were collected",
                unreachable,
                "enough endorsing peers",
            )
        return endorsed

    def submit(self, request: Any, timeout: float) -> Any:
        """Broadcast the signed envelope, after the channel's commit listener is positioned."""
        deadline = time.monotonic() + timeout
        listener = self._listener(request.channel_id)
        listener.wait_positioned(timeout)
        listener.expect(request.transaction_id)
        try:
            return self._broadcast(request.prepared_transaction, deadline)
        except GatewayFailure:
            listener.forget(request.transaction_id)
            raise

    def _broadcast(self, envelope: Any, deadline: float) -> Any:
        unreachable: list[Any] = []
        first = self._orderer_first  # the last one that took a transaction goes first
        for index in [*range(first, len(self._orderers)), *range(first)]:
            orderer, _, stub = self._orderers[index]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                responses = stub.Broadcast(iter([envelope]), timeout=remaining)
                response = next(responses)
            except grpc.RpcError as exc:
                if _code(exc) in _UNREACHABLE:
                    _log.info(
                        "orderer %s could not take a transaction: %s", orderer.address, _code(exc)
                    )
                    unreachable.append(_orderer_detail(orderer, _text(exc)))
                    continue
                raise GatewayFailure(
                    _code(exc),
                    _text(exc),
                    (_orderer_detail(orderer, _text(exc)),),
                    where=f"orderer {orderer.address}",
                ) from None
            except StopIteration:
                unreachable.append(
                    _orderer_detail(orderer, "the broadcast stream ended without a response")
                )
                continue
            said = f"{common.Status.Name(response.status)}: {response.info}".rstrip(": ")
            if response.status == _SUCCESS:
                self._orderer_first = index
                return gw.SubmitResponse()
            if response.status == _SERVICE_UNAVAILABLE:  # e.g. a Raft node without a leader
                unreachable.append(_orderer_detail(orderer, said))
                continue
            raise GatewayFailure(
                grpc.StatusCode.ABORTED,
                f"orderer {orderer.address} refused the transaction: {said}",
                (_orderer_detail(orderer, said),),
            )
        raise _unreachable(
            f"no orderer took the transaction ({len(unreachable)} tried)",
            unreachable,
            "any orderer",
        )

    def commit_status(self, request: Any, timeout: float) -> Any:
        """The validation code and block of a transaction, from the channel's commit listener.

        Only transactions committed after the listener started are known (it starts before
        this gateway's first broadcast on the channel); others wait out the timeout.
        """
        status_request = gw.CommitStatusRequest.FromString(request.request)
        deadline = time.monotonic() + timeout
        listener = self._listener(status_request.channel_id)
        code, block = listener.wait(status_request.transaction_id, timeout)
        # Read your writes on every endorser: the next transaction's endorsement runs on the
        # other organisations' peers too, and one that has not committed this block yet would
        # simulate it on older state (different results, or an MVCC conflict at validation).
        # So wait until every connected peer has the block, not only the one that reported it
        # (fabric-sdk's NETWORK_SCOPE_ALLFORTX). A peer that is down is not waited for.
        # One limit for all of them, and none for a watcher of the peer that just reported.
        with self._lock:
            followers = list(self._followers.get(status_request.channel_id, ()))
        until = min(deadline, time.monotonic() + _FOLLOWER_WAIT)
        for follower in followers:
            if follower.label == listener.label:
                continue
            if not follower.wait_height(block, until - time.monotonic()):
                _log.info(
                    "%s had not committed block %d within %.1f s; not waiting longer",
                    follower.label,
                    block,
                    _FOLLOWER_WAIT,
                )
        return gw.CommitStatusResponse(result=code, block_number=block)

    def chaincode_events(self, request: Any) -> EventStream:
        """Full blocks from one peer, reduced to one chaincode's events.

        The own organisation's first peer, until a stream from it breaks as unreachable: the
        next stream then comes from the next peer given (every peer holds the channel's
        blocks), so a follower that opens again from its checkpoint outlives a peer that stays
        down. From the next commit (the default) the call returns once the peer has answered
        with its newest block, so a transaction submitted after it returns cannot be missed.
        """
        events_request = gw.ChaincodeEventsRequest.FromString(request.request)
        position = events_request.start_position
        next_commit = position.WhichOneof("Type") in (None, "next_commit")
        if next_commit:
            # Fabric < 2.4 knows no next_commit: seek the newest block and drop it.
            position = ab.SeekPosition(newest=ab.SeekNewest())
        with self._lock:
            peer = self._peers[self._events_peer % len(self._peers)]
        call = peer.deliver.Deliver(iter([self._seek(events_request.channel_id, position)]))
        first = position.specified.number if position.WhichOneof("Type") == "specified" else None
        stream = _BlockEventStream(
            call,
            peer,
            events_request.chaincode_id,
            (first, events_request.after_transaction_id),
            on_unreachable=self._events_peer_failed,
        )
        if next_commit:
            stream.skip_block()
        return stream

    def _events_peer_failed(self, peer: _Peer) -> None:
        """A stream from ``peer`` broke as unreachable: later streams use the next peer."""
        with self._lock:
            if self._peers[self._events_peer % len(self._peers)] is peer:
                self._events_peer += 1
                _log.info(
                    "chaincode events: %s is unreachable; the next stream comes from %s",
                    peer.label,
                    self._peers[self._events_peer % len(self._peers)].label,
                )

    def close(self) -> None:
        """Stop the commit listeners and close every channel this gateway opened."""
        with self._lock:
            self._closed = True
            listeners = list(self._listeners.values())
            listeners += [f for group in self._followers.values() for f in group]
            self._listeners.clear()
            self._followers.clear()
        for listener in listeners:
            listener.close()
        for peer in self._peers:
            peer.channel.close()
        for _, channel, _ in self._orderers:
            channel.close()

    def _listener(self, channel: str) -> _CommitListener:
        with self._lock:
            if self._closed:
                raise GatewayFailure(grpc.StatusCode.CANCELLED, "the gateway is closed")
            listener = self._listeners.get(channel)
            if listener is None:
                listener = _CommitListener(self._peers, channel, self._seek)
                self._listeners[channel] = listener
                listener.start()
                if self._endorsers is None or self._endorsers > 1:
                    followers = [
                        _CommitListener([peer], channel, self._seek, heights_only=True)
                        for peer in self._peers[1:]
                    ]
                    self._followers[channel] = followers
                    for follower in followers:
                        follower.start()
            return listener


class _CommitListener:
    """Validation codes of one channel's transactions, from a peer's DeliverFiltered stream.

    A daemon thread reads filtered blocks from the newest block on, from the own organisation's
    first peer; after a failure (peer restart) it reconnects to the next peer given (the same one
    if there is only one) from the block after the last one it saw, so no commit is skipped.
    ``heights_only``: a watcher of another peer's height, which keeps no validation codes.
    """

    def __init__(
        self,
        peers: Sequence[_Peer],
        channel: str,
        seek: Callable[[str, Any], Any],
        *,
        heights_only: bool = False,
    ) -> None:
        self._heights_only = heights_only
        self._peers = list(peers)
        self._index = 0
        self._channel = channel
        self._seek = seek
        self._cond = threading.Condition()
        self._results: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._expected: set[str] = set()
        self._next_block: int | None = None
        self._fatal: GatewayFailure | None = None
        self._last_error = "not connected yet"
        self._closed = False
        self._call: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"fabric-commits-{channel}", daemon=True
        )

    @property
    def _peer(self) -> _Peer:
        return self._peers[self._index]

    def start(self) -> None:
        self._thread.start()

    def expect(self, transaction_id: str) -> None:
        """Keep this transaction's result until it is read, however many commits follow."""
        with self._cond:
            self._expected.add(transaction_id)
            self._cond.notify_all()  # a listener waiting to reconnect tries now

    def forget(self, transaction_id: str) -> None:
        """The transaction was not ordered: nobody will wait for it."""
        with self._cond:
            self._expected.discard(transaction_id)

    def wait_positioned(self, timeout: float) -> None:
        """Return once the stream delivered its first block, so later commits are all seen."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._next_block is not None or self._fatal or self._closed, timeout
            )
            self._raise_if_failed()
            if self._next_block is None:
                raise GatewayFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"its block stream on channel {self._channel} is not connected "
                    f"({self._last_error}); nothing was sent for ordering",
                    (self._peer.detail(self._last_error),),
                    where=self._peer.label,
                )

    @property
    def label(self) -> str:
        """The peer this listener reads from now."""
        return self._peer.label

    def wait_height(self, block: int, timeout: float) -> bool:
        """Wait until this peer has committed ``block``; False at once when its stream is down
        (not connected, or not yet positioned), and after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    self._closed
                    or self._call is None
                    or self._next_block is None
                    or self._next_block > block
                ),
                max(timeout, 0.0),
            ) and (self._next_block is not None and self._next_block > block)

    def wait(self, transaction_id: str, timeout: float) -> tuple[int, int]:
        """(validation code, block number) of a transaction, once its block has arrived."""
        with self._cond:
            self._cond.wait_for(
                lambda: transaction_id in self._results or self._fatal or self._closed, timeout
            )
            if transaction_id in self._results:
                self._expected.discard(transaction_id)
                return self._results[transaction_id]
            self._raise_if_failed()
            state = "connected" if self._call is not None else f"reconnecting: {self._last_error}"
            raise GatewayFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"transaction {transaction_id} was not seen in a block of channel "
                f"{self._channel}; the block stream is {state}",
                (self._peer.detail(state),),
                where=self._peer.label,
            )

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise GatewayFailure(grpc.StatusCode.CANCELLED, "the gateway is closed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)

    def _record(self, block: Any) -> None:
        with self._cond:
            for tx in () if self._heights_only else block.filtered_transactions:
                if tx.txid and tx.txid not in self._results:  # a duplicate's code is not its own
                    self._results[tx.txid] = (int(tx.tx_validation_code), int(block.number))
            while len(self._results) > _COMMITS_KEPT:
                oldest = next(iter(self._results))
                if oldest in self._expected:
                    self._results.move_to_end(oldest)  # still awaited: keep it
                    if len(self._expected) >= _COMMITS_KEPT:
                        break
                    continue
                del self._results[oldest]
            self._next_block = int(block.number) + 1
            self._cond.notify_all()

    def _run(self) -> None:
        delay = 0.2
        while True:
            with self._cond:
                if self._closed:
                    return
                start = (
                    ab.SeekPosition(newest=ab.SeekNewest())
                    if self._next_block is None
                    else ab.SeekPosition(specified=ab.SeekSpecified(number=self._next_block))
                )
                call = self._peer.deliver.DeliverFiltered(iter([self._seek(self._channel, start)]))
                self._call = call
            try:
                for response in call:
                    kind = response.WhichOneof("Type")
                    if kind == "filtered_block":
                        self._record(response.filtered_block)
                        delay = 0.2
                    elif kind == "status":
                        name = common.Status.Name(response.status)
                        if response.status in (400, 403, 404):  # refused: retrying cannot help
                            with self._cond:
                                self._fatal = GatewayFailure(
                                    grpc.StatusCode.PERMISSION_DENIED
                                    if response.status == 403
                                    else grpc.StatusCode.FAILED_PRECONDITION,
                                    f"{self._peer.label} refused the block stream of channel "
                                    f"{self._channel}: {name}",
                                    (self._peer.detail(name),),
                                )
                                self._call = None
                                self._cond.notify_all()
                            _log.error("commit listener: %s", self._fatal.text)
                            return
                        self._last_error = f"the peer ended the stream with {name}"
                        break
                else:
                    self._last_error = "the peer ended the stream"
            except grpc.RpcError as exc:
                self._last_error = f"{_code(exc)}: {_text(exc)}"
            with self._cond:
                self._call = None
                if self._closed:
                    return
                # Every peer has the channel's blocks: the next one resumes at the same block.
                self._index = (self._index + 1) % len(self._peers)
                _log.warning(
                    "commit listener on %s, channel %s: %s; reconnecting in %.1f s",
                    self._peer.label,
                    self._channel,
                    self._last_error,
                    delay,
                )
                self._cond.wait(delay)  # close() wakes it
            delay = min(delay * 2, _RETRY_MAX)


class _BlockEventStream:
    """``ChaincodeEventsResponse``s built from a peer's full block stream (an EventStream)."""

    def __init__(
        self,
        call: Any,
        peer: _Peer,
        chaincode: str,
        checkpoint: tuple[int | None, str],
        *,
        on_unreachable: Callable[[_Peer], None] | None = None,
    ) -> None:
        self._call = call
        self._peer = peer
        self._chaincode = chaincode
        self._checkpoint_block, self._after_tx = checkpoint
        self._on_unreachable = on_unreachable

    def _next_block(self) -> Any:
        while True:
            try:
                response = next(self._call)
            except grpc.RpcError as exc:
                if _code(exc) in _UNREACHABLE and self._on_unreachable is not None:
                    self._on_unreachable(self._peer)
                raise GatewayFailure(
                    _code(exc), _text(exc), (self._peer.detail(_text(exc)),), where=self._peer.label
                ) from None
            kind = response.WhichOneof("Type")
            if kind == "status":
                name = common.Status.Name(response.status)
                if response.status == _SUCCESS:
                    raise StopIteration
                raise GatewayFailure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{self._peer.label} ended the block stream: {name}",
                    (self._peer.detail(name),),
                )
            if kind == "block":
                return response.block

    def skip_block(self) -> None:
        """Read and drop one block (the newest, when the stream starts at the next commit)."""
        try:
            self._next_block()
        except StopIteration:
            raise GatewayFailure(
                grpc.StatusCode.UNAVAILABLE,
                "the block stream ended at once",
                where=self._peer.label,
            ) from None

    def __next__(self) -> Any:
        while True:
            block = self._next_block()
            number = int(block.header.number)
            events = block_chaincode_events(block, self._chaincode)
            if self._after_tx and number == self._checkpoint_block:
                events = skip_through(events, self._after_tx)
            if events:
                return gw.ChaincodeEventsResponse(block_number=number, events=events)

    def cancel(self) -> Any:
        return self._call.cancel()
