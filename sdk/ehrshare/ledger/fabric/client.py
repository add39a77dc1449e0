"""The Fabric backend's client: Gateway → Network → Contract over the Fabric Gateway gRPC API.

Implements the protocols of :mod:`ehrshare.ledger.api` against a Fabric peer's Gateway service
(``gateway.Gateway/Endorse``, ``Submit``, ``CommitStatus``, ``Evaluate``, ``ChaincodeEvents``),
mirroring the official hyperledger/fabric-gateway client: the proposal is Fabric's protobuf
``Proposal`` (``ChannelHeader`` + ``SignatureHeader`` with a ``SerializedIdentity`` creator and a
24-byte nonce, transaction id ``hex(sha256(nonce ‖ creator))``), every request is signed with the
identity's low-S ECDSA-P256 key, the endorsed transaction envelope the Gateway prepares is checked
and signed here before submission, and errors surface as the same per-stage types the embedded
client raises (:mod:`ehrshare.ledger.errors`). Use :func:`dial` for a channel and :func:`connect`
(or :func:`ehrshare.ledger.peer.connect` for peers without a Gateway).

The Gateway's five calls sit behind :class:`GatewayCalls`: :class:`GrpcGatewayCalls` sends them to
a peer's Gateway service (Fabric >= 2.4), :class:`ehrshare.ledger.peer.LocalGateway` does their
work client-side for Fabric 2.1–2.3 peers, which have no Gateway service.

Status: the Gateway-service path is exercised only against an in-test fake Gateway
(``tests/fabric_unit/``): the pinned Fabric cannot be built here (docs/status.md). The classes
below, with ``ledger.peer``'s calls, run against a real Fabric 2.3 peer and orderer in CI
(``tests/fabric/test_fabric_local_gateway.py``).

This module must not hold private keys beyond the :class:`~ehrshare.identity.Signer` it was given,
must not sign an envelope it has not checked is its own transaction, and must not log arguments
(they may be personal data).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.peer import transaction_pb2 as _transaction_pb2

from ehrshare.closing import Closing
from ehrshare.identity import Identity, Signer
from ehrshare.ledger import api
from ehrshare.ledger.api import ChaincodeEvent, Checkpoint
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    SubmitError,
)
from ehrshare.ledger.fabric.calls import EventStream, GatewayCalls, GrpcGatewayCalls
from ehrshare.ledger.fabric.failures import GatewayFailure, _stage_error
from ehrshare.ledger.fabric.messages import _as_bytes, _check_prepared, signed_proposal
from ehrshare.ledger.records import TxStatus

__all__ = [
    "CONFLICT_RETRIES",
    "FabricChaincodeEvents",
    "FabricCommit",
    "FabricContract",
    "FabricGateway",
    "FabricNetwork",
    "FabricProposal",
    "FabricTransaction",
    "Timeouts",
    "connect",
]

# The protobuf modules have no type stubs; bind them as Any once instead of silencing every use.
gw: Any = _gateway_pb2
ab: Any = _ab_pb2
txpb: Any = _transaction_pb2

_log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
"""Default times a read-conflicted transaction is proposed again (see ``submit_transaction``)."""
_RETRIED_CODES = frozenset({"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT"})
_RETRY_PAUSE_S = 0.05  # the pause before attempt k is uniform in [0, k × this]
# Endorsing peers at different heights answer one proposal differently: ours says "…
# ProposalResponsePayloads differ", Fabric's Gateway "ProposalResponsePayloads do not match".
_DIVERGED = "ProposalResponsePayloads"
_DIVERGED_PAUSE_S = 0.5  # a lagging peer (one that just joined) catches up over blocks

Clock = Callable[[], int]  # nanoseconds since the epoch


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-call deadlines in seconds (the official client's ``With…Timeout`` options)."""

    evaluate: float = 30.0
    endorse: float = 30.0
    submit: float = 30.0
    commit_status: float = 120.0


