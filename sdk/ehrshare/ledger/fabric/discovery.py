"""Who a peer sees in a channel, asked of the peer itself: Fabric's discovery service.

``discovery.Discovery/Discover`` with a ``PeerMembershipQuery`` answers the channel's gossip
membership as the peer knows it, by organisation (``PeerMembershipResult.peers_by_org``): the
view a Fabric Gateway plans endorsements from. The request is a ``SignedRequest``: the client's
serialized identity and, under mutual TLS, the sha256 of its TLS client certificate (the peer
compares it with the certificate of the connection), signed by the identity's key; the peer
admits channel members (the channel's ``Readers`` policy).

This module must not retry, wait or fall back: callers decide what an error means (the
launcher's gossip wait polls it and reads the peers' logs only where the service is missing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fabric_protos.discovery import protocol_pb2 as _discovery_pb2_module
from fabric_protos.discovery import protocol_pb2_grpc as _discovery_pb2_grpc
from fabric_protos.gossip import message_pb2 as _gossip_pb2_module
from fabric_protos.msp import identities_pb2 as _identities_pb2_module

from ehrshare.ledger.fabric.calls import dial

__all__ = [
    "DiscoveryFailed",
    "DiscoveryMissing",
    "membership_request",
    "missing_orgs",
    "parse_membership",
    "peer_membership",
]

_TIMEOUT_S: Final = 5.0
# Generated protobuf modules carry no type information.
_discovery_pb2: Any = _discovery_pb2_module
_gossip_pb2: Any = _gossip_pb2_module
_identities_pb2: Any = _identities_pb2_module


class DiscoveryFailed(Exception):
    """The peer did not answer the membership query (unreachable, refused, or an error in
    its answer); the message says which. Worth asking again while a network starts."""


class DiscoveryMissing(DiscoveryFailed):
    """The peer has no discovery service (``peer.discovery.enabled: false``): UNIMPLEMENTED."""


def membership_request(
    channel: str,
    *,
    msp_id: str,
    certificate_pem: bytes,
    sign: Callable[[bytes], bytes],
    tls_cert_pem: bytes | None = None,
) -> Any:
    """The ``SignedRequest`` of one ``PeerMembershipQuery`` on ``channel`` as ``msp_id``'s
    ``certificate_pem``, signed by ``sign``; ``tls_cert_pem``: the TLS client certificate the
    connection presents (its DER's sha256 goes into the request, as Fabric checks it)."""
    creator = _identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=certificate_pem)
    auth = _discovery_pb2.AuthInfo(client_identity=creator.SerializeToString())
    if tls_cert_pem is not None:
        der = x509.load_pem_x509_certificate(tls_cert_pem).public_bytes(serialization.Encoding.DER)
        auth.client_tls_cert_hash = hashlib.sha256(der).digest()
    query = _discovery_pb2.Query(channel=channel, peer_query=_discovery_pb2.PeerMembershipQuery())
    payload = _discovery_pb2.Request(authentication=auth, queries=[query]).SerializeToString()
    return _discovery_pb2.SignedRequest(payload=payload, signature=sign(payload))


def parse_membership(response: Any) -> dict[str, set[str]]:
    """The peers of a ``Response`` to :func:`membership_request`: MSP id → gossip endpoints
    (``host:port`` from each peer's alive message; a peer that sent none, such as the answering
    peer itself, counts under its organisation with an empty endpoint). An error in the answer
    raises :class:`DiscoveryFailed` with the peer's text."""
    if len(response.results) != 1:
        raise DiscoveryFailed(f"the peer answered {len(response.results)} results to one query")
    result = response.results[0]
    if result.WhichOneof("result") == "error":
        raise DiscoveryFailed(f"the peer refused the membership query: {result.error.content}")
    if result.WhichOneof("result") != "members":
        raise DiscoveryFailed(f"the peer answered {result.WhichOneof('result')}, not members")
    view: dict[str, set[str]] = {}
    for msp, peers in result.members.peers_by_org.items():
        endpoints = view.setdefault(msp, set())
        for peer in peers.peers:
            endpoints.add(_endpoint(peer))
    return view


def _endpoint(peer: Any) -> str:
    if not peer.HasField("membership_info") or not peer.membership_info.payload:
        return ""
    message = _gossip_pb2.GossipMessage.FromString(peer.membership_info.payload)
    return str(message.alive_msg.membership.endpoint)


def peer_membership(
    address: str,
    *,
    tls_ca_pem: bytes,
    server_name: str | None,
    channel: str,
    msp_id: str,
    certificate_pem: bytes,
    sign: Callable[[bytes], bytes],
    client_tls: tuple[bytes, bytes] | None = None,
    timeout: float = _TIMEOUT_S,
) -> dict[str, set[str]]:
    """Ask the peer at ``address`` whom it sees in ``channel`` (:func:`parse_membership`),
    presenting ``client_tls`` (certificate PEM, key PEM) when given. Raises
    :class:`DiscoveryMissing` when the peer has no discovery service, :class:`DiscoveryFailed`
    for any other failure."""
    cert, key = client_tls if client_tls is not None else (None, None)
    request = membership_request(
        channel, msp_id=msp_id, certificate_pem=certificate_pem, sign=sign, tls_cert_pem=cert
    )
    conn = dial(
        address,
        tls_ca_pem=tls_ca_pem,
        server_name=server_name,
        client_cert_pem=cert,
        client_key_pem=key,
    )
    try:
        stub = _discovery_pb2_grpc.DiscoveryStub(conn)  # type: ignore[no-untyped-call]
        response = stub.Discover(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        text = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        kind = DiscoveryMissing if code == grpc.StatusCode.UNIMPLEMENTED else DiscoveryFailed
        raise kind(f"{address}: {code.name if code else 'error'}: {text}") from None
    finally:
        conn.close()
    return parse_membership(response)


def missing_orgs(
    views: Mapping[str, Mapping[str, set[str]]], msps: list[str]
) -> dict[str, set[str]]:
    """For each organisation's peer whose view is in ``views`` (by MSP id), the other
    organisations in ``msps`` it does not see; empty when every peer sees every other one."""
    return {
        msp: missing
        for msp, view in views.items()
        if (missing := {org for org in msps if org != msp and not view.get(org)})
    }
