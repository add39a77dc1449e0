"""The Gateway service of a profile's peers (Fabric >= 2.4) as one :class:`GatewayCalls`: the
caller's own organisation's peers first, the next peer when a call could not reach one.

What a profile's ``client: gateway`` connects through (:func:`connect_peers`); the Gateway of
the peer reached plans endorsements (service discovery over gossip) and sends BFT transactions
to every orderer itself. Only a *transport* failure (nothing reached the Gateway: refused
connection, reset, TLS handshake) moves to the next peer; the Gateway's own answers, including
its UNAVAILABLE "failed to find any endorsing peers", are returned as they are. Every peer
refusing our TLS client certificate is a refusal (as :mod:`ehrshare.ledger.peer` says it), not an
outage. This module must not sign anything or choose endorsers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.fabric.calls import EventStream, GrpcGatewayCalls, dial
from ehrshare.ledger.fabric.client import Clock, FabricGateway, Timeouts
from ehrshare.ledger.fabric.failures import GatewayFailure, gw, is_transport_failure

if TYPE_CHECKING:
    from ehrshare.ledger.peer import PeerEndpoint

__all__ = ["ENDORSE_RETRIES", "SYNC_WAIT_S", "GatewayServiceCalls", "connect_peers"]

_log = logging.getLogger(__name__)

SYNC_WAIT_S = 10.0
"""How long a commit waits, beyond its own peer's, for the other peers to have it too."""

ENDORSE_RETRIES = 5
"""How often a proposal is endorsed again when the Gateway got its own organisation's
endorsement but not the others' (peers a block apart answer differently)."""
_DIVERGED = "failed to collect enough transaction endorsements"


def connect_peers(
    identity: Identity,
    signer: Signer,
    *,
    peers: Sequence[PeerEndpoint],
    client_tls: tuple[bytes, bytes] | None = None,
    timeouts: Timeouts | None = None,
    clock: Clock | None = None,
) -> FabricGateway:
    """A gateway over the Gateway services of ``peers`` (``identity``'s organisation's first);
    it owns the gRPC channels it opens and closes them with the gateway."""
    calls = GatewayServiceCalls(peers, own_msp=identity.msp_id, client_tls=client_tls)
    return FabricGateway(identity, signer, calls, timeouts or Timeouts(), clock or time.time_ns)


class _Stream:
    """A ChaincodeEvents stream that tells its owner when its peer became unreachable, so the
    follower's reopen (from its checkpoint) goes to the next peer."""

    def __init__(self, inner: EventStream, on_unreachable: Any) -> None:
        self._inner = inner
        self._on_unreachable = on_unreachable

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except GatewayFailure as failure:
            if is_transport_failure(failure):
                self._on_unreachable()
            raise

    def cancel(self) -> Any:
        return self._inner.cancel()


