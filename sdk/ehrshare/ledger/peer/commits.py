"""Commit status and chaincode events for the client-side gateway, from the peers' Deliver
services: a DeliverFiltered listener per channel that records each transaction's validation
code (reconnecting from the next block after a peer restart), height watchers of the other
endorsing peers, and the full-block event stream.

Listener threads are daemons that end in ``close()``; this module must not leave one behind.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.gateway import gateway_pb2 as _gateway_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2

from ehrshare.ledger.fabric import GatewayFailure
from ehrshare.ledger.peer.messages import block_chaincode_events, skip_through
from ehrshare.ledger.peer.transport import _UNREACHABLE, _code, _Peer, _text

__all__: list[str] = []

common: Any = _common_pb2
gw: Any = _gateway_pb2
ab: Any = _ab_pb2

_log = logging.getLogger(__name__)

_SUCCESS = int(common.Status.Value("SUCCESS"))
_COMMITS_KEPT = 65536  # validation codes remembered per channel (oldest forgotten first)
_RETRY_MAX = 5.0  # seconds between a commit listener's reconnection attempts, at most


class _CommitListener:
    """Validation codes of one channel's transactions, from a peer's DeliverFiltered stream.

    A daemon thread reads filtered blocks from the newest block on, from the own organisation's
    first peer; after a failure (peer restart) it reconnects to the next peer given (the same one
    if there is only one) from the block after the last one it saw, so no commit is skipped.
    ``heights_only``: a watcher of another peer's height, which keeps no validation codes.
    """

    def __init__(
        self,
        peers: Sequence[_Peer],
        channel: str,
        seek: Callable[[str, Any], Any],
        *,
        heights_only: bool = False,
    ) -> None:
        self._heights_only = heights_only
        self._peers = list(peers)
        self._index = 0
        self._channel = channel
        self._seek = seek
        self._cond = threading.Condition()
        self._results: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._expected: set[str] = set()
        self._next_block: int | None = None
        self._fatal: GatewayFailure | None = None
        self._last_error = "not connected yet"
        self._closed = False
        # Whether the last stream to the peer ended without a block since: until the first
        # attempt fails the stream counts as connecting (waited for), not as down.
        self._down = False
        self._call: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"fabric-commits-{channel}", daemon=True
        )

    @property
    def _peer(self) -> _Peer:
        return self._peers[self._index]

    def start(self) -> None:
        self._thread.start()

    def expect(self, transaction_id: str) -> None:
        """Keep this transaction's result until it is read, however many commits follow."""
        with self._cond:
            self._expected.add(transaction_id)
            self._cond.notify_all()  # a listener waiting to reconnect tries now

    def forget(self, transaction_id: str) -> None:
        """The transaction was not ordered: nobody will wait for it."""
        with self._cond:
            self._expected.discard(transaction_id)

    def wait_positioned(self, timeout: float) -> None:
        """Return once the stream delivered its first block, so later commits are all seen."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._next_block is not None or self._fatal or self._closed, timeout
            )
            self._raise_if_failed()
            if self._next_block is None:
                raise GatewayFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"its block stream on channel {self._channel} is not connected "
                    f"({self._last_error}); nothing was sent for ordering",
                    (self._peer.detail(self._last_error),),
                    where=self._peer.label,
                )

    @property
    def label(self) -> str:
        """The peer this listener reads from now."""
        return self._peer.label

    def wait_height(self, block: int, timeout: float) -> bool:
        """Wait until this peer has committed ``block``; False at once when its stream is down
        (its last attempt ended with no block since), and after ``timeout``. A stream still
        making its first connection, or not yet positioned, is waited for: the first commit
        after connecting must not be reported before this peer has it."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._closed
                    or self._down
                    or self._fatal is not None
                    or (self._next_block is not None and self._next_block > block)
                ),
                max(timeout, 0.0),
            )
            return self._next_block is not None and self._next_block > block

    def wait(self, transaction_id: str, timeout: float) -> tuple[int, int]:
        """(validation code, block number) of a transaction, once its block has arrived."""
        with self._cond:
            self._cond.wait_for(
                lambda: transaction_id in self._results or self._fatal or self._closed, timeout
            )
            if transaction_id in self._results:
                self._expected.discard(transaction_id)
                return self._results[transaction_id]
            self._raise_if_failed()
            state = "connected" if self._call is not None else f"reconnecting: {self._last_error}"
            raise GatewayFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"transaction {transaction_id} was not seen in a block of channel "
                f"{self._channel}; the block stream is {state}",
                (self._peer.detail(state),),
                where=self._peer.label,
            )

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise GatewayFailure(grpc.StatusCode.CANCELLED, "the gateway is closed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)

    def _record(self, block: Any) -> None:
        with self._cond:
            for tx in () if self._heights_only else block.filtered_transactions:
                if tx.txid and tx.txid not in self._results:  # a duplicate's code is not its own
                    self._results[tx.txid] = (int(tx.tx_validation_code), int(block.number))
            while len(self._results) > _COMMITS_KEPT:
                oldest = next(iter(self._results))
                if oldest in self._expected:
                    self._results.move_to_end(oldest)  # still awaited: keep it
                    if len(self._expected) >= _COMMITS_KEPT:
                        break
                    continue
                del self._results[oldest]
            self._next_block = int(block.number) + 1
            self._down = False
            self._cond.notify_all()

    def _run(self) -> None:
        delay = 0.2
        while True:
            with self._cond:
                if self._closed:
                    return
                start = (
                    ab.SeekPosition(newest=ab.SeekNewest())
                    if self._next_block is None
                    else ab.SeekPosition(specified=ab.SeekSpecified(number=self._next_block))
                )
                call = self._peer.deliver.DeliverFiltered(iter([self._seek(self._channel, start)]))
                self._call = call
            try:
                for response in call:
                    kind = response.WhichOneof("Type")
                    if kind == "filtered_block":
                        self._record(response.filtered_block)
                        delay = 0.2
                    elif kind == "status":
                        name = common.Status.Name(response.status)
                        if response.status in (400, 403, 404):  # refused: retrying cannot help
                            with self._cond:
                                self._fatal = GatewayFailure(
                                    grpc.StatusCode.PERMISSION_DENIED
                                    if response.status == 403
                                    else grpc.StatusCode.FAILED_PRECONDITION,
                                    f"{self._peer.label} refused the block stream of channel "
                                    f"{self._channel}: {name}",
                                    (self._peer.detail(name),),
                                )
                                self._call = None
                                self._cond.notify_all()
                            _log.error("commit listener: %s", self._fatal.text)
                            return
                        self._last_error = f"the peer ended the stream with {name}"
                        break
                else:
                    self._last_error = "the peer ended the stream"
            except grpc.RpcError as exc:
                self._last_error = f"{_code(exc)}: {_text(exc)}"
            with self._cond:
                self._call = None
                self._down = True
                self._cond.notify_all()  # a wait_height on this peer stops waiting
                if self._closed:
                    return
                # Every peer has the channel's blocks: the next one resumes at the same block.
                self._index = (self._index + 1) % len(self._peers)
                _log.warning(
                    "commit listener on %s, channel %s: %s; reconnecting in %.1f s",
                    self._peer.label,
                    self._channel,
                    self._last_error,
                    delay,
                )
                self._cond.wait(delay)  # close() wakes it
            delay = min(delay * 2, _RETRY_MAX)


class _BlockEventStream:
    """``ChaincodeEventsResponse``s built from a peer's full block stream (an EventStream)."""

    def __init__(
        self,
        call: Any,
        peer: _Peer,
        chaincode: str,
        checkpoint: tuple[int | None, str],
        *,
        on_unreachable: Callable[[_Peer], None] | None = None,
    ) -> None:
        self._call = call
        self._peer = peer
        self._chaincode = chaincode
        self._checkpoint_block, self._after_tx = checkpoint
        self._on_unreachable = on_unreachable

    def _next_block(self) -> Any:
        while True:
            try:
                response = next(self._call)
            except grpc.RpcError as exc:
                if _code(exc) in _UNREACHABLE and self._on_unreachable is not None:
                    self._on_unreachable(self._peer)
                raise GatewayFailure(
                    _code(exc), _text(exc), (self._peer.detail(_text(exc)),), where=self._peer.label
                ) from None
            kind = response.WhichOneof("Type")
            if kind == "status":
                name = common.Status.Name(response.status)
                if response.status == _SUCCESS:
                    raise StopIteration
                raise GatewayFailure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{self._peer.label} ended the block stream: {name}",
                    (self._peer.detail(name),),
                )
            if kind == "block":
                return response.block

    def skip_block(self) -> None:
        """Read and drop one block (the newest, when the stream starts at the next commit)."""
        try:
            self._next_block()
        except StopIteration:
            raise GatewayFailure(
                grpc.StatusCode.UNAVAILABLE,
                "the block stream ended at once",
                where=self._peer.label,
            ) from None

    def __next__(self) -> Any:
        while True:
            block = self._next_block()
            number = int(block.header.number)
            events = block_chaincode_events(block, self._chaincode)
            if self._after_tx and number == self._checkpoint_block:
                events = skip_through(events, self._after_tx)
            if events:
                return gw.ChaincodeEventsResponse(block_number=number, events=events)

    def cancel(self) -> Any:
        return self._call.cancel()
