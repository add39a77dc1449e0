"""The client-facing ledger interface, shared by the embedded ledger and the Fabric Gateway client.

The SDK talks to a ledger only through these protocols, so it never knows which backend it runs on.
The shape mirrors hyperledger/fabric-gateway: ``Gateway`` → ``Network`` → ``Contract``, with
``submit_transaction`` / ``evaluate_transaction`` and a chaincode event stream that resumes from a
checkpoint, and :class:`EventFollower`, the loop followers run over such a stream. This
module must not import a backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

__all__ = [
    "ChaincodeEvent",
    "ChaincodeEvents",
    "Checkpoint",
    "Contract",
    "EventFollower",
    "Gateway",
    "InMemoryCheckpointer",
    "Network",
    "StoredCheckpoint",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChaincodeEvent:
    """One chaincode event, as committed in a block."""

    block_number: int
    transaction_id: str
    chaincode_name: str
    event_name: str
    payload: bytes


class Checkpoint(Protocol):
    """Where an event consumer has got to (fabric-gateway's Checkpoint)."""

    @property
    def block_number(self) -> int | None:
        """The block to resume from, or None to start at ``start_block``."""
        ...

    @property
    def transaction_id(self) -> str | None:
        """The last transaction processed within that block, or None."""
        ...


class InMemoryCheckpointer:
    """A checkpoint kept in memory: call :meth:`checkpoint_event` after handling each event."""

    def __init__(self) -> None:
        self._block: int | None = None
        self._tx: str | None = None

    @property
    def block_number(self) -> int | None:
        """The block to resume from."""
        return self._block

    @property
    def transaction_id(self) -> str | None:
        """The last handled transaction in that block."""
        return self._tx

    def checkpoint_event(self, event: ChaincodeEvent) -> None:
        """Record that ``event`` was handled."""
        self._block = event.block_number
        self._tx = event.transaction_id

    def checkpoint_block(self, block_number: int) -> None:
        """Record that every event up to and including ``block_number`` was handled."""
        self._block = block_number + 1
        self._tx = None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint read back from where a follower stored it (a file, a database row)."""

    block_number: int | None
    transaction_id: str | None


class ChaincodeEvents(Protocol):
    """A closable, blocking iterator of chaincode events."""

    def __iter__(self) -> Iterator[ChaincodeEvent]: ...

    def __next__(self) -> ChaincodeEvent: ...

    def close(self) -> None:
        """Stop the stream; a blocked iteration ends."""
        ...

    def __enter__(self) -> ChaincodeEvents: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Contract(Protocol):
    """One chaincode on one channel, called with the gateway's identity."""

    @property
    def chaincode_name(self) -> str: ...

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Endorse, order and commit; returns the result once the transaction is committed."""
        ...

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Run a query against committed state; nothing is written."""
        ...


class Network(Protocol):
    """A channel."""

    @property
    def name(self) -> str: ...

    def get_contract(self, chaincode_name: str) -> Contract:
        """The named chaincode on this channel."""
        ...

    def get_chaincode_events(
        self,
        chaincode_name: str,
        *,
        start_block: int | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> ChaincodeEvents:
        """Events of a chaincode from ``start_block`` (or the checkpoint), then as they commit."""
        ...


class Gateway(Protocol):
    """A connection with one identity and signer."""

    def get_network(self, channel_name: str) -> Network:
        """The named channel."""
        ...

    def close(self) -> None:
        """Release what :func:`connect` opened."""
        ...

    def __enter__(self) -> Gateway: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _follow_events(
    network: Network, chaincode_name: str, block: int | None, transaction_id: str | None
) -> ChaincodeEvents:
    """A follower's event stream: from block 0 when it has no checkpoint yet, else resuming
    after the stored (block, transaction id)."""
    if block is None:
        return network.get_chaincode_events(chaincode_name, start_block=0)
    return network.get_chaincode_events(
        chaincode_name, checkpoint=StoredCheckpoint(block, transaction_id)
    )


class EventFollower:
    """Runs a follower's event loop: each event to ``handle``, and on a broken stream (a peer
    restarted, the network down) a new stream from ``checkpoint()`` after a pause that doubles
    up to ``retry_max`` seconds — so a follower outlives an outage instead of ending with it.

    ``handle`` records its own checkpoint after each event; an exception from it is logged by
    ``on_error`` (which decides whether following goes on: return True) and the event counts as
    handled. :meth:`stop` ends the loop, also a blocked wait for the next event.
    """

    def __init__(
        self,
        network: Network,
        chaincode_name: str,
        checkpoint: Callable[[], tuple[int | None, str | None]],
        handle: Callable[[ChaincodeEvent], object],
        *,
        name: str,
        on_error: Callable[[ChaincodeEvent, Exception], bool] | None = None,
        retry_max: float = 5.0,
    ) -> None:
        self._network = network
        self._chaincode = chaincode_name
        self._checkpoint = checkpoint
        self._handle = handle
        self._on_error = on_error
        self._name = name
        self._retry_max = retry_max
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._events: ChaincodeEvents | None = None
        self._thread: threading.Thread | None = None
        self.reconnects = 0
        """How many times the stream was opened again after breaking."""

    @property
    def stopped(self) -> threading.Event:
        """Set once :meth:`stop` was called."""
        return self._stopped

    def open(self) -> None:
        """Open a stream from the checkpoint (call it before :meth:`run` to see an unreachable
        ledger at start). A stream opened after :meth:`stop` is closed at once."""
        block, tx = self._checkpoint()
        events = _follow_events(self._network, self._chaincode, block, tx)
        with self._lock:
            if self._stopped.is_set():
                events.close()
            else:
                self._events = events

    def run(self) -> None:
        """Follow until :meth:`stop` (call :meth:`open` first, or it opens here)."""
        delay = 0.2
        while not self._stopped.is_set():
            try:
                with self._lock:
                    events = self._events
                if events is None:
                    self.open()
                    with self._lock:
                        events = self._events
                    if events is None:  # stopped meanwhile
                        return
                for event in events:
                    if self._stopped.is_set():
                        return
                    try:
                        self._handle(event)
                    except Exception as exc:
                        if self._on_error is None or not self._on_error(event, exc):
                            raise
                    delay = 0.2
                if self._stopped.is_set():
                    return
                reason = "the event stream ended"
            except Exception as exc:
                if self._stopped.is_set():
                    return
                reason = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if self._events is not None:
                    self._events.close()
                self._events = None
            _log.warning(
                "%s: %s; following again from the checkpoint in %.1f s", self._name, reason, delay
            )
            if self._stopped.wait(delay):
                return
            self.reconnects += 1
            delay = min(delay * 2, self._retry_max)

    def start(self, thread_name: str) -> None:
        """Open the first stream here (an unreachable ledger raises now), then :meth:`run` in
        a daemon thread."""
        self.open()
        self._thread = threading.Thread(target=self.run, name=thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End the loop; a blocked iteration ends too. With ``timeout``, also wait that long
        for the thread :meth:`start` began."""
        self._stopped.set()
        with self._lock:
            events = self._events
        if events is not None:
            events.close()
        if timeout is not None and self._thread is not None:
            self._thread.join(timeout)
