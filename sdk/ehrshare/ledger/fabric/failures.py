"""How a failed Fabric Gateway call becomes the stage's error: gRPC failures with the Gateway's
``ErrorDetail``s (:class:`GatewayFailure`), and their mapping to the per-stage types of
:mod:`ehrshare.ledger.errors` with the chaincode's own message lifted out.

Both Gateway paths (a peer's Gateway service, :mod:`ehrshare.ledger.peer`'s client-side one)
fail through here, so the SDK sees one set of errors and messages. This module must not retry.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

from ehrshare.errors import EXIT_UNAVAILABLE
from ehrshare.ledger.errors import LedgerError

__all__ = [
    "GRPC_STATUS_DETAILS_KEY",
    "GatewayFailure",
    "is_transport_failure",
    "rpc_status_class",
]

gw: Any = _gateway_pb2

_log = logging.getLogger(__name__)

GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""Trailing metadata key carrying a serialized ``google.rpc.Status`` with ``ErrorDetail``s."""

_CHAINCODE_RESPONSE = re.compile(r"chaincode response (\d+), (.*)", re.DOTALL)
_ERROR_DETAIL_TYPE = "type.googleapis.com/gateway.ErrorDetail"
# gRPC's own words when the connection to the Gateway failed (nothing reached its code): no
# listener, a reset, a TLS refusal (TLS 1.2 "Handshake failed"; TLS 1.3 "Unwrap failed",
# "TSI_DATA_CORRUPTED"), a name that does not resolve. An UNAVAILABLE without them is the
# Gateway's own answer, e.g. "failed to find any endorsing peers for org(s): …" or "no orderers
# could successfully process the transaction": it was reached, the nodes behind it were not.
_TRANSPORT = re.compile(
    r"failed to connect to all addresses|connection refused|connection reset|socket closed"
    r"|broken pipe|handshake failed|unwrap failed|tsi_|dns resolution failed|name resolution"
    r"|empty address list|keepalive|endpoint is closing|failed to create secure subchannel",
    re.IGNORECASE,
)


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


def is_transport_failure(failure: GatewayFailure) -> bool:
    """Whether nothing reached the Gateway (gRPC's own UNAVAILABLE words: no listener, a reset,
    a TLS handshake), as against an answer of the Gateway itself: what the next peer may fix."""
    return (
        failure.code == grpc.StatusCode.UNAVAILABLE and _TRANSPORT.search(failure.text) is not None
    )


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
    # The Gateway's own UNAVAILABLE answer (it was reached; the peers or orderers it needs
    # were not): not "could not reach the Fabric Gateway".
    gateway_answered = (
        chaincode_message is None
        and code == grpc.StatusCode.UNAVAILABLE
        and failure.where == "the Fabric Gateway"
        and not _TRANSPORT.search(text)
    )
    if chaincode_message is not None:
        message = chaincode_message
    elif gateway_answered:
        message = f"the Fabric Gateway answered that it cannot {action} now (UNAVAILABLE): {text}"
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"could not reach {failure.where} to {action}: {text}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{failure.where} did not {action} before the deadline"
        if text:
            message += f" ({text})"
    else:
        name = code.name if code is not None else "error"
        message = f"{action} failed ({name}): {text}"
    unreachable = (
        not gateway_answered
        and chaincode_message is None
        and code
        in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    )
    # The peers refused who is calling (a TLS client certificate or signer from no CA of the
    # channel): a setup problem, not a decision on the request.
    creator_refused = chaincode_message is None and code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    error = kind(
        message,
        transaction_id=transaction_id,
        details=tuple(details),
        unreachable=unreachable,
        creator_refused=creator_refused,
    )
    if gateway_answered:
        # Nothing was decided and a later try may succeed (exit code 4), but the Gateway is up:
        # the hint points at the nodes behind it, not at starting the network.
        error.exit_code = EXIT_UNAVAILABLE
        error.hint = (
            "the Gateway's peer is up; the endorsing peers or orderers it needs are down, or not "
            "yet known to its gossip (anchor peers; membership takes seconds after a start)"
        )
    return error
