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
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.peer import chaincode_pb2 as _chaincode_pb2
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import proposal_response_pb2 as _response_pb2
from fabric_protos.peer import transaction_pb2 as _transaction_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

from ehrshare.closing import Closing
from ehrshare.identity import Identity, Signer
from ehrshare.ledger import api
from ehrshare.ledger.api import ChaincodeEvent, Checkpoint
from ehrshare.ledger.envelope import NONCE_SIZE, serialize_identity, transaction_id
from ehrshare.ledger.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    LedgerError,
    SubmitError,
)
from ehrshare.ledger.records import TxStatus

__all__ = [
    "CONFLICT_RETRIES",
    "GRPC_STATUS_DETAILS_KEY",
    "EventStream",
    "FabricChaincodeEvents",
    "FabricCommit",
    "FabricContract",
    "FabricGateway",
    "FabricNetwork",
    "FabricProposal",
    "FabricTransaction",
    "GatewayCalls",
    "GatewayFailure",
    "GrpcGatewayCalls",
    "Timeouts",
    "chaincode_action_of",
    "connect",
    "dial",
    "rpc_status_class",
    "signed_proposal",
]

# The protobuf modules have no type stubs; bind them as Any once instead of silencing every use.
common: Any = _common_pb2
gw: Any = _gateway_pb2
ab: Any = _ab_pb2
ccpb: Any = _chaincode_pb2
proposalpb: Any = _proposal_pb2
responsepb: Any = _response_pb2
txpb: Any = _transaction_pb2

_log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
"""Default times a read-conflicted transaction is proposed again (see ``submit_transaction``)."""
_RETRIED_CODES = frozenset({"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT"})
_RETRY_PAUSE_S = 0.05  # the pause before attempt k is uniform in [0, k × this]

GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata key carrying a serialized ``google.rpc.Status`` with ``ErrorDetail``s."""

_SERVICE = "/gateway.Gateway/"
_CHAINCODE_RESPONSE = re.compile(r"chaincode response (\d+), (.*)", re.DOTALL)
_ERROR_DETAIL_TYPE = "type.googleapis.com/gateway.ErrorDetail"

Clock = Callable[[], int]  # nanoseconds since the epoch


def rpc_status_class() -> Any:
    """The ``google.rpc.Status`` message class, built in a private descriptor pool.

    The Gateway attaches ``ErrorDetail`` messages to its errors inside a ``google.rpc.Status``; the
    googleapis protos are not a dependency, so the three-field message is declared here (in a pool
    of its own, so it cannot clash with googleapis-common-protos if that is installed later).
    """
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    status_file = descriptor_pb2.FileDescriptorProto(
        name="ehrshare/google_rpc_status.proto",
        package="google.rpc",
        dependency=["google/protobuf/any.proto"],
        syntax="proto3",
    )
    msg = status_file.message_type.add(name="Status")
    f = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    msg.field.add(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    msg.field.add(
        name="details",
        number=3,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    pool.Add(status_file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


_RpcStatus: Any = rpc_status_class()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-call deadlines in seconds (the official client's ``With…Timeout`` options)."""

    evaluate: float = 30.0
    endorse: float = 30.0
    submit: float = 30.0
    commit_status: float = 120.0


def dial(
    endpoint: str,
    *,
    tls_ca_pem: bytes | None,
    server_name: str | None = None,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
) -> grpc.Channel:
    """A gRPC channel to a peer's Gateway endpoint (``host:port``); the caller closes it.

    ``tls_ca_pem`` is the peer's TLS CA (None only for a plaintext test server). ``server_name``
    overrides the name checked against the peer's certificate (e.g. ``peer0.org1.example.com``
    when dialling 127.0.0.1). Client certificate and key enable mutual TLS.
    """
    if (client_cert_pem is None) != (client_key_pem is None):
        raise ValueError("mutual TLS needs both client_cert_pem and client_key_pem")
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 100 * 1024 * 1024),
        ("grpc.max_send_message_length", 100 * 1024 * 1024),
    ]
    if tls_ca_pem is None:
        return grpc.insecure_channel(endpoint, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_ca_pem,
        private_key=client_key_pem,
        certificate_chain=client_cert_pem,
    )
    return grpc.secure_channel(endpoint, creds, options=options)


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


