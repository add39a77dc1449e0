"""Only consortium members reach the Fabric peers and orderers: mutual TLS on a real network.

`ehrshare.network.fabric` starts Fabric 2.3 peers and orderers that require a TLS client
certificate from a consortium CA. A client without one, and a client whose certificate comes
from a CA outside the consortium, get no connection (UNAVAILABLE, from the handshake) from a
peer and from an orderer, while a member presenting its wallet's TLS certificate endorses,
orders, follows commits and reads chaincode events. Deliver requests are bound to the TLS
certificate: a seek naming another certificate's hash (or none) is refused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fabric_protos.common import common_pb2
from fabric_protos.orderer import ab_pb2, ab_pb2_grpc
from fabric_protos.peer import events_pb2_grpc, peer_pb2_grpc, proposal_pb2

from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.errors import EndorseError, GatewayError, SubmitError
from ehrshare.ledger.fabric import dial
from ehrshare.ledger.peer import OrdererEndpoint, connect, seek_envelope
from ehrshare.ledgers import FabricBackend
from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
from ehrshare.network.fabric import ORDERER_MSP, FabricNet, FabricNetSpec
from ehrshare.network.supervisor import pid_alive
from ehrshare.wallet import Wallet

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP")
common: Any = common_pb2
ab: Any = ab_pb2
ab_grpc: Any = ab_pb2_grpc
events_grpc: Any = events_pb2_grpc
peer_grpc: Any = peer_pb2_grpc
proposalpb: Any = proposal_pb2


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNet]:
    assert (default_bin_dir() / "peer").is_file(), "Fabric 2.3 is not built: run `make tools`"
    root = tmp_path_factory.mktemp("mtls") / "consortium"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    network = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS, endorsement="ANY"))
    pids: list[int] = []
    try:
        network.start()
        yield network
    finally:
        pids = list(network.pids().values())  # those of the last start
        network.stop()
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


@pytest.fixture(scope="module")
def member(net: FabricNet) -> Wallet:
    """A patient of hospital A with a wallet as `consortium add-member` writes it."""
    ca = LocalCA.load(net.root / "ca" / "HospitalAMSP")
    wallet = Wallet(net.root / "wallets" / "alice", use_env=False)
    wallet.save_identity(*ca.issue("alice", role="patient"))
    wallet.save_tls(*ca.issue_tls_client("alice"))
    return wallet


def _pem_pair(pair: tuple[Identity, Signer]) -> tuple[bytes, bytes]:
    return pair[0].credentials, pair[1].to_secret_bytes()


def _peer_channel(net: FabricNet, client_tls: tuple[bytes, bytes] | None) -> grpc.Channel:
    cert, key = client_tls or (None, None)
    return dial(
        net.peer_address("HospitalAMSP"),
        tls_ca_pem=net.tls_ca("HospitalAMSP").read_bytes(),
        server_name=net.server_name("HospitalAMSP"),
        client_cert_pem=cert,
        client_key_pem=key,
    )


def _orderer_channel(net: FabricNet, client_tls: tuple[bytes, bytes] | None) -> grpc.Channel:
    cert, key = client_tls or (None, None)
    return dial(
        net.orderer_address(0),
        tls_ca_pem=net.tls_ca(ORDERER_MSP).read_bytes(),
        server_name=net.connection()["orderers"][0]["server_name"],
        client_cert_pem=cert,
        client_key_pem=key,
    )


def _endpoints(net: FabricNet) -> dict[str, Any]:
    """connect()'s endpoint keywords: these tests dial with no TLS client certificate too,
    which FabricBackend.connect refuses before dialling."""
    backend = FabricBackend.from_connection(net.connection())
    return {"peers": backend.peers, "orderers": backend.orderers, "endorsers": backend.endorsers}


def _peer_answer(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    """An empty proposal to the peer's Endorser: the status it ends with, and why."""
    stub = peer_grpc.EndorserStub(channel)
    try:
        stub.ProcessProposal(proposalpb.SignedProposal(), timeout=10)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _orderer_answer(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    """An empty envelope to the orderer's Broadcast: the status it ends with, and why (its
    Broadcast response's status when the call itself succeeds)."""
    stub = ab_grpc.AtomicBroadcastStub(channel)
    try:
        response = next(stub.Broadcast(iter([common.Envelope()]), timeout=10))
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, common.Status.Name(response.status)


def test_a_member_with_its_wallet_tls_certificate_works(net: FabricNet, member: Wallet) -> None:
    identity, signer = member.load_identity()
    tls = member.load_tls()
    # An orderer whose TLS certificate the client does not trust (the profile's tls_ca is not
    # its CA) fails the handshake on the client's side: a configuration error, not an outage. The
    # peers endorsed; nothing was ordered.
    wrong_ca = {**_endpoints(net)}
    wrong_ca["orderers"] = [
        OrdererEndpoint(o.address, net.tls_ca("HospitalAMSP").read_bytes(), o.server_name)
        for o in wrong_ca["orderers"]
    ]
    with connect(identity, signer, client_tls=_pem_pair(tls), **wrong_ca) as gateway:
        contract = gateway.get_network(net.spec.channel).get_contract(net.spec.chaincode)
        with pytest.raises(SubmitError, match="every TLS handshake failed") as caught:
            contract.submit_transaction("RegisterIdentity")
        assert not caught.value.unreachable
    with connect(identity, signer, client_tls=_pem_pair(tls), **_endpoints(net)) as gateway:
        network = gateway.get_network(net.spec.channel)
        contract = network.get_contract(net.spec.chaincode)
        # Chaincode events come from a full-block Deliver stream, commits from a filtered one:
        # both bound to this TLS certificate.
        events = network.get_chaincode_events(net.spec.chaincode)
        try:
            contract.submit_transaction("RegisterIdentity")
            event = next(iter(events))
        finally:
            events.close()
        assert event.event_name == "RegisterIdentity"
        assert (
            identity.ibe_id
            in contract.evaluate_transaction("GetIdentity", identity.ibe_id).decode()
        )
    # The same raw calls the refused clients make below get past TLS with this certificate:
    # the peer and the orderer refuse the empty proposal and envelope for their content (2.x
    # looks at the chaincode id first, 3.x at the timestamp, 1970 in an empty header).
    with _peer_channel(net, _pem_pair(tls)) as channel:
        code, said = _peer_answer(channel)
        assert code == grpc.StatusCode.UNKNOWN, said
        assert said == "ChaincodeHeaderExtension.ChaincodeId is nil" or said.startswith(
            "request unauthorized due to incorrect timestamp 1970-01-01T00:00:00Z"
        ), said
    with _orderer_channel(net, _pem_pair(tls)) as channel:
        assert _orderer_answer(channel) == (grpc.StatusCode.OK, "BAD_REQUEST")


@pytest.mark.parametrize("client", ["no certificate", "an outside CA"])
def test_a_client_without_a_consortium_tls_certificate_is_refused(
    net: FabricNet, member: Wallet, client: str
) -> None:
    client_tls = None
    if client == "an outside CA":
        # A well-formed TLS client certificate (clientAuth, OU tls) naming a consortium
        # organisation, from a CA the network does not know.
        outsider = LocalCA.create("HospitalAMSP")
        client_tls = _pem_pair(outsider.issue_tls_client("mallory"))
    for open_channel, answer in (
        (_peer_channel, _peer_answer),
        (_orderer_channel, _orderer_answer),
    ):
        with open_channel(net, client_tls) as channel:
            code, details = answer(channel)
        # Refused in the TLS handshake (no certificate / unknown CA), before any RPC: under
        # TLS 1.2 gRPC says so, under TLS 1.3 (Fabric >= 2.3) the server's refusal arrives
        # after the client's half of the handshake, as a record that does not decrypt.
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert _tls_refused(details), details
    # Through the SDK, with a member's valid signing identity: no peer lets it in, and the
    # error says it was the TLS handshake (configuration), not a network that is down.
    identity, signer = member.load_identity()
    with connect(identity, signer, client_tls=client_tls, **_endpoints(net)) as gateway:
        contract = gateway.get_network(net.spec.channel).get_contract(net.spec.chaincode)
        with pytest.raises(GatewayError, match="every TLS handshake failed") as caught:
            contract.evaluate_transaction("GetIdentity", identity.ibe_id)
        assert not caught.value.unreachable, caught.value
        # ...a setup problem the CLI ends with exit code 3 (the table in ehrshare.errors).
        assert caught.value.creator_refused and caught.value.exit_code == 3
        assert len(caught.value.details) == len(MSPS), caught.value.details
        assert all(_tls_refused(d) for d in caught.value.details)
        # Submitting fails the same way at its first stage (endorsement); nothing is ordered.
        with pytest.raises(EndorseError, match="every TLS handshake failed") as endorse:
            contract.submit_transaction("RegisterIdentity")
        assert not endorse.value.unreachable
        assert endorse.value.exit_code == 3


def _tls_refused(details: str) -> bool:
    said = details.lower()
    return "handshake failed" in said or "unwrap failed (tsi_data_corrupted)" in said


def _tls_hash(cert_pem: bytes) -> bytes:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def test_deliver_requests_are_bound_to_the_tls_certificate(net: FabricNet, member: Wallet) -> None:
    identity, signer = member.load_identity()
    cert, key = _pem_pair(member.load_tls())
    other, _ = _pem_pair(LocalCA.load(net.root / "ca" / "HospitalAMSP").issue_tls_client("alice"))

    def first_response(tls_cert_hash: bytes) -> Any:
        envelope = seek_envelope(
            serialize_identity(identity),
            signer,
            channel=net.spec.channel,
            start=ab.SeekPosition(oldest=ab.SeekOldest()),
            stop=ab.SeekPosition(oldest=ab.SeekOldest()),
            timestamp_ns=time.time_ns(),
            tls_cert_hash=tls_cert_hash,
        )
        with _peer_channel(net, (cert, key)) as channel:
            stream = events_grpc.DeliverStub(channel).DeliverFiltered(iter([envelope]), timeout=10)
            return next(stream)

    # The hash of the certificate this connection presents: block 0 is delivered.
    assert first_response(_tls_hash(cert)).WhichOneof("Type") == "filtered_block"
    # None, or another valid certificate's (same member, same CA): refused.
    for wrong in (b"", _tls_hash(other)):
        response = first_response(wrong)
        assert response.WhichOneof("Type") == "status"
        assert response.status == common.Status.Value("BAD_REQUEST")