def connect(
    identity: Identity,
    signer: Signer,
    channel: grpc.Channel,
    *,
    timeouts: Timeouts | None = None,
    clock: Clock | None = None,
) -> FabricGateway:
    """A gateway with one identity over an open gRPC channel (see :func:`dial`).

    The gateway does not own the channel: closing the gateway leaves it open for the caller.
    """
    return FabricGateway(
        identity, signer, GrpcGatewayCalls(channel), timeouts or Timeouts(), clock or time.time_ns
    )


class FabricGateway(Closing):
    """A connection to a Fabric Gateway with one identity; use as a context manager.

    ``calls`` does the Gateway's work: :class:`GrpcGatewayCalls` (a peer's Gateway service, the
    caller owns the channel) or :class:`ehrshare.ledger.peer.LocalGateway` (peers and orderers
    dialled by :func:`ehrshare.ledger.peer.connect`, closed with the gateway).
    """

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        calls: GatewayCalls,
        timeouts: Timeouts,
        clock: Clock,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self.timeouts = timeouts
        self._clock = clock
        self._creator = serialize_identity(identity)
        self._calls = calls
        self._closed = False
        self.conflict_retries = CONFLICT_RETRIES
        """How often :meth:`FabricContract.submit_transaction` runs a transaction again after
        it committed as an MVCC or phantom read conflict (0: never)."""

    @property
    def creator(self) -> bytes:
        """The serialized identity (``SerializedIdentity``) this gateway signs as."""
        return self._creator

    def get_network(self, channel_name: str) -> FabricNetwork:
        """The named channel (the Gateway reports an unknown channel on first use)."""
        if not channel_name:
            raise GatewayError("channel name must not be empty")
        return FabricNetwork(self, channel_name)

    def _sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)

    def close(self) -> None:
        """Release what the gateway's calls opened (nothing for a caller's Gateway channel)."""
        self._closed = True
        self._calls.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed


