"""The Fabric Gateway client, checked by an in-test fake Gateway server.

These are protocol-level unit tests against a FAKE: ``FakeGateway`` implements
``gateway.Gateway`` (Endorse, Submit, CommitStatus, Evaluate, ChaincodeEvents) with the checks a
peer's Gateway makes on what the client sends (signatures by the creator's certificate, low-S,
Fabric's transaction id rule, channel and chaincode names in the headers) and answers with
scripted results and errors shaped like Fabric's (gRPC status + ``gateway.ErrorDetail``). The client
has NOT run against a real Fabric peer; Fabric cannot be built on this machine (docs/status.md).
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fabric_protos.common import common_pb2 as common
from fabric_protos.gateway import gateway_pb2 as gw
from fabric_protos.gateway import gateway_pb2_grpc as gw_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_event_pb2 as eventpb
from fabric_protos.peer import chaincode_pb2 as ccpb
from fabric_protos.peer import proposal_pb2 as proposalpb
from fabric_protos.peer import proposal_response_pb2 as responsepb
from fabric_protos.peer import transaction_pb2 as txpb

from ehrshare.identity import Identity, LocalCA, Signer, verify_signature
from ehrshare.ledger.api import InMemoryCheckpointer
from ehrshare.ledger.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    SubmitError,
)
from ehrshare.ledger.fabric import (
    GRPC_STATUS_DETAILS_KEY,
    FabricGateway,
    Timeouts,
    connect,
    dial,
    rpc_status_class,
)
from ehrshare.services.tls import issue_tls_certificate

CHANNEL = "ehrshare"
CHAINCODE = "ehrshare"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
RpcStatus = rpc_status_class()


def abort_with_details(context: Any, code: grpc.StatusCode, message: str, *details: str) -> None:
    """Fail the call the way Fabric's Gateway does: a status plus ErrorDetail per endpoint."""
    status = RpcStatus(code=code.value[0], message=message)
    for text in details:
        item = status.details.add()
        item.Pack(gw.ErrorDetail(address="peer0.org1:7051", msp_id="Org1MSP", message=text))
    context.set_trailing_metadata(((GRPC_STATUS_DETAILS_KEY, status.SerializeToString()),))
    context.abort(code, message)


@dataclass
class Checked:
    """What the fake found in one signed proposal."""

    tx_id: str
    creator: Identity
    channel: str
    chaincode: str
    args: list[bytes]
    signature: bytes
    header: Any


