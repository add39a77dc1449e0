"""Fabric 3.1's batched chaincode messages: the server uses them only when the peer offers them.

A 3.1 peer puts ``ChaincodeAdditionalParams`` in ``READY`` (core/chaincode/handler.go,
``sendReady``); the server then sends a transaction's writes in ``WRITE_BATCH_STATE`` messages
and reads hinted keys in ``GET_STATE_MULTIPLE``, each at most the size offered. A 2.x peer's empty
``READY`` (or one the server cannot parse) leaves the single-key messages. Driven over real gRPC
by the benchmark's peer stand-in, which answers the batched messages as the 3.1 handler does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ehrshare.bench.fake_peer import MSG, FakePeer, ready_params, request_name, shim
from ehrshare.identity import LocalCA
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.fabric import signed_proposal
from ehrshare_chaincode.ccaas import ChaincodeServer
from ehrshare_chaincode.stub import ChaincodeStub

PACKAGE_ID = "batch_1.0:" + "ef" * 32
CHANNEL = "ehrshare"


class RecordingPeer(FakePeer):
    """The stand-in, recording every state request's type name; ``refuse`` names a type it
    answers with ERROR, ``short_answer`` makes GET_STATE_MULTIPLE drop the last value."""

    def __init__(self, target: str, ready_payload: bytes) -> None:
        super().__init__(target, ready_payload=ready_payload)
        self.seen: list[str] = []
        self.batches: list[list[str]] = []  # keys of each GET_STATE_MULTIPLE / WRITE_BATCH_STATE
        self.refuse = ""
        self.short_answer = False

    def _answer(self, msg: Any) -> Any:
        kind = request_name(msg.type)
        self.seen.append(kind)
        if kind == self.refuse:
            return MSG(type=MSG.ERROR, payload=b"no", txid=msg.txid, channel_id=msg.channel_id)
        if msg.type == MSG.GET_STATE_MULTIPLE:
            keys = [str(k) for k in shim.GetStateMultiple.FromString(msg.payload).keys]
            self.batches.append(keys)
            if self.short_answer:
                values = [self._state.get(k, b"") for k in keys[:-1]]
                payload = shim.GetStateMultipleResult(values=values).SerializeToString()
                return MSG(
                    type=MSG.RESPONSE, payload=payload, txid=msg.txid, channel_id=msg.channel_id
                )
        if msg.type == MSG.WRITE_BATCH_STATE:
            recs = shim.WriteBatchState.FromString(msg.payload).rec
            self.batches.append([str(r.key) for r in recs])
        return super()._answer(msg)


def run(
    chaincode: Callable[[ChaincodeStub, str, list[bytes]], bytes],
    ready_payload: bytes,
    scenario: Callable[[RecordingPeer, Callable[[], Awaitable[Any]]], Awaitable[None]],
) -> None:
    identity, signer = LocalCA.create("Org1MSP").issue("pat", role="patient")

    async def main() -> None:
        server = ChaincodeServer(PACKAGE_ID, "127.0.0.1:0", chaincode=chaincode)
        port = await server.start()
        peer = RecordingPeer(f"127.0.0.1:{port}", ready_payload)
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


def hinted_reader(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    """Hints four keys, reads them and one more, writes three keys and deletes one."""
    stub.prefetch(["a", "b", "c", "d"])
    got = [stub.get_state(k) or b"-" for k in ("a", "b", "c", "d", "e")]
    stub.put_state("x", b"1")
    stub.put_state("y", b"2")
    stub.put_state("x", b"3")
    stub.del_state("a")
    stub.put_state("z", b"4")
    return b"".join(got)


STATE = {"a": b"A", "c": b"C", "e": b"E"}
AFTER = {"c": b"C", "e": b"E", "x": b"3", "y": b"2", "z": b"4"}


@pytest.mark.parametrize(
    ("ready_payload", "expected"),
    [
        # Fabric 2.x: an empty READY; a hint changes nothing, one message per key.
        (b"", ["GET_STATE"] * 5 + ["PUT_STATE", "PUT_STATE", "DEL_STATE", "PUT_STATE"]),
        # A READY the server cannot parse counts as no offer (as in Fabric's Go shim).
        (b"\xff\xff", ["GET_STATE"] * 5 + ["PUT_STATE", "PUT_STATE", "DEL_STATE", "PUT_STATE"]),
        # Fabric 3.1's defaults: the hinted keys with the first read, the writes in one batch.
        (ready_params(), ["GET_STATE_MULTIPLE", "GET_STATE", "WRITE_BATCH_STATE"]),
        # Write batches only.
        (
            ready_params(get_multiple=0),
            ["GET_STATE"] * 5 + ["WRITE_BATCH_STATE"],
        ),
        # Multiple gets only.
        (
            ready_params(write_batch=0),
            ["GET_STATE_MULTIPLE", "GET_STATE", "PUT_STATE", "PUT_STATE", "DEL_STATE", "PUT_STATE"],
        ),
        # Small sizes: keys beyond the size are read one by one, writes split over batches.
        (
            ready_params(write_batch=3, get_multiple=2),
            ["GET_STATE_MULTIPLE", *["GET_STATE"] * 3, "WRITE_BATCH_STATE", "WRITE_BATCH_STATE"],
        ),
    ],
    ids=["2.x", "unparsable-ready", "3.1", "write-batch-only", "multiple-get-only", "small-sizes"],
)
def test_the_server_batches_exactly_what_the_peer_offers(
    ready_payload: bytes, expected: list[str]
) -> None:
    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = STATE
        out = await once()
        assert (out.status, out.payload) == (200, b"A-C-E")
        assert peer.seen == expected
        assert peer.state == AFTER  # the same write set whichever messages carried it
        if ready_payload == ready_params():
            assert peer.batches == [["a", "b", "c", "d"], ["x", "y", "a", "z"]]

    run(hinted_reader, ready_payload, scenario)


def test_hints_for_keys_already_read_or_written_are_not_asked_again_nor_sent_alone() -> None:
    def reader(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        first = stub.get_state("a")
        stub.put_state("w", b"1")
        stub.prefetch(["a", "w", "c"])  # only "c" is left: it goes with the next read
        stub.prefetch(["never-read"])  # a hint alone is not a request
        return (first or b"") + (stub.get_state("c") or b"-") + (stub.get_state("w") or b"")

    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = STATE
        out = await once()
        assert (out.status, out.payload) == (200, b"AC1")
        assert peer.seen == ["GET_STATE", "GET_STATE_MULTIPLE", "WRITE_BATCH_STATE"]
        assert peer.batches[0] == ["c", "never-read"]

    run(reader, ready_params(), scenario)


@pytest.mark.parametrize(
    ("refuse", "short", "message"),
    [
        ("WRITE_BATCH_STATE", False, "the peer refused WRITE_BATCH_STATE: no"),
        ("GET_STATE_MULTIPLE", False, "the peer refused GET_STATE_MULTIPLE: no"),
        ("", True, "the peer answered GET_STATE_MULTIPLE for 4 keys with 3 values"),
    ],
    ids=["write-batch-refused", "multiple-get-refused", "short-answer"],
)
def test_a_failed_batch_fails_its_transaction_commits_nothing_and_the_next_one_succeeds(
    refuse: str, short: bool, message: str
) -> None:
    async def scenario(peer: RecordingPeer, once: Callable[[], Awaitable[Any]]) -> None:
        peer.state = STATE
        peer.refuse, peer.short_answer = refuse, short
        out = await once()
        assert (out.status, out.message, out.event) == (500, message, None)
        assert peer.state == STATE
        peer.refuse, peer.short_answer = "", False
        out = await once()
        assert (out.status, out.payload) == (200, b"A-C-E")
        assert peer.state == AFTER

    run(hinted_reader, ready_params(), scenario)
