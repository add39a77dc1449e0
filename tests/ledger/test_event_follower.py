"""EventFollower: a follower outlives a broken event stream, resuming from its checkpoint.

The network here is an in-test fake whose streams break on cue (what a restarting Fabric peer
does to a Deliver stream); the followers that use it on real peers are tested in tests/fabric.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

from ehrshare.ledger.api import ChaincodeEvent, Checkpoint, EventFollower
from ehrshare.ledger.errors import GatewayError


def _event(block: int, tx: str) -> ChaincodeEvent:
    return ChaincodeEvent(block, tx, "ehrshare", "Did", tx.encode())


CHAIN = [_event(0, "a"), _event(1, "b"), _event(1, "c"), _event(2, "d"), _event(3, "e")]


class Stream:
    """Events after a position; raises GatewayError after ``break_after`` of them, or blocks
    at the end until closed."""

    def __init__(self, events: list[ChaincodeEvent], break_after: int | None) -> None:
        self._events = iter(events)
        self._left = break_after
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[ChaincodeEvent]:
        return self

    def __next__(self) -> ChaincodeEvent:
        if self._left == 0:
            raise GatewayError("the peer went away")
        if self._left is not None:
            self._left -= 1
        for event in self._events:
            return event
        self.closed.wait()
        raise StopIteration

    def close(self) -> None:
        self.closed.set()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Network:
    name = "ch"

    def __init__(self, breaks: list[int | None], *, refuse_opens: int = 0) -> None:
        self.breaks = list(breaks)
        self.refuse_opens = refuse_opens
        self.opened: list[tuple[int | None, str | None]] = []
        self.streams: list[Stream] = []

    def get_contract(self, chaincode_name: str) -> Any:
        raise NotImplementedError

    def get_chaincode_events(
        self,
        chaincode_name: str,
        *,
        start_block: int | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Stream:
        if self.refuse_opens:
            self.refuse_opens -= 1
            raise GatewayError("could not reach any peer", unreachable=True)
        if checkpoint is None:
            self.opened.append((start_block, None))
            rest = [e for e in CHAIN if e.block_number >= (start_block or 0)]
        else:
            self.opened.append((checkpoint.block_number, checkpoint.transaction_id))
            done = [(e.block_number, e.transaction_id) for e in CHAIN].index(
                (checkpoint.block_number, checkpoint.transaction_id)
            )
            rest = CHAIN[done + 1 :]
        stream = Stream(rest, self.breaks.pop(0) if self.breaks else None)
        self.streams.append(stream)
        return stream


class Follower:
    """A follower's own state: the events it handled and its checkpoint."""

    def __init__(self, fail_on: set[str] | None = None, skip: bool = True) -> None:
        self.handled: list[str] = []
        self.point: tuple[int | None, str | None] = (None, None)
        self.fail_on = fail_on or set()
        self.skip = skip
        self.done = threading.Event()

    def checkpoint(self) -> tuple[int | None, str | None]:
        return self.point

    def handle(self, event: ChaincodeEvent) -> None:
        if event.transaction_id in self.fail_on:
            self.fail_on.discard(event.transaction_id)
            raise ValueError(f"cannot read {event.transaction_id}")
        self.handled.append(event.transaction_id)
        self.point = (event.block_number, event.transaction_id)
        if event.transaction_id == "e":
            self.done.set()

    def on_error(self, event: ChaincodeEvent, exc: Exception) -> bool:
        return self.skip


def _run(network: Network, follower: Follower) -> EventFollower:
    loop = EventFollower(
        network,
        "ehrshare",
        follower.checkpoint,
        follower.handle,
        name="test follower",
        on_error=follower.on_error,
        retry_max=0.05,
    )
    loop.open()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    assert follower.done.wait(10), follower.handled
    loop.stop()
    thread.join(5)
    assert not thread.is_alive()
    return loop


def test_a_broken_stream_is_followed_again_from_the_checkpoint() -> None:
    network = Network(breaks=[2, 1])
    follower = Follower()
    loop = _run(network, follower)
    assert follower.handled == ["a", "b", "c", "d", "e"]  # nothing skipped, nothing twice
    assert network.opened == [(0, None), (1, "b"), (1, "c")]
    assert loop.reconnects == 2


def test_a_ledger_that_is_down_at_first_is_waited_for() -> None:
    network = Network(breaks=[None], refuse_opens=0)
    follower = Follower()
    loop = EventFollower(network, "ehrshare", follower.checkpoint, follower.handle, name="t")
    network.refuse_opens = 3  # open() sees the outage; run() keeps trying
    with pytest.raises(GatewayError):
        loop.open()
    loop = EventFollower(
        network, "ehrshare", follower.checkpoint, follower.handle, name="t", retry_max=0.05
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    assert follower.done.wait(10)
    loop.stop()
    thread.join(5)
    assert follower.handled == ["a", "b", "c", "d", "e"]
    assert loop.reconnects == 2  # two refused opens inside run, then one that worked


def test_a_handler_error_is_skipped_or_retried_as_on_error_says() -> None:
    skipped = Follower(fail_on={"c"}, skip=True)
    _run(Network(breaks=[]), skipped)
    assert skipped.handled == ["a", "b", "d", "e"]
    retried = Follower(fail_on={"c"}, skip=False)
    network = Network(breaks=[])
    loop = _run(network, retried)
    assert retried.handled == ["a", "b", "c", "d", "e"]  # tried again after reopening
    assert network.opened == [(0, None), (1, "b")] and loop.reconnects == 1


def test_stop_ends_a_loop_blocked_on_the_next_event() -> None:
    network = Network(breaks=[])
    follower = Follower()
    loop = EventFollower(network, "ehrshare", follower.checkpoint, follower.handle, name="t")
    loop.open()
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    assert follower.done.wait(10)  # every event handled; the stream now blocks
    loop.stop()
    thread.join(5)
    assert not thread.is_alive() and network.streams[0].closed.is_set()
