"""A real Hyperledger Fabric peer runs the contract through our chaincode server.

Fabric v2.1.1 — the newest release the Go module proxy serves here (the pinned 3.1 answers 403) —
built by `make tools` into network/build/fabric21. network/fabric-2.1-probe/run-all.sh starts one
Raft orderer and one peer on 127.0.0.1, deploys `ehrshare chaincode serve` as a ccaas package
(plain, then mutual TLS) and drives contract functions with the `peer` CLI; stop.sh stops every
process by pid. This proves the chaincode server against a real peer; the client gateway that
works without a Gateway service is test_fabric21_local_gateway.py; the Gateway service and
SmartBFT need Fabric >= 2.4 / 3.0 and are not exercised here.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_probe import Run
from fabric_protos.peer import peer_pb2_grpc

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import serialize_identity, transaction_id
from ehrshare.ledger.fabric import dial, signed_proposal

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def test_a_real_fabric_peer_runs_the_contract_through_our_chaincode_server(probe: Run) -> None:
    # The peer launched both packages by connecting to our server: REGISTER, then READY.
    peer_log = (probe.net / "peer.log").read_text(encoding="utf-8", errors="replace")
    for label in ("ehrshare_1", "ehrshare_tls"):
        assert f"Got REGISTER for chaincodeID = {label}:" in peer_log
        assert f"sending READY for chaincode {label}:" in peer_log

    # Per chaincode (plain, then mutual TLS): the contract's refusal comes back through the peer
    # as status 500 with its message; RegisterOrgCA commits; a second one is refused; an
    # identity registered by the admin is read back with the role from its certificate.
    out = probe.output
    assert out.count('status:500 message:"the ca of Org1MSP is not registered"') == 2
    assert out.count("the ca of Org1MSP is already registered") == 2
    records = [json.loads(line) for line in probe.stdout.splitlines() if line.startswith("{")]
    cas = [r for r in records if "ca_pem" in r]
    identities = [r for r in records if "cert_sha256" in r and "role" in r]
    assert len(cas) == 2 and all(r["msp_id"] == "Org1MSP" for r in cas)
    assert [(r["ibe_id"], r["role"]) for r in identities] == [
        ("Org1MSP/Admin@org1.example.com", "admin")
    ] * 2


def test_the_real_peer_endorses_a_proposal_our_gateway_client_built(probe: Run) -> None:
    # Fabric 2.1 has no Gateway service, but its Endorser takes the same SignedProposal the
    # Gateway client builds: the peer checks the creator against its MSP, the signature and the
    # transaction id rule (sha256(nonce ‖ creator)) before it runs the chaincode.
    crypto = probe.net / "crypto" / "peerOrganizations" / "org1.example.com"
    msp = crypto / "users" / "Admin@org1.example.com" / "msp"
    cert = next((msp / "signcerts").glob("*.pem")).read_bytes()
    key = serialization.load_pem_private_key(
        next((msp / "keystore").glob("*")).read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    admin = Identity("Org1MSP", cert)
    tls_ca = (crypto / "peers" / "peer0.org1.example.com" / "tls" / "ca.crt").read_bytes()
    nonce = os.urandom(24)
    creator = serialize_identity(admin)
    tx_id, proposal = signed_proposal(
        creator,
        Signer(key),
        channel="mychannel",
        chaincode="ehrshare",
        function="GetIdentity",
        args=(b"Org1MSP/Admin@org1.example.com",),
        timestamp_ns=time.time_ns(),
        nonce=nonce,
    )
    assert tx_id == transaction_id(nonce, creator)
    channel = dial("127.0.0.1:7051", tls_ca_pem=tls_ca, server_name="peer0.org1.example.com")
    try:
        endorser = peer_pb2_grpc.EndorserStub(channel)
        response = endorser.ProcessProposal(proposal, timeout=30)
        assert response.response.status == 200, response.response.message
        record = json.loads(response.response.payload)
        assert (record["ibe_id"], record["role"]) == ("Org1MSP/Admin@org1.example.com", "admin")
        assert response.endorsement.endorser  # the peer signed its endorsement

        # A signature that does not match is refused by the real peer (not by our code).
        stranger = Signer(ec.generate_private_key(ec.SECP256R1()))
        forged = type(proposal)(
            proposal_bytes=proposal.proposal_bytes,
            signature=stranger.sign(proposal.proposal_bytes),
        )
        with pytest.raises(grpc.RpcError) as refused:
            endorser.ProcessProposal(forged, timeout=30)
        assert "access denied" in str(refused.value.details())
    finally:
        channel.close()