@dataclass
class FakeGateway(gw_grpc.GatewayServicer):
    """A Gateway that checks requests as a peer would and answers from a script."""

    commit_code: str = "VALID"
    fail_submit: bool = False
    fail_commit_status: bool = False
    no_endorsers: str = ""  # the Gateway's own UNAVAILABLE answer to Endorse, for these orgs
    tamper_tx_id: bool = False
    events: list[Any] = field(default_factory=list)
    proposals: list[Checked] = field(default_factory=list)
    submitted: dict[str, bytes] = field(default_factory=dict)  # tx id -> envelope payload
    prepared: dict[str, bytes] = field(default_factory=dict)
    status_requests: list[Any] = field(default_factory=list)
    event_requests: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    # --- checks ---------------------------------------------------------------------------------

    def _identity(self, creator: bytes) -> Identity:
        sid = identities_pb2.SerializedIdentity.FromString(creator)
        return Identity(sid.mspid, sid.id_bytes)

    def _verify(self, creator: bytes, data: bytes, signature: bytes, what: str) -> None:
        if not verify_signature(self._identity(creator), data, signature):  # also refuses high-S
            self.problems.append(f"{what} signature does not verify")

    def _check_proposal(self, signed: Any, tx_id: str, channel: str) -> Checked:
        proposal = proposalpb.Proposal.FromString(signed.proposal_bytes)
        header = common.Header.FromString(proposal.header)
        chdr = common.ChannelHeader.FromString(header.channel_header)
        shdr = common.SignatureHeader.FromString(header.signature_header)
        ext = proposalpb.ChaincodeHeaderExtension.FromString(chdr.extension)
        payload = proposalpb.ChaincodeProposalPayload.FromString(proposal.payload)
        spec = ccpb.ChaincodeInvocationSpec.FromString(payload.input)
        self._verify(shdr.creator, signed.proposal_bytes, signed.signature, "proposal")
        if chdr.type != common.HeaderType.Value("ENDORSER_TRANSACTION"):
            self.problems.append("channel header type is not ENDORSER_TRANSACTION")
        if len(shdr.nonce) != 24:
            self.problems.append("nonce is not 24 bytes")
        if chdr.tx_id != hashlib.sha256(shdr.nonce + shdr.creator).hexdigest():
            self.problems.append("transaction id is not sha256(nonce ‖ creator)")
        if chdr.tx_id != tx_id or chdr.channel_id != channel:
            self.problems.append("request fields do not match the proposal header")
        if ext.chaincode_id.name != spec.chaincode_spec.chaincode_id.name:
            self.problems.append("chaincode names differ between header and payload")
        checked = Checked(
            tx_id=chdr.tx_id,
            creator=self._identity(shdr.creator),
            channel=chdr.channel_id,
            chaincode=ext.chaincode_id.name,
            args=list(spec.chaincode_spec.input.args),
            signature=bytes(signed.signature),
            header=header,
        )
        self.proposals.append(checked)
        return checked

    def _run(self, checked: Checked, context: Any, stage: str) -> bytes:
        if checked.channel != CHANNEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"channel '{checked.channel}' not found")
        function = checked.args[0].decode()
        if function == "Fail":
            message = "record r-17 does not exist"
            if stage == "evaluate":
                abort_with_details(
                    context,
                    grpc.StatusCode.UNKNOWN,
                    f"evaluate call to endorser returned error: chaincode response 500, {message}",
                    f"chaincode response 500, {message}",
                )
            abort_with_details(
                context,
                grpc.StatusCode.ABORTED,
                "failed to endorse transaction, see attached details for more info",
                f"chaincode response 500, {message}",
            )
        return json.dumps([a.decode() for a in checked.args]).encode()

    # --- the service ----------------------------------------------------------------------------

    def Evaluate(self, request: Any, context: Any) -> Any:
        checked = self._check_proposal(
            request.proposed_transaction, request.transaction_id, request.channel_id
        )
        result = self._run(checked, context, "evaluate")
        return gw.EvaluateResponse(result=responsepb.Response(status=200, payload=result))

    def Endorse(self, request: Any, context: Any) -> Any:
        if self.no_endorsers:
            # Fabric 2.5/3.1's words (internal/pkg/gateway) when no peer of the organisations
            # named is known to it: it answered, nothing behind it was reached.
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"failed to find any endorsing peers for org(s): {self.no_endorsers}",
            )
        checked = self._check_proposal(
            request.proposed_transaction, request.transaction_id, request.channel_id
        )
        result = self._run(checked, context, "endorse")
        header = checked.header
        if self.tamper_tx_id:
            chdr = common.ChannelHeader.FromString(header.channel_header)
            chdr.tx_id = "0" * 64
            header = common.Header(
                channel_header=chdr.SerializeToString(), signature_header=header.signature_header
            )
        action = proposalpb.ChaincodeAction(
            response=responsepb.Response(status=200, payload=result)
        )
        prp = responsepb.ProposalResponsePayload(
            proposal_hash=b"h" * 32, extension=action.SerializeToString()
        )
        cap = txpb.ChaincodeActionPayload(
            action=txpb.ChaincodeEndorsedAction(proposal_response_payload=prp.SerializeToString())
        )
        tx = txpb.Transaction(
            actions=[
                txpb.TransactionAction(
                    header=header.signature_header, payload=cap.SerializeToString()
                )
            ]
        )
        payload = common.Payload(header=header, data=tx.SerializeToString()).SerializeToString()
        self.prepared[checked.tx_id] = payload
        return gw.EndorseResponse(prepared_transaction=common.Envelope(payload=payload))

    def Submit(self, request: Any, context: Any) -> Any:
        envelope = request.prepared_transaction
        if self.prepared.get(request.transaction_id) != envelope.payload:
            self.problems.append("submitted envelope is not the prepared one")
        payload = common.Payload.FromString(envelope.payload)
        shdr = common.SignatureHeader.FromString(payload.header.signature_header)
        self._verify(shdr.creator, envelope.payload, envelope.signature, "envelope")
        if self.fail_submit:
            abort_with_details(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "no orderers could successfully process the transaction",
                "received unsuccessful response from orderer: status=SERVICE_UNAVAILABLE",
            )
        self.submitted[request.transaction_id] = bytes(envelope.payload)
        return gw.SubmitResponse()

    def CommitStatus(self, request: Any, context: Any) -> Any:
        inner = gw.CommitStatusRequest.FromString(request.request)
        self._verify(inner.identity, request.request, request.signature, "commit status request")
        self.status_requests.append(inner)
        if self.fail_commit_status:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "waiting for the commit timed out")
        if inner.transaction_id not in self.submitted:
            self.problems.append("commit status asked for a transaction never submitted")
        return gw.CommitStatusResponse(
            result=txpb.TxValidationCode.Value(self.commit_code), block_number=7
        )

    def ChaincodeEvents(self, request: Any, context: Any) -> Iterator[Any]:
        inner = gw.ChaincodeEventsRequest.FromString(request.request)
        self._verify(inner.identity, request.request, request.signature, "events request")
        self.event_requests.append(inner)
        yield from self.events


