"""ledger.peer's client-side gateway, checked against in-test FAKE peers and orderers.

The fakes answer Fabric 2.1's Endorser, Deliver and AtomicBroadcast services from a script (what
a real peer checks is covered by tests/fabric against the real one). These tests pin what the
fakes make reachable: the transaction envelope field by field, endorsers that disagree, endorser
choice (own organisation first, a stand-in for one that is down), refusals by chaincode and
orderer, orderer failover, the commit listener, and event filtering and checkpoint skipping.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from fabric_protos.common import common_pb2 as common
from fabric_protos.gateway import gateway_pb2 as gwpb
from fabric_protos.orderer import ab_pb2 as ab
from fabric_protos.orderer import ab_pb2_grpc as ab_grpc
from fabric_protos.peer import chaincode_event_pb2 as eventpb
from fabric_protos.peer import events_pb2 as eventspb
from fabric_protos.peer import events_pb2_grpc as events_grpc
from fabric_protos.peer import peer_pb2_grpc as peer_grpc
from fabric_protos.peer import proposal_pb2 as proposalpb
from fabric_protos.peer import proposal_response_pb2 as responsepb
from fabric_protos.peer import transaction_pb2 as txpb

from ehrshare.identity import LocalCA, verify_signature
from ehrshare.ledger.envelope import deserialize_identity, serialize_identity
from ehrshare.ledger.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    SubmitError,
)
from ehrshare.ledger.fabric import FabricCommit, FabricGateway, Timeouts, signed_proposal
from ehrshare.ledger.peer import (
    OrdererEndpoint,
    PeerEndpoint,
    assemble_transaction,
    block_chaincode_events,
    connect,
    skip_through,
)
from ehrshare.services.tls import issue_tls_certificate

CHANNEL = "mychannel"
CHAINCODE = "ehrshare"
CA = LocalCA.create("Org1MSP")
TLS_CERT, TLS_KEY = issue_tls_certificate(CA, "fabric-fake")


def _proposal_response(proposal_bytes: bytes, result: bytes, endorser: bytes) -> Any:
    action = proposalpb.ChaincodeAction(
        results=b"rwset",
        events=eventpb.ChaincodeEvent(
            chaincode_id=CHAINCODE, event_name="Did", payload=result
        ).SerializeToString(),
        response=responsepb.Response(status=200, payload=result),
    )
    payload = responsepb.ProposalResponsePayload(
        proposal_hash=hashlib.sha256(proposal_bytes).digest(), extension=action.SerializeToString()
    ).SerializeToString()
    return responsepb.ProposalResponse(
        version=1,
        response=responsepb.Response(status=200, payload=result),
        payload=payload,
        endorsement=responsepb.Endorsement(endorser=endorser, signature=b"sig-" + endorser),
    )


@dataclass
class Ledger:
    """Blocks the fake orderer cuts, which the fake peers deliver."""

    blocks: list[list[tuple[str, int]]] = field(default_factory=lambda: [[]])  # (tx id, code)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def append(self, txs: list[tuple[str, int]]) -> None:
        with self.cond:
            self.blocks.append(txs)
            self.cond.notify_all()


@dataclass
class FakePeer(peer_grpc.EndorserServicer, events_grpc.DeliverServicer):  # type: ignore[misc]
    name: str
    ledger: Ledger
    result: bytes = b"result"
    refuse: str = ""
    proposals: list[bytes] = field(default_factory=list)
    seeks: list[Any] = field(default_factory=list)

    def ProcessProposal(self, request: Any, context: Any) -> Any:
        self.proposals.append(bytes(request.proposal_bytes))
        if self.refuse:
            return responsepb.ProposalResponse(
                response=responsepb.Response(status=500, message=self.refuse)
            )
        return _proposal_response(request.proposal_bytes, self.result, self.name.encode())

    def DeliverFiltered(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        envelope = next(request_iterator)
        payload = common.Payload.FromString(envelope.payload)
        seek = ab.SeekInfo.FromString(payload.data)
        self.seeks.append(seek)
        with self.ledger.cond:
            number = (
                len(self.ledger.blocks) - 1
                if seek.start.WhichOneof("Type") == "newest"
                else seek.start.specified.number
            )
        while context.is_active():
            with self.ledger.cond:
                self.ledger.cond.wait_for(lambda n=number: n < len(self.ledger.blocks), 0.2)
                if number >= len(self.ledger.blocks):
                    continue
                txs = self.ledger.blocks[number]
            block = eventspb.FilteredBlock(channel_id=CHANNEL, number=number)
            for tx_id, code in txs:
                block.filtered_transactions.add(txid=tx_id, tx_validation_code=code)
            yield eventspb.DeliverResponse(filtered_block=block)
            number += 1


@dataclass
class FakeOrderer(ab_grpc.AtomicBroadcastServicer):  # type: ignore[misc]
    ledger: Ledger
    refuse: tuple[int, str] | None = None
    envelopes: list[Any] = field(default_factory=list)
    cuts: bool = True  # False: a BFT follower that only acknowledges (the leader cuts)
    delay: float = 0.0  # seconds before it answers
    busy: int = 0  # how many broadcasts it answers SERVICE_UNAVAILABLE first (not ready)

    def Broadcast(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for envelope in request_iterator:
            self.envelopes.append(envelope)
            time.sleep(self.delay)
            if self.busy > 0:
                self.busy -= 1
                yield ab.BroadcastResponse(status=common.Status.Value("SERVICE_UNAVAILABLE"))
                continue
            if self.refuse is not None:
                yield ab.BroadcastResponse(status=self.refuse[0], info=self.refuse[1])
                continue
            payload = common.Payload.FromString(envelope.payload)
            tx_id = common.ChannelHeader.FromString(payload.header.channel_header).tx_id
            if self.cuts:
                self.ledger.append([(tx_id, 0)])  # cut before answering: the client may hang up
            yield ab.BroadcastResponse(status=common.Status.Value("SUCCESS"))


@pytest.fixture
def servers() -> Iterator[list[grpc.Server]]:
    started: list[grpc.Server] = []
    yield started
    for server in started:
        server.stop(grace=None)


def _serve(servers: list[grpc.Server], *servicers: Any, port: int = 0) -> str:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    for servicer in servicers:
        if isinstance(servicer, FakePeer):
            peer_grpc.add_EndorserServicer_to_server(servicer, server)
            events_grpc.add_DeliverServicer_to_server(servicer, server)
        else:
            ab_grpc.add_AtomicBroadcastServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(TLS_KEY, TLS_CERT)])
    port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    servers.append(server)
    return f"127.0.0.1:{port}"


def _nobody() -> str:
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@dataclass
class Net:
    ledger: Ledger
    peers: dict[str, FakePeer]
    orderers: list[FakeOrderer]
    gateway: FabricGateway


@pytest.fixture
def make_net(servers: list[grpc.Server]) -> Iterator[Any]:
    opened: list[FabricGateway] = []

    def make(
        orgs: dict[str, FakePeer | None],
        *,
        endorsers: int | None = None,
        orderers: tuple[FakeOrderer | None, ...] = (),
        ledger: Ledger | None = None,
        quorum: int | None = None,
    ) -> Net:
        ledger = ledger or Ledger()
        peers = [
            PeerEndpoint(_serve(servers, fake) if fake else _nobody(), msp, CA.certificate_pem)
            for msp, fake in orgs.items()
        ]
        orderer_fakes = list(orderers) or [FakeOrderer(ledger)]
        identity, signer = CA.issue("admin", role="admin")
        gateway = connect(
            identity,
            signer,
            peers=peers,
            orderers=[
                OrdererEndpoint(_serve(servers, o) if o else _nobody(), CA.certificate_pem)
                for o in orderer_fakes
            ],
            endorsers=endorsers,
            timeouts=Timeouts(evaluate=5, endorse=5, submit=5, commit_status=5),
            quorum=quorum,
        )
        opened.append(gateway)
        return Net(
            ledger,
            {m: f for m, f in orgs.items() if f},
            [o for o in orderer_fakes if o],
            gateway,
        )

    yield make
    for gateway in opened:
        gateway.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fabric-commits-")]


def _contract(net: Net) -> Any:
    return net.gateway.get_network(CHANNEL).get_contract(CHAINCODE)


# --- envelope assembly ----------------------------------------------------------------------


def test_the_envelope_is_assembled_as_create_signed_tx_does_field_by_field() -> None:
    identity, signer = CA.issue("alice", role="patient")
    tx_id, signed = signed_proposal(
        serialize_identity(identity),
        signer,
        channel=CHANNEL,
        chaincode=CHAINCODE,
        function="Put",
        args=(b"k",),
        timestamp_ns=1_700_000_000_000_000_000,
    )
    # A transient map reaches the endorsers only; give the proposal one to see it stripped.
    proposal = proposalpb.Proposal.FromString(signed.proposal_bytes)
    proposal_payload = proposalpb.ChaincodeProposalPayload.FromString(proposal.payload)
    proposal_payload.TransientMap["secret"] = b"private input"
    proposal.payload = proposal_payload.SerializeToString()
    proposal_bytes = proposal.SerializeToString()
    responses = [
        _proposal_response(proposal_bytes, b"r", b"peerA"),
        _proposal_response(proposal_bytes, b"r", b"peerB"),
    ]

    envelope = assemble_transaction(proposal_bytes, responses)

    assert envelope.signature == b""  # the submitter signs it, at submit
    payload = common.Payload.FromString(envelope.payload)
    header = common.Header.FromString(proposal.header)
    assert payload.header == header
    assert common.ChannelHeader.FromString(payload.header.channel_header).tx_id == tx_id
    transaction = txpb.Transaction.FromString(payload.data)
    assert len(transaction.actions) == 1
    action = transaction.actions[0]
    assert action.header == header.signature_header
    action_payload = txpb.ChaincodeActionPayload.FromString(action.payload)
    in_block = proposalpb.ChaincodeProposalPayload.FromString(
        action_payload.chaincode_proposal_payload
    )
    assert in_block.input == proposal_payload.input and not in_block.TransientMap
    assert action_payload.action.proposal_response_payload == responses[0].payload
    assert [e.endorser for e in action_payload.action.endorsements] == [b"peerA", b"peerB"]
    assert [e.signature for e in action_payload.action.endorsements] == [b"sig-peerA", b"sig-peerB"]
    with pytest.raises(ValueError, match="at least one endorsement"):
        assemble_transaction(proposal_bytes, [])


# --- endorsement ----------------------------------------------------------------------------


def test_endorsers_that_disagree_are_an_endorse_error_naming_them(make_net: Any) -> None:
    ledger = Ledger()
    net = make_net(
        {
            "Org1MSP": FakePeer("p1", ledger, result=b"one"),
            "Org2MSP": FakePeer("p2", ledger, result=b"two"),
        },
        ledger=ledger,
    )
    net.gateway.conflict_retries = 1  # proposed once more (a peer may be behind), then refused
    with pytest.raises(EndorseError) as failed:
        _contract(net).submit_transaction("Put", "k")
    assert "different results" in failed.value.message
    assert len(failed.value.details) == 2
    assert {d.split(" ")[0] for d in failed.value.details} == {"Org1MSP", "Org2MSP"}
    assert net.orderers[0].envelopes == []  # nothing was ordered
    assert len(net.peers["Org1MSP"].proposals) == 2


def test_an_endorser_that_is_behind_is_asked_again_until_it_agrees(make_net: Any) -> None:
    # A hospital's peer that just joined has not committed the latest blocks: its answer
    # differs from the others' until it has. The submit proposes again instead of failing.
    ledger = Ledger()
    behind = CatchingUpPeer("p2", ledger, result=b"older")
    net = make_net({"Org1MSP": FakePeer("p1", ledger), "Org2MSP": behind}, ledger=ledger)
    assert _contract(net).submit_transaction("Put", "k") == b"result"
    assert len(behind.proposals) == 3 and len(net.orderers[0].envelopes) == 1


@dataclass
class CatchingUpPeer(FakePeer):
    """Answers from older state for its first two proposals, then as the others do."""

    def ProcessProposal(self, request: Any, context: Any) -> Any:
        if len(self.proposals) == 2:
            self.result = b"result"
        return super().ProcessProposal(request, context)


def test_endorsement_by_n_orgs_own_org_first_with_a_stand_in_for_one_that_is_down(
    make_net: Any,
) -> None:
    ledger = Ledger()
    org3 = FakePeer("p3", ledger)
    org1 = FakePeer("p1", ledger)
    # Org1 is the caller's organisation but listed last; Org2's peer is down.
    net = make_net({"Org2MSP": None, "Org3MSP": org3, "Org1MSP": org1}, endorsers=2, ledger=ledger)
    result = _contract(net).submit_transaction("Put", "k")
    assert result == b"result"
    envelope = net.orderers[0].envelopes[0]
    payload = common.Payload.FromString(envelope.payload)
    action = txpb.Transaction.FromString(payload.data).actions[0]
    endorsements = txpb.ChaincodeActionPayload.FromString(action.payload).action.endorsements
    assert [e.endorser for e in endorsements] == [b"p1", b"p3"]
    # The submitter signed the envelope it was given.
    creator = common.SignatureHeader.FromString(payload.header.signature_header).creator
    assert verify_signature(deserialize_identity(creator), envelope.payload, envelope.signature)


def test_a_chaincode_refusal_keeps_its_message_for_evaluate_and_endorse(make_net: Any) -> None:
    ledger = Ledger()
    net = make_net({"Org1MSP": FakePeer("p1", ledger, refuse="record r-1 does not exist")})
    contract = _contract(net)
    with pytest.raises(GatewayError) as evaluated:
        contract.evaluate_transaction("Get", "r-1")
    assert evaluated.value.message == "record r-1 does not exist"
    assert not evaluated.value.unreachable  # an answer, not an outage
    with pytest.raises(EndorseError) as endorsed:
        contract.submit_transaction("Put", "r-1")
    assert endorsed.value.message == "record r-1 does not exist"
    assert len(endorsed.value.details) == 1
    assert endorsed.value.details[0].startswith("Org1MSP (127.0.0.1:")
    assert endorsed.value.details[0].endswith(
        "): chaincode response 500, record r-1 does not exist"
    )
    assert net.orderers[0].envelopes == []


def test_evaluate_falls_back_to_the_next_peer_and_fails_clearly_when_none_answers(
    make_net: Any,
) -> None:
    ledger = Ledger()
    net = make_net({"Org1MSP": None, "Org2MSP": FakePeer("p2", ledger)})
    assert _contract(net).evaluate_transaction("Get", "k") == b"result"
    down = make_net({"Org1MSP": None})
    with pytest.raises(GatewayError, match="could not reach any peer to evaluate") as refused:
        _contract(down).evaluate_transaction("Get", "k")
    assert refused.value.unreachable  # nothing was decided: the SDK says "is it running?"


# --- ordering and commit status -------------------------------------------------------------


def test_submit_fails_over_to_the_next_orderer_and_get_status_sees_the_commit(
    make_net: Any,
) -> None:
    ledger = Ledger()
    peer = FakePeer("p1", ledger)
    orderer = FakeOrderer(ledger)
    net = make_net({"Org1MSP": peer}, orderers=(None, orderer), ledger=ledger)
    commit = _contract(net).new_proposal("Put", "k").endorse().submit()
    status = commit.get_status()
    assert (status.code, status.block_number) == ("VALID", 1)
    assert len(orderer.envelopes) == 1
    # The listener started at the newest block, before the broadcast.
    assert peer.seeks[0].start.WhichOneof("Type") == "newest"
    # The next submission goes to the orderer that worked first.
    _contract(net).submit_transaction("Put", "k2")
    assert len(orderer.envelopes) == 2


def test_an_orderer_refusal_is_a_submit_error_with_its_status_and_info(make_net: Any) -> None:
    ledger = Ledger()
    orderer = FakeOrderer(ledger, refuse=(common.Status.Value("FORBIDDEN"), "no writers"))
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=(orderer,), ledger=ledger)
    with pytest.raises(SubmitError) as refused:
        _contract(net).submit_transaction("Put", "k")
    assert "refused the transaction: FORBIDDEN: no writers" in refused.value.message
    assert refused.value.transaction_id


def _bft(ledger: Ledger, *followers: FakeOrderer | None) -> tuple[FakeOrderer | None, ...]:
    """A SmartBFT ordering service of four: the followers given first, the leader (which cuts
    the block) last, as a client with a follower first in its list sees it."""
    return (*followers, FakeOrderer(ledger))


def test_bft_submit_goes_to_every_orderer_and_returns_on_a_quorum_not_the_slow_one(
    make_net: Any,
) -> None:
    ledger = Ledger()
    slow = FakeOrderer(ledger, cuts=False, delay=3.0)  # e.g. a follower that lags
    fast = [FakeOrderer(ledger, cuts=False) for _ in range(2)]
    orderers = _bft(ledger, slow, *fast)
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=orderers, ledger=ledger, quorum=3)
    start = time.monotonic()
    commit = _contract(net).new_proposal("Put", "k").endorse().submit()
    took = time.monotonic() - start
    assert commit.get_status().code == "VALID"
    assert took < 2.0  # three acknowledgements, the slow fourth not waited for
    # Every orderer was sent it (the slow one's call may still be on its way when it returns).
    until = time.monotonic() + 5
    while len(slow.envelopes) < 1 and time.monotonic() < until:
        time.sleep(0.01)
    assert all(len(o.envelopes) == 1 for o in net.orderers)
    assert net.orderers[0].envelopes[0] == net.orderers[3].envelopes[0]


def test_bft_submit_asks_again_the_orderers_that_were_not_ready(make_net: Any) -> None:
    ledger = Ledger()
    # One down, one not ready twice (as after a start or in a view change): the quorum of
    # three needs it, so it is asked again rather than the submit failing.
    not_ready = FakeOrderer(ledger, cuts=False, busy=2)
    orderers = _bft(ledger, None, not_ready, FakeOrderer(ledger, cuts=False))
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=orderers, ledger=ledger, quorum=3)
    _contract(net).submit_transaction("Put", "k")
    assert len(not_ready.envelopes) == 3 and not_ready.busy == 0
    assert [len(o.envelopes) for o in net.orderers] == [3, 1, 1]


def test_bft_submit_with_one_orderer_down_still_reaches_the_quorum(make_net: Any) -> None:
    ledger = Ledger()
    orderers = _bft(ledger, None, FakeOrderer(ledger, cuts=False), FakeOrderer(ledger, cuts=False))
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=orderers, ledger=ledger, quorum=3)
    _contract(net).submit_transaction("Put", "k")
    assert [len(o.envelopes) for o in net.orderers] == [1, 1, 1]


def test_bft_submit_with_two_orderers_down_is_unavailable_and_names_the_quorum(
    make_net: Any,
) -> None:
    ledger = Ledger()
    orderers = _bft(ledger, None, None, FakeOrderer(ledger, cuts=False))
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=orderers, ledger=ledger, quorum=3)
    with pytest.raises(SubmitError) as failed:
        _contract(net).submit_transaction("Put", "k")
    assert failed.value.unreachable
    # It fails as soon as two cannot answer: the quorum of three is out of reach.
    assert "of the 3 acknowledgements needed, 4 tried" in failed.value.message
    assert len(failed.value.details) >= 2  # at least the two that did not answer


def test_bft_submit_refused_by_enough_orderers_is_a_refusal_with_their_answer(
    make_net: Any,
) -> None:
    ledger = Ledger()
    no = (common.Status.Value("FORBIDDEN"), "no writers")
    orderers = _bft(ledger, FakeOrderer(ledger, refuse=no), FakeOrderer(ledger, refuse=no), None)
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=orderers, ledger=ledger, quorum=3)
    with pytest.raises(SubmitError) as refused:
        _contract(net).submit_transaction("Put", "k")
    assert not refused.value.unreachable
    assert "FORBIDDEN: no writers" in refused.value.message


# --- chaincode events -----------------------------------------------------------------------


def _event_block(number: int, txs: list[tuple[str, str, int]]) -> Any:
    """A block of endorser transactions (tx id, chaincode of its event, validation code)."""
    block = common.Block(header=common.BlockHeader(number=number))
    for tx_id, chaincode, _ in txs:
        action = proposalpb.ChaincodeAction(
            events=eventpb.ChaincodeEvent(
                chaincode_id=chaincode, tx_id=tx_id, event_name="E", payload=tx_id.encode()
            ).SerializeToString()
        )
        action_payload = txpb.ChaincodeActionPayload(
            action=txpb.ChaincodeEndorsedAction(
                proposal_response_payload=responsepb.ProposalResponsePayload(
                    extension=action.SerializeToString()
                ).SerializeToString()
            )
        )
        tx = txpb.Transaction(
            actions=[txpb.TransactionAction(payload=action_payload.SerializeToString())]
        )
        header = common.Header(
            channel_header=common.ChannelHeader(
                type=common.HeaderType.Value("ENDORSER_TRANSACTION"), tx_id=tx_id
            ).SerializeToString()
        )
        payload = common.Payload(header=header, data=tx.SerializeToString())
        block.data.data.append(
            common.Envelope(payload=payload.SerializeToString()).SerializeToString()
        )
    for _ in range(3):
        block.metadata.metadata.append(b"")
    block.metadata.metadata[2] = bytes(code for _, _, code in txs)
    return block


def test_events_come_from_valid_transactions_of_the_chaincode_only() -> None:
    block = _event_block(
        7,
        [
            ("a", CHAINCODE, 0),
            ("b", "other", 0),  # another chaincode
            ("c", CHAINCODE, 11),  # MVCC_READ_CONFLICT
            ("d", CHAINCODE, 0),
        ],
    )
    assert [e.tx_id for e in block_chaincode_events(block, CHAINCODE)] == ["a", "d"]
    assert [e.tx_id for e in block_chaincode_events(block, "other")] == ["b"]


def test_a_checkpoint_skips_through_its_transaction_in_its_block() -> None:
    events = block_chaincode_events(
        _event_block(3, [(t, CHAINCODE, 0) for t in ("a", "b", "c")]), CHAINCODE
    )
    assert [e.tx_id for e in skip_through(events, "a")] == ["b", "c"]
    assert [e.tx_id for e in skip_through(events, "c")] == []
    # A transaction id not in the block replays the block rather than lose events.
    assert [e.tx_id for e in skip_through(events, "zz")] == ["a", "b", "c"]


def test_a_commit_status_wait_that_times_out_says_so(make_net: Any) -> None:
    ledger = Ledger()
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, ledger=ledger)
    commit = FabricCommit(net.gateway, CHANNEL, "f" * 64, b"")
    with pytest.raises(CommitStatusError, match="was not seen in a block"):
        commit.get_status(timeout=0.5)


def test_the_commit_listener_reconnects_from_the_next_block_after_a_peer_restart(
    servers: list[grpc.Server],
) -> None:
    ledger = Ledger()
    peer = FakePeer("p1", ledger)
    address = _serve(servers, peer)
    orderer = _serve(servers, FakeOrderer(ledger))
    identity, signer = CA.issue("admin", role="admin")
    with connect(
        identity,
        signer,
        peers=[PeerEndpoint(address, "Org1MSP", CA.certificate_pem)],
        orderers=[OrdererEndpoint(orderer, CA.certificate_pem)],
    ) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        assert contract.new_proposal("Put", "a").endorse().submit().get_status().block_number == 1
        servers[0].stop(grace=None)  # the peer goes away, then comes back on its address
        _serve(servers, peer, port=int(address.rsplit(":", 1)[1]))
        for _ in range(100):  # the client's channel reconnects with its own backoff
            try:
                contract.evaluate_transaction("Get", "a")
                break
            except GatewayError:
                threading.Event().wait(0.1)
        status = contract.new_proposal("Put", "b").endorse().submit().get_status()
        assert (status.code, status.block_number) == ("VALID", 2)
    # The listener resumed after the last block it had seen, not from the newest.
    assert peer.seeks[0].start.WhichOneof("Type") == "newest"
    assert peer.seeks[-1].start.specified.number == 2


def test_with_the_own_orgs_peer_down_another_org_endorses_and_reports_the_commit(
    make_net: Any,
) -> None:
    ledger = Ledger()
    other = FakePeer("p2", ledger)
    net = make_net({"Org1MSP": None, "Org2MSP": other}, endorsers=1, ledger=ledger)
    commit = _contract(net).new_proposal("Put", "k").endorse().submit()
    assert commit.get_status().code == "VALID"
    assert len(other.proposals) == 1
    assert other.seeks  # the commit listener moved on to the peer that answers


def test_connect_refuses_arguments_it_cannot_serve() -> None:
    identity, signer = CA.issue("admin", role="admin")
    peer = PeerEndpoint("127.0.0.1:1", "Org1MSP", CA.certificate_pem)
    orderer = OrdererEndpoint("127.0.0.1:2", CA.certificate_pem)
    with pytest.raises(ValueError, match="at least one orderer"):
        connect(identity, signer, peers=[peer], orderers=[])
    with pytest.raises(ValueError, match="endorsers is 2; the peers given belong to 1"):
        connect(identity, signer, peers=[peer], orderers=[orderer], endorsers=2)
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:2 has no TLS CA"):
        connect(identity, signer, peers=[peer], orderers=[OrdererEndpoint("127.0.0.1:2", b"")])
    with pytest.raises(ValueError, match="quorum is 2; 1 orderers were given"):
        connect(identity, signer, peers=[peer], orderers=[orderer], quorum=2)
    with connect(identity, signer, peers=[peer], orderers=[orderer]) as gateway:
        proposal = (
            gateway.get_network(CHANNEL)
            .get_contract(CHAINCODE)
            .new_proposal("Get", endorsing_organizations=("Org7MSP",))
        )
        with pytest.raises(EndorseError, match=r"no peer of organisation\(s\) Org7MSP"):
            proposal.endorse()


def test_a_commit_waits_until_the_other_endorsing_peer_has_the_block(make_net: Any) -> None:
    # Org2's peer commits later than Org1's (its own copy of the chain lags): the next
    # endorsement would run there on older state, so the commit is reported only once it has
    # the block too.
    ledger, lagging = Ledger(), Ledger()
    org1, org2 = FakePeer("p1", ledger), FakePeer("p2", lagging)
    net = make_net({"Org1MSP": org1, "Org2MSP": org2}, endorsers=2, ledger=ledger)
    contract = _contract(net)
    contract.evaluate_transaction("Get", "k")  # connect first
    done: list[bytes] = []
    worker = threading.Thread(target=lambda: done.append(contract.submit_transaction("Put", "k")))
    worker.start()
    with ledger.cond:
        assert ledger.cond.wait_for(lambda: len(ledger.blocks) == 2, 5)
    worker.join(0.5)
    assert worker.is_alive() and not done  # Org1 has the block, Org2 not yet
    lagging.append(list(ledger.blocks[1]))
    worker.join(5)
    assert done == [b"result"]


def test_a_commit_does_not_wait_for_an_endorsing_peer_that_is_down(make_net: Any) -> None:
    ledger = Ledger()
    net = make_net(
        {"Org1MSP": FakePeer("p1", ledger), "Org2MSP": FakePeer("p2", ledger), "Org3MSP": None},
        endorsers=2,
        ledger=ledger,
    )
    status = _contract(net).new_proposal("Put", "k").endorse().submit().get_status()
    assert (status.code, status.block_number) == ("VALID", 1)


@dataclass
class ConflictingOrderer(FakeOrderer):
    """Cuts the first ``conflicts`` transactions as MVCC_READ_CONFLICT, later ones VALID."""

    conflicts: int = 1

    def Broadcast(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for envelope in request_iterator:
            self.envelopes.append(envelope)
            payload = common.Payload.FromString(envelope.payload)
            tx_id = common.ChannelHeader.FromString(payload.header.channel_header).tx_id
            code = txpb.TxValidationCode.Value("MVCC_READ_CONFLICT")
            self.ledger.append([(tx_id, code if len(self.envelopes) <= self.conflicts else 0)])
            yield ab.BroadcastResponse(status=common.Status.Value("SUCCESS"))


def test_a_read_conflict_is_proposed_again_as_a_new_transaction(make_net: Any) -> None:
    ledger = Ledger()
    peer = FakePeer("p1", ledger)
    orderer = ConflictingOrderer(ledger, conflicts=2)
    net = make_net({"Org1MSP": peer}, orderers=(orderer,), ledger=ledger)
    assert _contract(net).submit_transaction("Put", "k") == b"result"
    # Three transactions were ordered: two conflicted, each proposal new (its own tx id).
    tx_ids = [
        common.ChannelHeader.FromString(
            common.Payload.FromString(e.payload).header.channel_header
        ).tx_id
        for e in orderer.envelopes
    ]
    assert len(tx_ids) == 3 and len(set(tx_ids)) == 3
    assert len(peer.proposals) == 3


def test_read_conflicts_beyond_the_retries_are_a_commit_error(make_net: Any) -> None:
    ledger = Ledger()
    orderer = ConflictingOrderer(ledger, conflicts=10)
    net = make_net({"Org1MSP": FakePeer("p1", ledger)}, orderers=(orderer,), ledger=ledger)
    net.gateway.conflict_retries = 1
    with pytest.raises(CommitError) as failed:
        _contract(net).submit_transaction("Put", "k")
    assert failed.value.code == "MVCC_READ_CONFLICT"
    assert len(orderer.envelopes) == 2  # the first try and one retry
    net.gateway.conflict_retries = 0
    with pytest.raises(CommitError):
        _contract(net).submit_transaction("Put", "k2")
    assert len(orderer.envelopes) == 3


# --- a peer's state database compared across organisations ----------------------------------


def test_a_peer_whose_state_answers_differently_is_named(servers: list[grpc.Server]) -> None:
    """`audit verify` on Fabric asks one peer of each organisation the same query: blocks are
    signed and compared, a peer's state database is not, and queries are read from it."""
    from ehrshare.ledger.errors import LedgerIntegrityError
    from ehrshare.ledgers import FabricBackend

    ledger = Ledger()
    fakes = {
        "Org1MSP": FakePeer("p1", ledger, result=b'{"valid":true,"head":"aa"}'),
        "Org2MSP": FakePeer("p2", ledger, result=b'{"valid":true,"head":"aa"}'),
        "Org3MSP": FakePeer("p3", ledger, result=b'{"valid":true,"head":"aa"}'),
    }
    backend = FabricBackend(
        [PeerEndpoint(_serve(servers, f), msp, CA.certificate_pem) for msp, f in fakes.items()],
        [OrdererEndpoint(_serve(servers, FakeOrderer(ledger)), CA.certificate_pem)],
        endorsers=None,
        client_auth=False,
    )
    identity, signer = CA.issue("auditor", role="admin")

    def compare() -> dict[str, Any]:
        return backend.compare_answers(
            identity,
            signer,
            channel=CHANNEL,
            chaincode=CHAINCODE,
            function="VerifyAuditTrail",
            args=("Org1MSP/alice",),
        )

    assert compare()["organisations"] == ["Org1MSP", "Org2MSP", "Org3MSP"]
    assert all(len(f.proposals) == 1 for f in fakes.values())  # each organisation was asked

    fakes["Org2MSP"].result = b'{"valid":true,"head":"bb"}'  # its state edited consistently
    with pytest.raises(LedgerIntegrityError) as odd:
        compare()
    assert "by the peers of Org2MSP than" in str(odd.value)

    fakes["Org3MSP"].result = b'{"valid":true,"head":"cc"}'  # no majority: every one named
    with pytest.raises(LedgerIntegrityError) as split:
        compare()
    assert "by the peers of Org1MSP, Org2MSP, Org3MSP than" in str(split.value)


