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
  is unreachable or has no leader (Raft); on SmartBFT (``quorum`` given) to every orderer at once,
  done when ``quorum`` of them (2f+1 of 3f+1) acknowledge it, as Fabric 3's Gateway does: a
  follower alone would hold it for its request-forward timeout, a stopped leader until the
  view change;
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

import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.orderer import ab_pb2_grpc as _ab_pb2_grpc

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.fabric import EventStream, FabricGateway, GatewayFailure, Timeouts, dial
from ehrshare.ledger.fabric.client import Clock
from ehrshare.ledger.peer.commits import _BlockEventStream, _CommitListener
from ehrshare.ledger.peer.messages import assemble_transaction, seek_envelope
from ehrshare.ledger.peer.transport import (
    _UNREACHABLE,
    OrdererEndpoint,
    PeerEndpoint,
    _chaincode_failure,
    _code,
    _orderer_detail,
    _Peer,
    _text,
    _tls_cert_hash,
    _unreachable,
)

__all__ = ["LocalGateway", "connect"]

common: Any = _common_pb2
gw: Any = _gateway_pb2
ab: Any = _ab_pb2
_ab_grpc: Any = _ab_pb2_grpc

_log = logging.getLogger(__name__)

_SUCCESS = int(common.Status.Value("SUCCESS"))
_SERVICE_UNAVAILABLE = int(common.Status.Value("SERVICE_UNAVAILABLE"))
_BUSY_PAUSE = 0.25  # seconds before a BFT broadcast asks the orderers that were not ready again
_FOLLOWER_WAIT = 5.0  # seconds a commit waits for another endorsing peer to have its block


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
    quorum: int | None = None,
) -> FabricGateway:
    """A gateway to Fabric peers and orderers that have no Gateway service (Fabric < 2.4).

    ``endorsers`` is how many organisations endorse a submitted transaction, one peer each, the
    caller's own organisation first (None: every peer given endorses; the consortium's MAJORITY
    of three organisations needs 2). ``client_tls`` is (certificate PEM, key PEM) of a TLS
    client certificate (clientAuth) when peers and orderers require mutual TLS; Deliver
    requests then carry its sha256, as Fabric's binding check wants. The gateway dials every
    endpoint now (gRPC connects lazily) and closes the channels and its listener threads in
    :meth:`FabricGateway.close`. ``quorum`` (SmartBFT orderers: 2f+1 of the 3f+1 given, see
    :func:`ehrshare.network.fabric.bft_quorum`) makes a submit broadcast to every orderer and
    succeed once that many acknowledge it; None (Raft) sends to one orderer at a time.
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
        quorum=quorum,
    )
    return FabricGateway(identity, signer, local, timeouts or Timeouts(), clock)


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
        quorum: int | None = None,
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
        if quorum is not None and not 1 <= quorum <= len(orderers):
            raise ValueError(f"quorum is {quorum}; {len(orderers)} orderers were given")
        self._quorum = quorum
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
        self._broadcasts: concurrent.futures.ThreadPoolExecutor | None = None
        if quorum is not None:
            self._broadcasts = concurrent.futures.ThreadPoolExecutor(
                max_workers=2 * len(self._orderers), thread_name_prefix="fabric-broadcast"
            )
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
            if self._broadcasts is not None:
                return self._broadcast_quorum(request.prepared_transaction, deadline)
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

    def _broadcast_one(self, index: int, envelope: Any, deadline: float) -> tuple[str, Any, str]:
        """One orderer's answer to a broadcast: (``ok`` | ``unavailable`` | ``refused`` |
        ``failed``, the detail, the text), never raising (it runs in the broadcast pool)."""
        orderer, _, stub = self._orderers[index]
        try:
            responses = stub.Broadcast(
                iter([envelope]), timeout=max(deadline - time.monotonic(), 0.001)
            )
            response = next(responses)
        except grpc.RpcError as exc:
            kind = "unavailable" if _code(exc) in _UNREACHABLE else "failed"
            return kind, _orderer_detail(orderer, _text(exc)), _text(exc)
        except StopIteration:
            said = "the broadcast stream ended without a response"
            return "unavailable", _orderer_detail(orderer, said), said
        said = f"{common.Status.Name(response.status)}: {response.info}".rstrip(": ")
        if response.status == _SUCCESS:
            return "ok", _orderer_detail(orderer, said), said
        if response.status == _SERVICE_UNAVAILABLE:  # up, not ready (e.g. in a view change)
            return "busy", _orderer_detail(orderer, said), said
        return "refused", _orderer_detail(orderer, said), said

    def _broadcast_quorum(self, envelope: Any, deadline: float) -> Any:
        """SmartBFT: the envelope to every orderer at once; done at ``quorum`` acknowledgements.
        Orderers that answer SERVICE_UNAVAILABLE (up, not ready) are asked again until the
        deadline; it fails once so many refused or were unreachable that the quorum cannot be
        reached (a refusal then, if any orderer refused, else unreachable). The slower answers
        are left to finish in the pool."""
        assert self._broadcasts is not None and self._quorum is not None
        acked: set[int] = set()
        while True:
            failed, busy = self._quorum_round(envelope, deadline, acked)
            if len(acked) >= self._quorum:
                return gw.SubmitResponse()
            # Orderers that are up but not ready (just started, in a view change) are asked
            # again until the deadline; without them the quorum is out of reach for good.
            if not busy or time.monotonic() + _BUSY_PAUSE >= deadline:
                break
            time.sleep(_BUSY_PAUSE)
        acks = len(acked)
        refused = [f for f in failed if f[0] in ("refused", "failed")]
        if refused:
            raise GatewayFailure(
                grpc.StatusCode.ABORTED,
                f"orderers refused the transaction ({acks} of the {self._quorum} acknowledgements "
                f"needed): {refused[0][2]}",
                tuple(f[1] for f in failed),
            )
        raise _unreachable(
            f"too few orderers took the transaction ({acks} of the {self._quorum} "
            f"acknowledgements needed, {len(self._orderers)} tried)",
            [f[1] for f in failed],
            "a quorum of orderers",
        )

    def _quorum_round(
        self, envelope: Any, deadline: float, acked: set[int]
    ) -> tuple[list[tuple[str, Any, str]], bool]:
        """One broadcast to every orderer not in ``acked`` (which it adds to); the failures,
        and whether one was only busy. Returns early once the quorum is reached or out of
        reach."""
        assert self._broadcasts is not None and self._quorum is not None
        futures = {
            self._broadcasts.submit(self._broadcast_one, i, envelope, deadline): i
            for i in range(len(self._orderers))
            if i not in acked
        }
        failed: list[tuple[str, Any, str]] = []
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending,
                timeout=max(deadline - time.monotonic(), 0.0),
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            if not done:
                break
            for future in done:
                outcome = future.result()
                if outcome[0] == "ok":
                    acked.add(futures[future])
                else:
                    failed.append(outcome)
            if len(acked) >= self._quorum:
                break
            if len(acked) + len(pending) < self._quorum and not any(f[0] == "busy" for f in failed):
                break
        return failed, any(f[0] == "busy" for f in failed)

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
        if self._broadcasts is not None:
            self._broadcasts.shutdown(wait=False, cancel_futures=True)
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