@dataclass
class Rig:
    fake: FakeGateway
    gateway: FabricGateway
    identity: Identity
    signer: Signer
    port: int


@pytest.fixture
def rig() -> Iterator[Rig]:
    fake = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gw_grpc.add_GatewayServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    identity, signer = LocalCA.create("Org1MSP").issue("alice", role="patient")
    channel = dial(f"127.0.0.1:{port}", tls_ca_pem=None)
    gateway = connect(identity, signer, channel)
    try:
        yield Rig(fake, gateway, identity, signer, port)
    finally:
        channel.close()
        server.stop(0)


def is_low_s(signature: bytes) -> bool:
    _, s = decode_dss_signature(signature)
    return s <= P256_ORDER // 2


def test_submit_sends_signed_proposal_envelope_and_status_request_and_returns_the_result(
    rig: Rig,
) -> None:
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    result = contract.submit_transaction("RegisterRecord", "r-1", b"\x00bytes")
    assert json.loads(result) == ["RegisterRecord", "r-1", "\x00bytes"]
    assert rig.fake.problems == []
    (checked,) = rig.fake.proposals
    assert (checked.channel, checked.chaincode) == (CHANNEL, CHAINCODE)
    assert checked.creator == rig.identity
    assert list(rig.fake.submitted) == [checked.tx_id]
    (status_request,) = rig.fake.status_requests
    assert status_request.transaction_id == checked.tx_id
    assert status_request.channel_id == CHANNEL


def test_every_signature_is_low_s_and_every_txid_follows_fabrics_rule(rig: Rig) -> None:
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    for i in range(16):  # a signer that did not normalise s would fail here with p ≈ 1 - 2⁻¹⁶
        contract.evaluate_transaction("Get", str(i))
    assert rig.fake.problems == []
    assert len({c.tx_id for c in rig.fake.proposals}) == 16
    assert all(is_low_s(c.signature) for c in rig.fake.proposals)


def test_fine_grained_flow_exposes_each_stage(rig: Rig) -> None:
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    proposal = contract.new_proposal("Grant", "dave", endorsing_organizations=("Org1MSP",))
    transaction = proposal.endorse()
    assert transaction.transaction_id == proposal.transaction_id
    assert json.loads(transaction.result) == ["Grant", "dave"]
    commit = transaction.submit()
    status = commit.get_status()
    assert (status.tx_id, status.code, status.block_number, status.successful) == (
        proposal.transaction_id,
        "VALID",
        7,
        True,
    )
    assert rig.fake.problems == []


def test_a_chaincode_failure_surfaces_its_own_message_per_stage(rig: Rig) -> None:
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    with pytest.raises(GatewayError) as evaluated:
        contract.evaluate_transaction("Fail")
    assert evaluated.value.message == "record r-17 does not exist"
    assert evaluated.value.details == (
        "Org1MSP (peer0.org1:7051): chaincode response 500, record r-17 does not exist",
    )
    with pytest.raises(EndorseError) as endorsed:
        contract.submit_transaction("Fail")
    assert endorsed.value.message == "record r-17 does not exist"
    assert endorsed.value.transaction_id == rig.fake.proposals[-1].tx_id
    assert rig.fake.submitted == {}