def _as_bytes(arg: str | bytes) -> bytes:
    return arg if isinstance(arg, bytes) else arg.encode("utf-8")


def signed_proposal(
    creator: bytes,
    signer: Signer,
    *,
    channel: str,
    chaincode: str,
    function: str,
    args: tuple[bytes, ...],
    timestamp_ns: int,
    nonce: bytes | None = None,
) -> tuple[str, Any]:
    """Fabric's ``SignedProposal`` for a chaincode call, and its transaction id.

    Built as the official client builds it: ``ChannelHeader`` (ENDORSER_TRANSACTION, channel,
    transaction id, timestamp, ``ChaincodeHeaderExtension``), ``SignatureHeader`` (serialized
    creator, 24-byte nonce), ``ChaincodeProposalPayload`` whose input's first argument is the
    function name; the signature is low-S ECDSA-SHA256 over the proposal bytes. ``nonce`` is for
    tests that need a known transaction id; leave it None otherwise.
    """
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
    tx_id = transaction_id(nonce, creator)
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    chaincode_id = ccpb.ChaincodeID(name=chaincode)
    channel_header = common.ChannelHeader(
        type=common.HeaderType.Value("ENDORSER_TRANSACTION"),
        channel_id=channel,
        tx_id=tx_id,
        epoch=0,
        extension=proposalpb.ChaincodeHeaderExtension(
            chaincode_id=chaincode_id
        ).SerializeToString(),
    )
    channel_header.timestamp.seconds = seconds
    channel_header.timestamp.nanos = nanos
    header = common.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common.SignatureHeader(creator=creator, nonce=nonce).SerializeToString(),
    )
    spec = ccpb.ChaincodeInvocationSpec(
        chaincode_spec=ccpb.ChaincodeSpec(
            chaincode_id=chaincode_id,
            input=ccpb.ChaincodeInput(args=[function.encode("utf-8"), *args]),
        )
    )
    payload = proposalpb.ChaincodeProposalPayload(input=spec.SerializeToString())
    proposal_bytes = proposalpb.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    ).SerializeToString()
    return tx_id, proposalpb.SignedProposal(
        proposal_bytes=proposal_bytes, signature=signer.sign(proposal_bytes)
    )


class GatewayFailure(Exception):
    """A failed call of a :class:`GatewayCalls` implementation, shaped like a Gateway error.

    ``code`` is the gRPC status code (None when there was none), ``text`` the status message,
    ``details`` one ``gateway.ErrorDetail`` per endpoint that failed (address, MSP id, message;
    a chaincode refusal reads ``chaincode response <status>, <message>``), and ``where`` names
    what could not be reached, for the message of an unreachable endpoint.
    """

    def __init__(
        self,
        code: grpc.StatusCode | None,
        text: str,
        details: tuple[Any, ...] = (),
        *,
        where: str = "the Fabric Gateway",
    ) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.details = details
        self.where = where