class FabricNetwork:
    """A channel reached through the Gateway."""

    def __init__(self, gateway: FabricGateway, name: str) -> None:
        self._gateway = gateway
        self._name = name

    @property
    def name(self) -> str:
        """The channel name."""
        return self._name

    def get_contract(self, chaincode_name: str) -> FabricContract:
        """A chaincode on this channel."""
        if not chaincode_name:
            raise GatewayError("chaincode name must not be empty")
        return FabricContract(self._gateway, self._name, chaincode_name)

    def get_chaincode_events(
        self,
        chaincode_name: str,
        *,
        start_block: int | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> FabricChaincodeEvents:
        """Events from ``start_block`` (default: the next commit), or resume after ``checkpoint``.

        As in the official client, a checkpoint with a block number replays that block from the
        event after its transaction id; the Gateway refuses ``newest`` so the default is the next
        commit. Iteration blocks until events arrive; :meth:`FabricChaincodeEvents.close` ends it.
        """
        gateway = self._gateway
        position = ab.SeekPosition(next_commit=ab.SeekNextCommit())
        after_tx = ""
        if start_block is not None:
            if start_block < 0:
                raise GatewayError(f"start block {start_block} is negative")
            position = ab.SeekPosition(specified=ab.SeekSpecified(number=start_block))
        if checkpoint is not None and checkpoint.block_number is not None:
            position = ab.SeekPosition(specified=ab.SeekSpecified(number=checkpoint.block_number))
            after_tx = checkpoint.transaction_id or ""
        request = gw.ChaincodeEventsRequest(
            channel_id=self._name,
            chaincode_id=chaincode_name,
            identity=gateway.creator,
            start_position=position,
            after_transaction_id=after_tx,
        ).SerializeToString()
        signed = gw.SignedChaincodeEventsRequest(request=request, signature=gateway._sign(request))
        try:
            stream = gateway._calls.chaincode_events(signed)
        except GatewayFailure as failure:
            raise _stage_error(GatewayError, failure, "", "read chaincode events") from None
        return FabricChaincodeEvents(stream)


class FabricChaincodeEvents(Closing):
    """A blocking iterator over the Gateway's chaincode event stream; close it to stop."""

    def __init__(self, stream: EventStream) -> None:
        self._call = stream
        self._buffer: deque[ChaincodeEvent] = deque()
        self._closed = False

    def __iter__(self) -> Iterator[ChaincodeEvent]:
        return self

    def __next__(self) -> ChaincodeEvent:
        while not self._buffer:
            if self._closed:
                raise StopIteration
            try:
                response = next(self._call)
            except StopIteration:
                self._closed = True
                raise
            except GatewayFailure as failure:
                if self._closed or failure.code == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                raise _stage_error(GatewayError, failure, "", "read chaincode events") from None
            for event in response.events:
                self._buffer.append(
                    ChaincodeEvent(
                        block_number=int(response.block_number),
                        transaction_id=str(event.tx_id),
                        chaincode_name=str(event.chaincode_id),
                        event_name=str(event.event_name),
                        payload=bytes(event.payload),
                    )
                )
        return self._buffer.popleft()

    def close(self) -> None:
        """Cancel the stream; a blocked iteration ends."""
        self._closed = True
        self._call.cancel()


class FabricContract:
    """A chaincode on a channel, called with the gateway's identity."""

    def __init__(self, gateway: FabricGateway, channel: str, chaincode_name: str) -> None:
        self._gateway = gateway
        self._channel = channel
        self._name = chaincode_name

    @property
    def chaincode_name(self) -> str:
        """The chaincode's name."""
        return self._name

    def new_proposal(
        self,
        name: str,
        *args: str | bytes,
        endorsing_organizations: tuple[str, ...] = (),
        nonce: bytes | None = None,
    ) -> FabricProposal:
        """The fine-grained flow: a signed proposal to evaluate, or endorse, submit and check.

        ``nonce`` is for tests that need a known transaction id; leave it None otherwise.
        The proposal is built by :func:`signed_proposal`.
        """
        gateway = self._gateway
        tx_id, signed = signed_proposal(
            gateway.creator,
            gateway._signer,
            channel=self._channel,
            chaincode=self._name,
            function=name,
            args=tuple(_as_bytes(a) for a in args),
            timestamp_ns=gateway._clock(),
            nonce=nonce,
        )
        return FabricProposal(gateway, self._channel, tx_id, signed, tuple(endorsing_organizations))

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Endorse, order and wait for the commit; returns the result of a valid commit.

        A transaction that committed as a read conflict (``MVCC_READ_CONFLICT``,
        ``PHANTOM_READ_CONFLICT``: another transaction of its block or an earlier one changed
        what it read, so it changed nothing) is proposed again, as a new transaction on current
        state, up to ``conflict_retries`` times after a short random pause: concurrent writers
        of one hash-chained log (the DKG board's posts, one patient's actions from several
        hospitals) meet in the same block on Fabric. Endorsing peers that answered differently
        (one had not committed the latest blocks yet: a hospital's peer that just joined) are
        asked again the same number of times, after a longer pause. Raises :class:`EndorseError`,
        :class:`SubmitError`, :class:`CommitStatusError` or :class:`CommitError` by the stage
        that failed, each with the transaction id.
        """
        attempt = 0
        while True:
            try:
                transaction = self.new_proposal(name, *args).endorse()
            except EndorseError as exc:
                if _DIVERGED not in exc.message or attempt >= self._gateway.conflict_retries:
                    raise
                attempt += 1
                _log.info(
                    "%s: the endorsing peers answered differently (one is behind); proposing "
                    "it again (%d of %d)",
                    name,
                    attempt,
                    self._gateway.conflict_retries,
                )
                time.sleep(_DIVERGED_PAUSE_S * attempt)
                continue
            status = transaction.submit().get_status()
            if status.successful:
                return transaction.result
            if status.code in _RETRIED_CODES and attempt < self._gateway.conflict_retries:
                attempt += 1
                _log.info(
                    "%s: transaction %s committed as %s; proposing it again (%d of %d)",
                    name,
                    status.tx_id,
                    status.code,
                    attempt,
                    self._gateway.conflict_retries,
                )
                time.sleep(random.uniform(0.0, _RETRY_PAUSE_S * attempt))  # noqa: S311
                continue
            raise CommitError(
                f"transaction {status.tx_id} committed as {status.code}",
                transaction_id=status.tx_id,
                code=status.code,
            )

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Run a query on one peer; nothing is ordered or written. Failures raise GatewayError."""
        return self.new_proposal(name, *args).evaluate()


@dataclass(slots=True)
class FabricProposal:
    """A signed proposal not yet endorsed."""

    _gateway: FabricGateway
    channel: str
    transaction_id: str
    signed: Any  # peer.SignedProposal
    endorsing_organizations: tuple[str, ...]

    def evaluate(self) -> bytes:
        """Evaluate as a query; returns the chaincode's payload."""
        request = gw.EvaluateRequest(
            transaction_id=self.transaction_id,
            channel_id=self.channel,
            proposed_transaction=self.signed,
            target_organizations=list(self.endorsing_organizations),
        )
        try:
            response = self._gateway._calls.evaluate(request, self._gateway.timeouts.evaluate)
        except GatewayFailure as failure:
            raise _stage_error(GatewayError, failure, self.transaction_id, "evaluate") from None
        return bytes(response.result.payload)

    def endorse(self) -> FabricTransaction:
        """Collect endorsements; returns the prepared transaction, checked and ready to submit."""
        request = gw.EndorseRequest(
            transaction_id=self.transaction_id,
            channel_id=self.channel,
            proposed_transaction=self.signed,
            endorsing_organizations=list(self.endorsing_organizations),
        )
        try:
            response = self._gateway._calls.endorse(request, self._gateway.timeouts.endorse)
        except GatewayFailure as failure:
            raise _stage_error(EndorseError, failure, self.transaction_id, "endorse") from None
        envelope = response.prepared_transaction
        result = _check_prepared(envelope, self.transaction_id, self.channel, self._gateway.creator)
        return FabricTransaction(self._gateway, self.channel, self.transaction_id, envelope, result)


@dataclass(slots=True)
class FabricTransaction:
    """An endorsed transaction: its result, and the envelope to sign and submit for ordering."""

    _gateway: FabricGateway
    channel: str
    transaction_id: str
    envelope: Any  # common.Envelope, unsigned until submit
    result: bytes

    def submit(self) -> FabricCommit:
        """Sign the envelope and hand it to ordering; returns a handle to wait for the commit."""
        gateway = self._gateway
        if not self.envelope.signature:
            self.envelope.signature = gateway._sign(bytes(self.envelope.payload))
        request = gw.SubmitRequest(
            transaction_id=self.transaction_id,
            channel_id=self.channel,
            prepared_transaction=self.envelope,
        )
        try:
            gateway._calls.submit(request, gateway.timeouts.submit)
        except GatewayFailure as failure:
            raise _stage_error(SubmitError, failure, self.transaction_id, "submit") from None
        return FabricCommit(gateway, self.channel, self.transaction_id, self.result)


@dataclass(slots=True)
class FabricCommit:
    """A submitted transaction; :meth:`get_status` waits for its commit."""

    _gateway: FabricGateway
    channel: str
    transaction_id: str
    result: bytes

    def get_status(self, timeout: float | None = None) -> TxStatus:
        """The commit status (validation code name and block number); waits for the commit."""
        gateway = self._gateway
        request = gw.CommitStatusRequest(
            transaction_id=self.transaction_id,
            channel_id=self.channel,
            identity=gateway.creator,
        ).SerializeToString()
        signed = gw.SignedCommitStatusRequest(request=request, signature=gateway._sign(request))
        try:
            response = gateway._calls.commit_status(
                signed, timeout if timeout is not None else gateway.timeouts.commit_status
            )
        except GatewayFailure as failure:
            raise _stage_error(
                CommitStatusError, failure, self.transaction_id, "report the commit status"
            ) from None
        code = int(response.result)
        name = (
            txpb.TxValidationCode.Name(code)
            if code in txpb.TxValidationCode.values()
            else f"UNKNOWN_CODE_{code}"
        )
        return TxStatus(self.transaction_id, name, int(response.block_number))


def _satisfies_protocols(
    gateway: FabricGateway, network: FabricNetwork, contract: FabricContract
) -> tuple[api.Gateway, api.Network, api.Contract, api.ChaincodeEvents]:
    # Never called: mypy checks here that the Fabric classes satisfy the client protocols.
    events = network.get_chaincode_events(contract.chaincode_name)
    return gateway, network, contract, events