def test_submit_and_commit_status_failures_raise_their_stage_errors(rig: Rig) -> None:
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    rig.fake.fail_submit = True
    with pytest.raises(SubmitError) as submitted:
        contract.submit_transaction("Put", "k")
    # The Gateway answered (its orderers were unavailable): not "could not reach the Gateway".
    assert submitted.value.message == (
        "the Fabric Gateway answered that it cannot submit now (UNAVAILABLE): "
        "no orderers could successfully process the transaction"
    )
    assert not submitted.value.unreachable and submitted.value.exit_code == 4
    assert submitted.value.details == (
        "Org1MSP (peer0.org1:7051): received unsuccessful response from orderer: "
        "status=SERVICE_UNAVAILABLE",
    )
    rig.fake.fail_submit = False
    rig.fake.fail_commit_status = True
    with pytest.raises(CommitStatusError) as status:
        contract.submit_transaction("Put", "k")
    assert status.value.transaction_id == rig.fake.proposals[-1].tx_id
    rig.fake.fail_commit_status = False
    rig.fake.commit_code = "MVCC_READ_CONFLICT"
    with pytest.raises(CommitError) as committed:
        contract.submit_transaction("Put", "k")
    assert committed.value.code == "MVCC_READ_CONFLICT"
    assert str(committed.value).startswith(
        f"transaction {rig.fake.proposals[-1].tx_id} committed as MVCC_READ_CONFLICT"
    )


def test_the_client_refuses_to_sign_an_envelope_that_is_not_its_transaction(rig: Rig) -> None:
    rig.fake.tamper_tx_id = True
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    with pytest.raises(EndorseError, match="unusable transaction: its transaction id is '0000"):
        contract.submit_transaction("Put", "k")
    assert rig.fake.submitted == {}


def test_unknown_channel_is_a_gateway_error(rig: Rig) -> None:
    contract = rig.gateway.get_network("nochannel").get_contract(CHAINCODE)
    with pytest.raises(GatewayError, match=r"NOT_FOUND.*channel 'nochannel' not found"):
        contract.evaluate_transaction("Get")


def test_an_unreachable_gateway_gives_a_clear_connection_error() -> None:
    identity, signer = LocalCA.create("Org1MSP").issue("alice", role="patient")
    with socket.socket() as probe:  # bound then released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = dial(f"127.0.0.1:{port}", tls_ca_pem=None)
    try:
        gateway = connect(identity, signer, channel, timeouts=Timeouts(evaluate=5, endorse=5))
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(GatewayError, match="could not reach the Fabric Gateway to evaluate"):
            contract.evaluate_transaction("Get")
        with pytest.raises(
            EndorseError, match="could not reach the Fabric Gateway to endorse"
        ) as e:
            contract.submit_transaction("Put")
        assert e.value.unreachable and e.value.exit_code == 4  # a transport failure
    finally:
        channel.close()


def test_the_gateways_own_no_endorsing_peers_answer_is_not_an_unreachable_gateway(
    rig: Rig,
) -> None:
    rig.fake.no_endorsers = "HospitalBMSP"
    contract = rig.gateway.get_network(CHANNEL).get_contract(CHAINCODE)
    proposal = contract.new_proposal("Put", "k", endorsing_organizations=("HospitalBMSP",))
    with pytest.raises(EndorseError) as caught:
        proposal.endorse()
    assert caught.value.message == (
        "the Fabric Gateway answered that it cannot endorse now (UNAVAILABLE): "
        "failed to find any endorsing peers for org(s): HospitalBMSP"
    )
    assert not caught.value.unreachable and not caught.value.creator_refused
    assert caught.value.exit_code == 4  # nothing decided; a later try may succeed
    assert "anchor peers" in (caught.value.hint or "")
    assert rig.fake.submitted == {}


@pytest.mark.parametrize(
    "text",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:7051: "
        "Failed to connect to remote host: Connection refused",
        "Socket closed",
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:7051: "
        "Unwrap failed (TSI_DATA_CORRUPTED)",
        "DNS resolution failed for peer0.org1:7051",
    ],
)
def test_grpc_transport_failures_stay_could_not_reach(text: str) -> None:
    from ehrshare.ledger.fabric.failures import GatewayFailure, _stage_error

    failure = GatewayFailure(grpc.StatusCode.UNAVAILABLE, text)
    error = _stage_error(EndorseError, failure, "tx1", "endorse")
    assert error.message.startswith("could not reach the Fabric Gateway to endorse")
    assert error.unreachable and error.exit_code == 4


def chaincode_events_response(block: int, *tx_ids: str) -> Any:
    return gw.ChaincodeEventsResponse(
        block_number=block,
        events=[
            eventpb.ChaincodeEvent(
                chaincode_id=CHAINCODE, tx_id=t, event_name="RegisterRecord", payload=t.encode()
            )
            for t in tx_ids
        ],
    )


