"""The chaincode-as-a-service server, driven by an in-test fake peer.

These are protocol-level unit tests against a FAKE: ``FakePeer`` below is a grpc.aio client that
plays the peer's side of ``protos.Chaincode/Connect`` the way Fabric's ``core/chaincode/handler.go``
does (REGISTERED then READY, TRANSACTION messages keyed by (channel, txid), state requests answered
from a dict, range results in batches with QUERY_STATE_NEXT, paginated ranges with a bookmark,
history newest first). The server has NOT run against a real Fabric peer; Fabric cannot be built on
this machine (docs/status.md).

The main test replays every committed transaction of an embedded-ledger run through the server and
checks that results, events and the final world state are byte-identical: the same ``invoke()``
runs behind both backends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fabric_protos.ledger.queryresult import kv_query_result_pb2 as kvpb
from fabric_protos.peer import chaincode_event_pb2 as eventpb
from fabric_protos.peer import chaincode_pb2 as ccpb
from fabric_protos.peer import chaincode_shim_pb2 as shim
from fabric_protos.peer import proposal_response_pb2 as responsepb

from ehrshare.bench.fake_peer import FakePeer as BenchFakePeer
from ehrshare.bench.fake_peer import TxContext, ready_params
from ehrshare.identity import LocalCA, Signer
from ehrshare.ledger.envelope import Proposal, serialize_identity
from ehrshare.ledger.fabric import signed_proposal
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare.services.tls import issue_tls_certificate
from ehrshare_chaincode.ccaas import (
    ChaincodeServer,
    ChaincodeTls,
    check_package_id,
)
from ehrshare_chaincode.contract.keys import K_GRANT, K_GRANT_MATCH, K_LOG_HEAD
from ehrshare_chaincode.stub import ChaincodeStub, create_composite_key

MSG = shim.ChaincodeMessage
PACKAGE_ID = "ehrshare_1.0:" + "ab" * 32
CHANNEL = "ehrshare"
T0 = 1_900_000_000
CAPSULE = base64.b64encode(b"\x01" * 96).decode()
SHA = "0" * 64
GUARD_S = 20  # deadlock guard only (a serialised server would hang); never a timing assertion


class FakePeer(BenchFakePeer):
    """The package's fake peer, instrumented: records every message, holds requests at gates, fails
    chosen requests, and flags two outstanding requests for one transaction (``registerTxid``)."""

    def __init__(
        self, target: str, *, batch: int = 2, credentials: Any = None, ready_payload: bytes = b""
    ) -> None:
        # A Fabric 2.x peer by default (empty READY); test_ccaas_batches.py plays a 3.1 one.
        super().__init__(target, batch=batch, credentials=credentials, ready_payload=ready_payload)
        self.active: set[tuple[str, str]] = set()
        self.violations: list[str] = []
        self.read_sets: dict[str, frozenset[str]] = {}  # txid -> keys the peer was asked for
        self.write_sets: dict[str, dict[str, bytes | None]] = {}  # txid -> keys written
        self.ranges: list[tuple[str, str]] = []  # (txid, start key) of each range scan
        self.requests: list[tuple[str, str]] = []  # (txid, message type name)
        self.keepalives: asyncio.Queue[Any] = asyncio.Queue()
        self.gates: dict[str, asyncio.Event] = {}  # txid -> hold its first request until set
        self.fail_keys: set[str] = set()  # GET_STATE of these keys is answered with ERROR
        self.fail_next = False  # QUERY_STATE_NEXT is answered with ERROR

    def _observe(self, msg: Any) -> None:
        self.requests.append((msg.txid, MSG.Type.Name(msg.type)))
        if msg.type == MSG.GET_STATE_BY_RANGE:
            self.ranges.append((msg.txid, shim.GetStateByRange.FromString(msg.payload).startKey))
        if msg.type == MSG.KEEPALIVE:
            self.keepalives.put_nowait(msg)

    async def _serve(self, msg: Any) -> None:
        key = (msg.channel_id, msg.txid)
        if key in self.active:  # registerTxid: a second outstanding request is dropped
            self.violations.append(f"two outstanding requests for {msg.txid}")
            return
        self.active.add(key)
        try:
            gate = self.gates.pop(msg.txid, None)
            if gate is not None:
                await gate.wait()
            reply = self._answer(msg)
        finally:
            self.active.discard(key)
        await self.write(reply)

    def _answer(self, msg: Any) -> Any:
        def error(text: str) -> Any:
            return MSG(
                type=MSG.ERROR, payload=text.encode(), txid=msg.txid, channel_id=msg.channel_id
            )

        ctx = self.contexts.get((msg.channel_id, msg.txid))
        if (
            ctx is not None
            and msg.type == MSG.GET_STATE
            and shim.GetState.FromString(msg.payload).key in self.fail_keys
        ):
            return error(f"GET_STATE failed: transaction ID: {msg.txid}: access denied")
        if ctx is not None and msg.type == MSG.QUERY_STATE_NEXT and self.fail_next:
            ctx.iterators.pop(shim.QueryStateNext.FromString(msg.payload).id, None)
            return error("QUERY_STATE_NEXT failed: ledger is shutting down")
        return super()._answer(msg)

    async def execute(  # type: ignore[override]
        self,
        signed: Any,
        txid: str,
        function: str,
        args: list[bytes],
        *,
        commit: bool,
        timestamp: tuple[int, int] = (T0, 0),
        channel: str = CHANNEL,
        kind: int = MSG.TRANSACTION,
    ) -> tuple[Any, Any]:
        """Send one TRANSACTION; returns (reply message, Response or None); commits on success."""
        reply, ctx = await self.exchange(
            signed, txid, function, args, channel=channel, kind=kind, timeout=GUARD_S
        )
        assert not ctx.iterators, "the chaincode left a peer-side iterator open"
        self.read_sets[txid] = frozenset(ctx.reads)
        self.write_sets[txid] = dict(ctx.writes)
        if reply.type != MSG.COMPLETED:
            return reply, None
        resp = responsepb.Response.FromString(reply.payload)
        if commit and resp.status < 400:
            self.commit_writes(txid, ctx, timestamp)
        return reply, resp


async def with_server(
    scenario: Callable[[FakePeer], Awaitable[None]],
    *,
    chaincode: Any = None,
    batch: int = 2,
    ready_payload: bytes = b"",
) -> FakePeer:
    kwargs = {} if chaincode is None else {"chaincode": chaincode}
    server = ChaincodeServer(PACKAGE_ID, "127.0.0.1:0", **kwargs)
    port = await server.start()
    peer = FakePeer(f"127.0.0.1:{port}", batch=batch, ready_payload=ready_payload)
    try:
        await peer.open()
        await scenario(peer)
        await peer.close()
    finally:
        await server.stop(0)
    assert peer.violations == []
    return peer


# --- an embedded-ledger run to replay ----------------------------------------------------------


@dataclass
class Embedded:
    sandbox: Sandbox
    members: dict[str, Member]
    signers: dict[bytes, Signer]  # serialized creator -> signer


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    clock = ManualClock(T0)
    sb = Sandbox.open(tmp_path_factory.mktemp("embedded"), clock=clock)
    m = {
        "alice": sb.member("Org1MSP", "alice", "patient"),
        "dave": sb.member("Org1MSP", "dave", "clinician"),
        "zed": sb.member("Org2MSP", "zed", "clinician"),
        "audrey": sb.member("Org1MSP", "audrey", "auditor"),
        "pete": sb.member("Org1MSP", "pete", "proxy"),
    }
    alice = m["alice"]
    for i in range(5):
        alice.submit(
            "RegisterRecord", f"r-{i}", alice.ibe_id, "lab", f"bafyrec{i}", SHA, CAPSULE, "1"
        )
    alice.submit(
        "GrantAccess", "lab", m["dave"].ibe_id, str(T0 + 10**6), "1", "", "", "Org1MSP/pete"
    )
    m["dave"].submit("RequestAccess", "r-1")
    # With the owner and type hints an SDK RecordRef gives (the same keys read, fewer requests).
    m["dave"].submit("RequestAccess", "r-3", "", alice.ibe_id, "lab")
    alice.submit("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, "AAAA", "1")
    # Several record writes in one transaction (its @reads hint names every registration's keys).
    alice.submit(
        "WriteRecords",
        json.dumps(
            [
                ["RegisterRecord", "r-w1", alice.ibe_id, "lab", "bafyrecw1", SHA, CAPSULE, "1"],
                ["AmendRecord", "r-2", "bafyrecord0003", "2" * 64, "AAAA", "1", "", "1"],
                ["RegisterRecord", "r-w2", alice.ibe_id, "lab", "bafyrecw2", SHA, CAPSULE, "1"],
            ]
        ),
    )
    signers = {}
    for member in m.values():
        creator = signed_proposal_creator(member)
        signers[creator] = member.signer
    yield Embedded(sb, m, signers)
    sb.close()


def signed_proposal_creator(member: Member) -> bytes:
    return serialize_identity(member.identity)


def committed_rows(sb: Sandbox) -> list[tuple[bytes, bytes, str | None, bytes | None]]:
    db = sqlite3.connect(Path(sb.ledger.directory) / "ledger.sqlite")
    try:
        return db.execute(
            "SELECT proposal, response, event_name, event_payload FROM transactions "
            "WHERE code = 'VALID' AND chaincode = 'ehrshare' ORDER BY blk, txn"
        ).fetchall()
    finally:
        db.close()


def fabric_proposal(
    emb: Embedded, member: str, function: str, *args: str, ts: int = T0
) -> tuple[str, Any]:
    m = emb.members[member]
    return signed_proposal(
        signed_proposal_creator(m),
        m.signer,
        channel=CHANNEL,
        chaincode="ehrshare",
        function=function,
        args=tuple(a.encode() for a in args),
        timestamp_ns=ts * 1_000_000_000,
    )


@pytest.fixture(scope="module")
def read_sets_of_a_2x_replay() -> dict[str, frozenset[str]]:
    return {}


@pytest.mark.parametrize(
    "ready_payload",
    [b"", ready_params(), ready_params(write_batch=3, get_multiple=2)],
    ids=["fabric-2.x-peer", "fabric-3.1-peer", "fabric-3.1-peer-small-batches"],
)
def test_replaying_an_embedded_run_through_the_shim_gives_identical_results_events_and_state(
    embedded: Embedded, ready_payload: bytes, read_sets_of_a_2x_replay: dict[str, frozenset[str]]
) -> None:
    """The same results, events and state whatever the peer offers; on a 3.1 peer (write batches,
    several keys per read) every transaction reads exactly the keys it reads on a 2.x peer."""
    rows = committed_rows(embedded.sandbox)
    assert len(rows) >= 12

    async def scenario(peer: FakePeer) -> None:
        assert peer.registered_as == PACKAGE_ID
        for proposal_bytes, response, event_name, event_payload in rows:
            p = Proposal.from_bytes(bytes(proposal_bytes))
            txid, signed = signed_proposal(
                p.creator,
                embedded.signers[p.creator],
                channel=p.channel,
                chaincode=p.chaincode,
                function=p.function,
                args=p.args,
                timestamp_ns=p.timestamp_seconds * 1_000_000_000 + p.timestamp_nanos,
                nonce=p.nonce,
            )
            assert txid == p.tx_id  # same creator and nonce: Fabric's txid rule on both sides
            reply, resp = await peer.execute(
                signed,
                txid,
                p.function,
                list(p.args),
                commit=True,
                timestamp=(p.timestamp_seconds, p.timestamp_nanos),
            )
            assert (
                reply.type == MSG.COMPLETED and reply.txid == txid and reply.channel_id == CHANNEL
            )
            assert resp.status == 200, resp.message
            assert resp.payload == bytes(response)
            if event_name is None:
                assert not reply.HasField("chaincode_event")
            else:
                assert reply.chaincode_event.event_name == event_name
                assert reply.chaincode_event.payload == bytes(event_payload)

    peer = asyncio.run(with_server(scenario, ready_payload=ready_payload))
    embedded_state = {k.decode(): v for k, v in embedded.sandbox.ledger.state_items("ehrshare")}
    assert peer.state == embedded_state
    kinds = {kind for _, kind in peer.requests}
    if ready_payload:
        assert {"WRITE_BATCH_STATE", "GET_STATE_MULTIPLE"} <= kinds
        assert not kinds & {"PUT_STATE", "DEL_STATE"}
        assert read_sets_of_a_2x_replay, "the 2.x replay runs first"
        assert peer.read_sets == read_sets_of_a_2x_replay
    else:
        assert not kinds & {"WRITE_BATCH_STATE", "GET_STATE_MULTIPLE"}
        read_sets_of_a_2x_replay.update(peer.read_sets)


def test_queries_page_through_the_peer_and_match_the_embedded_answers(embedded: Embedded) -> None:
    rows = committed_rows(embedded.sandbox)
    alice = embedded.members["alice"]
    queries = [
        ("alice", "ListRecords", alice.ibe_id, "2", ""),
        ("alice", "GetAuditTrail", "patient", alice.ibe_id, "3", ""),
        ("alice", "VerifyAuditTrail", alice.ibe_id),  # a full range scan: QUERY_STATE_NEXT
        ("alice", "GetRecordHistory", "r-1"),
        ("audrey", "GetIdentity", alice.ibe_id),
    ]
    expected = {}
    for member, fn, *args in queries:
        expected[(fn, *args)] = embedded.members[member].contract.evaluate_transaction(fn, *args)
    # The second page of ListRecords, from the bookmark the first page returned.
    first = json.loads(expected[("ListRecords", alice.ibe_id, "2", "")])
    assert first["bookmark"]
    page2 = ("alice", "ListRecords", alice.ibe_id, "2", first["bookmark"])
    expected[page2[1:]] = alice.contract.evaluate_transaction(*page2[1:])
    queries.append(page2)

    async def scenario(peer: FakePeer) -> None:
        for proposal_bytes, *_ in rows:  # load the committed state
            p = Proposal.from_bytes(bytes(proposal_bytes))
            txid, signed = signed_proposal(
                p.creator,
                embedded.signers[p.creator],
                channel=p.channel,
                chaincode=p.chaincode,
                function=p.function,
                args=p.args,
                timestamp_ns=p.timestamp_seconds * 1_000_000_000 + p.timestamp_nanos,
                nonce=p.nonce,
            )
            await peer.execute(signed, txid, p.function, list(p.args), commit=True)
        peer.requests.clear()
        for member, fn, *args in queries:
            txid, signed = fabric_proposal(embedded, member, fn, *args, ts=T0 + 5000)
            _, resp = await peer.execute(signed, txid, fn, [a.encode() for a in args], commit=False)
            assert resp.status == 200, (fn, resp.message)
            assert resp.payload == expected[(fn, *args)], fn

    peer = asyncio.run(with_server(scenario))
    kinds = [k for _, k in peer.requests]
    assert "QUERY_STATE_NEXT" in kinds  # non-paginated scans were fetched batch by batch
    assert "GET_STATE_BY_RANGE" in kinds


def test_a_failing_transaction_reports_status_500_with_the_contract_message_and_commits_nothing(
    embedded: Embedded,
) -> None:
    async def scenario(peer: FakePeer) -> None:
        before = dict(peer.state)
        txid, signed = fabric_proposal(embedded, "alice", "RegisterIdentity")
        _, resp = await peer.execute(signed, txid, "RegisterIdentity", [], commit=True)
        assert resp.status == 200
        # Registering twice is refused by the contract (after it has read state).
        txid, signed = fabric_proposal(embedded, "alice", "RegisterIdentity")
        reply, resp = await peer.execute(signed, txid, "RegisterIdentity", [], commit=True)
        assert reply.type == MSG.COMPLETED
        assert resp.status == 500 and resp.payload == b""
        assert "already registered" in resp.message
        assert not reply.HasField("chaincode_event")
        txid, signed = fabric_proposal(embedded, "alice", "NoSuchFunction")
        _, resp = await peer.execute(signed, txid, "NoSuchFunction", [], commit=True)
        assert (resp.status, resp.message) == (500, "function NoSuchFunction does not exist")
        assert len(peer.state) > len(before)  # only the first registration committed
        registered = dict(peer.state)
        txid, signed = fabric_proposal(embedded, "alice", "RegisterIdentity")
        await peer.execute(signed, txid, "RegisterIdentity", [], commit=True)
        assert peer.state == registered

    asyncio.run(with_server(scenario))


def test_creator_and_timestamp_come_from_the_signed_proposal() -> None:
    seen: list[tuple[Any, ...]] = []

    def probe(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        seen.append(
            (stub.get_creator(), stub.get_tx_timestamp(), stub.get_tx_id(), stub.get_channel_id())
        )
        stub.set_event("Probed", b"one event")
        return b"ok"

    ca = LocalCA.create("Org1MSP")
    identity, signer = ca.issue("pat", role="patient")

    async def scenario(peer: FakePeer) -> None:
        txid, signed = signed_proposal(
            serialize_identity(identity),
            signer,
            channel="other",
            chaincode="ehrshare",
            function="probe",
            args=(),
            timestamp_ns=1_234_000_000_567,
        )
        reply, resp = await peer.execute(signed, txid, "probe", [], commit=False, channel="other")
        assert (resp.status, resp.payload) == (200, b"ok")
        assert reply.chaincode_event == eventpb.ChaincodeEvent(
            event_name="Probed", payload=b"one event"
        )

    asyncio.run(with_server(scenario, chaincode=probe))
    ((creator, ts, txid, channel),) = seen
    assert creator == ("Org1MSP", identity.credentials)
    assert (ts.seconds, ts.nanos) == (1234, 567)
    assert channel == "other" and len(txid) == 64


def test_transactions_with_different_txids_run_concurrently_on_one_stream(
    embedded: Embedded,
) -> None:
    alice = embedded.members["alice"]

    async def scenario(peer: FakePeer) -> None:
        peer.state = {k.decode(): v for k, v in embedded.sandbox.ledger.state_items("ehrshare")}
        txa, signed_a = fabric_proposal(embedded, "audrey", "GetIdentity", alice.ibe_id)
        txb, signed_b = fabric_proposal(embedded, "audrey", "GetIdentity", alice.ibe_id)
        # The peer holds A's first state request until B has completed: a server that ran one
        # transaction at a time would never complete B (the guard then fails the test).
        gate = asyncio.Event()
        peer.gates[txa] = gate
        task_a = asyncio.create_task(
            peer.execute(signed_a, txa, "GetIdentity", [alice.ibe_id.encode()], commit=False)
        )
        while (txa, "GET_STATE") not in peer.requests:  # A is now blocked inside the chaincode
            await asyncio.sleep(0.01)
        _, resp_b = await peer.execute(
            signed_b, txb, "GetIdentity", [alice.ibe_id.encode()], commit=False
        )
        assert not task_a.done()
        gate.set()
        _, resp_a = await asyncio.wait_for(task_a, GUARD_S)
        assert resp_a.status == resp_b.status == 200
        assert resp_a.payload == resp_b.payload
        order = [t for t, kind in peer.requests if kind == "COMPLETED"]
        assert order == [txb, txa]

    asyncio.run(with_server(scenario))


def test_history_is_paged_and_returned_oldest_first() -> None:
    def history(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        mods = stub.get_history_for_key(args[0].decode())
        return json.dumps(
            [[m.tx_id, m.value.decode(), m.timestamp.seconds, m.is_delete] for m in mods]
        ).encode()

    creator, signer = peer_with_identity()

    async def scenario(peer: FakePeer) -> None:
        for i, (value, is_delete) in enumerate([(b"v1", False), (b"v2", False), (b"", True)]):
            mod = kvpb.KeyModification(tx_id=f"t{i}", value=value, is_delete=is_delete)
            mod.timestamp.seconds = 100 + i
            peer.history.setdefault("k", []).append(mod)
        txid, signed = signed_proposal(
            creator,
            signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function="history",
            args=(b"k",),
            timestamp_ns=T0 * 1_000_000_000,
        )
        _, resp = await peer.execute(signed, txid, "history", [b"k"], commit=False)
        assert resp.status == 200
        assert json.loads(resp.payload) == [
            ["t0", "v1", 100, False],
            ["t1", "v2", 101, False],
            ["t2", "", 102, True],
        ]
        assert [k for _, k in peer.requests].count("QUERY_STATE_NEXT") == 1  # 3 rows, batch 2

    asyncio.run(with_server(scenario, chaincode=history))


def test_a_transaction_without_a_usable_proposal_is_answered_with_error() -> None:
    ran: list[str] = []

    def record(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        ran.append(function)
        return b""

    creator, signer = peer_with_identity()

    async def scenario(peer: FakePeer) -> None:
        reply, resp = await peer.execute(None, "t-none", "f", [], commit=False)
        assert resp is None and reply.type == MSG.ERROR
        assert reply.payload == b"transaction carries no signed proposal"
        # A proposal whose transaction id is not the message's is refused too.
        _, signed = signed_proposal(
            creator,
            signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function="f",
            args=(),
            timestamp_ns=T0 * 1_000_000_000,
        )
        reply, resp = await peer.execute(signed, "t-other", "f", [], commit=False)
        assert resp is None and reply.type == MSG.ERROR
        assert b"does not match t-other" in reply.payload

    asyncio.run(with_server(scenario, chaincode=record))
    assert ran == []


def peer_with_identity() -> tuple[bytes, Signer]:
    from ehrshare.ledger.envelope import serialize_identity

    identity, signer = LocalCA.create("Org1MSP").issue("pat", role="patient")
    return serialize_identity(identity), signer


def test_peer_errors_fail_the_transaction_and_an_iterator_left_early_is_closed() -> None:
    def reader(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        if function == "get":
            stub.get_state("secret")
            return b"unreachable"
        if function == "crash":
            raise RuntimeError("bug with /private/path in it")
        return str(len(stub.get_state_by_range("a", "z"))).encode()

    creator, signer = peer_with_identity()

    def proposal(fn: str) -> tuple[str, Any]:
        return signed_proposal(
            creator,
            signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function=fn,
            args=(),
            timestamp_ns=T0 * 1_000_000_000,
        )

    async def scenario(peer: FakePeer) -> None:
        peer.fail_keys.add("secret")
        txid, signed = proposal("get")
        _, resp = await peer.execute(signed, txid, "get", [], commit=False)
        assert resp.status == 500
        assert resp.message.startswith("the peer refused GET_STATE: GET_STATE failed")
        peer.state = {f"k{i}": b"v" for i in range(5)}
        txid, signed = proposal("scan")
        _, resp = await peer.execute(signed, txid, "scan", [], commit=False)
        assert (resp.status, resp.payload) == (200, b"5")
        peer.fail_next = True
        txid, signed = proposal("scan")
        _, resp = await peer.execute(signed, txid, "scan", [], commit=False)
        assert resp.status == 500 and "QUERY_STATE_NEXT" in resp.message
        assert (txid, "QUERY_STATE_CLOSE") in peer.requests
        txid, signed = proposal("crash")
        _, resp = await peer.execute(signed, txid, "crash", [], commit=False)
        assert (resp.status, resp.message) == (500, "internal chaincode error")

    asyncio.run(with_server(scenario, chaincode=reader))


def test_keepalive_is_answered_and_a_duplicate_txid_is_refused() -> None:
    def slow(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        stub.get_state("k")  # held by the peer's gate until the duplicate has been refused
        return b"done"

    creator, signer = peer_with_identity()

    async def scenario(peer: FakePeer) -> None:
        await peer.write(MSG(type=MSG.KEEPALIVE))
        echoed = await asyncio.wait_for(peer.keepalives.get(), GUARD_S)
        assert echoed.type == MSG.KEEPALIVE
        txid, signed = signed_proposal(
            creator,
            signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function="slow",
            args=(),
            timestamp_ns=T0 * 1_000_000_000,
        )
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        peer.gates[txid] = release
        ctx = TxContext(done=loop.create_future())
        peer.contexts[(CHANNEL, txid)] = ctx
        msg = MSG(
            type=MSG.TRANSACTION,
            txid=txid,
            channel_id=CHANNEL,
            proposal=signed,
            payload=ccpb.ChaincodeInput(args=[b"slow"]).SerializeToString(),
        )
        await peer.write(msg)
        while (txid, "GET_STATE") not in peer.requests:  # the first one is now running
            await asyncio.sleep(0.01)
        await peer.write(msg)  # the same (channel, txid) again
        assert ctx.done is not None
        reply = await asyncio.wait_for(ctx.done, GUARD_S)
        assert reply.type == MSG.ERROR and b"already running" in reply.payload
        # The original transaction is unaffected once the peer answers its request.
        ctx.done = loop.create_future()
        release.set()
        done = await asyncio.wait_for(ctx.done, GUARD_S)
        assert done.type == MSG.COMPLETED
        assert responsepb.Response.FromString(done.payload).payload == b"done"

    asyncio.run(with_server(scenario, chaincode=slow))


def test_mutual_tls_admits_the_peer_with_a_client_certificate_and_refuses_one_without() -> None:
    ca = LocalCA.create("Org1MSP")
    cert_pem, key_pem = issue_tls_certificate(ca, "ccaas")
    client_identity, client_signer = ca.issue("peer0", node_ou="peer")

    async def run() -> None:
        tls = ChaincodeTls(key_pem=key_pem, cert_pem=cert_pem, client_ca_pem=ca.certificate_pem)
        server = ChaincodeServer(PACKAGE_ID, "127.0.0.1:0", tls=tls)
        port = await server.start()
        try:
            good = FakePeer(
                f"127.0.0.1:{port}",
                credentials=grpc.ssl_channel_credentials(
                    root_certificates=ca.certificate_pem,
                    private_key=client_signer.to_secret_bytes(),
                    certificate_chain=client_identity.credentials,
                ),
            )
            await asyncio.wait_for(good.open(), GUARD_S)
            assert good.registered_as == PACKAGE_ID
            await good.close()
            bad = FakePeer(
                f"127.0.0.1:{port}",
                credentials=grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem),
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(bad.open(), GUARD_S)
            await bad.channel.close()
        finally:
            await server.stop(0)

    asyncio.run(run())


@pytest.mark.parametrize(
    "bad",
    [
        "ehrshare",
        "ehrshare:" + "ab" * 31,
        ":" + "ab" * 32,
        "ehr share:" + "ab" * 32,
        "x:" + "AB" * 32,
    ],
)
def test_package_id_must_be_label_colon_sha256(bad: str) -> None:
    with pytest.raises(ValueError, match="is not <label>:<64 hex sha256>"):
        check_package_id(bad)
    assert check_package_id(PACKAGE_ID) == PACKAGE_ID


def test_reads_see_the_transactions_own_writes_as_on_the_embedded_ledger() -> None:
    def writer(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        stub.put_state("b", b"new")
        stub.del_state("c")
        stub.put_state("e", b"")  # an empty value is a delete, as on Fabric
        seen = [stub.get_state("b"), stub.get_state("c"), stub.get_state("a")]
        rows = stub.get_state_by_range("a", "z")
        return json.dumps(
            [
                [v.decode() if v else None for v in seen],
                [[kv.key, kv.value.decode()] for kv in rows],
            ]
        ).encode()

    creator, signer = peer_with_identity()

    async def scenario(peer: FakePeer) -> None:
        peer.state = {"a": b"1", "c": b"3", "d": b"4", "e": b"5"}
        txid, signed = signed_proposal(
            creator,
            signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function="w",
            args=(),
            timestamp_ns=T0 * 1_000_000_000,
        )
        _, resp = await peer.execute(signed, txid, "w", [], commit=True)
        assert json.loads(resp.payload) == [
            ["new", None, "1"],
            [["a", "1"], ["b", "new"], ["d", "4"]],
        ]
        assert peer.state == {"a": b"1", "b": b"new", "d": b"4"}
        kinds = [k for t, k in peer.requests if t == txid]
        assert kinds.count("GET_STATE") == 1  # only "a": b and c were answered locally
        assert kinds.count("DEL_STATE") == 2

    asyncio.run(with_server(scenario, chaincode=writer))


def test_request_access_hints_save_round_trips_and_a_wrong_hint_only_adds_reads(
    embedded: Embedded,
) -> None:
    """RequestAccess's owner and type hints (what an SDK RecordRef knows) on a 3.1 peer: right
    ones give the same answer, event, writes and keys read in fewer requests; wrong ones give
    the same answer, event and writes, and only add to what is read (docs/chaincode.md)."""
    state = {k.decode(): v for k, v in embedded.sandbox.ledger.state_items("ehrshare")}
    alice, zed = embedded.members["alice"].ibe_id, embedded.members["zed"].ibe_id
    dave = embedded.members["dave"].ibe_id
    grant_id = next(
        g["grant_id"]
        for k, v in state.items()
        if k.startswith(create_composite_key(K_GRANT, []))
        and (g := json.loads(v))["grantee"] == dave
    )
    match = create_composite_key(K_GRANT_MATCH, [alice, "lab", dave])
    wrong_match = create_composite_key(K_GRANT_MATCH, [zed, "lab", dave])
    zed_head = create_composite_key(K_LOG_HEAD, [zed])
    imaging = create_composite_key(K_GRANT_MATCH, [alice, "imaging", dave])
    # (name, member, args, state requests, the unhinted call it must equal, keys read beyond
    # that call's, range scans' start keys)
    cases: list[tuple[str, str, tuple[str, ...], int, str, set[str], list[str]]] = [
        ("first valid", "dave", ("r-2", ""), 4, "", set(), [match]),
        ("hinted", "dave", ("r-2", "", alice, "lab"), 3, "first valid", set(), [match]),
        (
            "wrong owner",
            "dave",
            ("r-2", "", zed, "lab"),
            5,
            "first valid",
            {zed_head},
            [wrong_match, match],
        ),
        (
            "wrong type",
            "dave",
            ("r-2", "", alice, "imaging"),
            5,
            "first valid",
            set(),
            [imaging, match],
        ),
        # A hint no key can hold (a reserved character) is skipped, not an error.
        ("reserved", "dave", ("r-2", "", "a\x00b", "lab"), 4, "first valid", set(), [match]),
        ("named", "dave", ("r-2", grant_id), 3, "", set(), []),
        ("named, hinted", "dave", ("r-2", grant_id, alice, ""), 2, "named", set(), []),
        ("named, wrong owner", "dave", ("r-2", grant_id, zed, ""), 3, "named", {zed_head}, []),
        ("owner", "alice", ("r-2", ""), 3, "", set(), []),
        ("owner, hinted", "alice", ("r-2", "", alice, "lab"), 2, "owner", set(), []),
    ]
    seen: dict[str, tuple[bytes, bytes, dict[str, bytes | None], frozenset[str]]] = {}

    async def scenario(peer: FakePeer) -> None:
        peer.state = dict(state)
        for name, member, args, requests, like, extra, ranges in cases:
            m = embedded.members[member]
            txid, signed = signed_proposal(
                signed_proposal_creator(m),
                m.signer,
                channel=CHANNEL,
                chaincode="ehrshare",
                function="RequestAccess",
                args=tuple(a.encode() for a in args),
                timestamp_ns=(T0 + 50) * 1_000_000_000,
                nonce=member.encode().ljust(24, b"-"),  # one txid per member: same access id
            )
            before, ranges_before = len(peer.requests), len(peer.ranges)
            reply, resp = await peer.execute(
                signed, txid, "RequestAccess", [a.encode() for a in args], commit=False
            )
            assert resp.status == 200, (name, resp.message)
            assert json.loads(resp.payload)["decision"] == "allow", name
            kinds = [k for t, k in peer.requests[before:] if t == txid and k != "COMPLETED"]
            assert len(kinds) == requests, (name, kinds)
            assert [k for _, k in peer.ranges[ranges_before:]] == ranges, name
            got = (
                bytes(resp.payload),
                bytes(reply.chaincode_event.payload),
                peer.write_sets[txid],
                peer.read_sets[txid],
            )
            if like:
                payload, event, writes, reads = seen[like]
                assert got[:3] == (payload, event, writes), name
                assert got[3] == reads | extra, name
            seen[name] = got

    asyncio.run(with_server(scenario, ready_payload=ready_params()))
    assert len(seen) == len(cases)