class GatewayServiceCalls:
    """:class:`~ehrshare.ledger.fabric.GatewayCalls` over several peers' Gateway services;
    made by :func:`connect_peers`. Channels are dialled on first use and closed in
    :meth:`close`."""

    def __init__(
        self,
        peers: Sequence[PeerEndpoint],
        *,
        own_msp: str,
        client_tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        if not peers:
            raise ValueError("the Gateway client needs at least one peer")
        if client_tls is not None:
            from ehrshare.ledger.peer.transport import _tls_cert_hash

            # The same refusal as the peer client's: a ledger signing certificate (or a
            # server-only one) never opens a TLS connection.
            _tls_cert_hash(client_tls[0])
        # Own organisation first: its Gateway endorses with its own peer and needs no other
        # organisation's trust to answer (the order is kept otherwise).
        self._peers = sorted(peers, key=lambda p: p.msp_id != own_msp)
        self._client_tls = client_tls
        self._channels: dict[int, grpc.Channel] = {}
        self._calls: dict[int, GrpcGatewayCalls] = {}
        self._current = 0  # the peer that answered last
        self._lock = threading.Lock()
        self._closed = False

    @property
    def current(self) -> PeerEndpoint:
        """The peer whose Gateway is asked first."""
        return self._peers[self._current]

    def _at(self, index: int) -> GrpcGatewayCalls:
        with self._lock:
            if self._closed:
                raise GatewayFailure(grpc.StatusCode.CANCELLED, "the gateway is closed")
            if index not in self._calls:
                peer = self._peers[index]
                cert, key = self._client_tls if self._client_tls else (None, None)
                channel = dial(
                    peer.address,
                    tls_ca_pem=peer.tls_ca_pem,
                    server_name=peer.server_name,
                    client_cert_pem=cert,
                    client_key_pem=key,
                )
                self._channels[index] = channel
                self._calls[index] = GrpcGatewayCalls(channel)
            return self._calls[index]

    def _failed(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._peers)

    def _call(self, name: str, request: Any, timeout: float) -> Any:
        start = self._current
        failed: list[Any] = []
        last: GatewayFailure | None = None
        for step in range(len(self._peers)):
            index = (start + step) % len(self._peers)
            try:
                answer = getattr(self._at(index), name)(request, timeout)
            except GatewayFailure as failure:
                if not is_transport_failure(failure):
                    raise
                peer = self._peers[index]
                failed.append(
                    gw.ErrorDetail(address=peer.address, msp_id=peer.msp_id, message=failure.text)
                )
                last = failure
                self._failed(index)
                continue
            with self._lock:
                self._current = index
            return answer
        assert last is not None
        from ehrshare.ledger.peer.transport import _unreachable

        said = f"no peer's Gateway answered ({len(failed)} tried)"
        out = _unreachable(said, failed, "any peer's Gateway")
        if out.code == grpc.StatusCode.UNAVAILABLE:
            # Keep gRPC's own words about the last one tried.
            out = GatewayFailure(out.code, f"{said}: {last.text}", out.details, where=out.where)
        raise out

    def evaluate(self, request: Any, timeout: float) -> Any:
        """Gateway/Evaluate on the first peer that can be reached."""
        return self._call("evaluate", request, timeout)

    def endorse(self, request: Any, timeout: float) -> Any:
        """Gateway/Endorse on the first peer that can be reached; endorsed again (the same
        proposal, up to :data:`ENDORSE_RETRIES` times after a short random pause) when the
        Gateway answers ABORTED "failed to collect enough transaction endorsements": its first
        endorser accepted the proposal and the other organisations' peers refused it or
        answered differently, which is what peers a block behind do while concurrent writers
        commit (the DKG board's posts from three KGC processes). A refusal by the first
        endorser ("failed to endorse transaction") is the contract's answer and is not
        retried."""
        attempt = 0
        while True:
            try:
                return self._call("endorse", request, timeout)
            except GatewayFailure as failure:
                diverged = failure.code == grpc.StatusCode.ABORTED and _DIVERGED in failure.text
                if not diverged or attempt >= ENDORSE_RETRIES:
                    raise
                attempt += 1
                _log.info(
                    "transaction %s: the peers' endorsements diverged; endorsing again (%d of %d)",
                    request.transaction_id,
                    attempt,
                    ENDORSE_RETRIES,
                )
                time.sleep(random.uniform(0.05, 0.2) * attempt)  # noqa: S311 - a jitter

    def submit(self, request: Any, timeout: float) -> Any:
        """Gateway/Submit; sent again through the next peer only if the first was not reached
        (a twice-ordered envelope commits once: the second is a duplicate transaction id)."""
        return self._call("submit", request, timeout)

    def commit_status(self, request: Any, timeout: float) -> Any:
        """Gateway/CommitStatus on the current peer, then on every other peer's Gateway (each
        answers once its own peer has committed the transaction), for at most
        :data:`SYNC_WAIT_S`: a query right after a commit then reads the write on any
        hospital's peer, as with :mod:`ehrshare.ledger.peer` (whose commits wait for the
        endorsing peers). A peer that does not answer in time, or at all, is logged and
        skipped: the current peer's answer is the commit's status."""
        answer = self._call("commit_status", request, timeout)
        index = self._current
        deadline = time.monotonic() + min(timeout, SYNC_WAIT_S)
        for other in range(len(self._peers)):
            left = deadline - time.monotonic()
            if other == index or left <= 0:
                continue
            try:
                self._at(other).commit_status(request, left)
            except GatewayFailure as failure:
                _log.info(
                    "peer %s did not confirm the commit: %s", self._peers[other].address, failure
                )
        return answer

    def chaincode_events(self, request: Any) -> EventStream:
        """Gateway/ChaincodeEvents from the current peer; when its stream breaks as
        unreachable, the next open goes to the next peer."""
        index = self._current
        stream = self._at(index).chaincode_events(request)
        return _Stream(stream, lambda: self._failed(index))

    def close(self) -> None:
        """Close every channel dialled here."""
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            self._calls = {}
        for channel in channels:
            channel.close()