def test_chaincode_events_start_positions_and_delivery(rig: Rig) -> None:
    rig.fake.events = [chaincode_events_response(3, "t1", "t2"), chaincode_events_response(5, "t3")]
    network = rig.gateway.get_network(CHANNEL)
    with network.get_chaincode_events(CHAINCODE) as events:
        got = [(e.block_number, e.transaction_id, e.event_name, e.payload) for e in events]
    assert got == [
        (3, "t1", "RegisterRecord", b"t1"),
        (3, "t2", "RegisterRecord", b"t2"),
        (5, "t3", "RegisterRecord", b"t3"),
    ]
    checkpoint = InMemoryCheckpointer()
    with network.get_chaincode_events(CHAINCODE, start_block=2) as events:
        checkpoint.checkpoint_event(next(events))
    with network.get_chaincode_events(CHAINCODE, checkpoint=checkpoint) as events:
        next(events)
    first, second, third = rig.fake.event_requests
    assert first.start_position.WhichOneof("Type") == "next_commit"  # never "newest"
    assert second.start_position.specified.number == 2
    assert third.start_position.specified.number == 3
    assert third.after_transaction_id == "t1"
    assert {r.chaincode_id for r in rig.fake.event_requests} == {CHAINCODE}
    assert rig.fake.problems == []


def test_closing_an_event_stream_ends_a_blocked_iteration(rig: Rig) -> None:
    import threading

    release = threading.Event()

    def endless() -> Iterator[Any]:
        yield chaincode_events_response(1, "t1")
        release.wait(30)  # held open until the test ends (the client closes first)

    class Endless(list[Any]):
        def __iter__(self) -> Iterator[Any]:
            return endless()

    rig.fake.events = Endless()
    events = rig.gateway.get_network(CHANNEL).get_chaincode_events(CHAINCODE)
    assert next(events).transaction_id == "t1"
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(list(events)))
    reader.start()
    events.close()
    reader.join(30)
    release.set()
    assert not reader.is_alive() and result == [[]]


def test_dial_over_tls_with_the_peers_ca() -> None:
    ca = LocalCA.create("Org1MSP")
    cert_pem, key_pem = issue_tls_certificate(ca, "peer0")
    fake = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gw_grpc.add_GatewayServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    identity, signer = ca.issue("alice", role="patient")
    channel = dial(f"127.0.0.1:{port}", tls_ca_pem=ca.certificate_pem)
    other = dial(f"127.0.0.1:{port}", tls_ca_pem=LocalCA.create("Org9MSP").certificate_pem)
    try:
        contract = connect(identity, signer, channel).get_network(CHANNEL).get_contract(CHAINCODE)
        assert json.loads(contract.evaluate_transaction("Get", "k")) == ["Get", "k"]
        untrusted = connect(identity, signer, other).get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(GatewayError, match="could not reach the Fabric Gateway"):
            untrusted.evaluate_transaction("Get", "k")
    finally:
        channel.close()
        other.close()
        server.stop(0)


def test_dial_refuses_half_a_client_certificate() -> None:
    with pytest.raises(ValueError, match="needs both client_cert_pem and client_key_pem"):
        dial("127.0.0.1:1", tls_ca_pem=b"x", client_cert_pem=b"cert")


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 3),  # the peers refused who is calling
        (grpc.StatusCode.PERMISSION_DENIED, 3),
        (grpc.StatusCode.UNAVAILABLE, 4),  # nobody answered
        (grpc.StatusCode.DEADLINE_EXCEEDED, 4),
        (grpc.StatusCode.ABORTED, 1),
    ],
)
def test_gateway_failures_carry_the_exit_code_of_their_cause(
    code: grpc.StatusCode, exit_code: int
) -> None:
    from ehrshare.ledger.fabric.failures import GatewayFailure, _stage_error

    error = _stage_error(GatewayError, GatewayFailure(code, "no"), "tx1", "evaluate")
    assert error.exit_code == exit_code
    assert error.creator_refused == (exit_code == 3)
    # A chaincode's own refusal stays a refusal whatever the status code says.
    refusal = GatewayFailure(code, "chaincode response 500, record r-1 does not exist")
    assert _stage_error(GatewayError, refusal, "tx1", "evaluate").exit_code == 1
