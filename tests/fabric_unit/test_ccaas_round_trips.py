"""The chaincode server asks the peer for a key at most once per transaction and sends each
written key once, after the contract returns (docs/benchmarks.md: round trips are its cost).

Driven over real gRPC by the benchmark's peer stand-in, with every request the server sends
recorded; the answers and the committed state must be what the contract wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ehrshare.bench.fake_peer import MSG, FakePeer, shim
from ehrshare.identity import LocalCA
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.fabric import signed_proposal
from ehrshare_chaincode.ccaas import ChaincodeServer
from ehrshare_chaincode.stub import ChaincodeError, ChaincodeStub

PACKAGE_ID = "rt_1.0:" + "cd" * 32
CHANNEL = "ehrshare"


class RecordingPeer(FakePeer):
    """The stand-in, recording (type, key) of every state request; refuses PUT_STATE of
    ``refuse_put``."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.seen: list[tuple[str, str]] = []
        self.refuse_put = ""
        self.ignore_get = ""

    async def _serve(self, msg: Any) -> None:
        key = shim.GetState.FromString(msg.payload).key if msg.type == MSG.GET_STATE else None
        if key == self.ignore_get:
            self.seen.append(("GET_STATE", self.ignore_get))
            return  # never answered
        await super()._serve(msg)

    def _answer(self, msg: Any) -> Any:
        kind = MSG.Type.Name(msg.type)
        key = ""
        if msg.type == MSG.GET_STATE:
            key = shim.GetState.FromString(msg.payload).key
        elif msg.type == MSG.PUT_STATE:
            key = shim.PutState.FromString(msg.payload).key
            if key == self.refuse_put:
                return MSG(type=MSG.ERROR, payload=b"no", txid=msg.txid, channel_id=msg.channel_id)
        elif msg.type == MSG.DEL_STATE:
            key = shim.DelState.FromString(msg.payload).key
        self.seen.append((kind, key))
        return super()._answer(msg)


def run(
    chaincode: Callable[[ChaincodeStub, str, list[bytes]], bytes],
    scenario: Callable[[RecordingPeer, Callable[[], Awaitable[Any]]], Awaitable[None]],
    **server_options: Any,
) -> None:
    identity, signer = LocalCA.create("Org1MSP").issue("pat", role="patient")

    async def main() -> None:
        server = ChaincodeServer(PACKAGE_ID, "127.0.0.1:0", chaincode=chaincode, **server_options)
        port = await server.start()
        peer = RecordingPeer(f"127.0.0.1:{port}")
        try:
            await peer.open()

            async def once() -> Any:
                txid, signed = signed_proposal(
                    serialize_identity(identity),
                    signer,
                    channel=CHANNEL,
                    chaincode="ehrshare",
                    function="f",
                    args=(),
                    timestamp_ns=1_900_000_000 * 10**9,
                )
                return await peer.execute(signed, txid, "f", [], channel=CHANNEL, commit=True)

            await scenario(peer, once)
            await peer.close()
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_a_key_read_twice_is_asked_of_the_peer_once() -> None:
    def twice(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        a, b = stub.get_state("k"), stub.get_state("k")
        missing = [stub.get_state("absent"), stub.get_state("absent")]
        return b"|".join([a or b"", b or b"", *(m or b"-" for m in missing)])

    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = {"k": b"v"}
        out = await once()
        assert (out.status, out.payload) == (200, b"v|v|-|-")
        assert peer.seen == [("GET_STATE", "k"), ("GET_STATE", "absent")]

    run(twice, scenario)


def test_writes_are_sent_once_per_key_with_the_last_value_after_the_contract_returns() -> None:
    def writer(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        stub.put_state("head", b"1")
        stub.put_state("x", b"gone soon")
        stub.put_state("head", b"2")
        stub.del_state("x")
        stub.put_state("y", b"")  # empty is a delete, as on Fabric
        return (stub.get_state("head") or b"") + (stub.get_state("x") or b"-")

    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = {"y": b"old", "x": b"old"}
        out = await once()
        assert (out.status, out.payload) == (200, b"2-")
        assert peer.seen == [("PUT_STATE", "head"), ("DEL_STATE", "x"), ("DEL_STATE", "y")]
        assert peer.state == {"head": b"2"}

    run(writer, scenario)


def test_a_failing_contract_sends_no_writes_and_a_refused_write_fails_the_transaction() -> None:
    def failing(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        stub.put_state("a", b"1")
        if stub.get_state("fail"):
            raise ChaincodeError("record r-1 does not exist")
        stub.put_state("b", b"2")
        return b"ok"

    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = {"fail": b"yes"}
        out = await once()
        assert (out.status, out.message) == (500, "record r-1 does not exist")
        assert peer.seen == [("GET_STATE", "fail")]
        assert peer.state == {"fail": b"yes"}
        peer.seen.clear()
        peer.state = {}
        peer.refuse_put = "b"
        out = await once()
        assert out.status == 500 and out.message == "the peer refused PUT_STATE: no"
        assert out.event is None
        assert peer.state == {}  # the transaction failed: the peer commits nothing of it

    run(failing, scenario)


def test_a_request_the_peer_never_answers_fails_its_transaction_and_not_the_stream() -> None:
    def reader(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        return stub.get_state("k") or b"-"

    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.ignore_get = "k"
        out = await once()
        assert (out.status, out.message) == (500, "the peer did not answer GET_STATE within 0.3 s")
        peer.ignore_get = ""
        peer.state = {"k": b"v"}
        out = await once()
        assert (out.status, out.payload) == (200, b"v")

    run(reader, scenario, request_timeout=0.3)