def _rpc_failure(exc: grpc.RpcError) -> GatewayFailure:
    """A gRPC error from the Gateway service as a :class:`GatewayFailure` (ErrorDetails decoded)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    text = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    details: list[Any] = []
    trailers = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailers or ():
        if key != GRPC_STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = _RpcStatus.FromString(value)
        except Exception:  # a malformed trailer must not hide the error itself
            _log.debug("ignoring a malformed %s trailer", GRPC_STATUS_DETAILS_KEY)
            continue
        for item in status.details:
            if item.type_url == _ERROR_DETAIL_TYPE:
                details.append(gw.ErrorDetail.FromString(item.value))
    return GatewayFailure(code, text, tuple(details))


def _stage_error(
    kind: type[LedgerError], failure: GatewayFailure, transaction_id: str, action: str
) -> LedgerError:
    """Map a failed gateway call to the stage's error type, keeping the per-endpoint details.

    A chaincode failure reaches the client as ``chaincode response <status>, <message>`` in the
    details; its message becomes the error's message, as the embedded ledger reports it.
    """
    code, text = failure.code, failure.text
    details: list[str] = []
    chaincode_message: str | None = None
    for detail in failure.details:
        details.append(f"{detail.msp_id} ({detail.address}): {detail.message}")
        match = _CHAINCODE_RESPONSE.search(detail.message)
        if match and chaincode_message is None:
            chaincode_message = match.group(2)
    if chaincode_message is None:
        match = _CHAINCODE_RESPONSE.search(text)
        if match:
            chaincode_message = match.group(2)
    if chaincode_message is not None:
        message = chaincode_message
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"could not reach {failure.where} to {action}: {text}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{failure.where} did not {action} before the deadline"
        if text:
            message += f" ({text})"
    else:
        name = code.name if code is not None else "error"
        message = f"{action} failed ({name}): {text}"
    unreachable = chaincode_message is None and code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    # The peers refused who is calling (a TLS client certificate or signer from no CA of the
    # channel): a setup problem, not a decision on the request.
    creator_refused = chaincode_message is None and code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    return kind(
        message,
        transaction_id=transaction_id,
        details=tuple(details),
        unreachable=unreachable,
        creator_refused=creator_refused,
    )


class EventStream(Protocol):
    """A server stream of ``gateway.ChaincodeEventsResponse``; failures raise GatewayFailure."""

    def __next__(self) -> Any: ...

    def cancel(self) -> Any:
        """End the stream; a blocked ``next`` then ends (CANCELLED or StopIteration)."""
        ...


class GatewayCalls(Protocol):
    """The five calls of Fabric's Gateway service, in its own request and response messages.

    :class:`GrpcGatewayCalls` sends them to a peer's Gateway service (Fabric >= 2.4);
    :class:`ehrshare.ledger.peer.LocalGateway` does a Gateway's work itself against peers and
    orderers that have none (Fabric < 2.4). Every failure raises :class:`GatewayFailure`.
    """

    def evaluate(self, request: Any, timeout: float) -> Any:
        """``EvaluateRequest`` → ``EvaluateResponse``."""
        ...

    def endorse(self, request: Any, timeout: float) -> Any:
        """``EndorseRequest`` → ``EndorseResponse`` (an unsigned prepared transaction)."""
        ...

    def submit(self, request: Any, timeout: float) -> Any:
        """``SubmitRequest`` (signed envelope) → ``SubmitResponse`` once ordering took it."""
        ...

    def commit_status(self, request: Any, timeout: float) -> Any:
        """``SignedCommitStatusRequest`` → ``CommitStatusResponse``, waiting for the commit."""
        ...

    def chaincode_events(self, request: Any) -> EventStream:
        """``SignedChaincodeEventsRequest`` → a stream of ``ChaincodeEventsResponse``."""
        ...

    def close(self) -> None:
        """Release what the implementation opened itself."""
        ...


class _GrpcEventStream:
    def __init__(self, call: Any) -> None:
        self._call = call

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None

    def cancel(self) -> Any:
        return self._call.cancel()


class GrpcGatewayCalls:
    """:class:`GatewayCalls` over a gRPC channel to a peer's Gateway service (Fabric >= 2.4).

    It does not own the channel: :meth:`close` leaves it open for the caller.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._stubs: dict[str, Any] = {}
        for name, kind, req, resp in (
            ("Endorse", "unary", gw.EndorseRequest, gw.EndorseResponse),
            ("Submit", "unary", gw.SubmitRequest, gw.SubmitResponse),
            ("CommitStatus", "unary", gw.SignedCommitStatusRequest, gw.CommitStatusResponse),
            ("Evaluate", "unary", gw.EvaluateRequest, gw.EvaluateResponse),
            ("ChaincodeEvents", "stream", gw.SignedChaincodeEventsRequest, None),
        ):
            factory = channel.unary_unary if kind == "unary" else channel.unary_stream
            self._stubs[name] = factory(
                _SERVICE + name,
                request_serializer=req.SerializeToString,
                response_deserializer=(resp or gw.ChaincodeEventsResponse).FromString,
            )

    def _unary(self, name: str, request: Any, timeout: float) -> Any:
        try:
            return self._stubs[name](request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None

    def evaluate(self, request: Any, timeout: float) -> Any:
        """Gateway/Evaluate."""
        return self._unary("Evaluate", request, timeout)

    def endorse(self, request: Any, timeout: float) -> Any:
        """Gateway/Endorse."""
        return self._unary("Endorse", request, timeout)

    def submit(self, request: Any, timeout: float) -> Any:
        """Gateway/Submit."""
        return self._unary("Submit", request, timeout)

    def commit_status(self, request: Any, timeout: float) -> Any:
        """Gateway/CommitStatus."""
        return self._unary("CommitStatus", request, timeout)

    def chaincode_events(self, request: Any) -> EventStream:
        """Gateway/ChaincodeEvents."""
        try:
            return _GrpcEventStream(self._stubs["ChaincodeEvents"](request))
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None

    def close(self) -> None:
        """Nothing to release: the gRPC channel belongs to the caller."""


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
        hospitals) meet in the same block on Fabric. Raises :class:`EndorseError`,
        :class:`SubmitError`, :class:`CommitStatusError` or :class:`CommitError` by the stage
        that failed, each with the transaction id.
        """
        attempt = 0
        while True:
            transaction = self.new_proposal(name, *args).endorse()
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


def chaincode_action_of(action: Any) -> Any:
    """The ``ChaincodeAction`` (result, events, response) endorsed in a ``TransactionAction``:
    ChaincodeActionPayload → ProposalResponsePayload → its extension. Raises if one does not
    parse."""
    action_payload = txpb.ChaincodeActionPayload.FromString(action.payload)
    response_payload = responsepb.ProposalResponsePayload.FromString(
        action_payload.action.proposal_response_payload
    )
    return proposalpb.ChaincodeAction.FromString(response_payload.extension)


def _check_prepared(envelope: Any, tx_id: str, channel: str, creator: bytes) -> bytes:
    """The chaincode result in a prepared envelope, after checking it is this transaction.

    The client signs whatever envelope the Gateway returns, so it first makes sure the envelope is
    the transaction it proposed (id, channel, creator); EndorseError naming the mismatch otherwise.
    """

    def bad(why: str) -> EndorseError:
        return EndorseError(
            f"the Gateway returned an unusable transaction: {why}", transaction_id=tx_id
        )

    try:
        payload = common.Payload.FromString(envelope.payload)
        channel_header = common.ChannelHeader.FromString(payload.header.channel_header)
        signature_header = common.SignatureHeader.FromString(payload.header.signature_header)
        transaction = txpb.Transaction.FromString(payload.data)
    except Exception:
        raise bad("the envelope does not parse") from None
    if channel_header.tx_id != tx_id:
        raise bad(f"its transaction id is {channel_header.tx_id!r}")
    if channel_header.channel_id != channel:
        raise bad(f"its channel is {channel_header.channel_id!r}, not {channel!r}")
    if bytes(signature_header.creator) != creator:
        raise bad("its creator is not this gateway's identity")
    for action in transaction.actions:
        try:
            chaincode_action = chaincode_action_of(action)
        except Exception:
            _log.debug("skipping a transaction action that does not parse")
            continue
        return bytes(chaincode_action.response.payload)
    raise bad("it holds no proposal response")


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
