"""How the client-side gateway reaches peers and orderers: their endpoints, the gRPC channel
per peer, the TLS client certificate's binding hash, and the classification of gRPC failures
into the Gateway's error shapes (unreachable, refused TLS, a chaincode's refusal).

This module must not retry or choose an endpoint (that is :class:`LocalGateway`'s work).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.peer import events_pb2_grpc as _events_pb2_grpc
from fabric_protos.peer import peer_pb2_grpc as _peer_pb2_grpc

from ehrshare.ledger.fabric import GatewayFailure

__all__ = ["OrdererEndpoint", "PeerEndpoint"]

gw: Any = _gateway_pb2
_events_grpc: Any = _events_pb2_grpc
_peer_grpc: Any = _peer_pb2_grpc

# A peer or orderer that is down or too slow: try the next one. Anything else is an answer.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# In gRPC's UNAVAILABLE text when TLS refused us: "Handshake failed" under TLS 1.2 (Fabric 2.1);
# under TLS 1.3 (Fabric >= 2.3) the server refuses the client certificate after the client's
# half of the handshake, and its alert surfaces on the first read as TSI_DATA_CORRUPTED.
# Fabric 2.5/3.x peers' refusal reads "Unwrap failed (TSI_DATA_CORRUPTED)" (either word may be
# all a gRPC build says).
_TLS_REFUSED = ("handshake failed", "tsi_data_corrupted", "unwrap failed")


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
    """No endpoint answered: UNAVAILABLE (an outage, worth retrying), unless one failed
    in the TLS handshake. That is configuration, not an outage: peers and orderers that require
    mutual TLS refused the client certificate (none, or not from a consortium CA), or the TLS
    CA given is not theirs; retrying or restarting the network would not help."""
    refused = [d for d in failed if any(m in str(d.message).lower() for m in _TLS_REFUSED)]
    if refused:
        # Those that answered refused us in the TLS handshake: configuration, whether or not
        # others were also down (an outage would hide a certificate nobody accepts).
        which = (
            "every TLS handshake failed"
            if len(refused) == len(failed)
            else f"{len(refused)} of {len(failed)} refused the TLS handshake, the others did "
            "not answer"
        )
        return GatewayFailure(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{text}: {which} (peers and orderers that require mutual TLS "
            "take only a TLS client certificate from a consortium CA; or the profile's tls_ca "
            "is not the CA of their certificates)",
            tuple(failed),
        )
    return GatewayFailure(grpc.StatusCode.UNAVAILABLE, text, tuple(failed), where=where)


def _orderer_detail(orderer: OrdererEndpoint, message: str) -> Any:
    return gw.ErrorDetail(address=orderer.address, message=message)