@pytest.mark.parametrize(
    ("messages", "refused"),
    [
        # Fabric 2.5/3.x peers under TLS 1.3, as gRPC reports their refusal after the handshake.
        (["Unwrap failed"], "every TLS handshake failed"),
        (["Unwrap failed (TSI_DATA_CORRUPTED)"] * 2, "every TLS handshake failed"),
        (["Handshake failed"], "every TLS handshake failed"),
        # One peer down, the other refused the certificate: still a refusal, not an outage.
        (["Connection refused", "Unwrap failed"], "1 of 2 refused the TLS handshake"),
    ],
)
def test_tls_refusals_are_refusals_not_unreachable(messages: list[str], refused: str) -> None:
    from ehrshare.ledger.fabric.failures import _stage_error
    from ehrshare.ledger.peer.transport import _unreachable

    details = [
        gwpb.ErrorDetail(address=f"127.0.0.1:{i}", message=m) for i, m in enumerate(messages)
    ]
    failure = _unreachable("no peer answered", details, "any peer")
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED and refused in failure.text
    error = _stage_error(GatewayError, failure, "tx1", "evaluate")
    assert not error.unreachable and error.creator_refused and error.exit_code == 3


def test_peers_that_are_only_down_are_unreachable() -> None:
    from ehrshare.ledger.peer.transport import _unreachable

    details = [gwpb.ErrorDetail(address="127.0.0.1:1", message="Connection refused")]
    failure = _unreachable("no peer answered", details, "any peer")
    assert failure.code == grpc.StatusCode.UNAVAILABLE
