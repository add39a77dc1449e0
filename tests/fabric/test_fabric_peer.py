"""Real Hyperledger Fabric peers run the contract through our chaincode server.

Fabric 2.3.2 (the release-2.3 branch) — the newest release the Go module proxy serves here (the
pinned 3.1 answers 403) — built by `make tools` into network/build/fabric23. The network is
``ehrshare.network.fabric``'s (tests/fabric/conftest.py): three hospitals, one Raft orderer, one
peer per hospital, and `ehrshare chaincode serve` deployed as a ccaas package over mutual TLS, on
free loopback ports.
The ``peer`` CLI and the peers' own Endorser service drive the contract here; the client gateway
that works without a Gateway service is test_fabric_local_gateway.py. The Gateway service and
SmartBFT need Fabric >= 2.4 / 3.0 and are not exercised here.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.peer import peer_pb2_grpc

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import serialize_identity, transaction_id
from ehrshare.ledger.fabric import dial, signed_proposal
from ehrshare.network.fabric import FabricNet, FabricNetError

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

Admins = Callable[[str], tuple[Identity, Signer]]


def _query(net: FabricNet, peer: str, *args: str) -> str:
    """A query as HospitalA's admin (registered at set-up) on ``peer``'s peer."""
    return net.query("HospitalAMSP", args, peer=peer)


def test_real_peers_run_the_contract_through_our_chaincode_server(
    fabric_net: FabricNet, admin_of: Admins
) -> None:
    net = fabric_net
    admin = admin_of("HospitalAMSP")[0].ibe_id
    ca_pem = (net.root / "ca" / "HospitalAMSP" / "ca-cert.pem").read_text(encoding="utf-8")
    # The registrations committed at set-up (endorsed by A's and B's peers) are read back from
    # every peer, C's included.
    for msp in net.spec.msp_ids:
        record = json.loads(_query(net, msp, "GetIdentity", admin))
        assert (record["ibe_id"], record["role"]) == (admin, "admin")
        assert json.loads(_query(net, msp, "GetOrgCA", "HospitalAMSP"))["ca_pem"] == ca_pem

    # Every peer launched the package by connecting to our server: REGISTER, then READY.
    label = net.package_id.split(":", 1)[0]
    for msp in net.spec.msp_ids:
        log = (net.dir / "logs" / f"peer-{msp}.log").read_text(encoding="utf-8", errors="replace")
        assert f"Got REGISTER for chaincodeID = {label}:" in log, msp
        assert f"sending READY for chaincode {label}:" in log, msp

    # The contract's refusals come back through the peer as status 500 with their messages: a
    # query, and a second RegisterOrgCA that is never ordered.
    with pytest.raises(FabricNetError) as refused:
        _query(net, "HospitalCMSP", "GetOrgCA", "HospitalBMSP")
    # The peer CLI prints the response in protobuf text format, whose spacing Go's prototext
    # varies on purpose (one or two spaces between fields, as 3.1.5's CLI showed).
    assert re.search(
        r'status:500\s+message:"the ca of HospitalBMSP is not registered"', str(refused.value)
    ), refused.value
    with pytest.raises(FabricNetError) as refused:
        net.invoke(
            "HospitalAMSP",
            ["RegisterOrgCA", ca_pem],
            endorsers=["HospitalAMSP", "HospitalCMSP"],
            wait=False,
        )
    assert "status:500" in str(refused.value)
    assert "the ca of HospitalAMSP is already registered" in str(refused.value)


def test_a_real_peer_endorses_a_proposal_our_gateway_client_built(
    fabric_net: FabricNet, admin_of: Admins
) -> None:
    # Fabric 2.3 has no Gateway service, but its Endorser takes the same SignedProposal the
    # Gateway client builds: the peer checks the creator against its MSP, the signature and the
    # transaction id rule (sha256(nonce ‖ creator)) before it runs the chaincode.
    net = fabric_net
    admin, signer = admin_of("HospitalAMSP")
    registered = admin.ibe_id
    creator = serialize_identity(admin)

    def proposal(function: str, *args: str) -> tuple[str, Any]:
        nonce = os.urandom(24)
        tx_id, signed = signed_proposal(
            creator,
            signer,
            channel=net.spec.channel,
            chaincode=net.spec.chaincode,
            function=function,
            args=tuple(a.encode() for a in args),
            timestamp_ns=time.time_ns(),
            nonce=nonce,
        )
        assert tx_id == transaction_id(nonce, creator)
        return tx_id, signed

    # HospitalA's admin, on HospitalC's peer: another organisation's peer checks it against
    # HospitalA's MSP from the channel configuration.
    cert, key = net.admin_tls("HospitalAMSP")  # the peers require mutual TLS
    channel = dial(
        net.peer_address("HospitalCMSP"),
        tls_ca_pem=net.tls_ca("HospitalCMSP").read_bytes(),
        server_name=net.server_name("HospitalCMSP"),
        client_cert_pem=cert.read_bytes(),
        client_key_pem=key.read_bytes(),
    )
    try:
        endorser = peer_pb2_grpc.EndorserStub(channel)
        _, signed = proposal("GetIdentity", registered)
        response = endorser.ProcessProposal(signed, timeout=30)
        assert response.response.status == 200, response.response.message
        record = json.loads(response.response.payload)
        assert (record["ibe_id"], record["role"]) == (registered, "admin")
        assert response.endorsement.endorser  # the peer signed its endorsement

        # The contract's refusal, as the peer returns it to any client.
        _, signed = proposal("GetOrgCA", "HospitalBMSP")
        response = endorser.ProcessProposal(signed, timeout=30)
        assert response.response.status == 500
        assert response.response.message == "the ca of HospitalBMSP is not registered"

        # A signature that does not match is refused by the real peer (not by our code).
        _, signed = proposal("GetIdentity", registered)
        stranger = Signer(ec.generate_private_key(ec.SECP256R1()))
        forged = type(signed)(
            proposal_bytes=signed.proposal_bytes,
            signature=stranger.sign(signed.proposal_bytes),
        )
        with pytest.raises(grpc.RpcError) as refused:
            endorser.ProcessProposal(forged, timeout=30)
        assert "access denied" in str(refused.value.details())
    finally:
        channel.close()
