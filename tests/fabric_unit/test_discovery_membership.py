"""The discovery membership query (:mod:`ehrshare.ledger.fabric.discovery`) and how the
launcher's gossip wait uses it: the signed request field by field, the answer parsed, a peer
without the service (UNIMPLEMENTED) told apart from one that is not ready, and the wait
reading a peer's log only when that peer has no discovery service. Fake peers over TLS; the
real peers answer in tests/fabric/test_fabric_discovery.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.discovery import protocol_pb2 as dpb
from fabric_protos.discovery import protocol_pb2_grpc as dpb_grpc
from fabric_protos.gossip import message_pb2 as gpb
from fabric_protos.msp import identities_pb2 as idpb
from test_gateway_switch import MSPS, _stand_ins

from ehrshare.identity import LocalCA
from ehrshare.ledger.fabric.discovery import (
    DiscoveryFailed,
    DiscoveryMissing,
    membership_request,
    missing_orgs,
    parse_membership,
    peer_membership,
)
from ehrshare.network.fabric import FabricNet, FabricNetSpec
from ehrshare.network.fabric import launcher as launcher_module
from ehrshare.network.fabric.layout import _Proc
from ehrshare.services.tls import issue_tls_certificate

CHANNEL = "ehrshare"


def _peer(endpoint: str | None) -> Any:
    peer = dpb.Peer(identity=b"id")
    if endpoint is not None:
        alive = gpb.GossipMessage(
            alive_msg=gpb.AliveMessage(membership=gpb.Member(endpoint=endpoint))
        )
        peer.membership_info.payload = alive.SerializeToString()
    return peer


def _members(view: dict[str, list[str | None]]) -> Any:
    result = dpb.PeerMembershipResult()
    for msp, endpoints in view.items():
        result.peers_by_org[msp].peers.extend(_peer(e) for e in endpoints)
    return dpb.Response(results=[dpb.QueryResult(members=result)])


def test_the_request_names_the_identity_the_tls_hash_and_is_signed_by_it() -> None:
    identity, signer = LocalCA.create("HospitalAMSP").issue("admin", role="admin")
    tls_cert, _ = issue_tls_certificate(LocalCA.create("HospitalAMSP"), "a", client_auth=True)
    signed = membership_request(
        CHANNEL,
        msp_id=identity.msp_id,
        certificate_pem=identity.credentials,
        sign=signer.sign,
        tls_cert_pem=tls_cert,
    )
    request = dpb.Request.FromString(signed.payload)
    creator = idpb.SerializedIdentity.FromString(request.authentication.client_identity)
    assert (creator.mspid, creator.id_bytes) == ("HospitalAMSP", identity.credentials)
    der = x509.load_pem_x509_certificate(tls_cert).public_bytes(serialization.Encoding.DER)
    assert request.authentication.client_tls_cert_hash == hashlib.sha256(der).digest()
    assert [(q.channel, q.WhichOneof("query")) for q in request.queries] == [
        (CHANNEL, "peer_query")
    ]
    signer.public_key.verify(signed.signature, signed.payload, ec.ECDSA(hashes.SHA256()))
    without_tls = membership_request(
        CHANNEL, msp_id="HospitalAMSP", certificate_pem=identity.credentials, sign=signer.sign
    )
    assert dpb.Request.FromString(without_tls.payload).authentication.client_tls_cert_hash == b""


def test_the_answer_is_read_as_endpoints_by_organisation() -> None:
    response = _members(
        {"HospitalAMSP": [None], "HospitalBMSP": ["127.0.0.1:7052", "127.0.0.1:7062"]}
    )
    assert parse_membership(response) == {
        "HospitalAMSP": {""},  # the answering peer itself sends no alive message
        "HospitalBMSP": {"127.0.0.1:7052", "127.0.0.1:7062"},
    }
    refused = dpb.Response(results=[dpb.QueryResult(error=dpb.Error(content="access denied"))])
    with pytest.raises(DiscoveryFailed, match="refused the membership query: access denied"):
        parse_membership(refused)
    with pytest.raises(DiscoveryFailed, match="answered 0 results"):
        parse_membership(dpb.Response())


def test_missing_orgs_names_whom_each_peer_does_not_see() -> None:
    views = {
        "A": {"A": {""}, "B": {"b:1"}, "C": {"c:1"}},
        "B": {"B": {""}, "A": {"a:1"}},
        "C": {},
    }
    assert missing_orgs(views, ["A", "B", "C"]) == {"B": {"C"}, "C": {"A", "B"}}
    assert missing_orgs({"A": views["A"]}, ["A", "B", "C"]) == {}


class _Discovery(dpb_grpc.DiscoveryServicer):  # type: ignore[misc]
    def __init__(self, response: Any) -> None:
        self.response = response
        self.requests: list[Any] = []

    def Discover(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return self.response


@pytest.fixture
def tls() -> dict[str, bytes]:
    ca = LocalCA.create("HospitalAMSP")
    cert, key = issue_tls_certificate(ca, "peer0", client_auth=True)
    return {"ca": ca.certificate_pem, "cert": cert, "key": key}


def _serve(tls: dict[str, bytes], servicer: Any | None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if servicer is not None:
        dpb_grpc.add_DiscoveryServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(tls["key"], tls["cert"])])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def serve(tls: dict[str, bytes]) -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(servicer: Any | None) -> str:
        server, address = _serve(tls, servicer)
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(None)


def _ask(address: str, tls: dict[str, bytes]) -> dict[str, set[str]]:
    identity, signer = LocalCA.create("HospitalAMSP").issue("admin", role="admin")
    return peer_membership(
        address,
        tls_ca_pem=tls["ca"],
        server_name="localhost",
        channel=CHANNEL,
        msp_id=identity.msp_id,
        certificate_pem=identity.credentials,
        sign=signer.sign,
        client_tls=(tls["cert"], tls["key"]),
        timeout=5,
    )


def test_a_peer_answers_over_tls(serve: Any, tls: dict[str, bytes]) -> None:
    fake = _Discovery(_members({"HospitalAMSP": [None], "HospitalBMSP": ["127.0.0.1:7052"]}))
    address = serve(fake)
    assert _ask(address, tls) == {"HospitalAMSP": {""}, "HospitalBMSP": {"127.0.0.1:7052"}}
    assert len(fake.requests) == 1


def test_a_peer_without_discovery_is_told_apart_from_one_not_ready(
    serve: Any, tls: dict[str, bytes]
) -> None:
    with pytest.raises(DiscoveryMissing, match="UNIMPLEMENTED"):
        _ask(serve(None), tls)  # a gRPC server without the service: peer.discovery.enabled off
    with pytest.raises(DiscoveryFailed) as down:
        _ask("127.0.0.1:1", tls)  # nothing listens: starting, or gone
    assert not isinstance(down.value, DiscoveryMissing)


# --- the launcher's wait ------------------------------------------------------------------------


def _view_line(addresses: list[str]) -> str:
    view = " ".join(f"[{a}]" for a in addresses)
    return (
        "INFO [gossip.channel] reportMembershipChanges -> Membership view has changed. "
        f"peers went online:  [{view}] , current view:  [{view}]\n"
    )


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FabricNet:
    bin_dir = _stand_ins(tmp_path, monkeypatch, "2.5.16")
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    network = FabricNet.create(FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=bin_dir))
    for msp in MSPS:
        log = tmp_path / f"{msp}.log"
        log.write_text("")
        network._state.processes[f"peer-{msp}"] = _Proc(pid=1, start_ticks=0, log=str(log))
    return network


def test_the_wait_reads_a_log_only_for_a_peer_without_discovery(
    net: FabricNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = MSPS
    everyone = {m: {net.peer_address(m)} for m in MSPS}
    answers: dict[str, Any] = {a: everyone, b: DiscoveryMissing("UNIMPLEMENTED"), c: everyone}
    asked: list[str] = []

    def discover(msp: str, deadline: float) -> dict[str, set[str]]:
        asked.append(msp)
        answer = answers[msp]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    monkeypatch.setattr(net, "_discover", discover)
    by_log: set[str] = set()
    missing, errors = net._gossip_missing(list(MSPS), by_log, 0.0)
    # B has no discovery service and logged no view yet: judged by its (empty) log.
    assert by_log == {b} and errors == {}
    assert missing == {b: {net.peer_address(a), net.peer_address(c)}}
    Path(net._state.processes[f"peer-{b}"].log).write_text(
        _view_line([net.peer_address(a), net.peer_address(c)])
    )
    asked.clear()
    assert net._gossip_missing(list(MSPS), by_log, 0.0) == ({}, {})
    assert asked == [a, c]  # B is not asked again


def test_a_peer_not_answering_yet_is_missing_everyone_with_its_error(
    net: FabricNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = MSPS

    def discover(msp: str, deadline: float) -> dict[str, set[str]]:
        if msp == c:
            raise DiscoveryFailed("127.0.0.1:7053: UNAVAILABLE: connection refused")
        return {m: {net.peer_address(m)} for m in (a, b)}  # nobody sees C yet

    monkeypatch.setattr(net, "_discover", discover)

    def no_logs(_proc: object) -> str:
        raise AssertionError("a peer with a discovery service is not judged by its log")

    monkeypatch.setattr(launcher_module, "_read_from", no_logs)
    missing, errors = net._gossip_missing(list(MSPS), set(), 0.0)
    assert missing == {a: {c}, b: {c}, c: {a, b}}
    assert errors == {c: "127.0.0.1:7053: UNAVAILABLE: connection refused"}
