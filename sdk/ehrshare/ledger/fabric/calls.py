"""The five calls of Fabric's Gateway service behind one protocol (:class:`GatewayCalls`), and
their gRPC implementation for peers that have the service (:class:`GrpcGatewayCalls`, over a
channel from :func:`dial`).

This module must not build or sign requests (the client does) nor own a channel it was given.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2

from ehrshare.ledger.fabric.failures import _rpc_failure

__all__ = ["EventStream", "GatewayCalls", "GrpcGatewayCalls", "dial"]

gw: Any = _gateway_pb2

_SERVICE = "/gateway.Gateway/"


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
