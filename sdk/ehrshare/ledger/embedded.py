"""The embedded backend's client: Gateway → Network → Contract over an :class:`EmbeddedLedger`.

Shaped like hyperledger/fabric-gateway so that SDK code written against :mod:`ehrshare.ledger.api`
runs unchanged on Fabric. Every call is a signed proposal verified by the ledger; nothing here
bypasses the signature or certificate checks. Use :func:`connect`.

This module must not hold private keys beyond the :class:`~ehrshare.identity.Signer` it was given,
and must not log arguments (they may be personal data).
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ehrshare.closing import Closing
from ehrshare.identity import Identity, Signer
from ehrshare.ledger import api
from ehrshare.ledger.api import ChaincodeEvent, Checkpoint
from ehrshare.ledger.envelope import Proposal, new_proposal, sign_proposal
from ehrshare.ledger.errors import (
    CommitError,
    EndorseError,
    GatewayError,
    LedgerCorrupt,
    LedgerIntegrityError,
    OrderingKeyError,
    SubmitError,
)
from ehrshare.ledger.records import EndorsedTransaction, TxStatus, is_corrupt_database
from ehrshare.ledger.simulation import ProposalRejected
from ehrshare.ledger.store import EmbeddedLedger

__all__ = [
    "EmbeddedChaincodeEvents",
    "EmbeddedContract",
    "EmbeddedGateway",
    "EmbeddedNetwork",
    "EmbeddedProposal",
    "EmbeddedSubmitted",
    "EmbeddedTransaction",
    "connect",
]

Clock = Callable[[], int]  # nanoseconds since the epoch


def _raise_if_corrupt(ledger: EmbeddedLedger, exc: BaseException) -> None:
    """Raise :class:`LedgerCorrupt` when ``exc`` says the ledger's database is damaged."""
    if is_corrupt_database(exc):
        raise LedgerCorrupt(
            f"the ledger database in {ledger.directory} is damaged ({exc}); restore the ledger "
            "directory from a backup"
        ) from None


def _as_bytes(arg: str | bytes) -> bytes:
    return arg if isinstance(arg, bytes) else arg.encode("utf-8")


def connect(
    identity: Identity,
    signer: Signer,
    ledger: EmbeddedLedger | Path | str,
    *,
    clock: Clock | None = None,
) -> EmbeddedGateway:
    """Open a gateway with one identity to an embedded ledger (an open one, or a directory).

    A directory is opened and closed with the gateway; an :class:`EmbeddedLedger` passed in stays
    open (the gateway does not own it). ``clock`` (nanoseconds) stamps proposals; tests inject it
    to move the chaincode's notion of time.
    """
    if isinstance(ledger, EmbeddedLedger):
        return EmbeddedGateway(identity, signer, ledger, owns_ledger=False, clock=clock)
    return EmbeddedGateway(
        identity, signer, EmbeddedLedger.open(ledger), owns_ledger=True, clock=clock
    )


class EmbeddedGateway(Closing):
    """A connection with one identity; use as a context manager."""

    def __init__(
        self,
        identity: Identity,
        signer: Signer,
        ledger: EmbeddedLedger,
        *,
        owns_ledger: bool,
        clock: Clock | None,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self.ledger = ledger
        self._owns = owns_ledger
        self._clock: Clock = clock or time.time_ns

    def get_network(self, channel_name: str) -> EmbeddedNetwork:
        """The named channel (the embedded ledger holds exactly one)."""
        if channel_name != self.ledger.channel:
            raise GatewayError(f"channel {channel_name} does not exist")
        return EmbeddedNetwork(self, channel_name)

    def _proposal(
        self, channel: str, chaincode: str, name: str, args: tuple[bytes, ...]
    ) -> Proposal:
        return new_proposal(
            self.identity,
            channel=channel,
            chaincode=chaincode,
            function=name,
            args=args,
            timestamp_ns=self._clock(),
        )

    def close(self) -> None:
        """Close the ledger if this gateway opened it."""
        if self._owns:
            self.ledger.close()


class EmbeddedNetwork:
    """A channel of the embedded ledger."""

    def __init__(self, gateway: EmbeddedGateway, name: str) -> None:
        self._gateway = gateway
        self._name = name

    @property
    def name(self) -> str:
        """The channel name."""
        return self._name

    def get_contract(self, chaincode_name: str) -> EmbeddedContract:
        """A chaincode on this channel."""
        return EmbeddedContract(self._gateway, self._name, chaincode_name)

    def get_chaincode_events(
        self,
        chaincode_name: str,
        *,
        start_block: int | None = None,
        checkpoint: Checkpoint | None = None,
        idle_timeout: float | None = None,
    ) -> EmbeddedChaincodeEvents:
        """Events from ``start_block`` (default: the next block), or resume after ``checkpoint``.

        Iteration blocks for new commits until :meth:`EmbeddedChaincodeEvents.close`; with
        ``idle_timeout`` (embedded-only) it also ends after that many seconds without an event.
        """
        ledger = self._gateway.ledger
        block, txn = ledger.height(), -1
        if start_block is not None:
            if start_block < 0:
                raise GatewayError(f"start block {start_block} is negative")
            block, txn = start_block, -1
        if checkpoint is not None and checkpoint.block_number is not None:
            block, txn = checkpoint.block_number, -1
            if checkpoint.transaction_id:
                where = ledger.tx_index(checkpoint.transaction_id)
                if where is not None and where[0] == block:
                    txn = where[1]
        return EmbeddedChaincodeEvents(ledger, chaincode_name, block, txn, idle_timeout)


class EmbeddedChaincodeEvents(Closing):
    """A blocking iterator of chaincode events; close it (or use ``with``) to stop."""

    _POLL = 0.2  # seconds; commits from other processes are picked up by polling

    def __init__(
        self,
        ledger: EmbeddedLedger,
        chaincode: str,
        block: int,
        txn: int,
        idle_timeout: float | None,
    ) -> None:
        self._ledger = ledger
        self._chaincode = chaincode
        # Position of the last delivered event; start just before (block, txn + 1).
        self._pos = (block - 1, 1 << 62) if txn < 0 else (block, txn)
        self._buffer: deque[ChaincodeEvent] = deque()
        self._idle_timeout = idle_timeout
        self._closed = False

    def __iter__(self) -> Iterator[ChaincodeEvent]:
        return self

    def __next__(self) -> ChaincodeEvent:
        deadline = None if self._idle_timeout is None else time.monotonic() + self._idle_timeout
        while not self._buffer:
            if self._closed or self._ledger.closed:
                raise StopIteration
            rows = self._ledger.events_after(self._chaincode, self._pos[0], self._pos[1])
            if rows:
                for txn, event in rows:
                    self._buffer.append(event)
                    self._pos = (event.block_number, txn)
                break
            wait = self._POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StopIteration
                wait = min(wait, left)
            self._ledger.wait_for_commit(wait)
        return self._buffer.popleft()

    def close(self) -> None:
        """Stop the stream."""
        self._closed = True


class EmbeddedContract:
    """A chaincode on a channel, called with the gateway's identity."""

    def __init__(self, gateway: EmbeddedGateway, channel: str, chaincode_name: str) -> None:
        self._gateway = gateway
        self._channel = channel
        self._name = chaincode_name

    @property
    def chaincode_name(self) -> str:
        """The chaincode's name."""
        return self._name

    def new_proposal(self, name: str, *args: str | bytes) -> EmbeddedProposal:
        """The fine-grained flow: a signed proposal to endorse, submit and check yourself."""
        proposal = self._gateway._proposal(
            self._channel, self._name, name, tuple(_as_bytes(a) for a in args)
        )
        return EmbeddedProposal(self._gateway, proposal)

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Endorse, order and commit; returns the chaincode's result after a valid commit.

        Endorsement and commit happen under the ledger's lock, so concurrent submits from this
        process never conflict with each other (the fine-grained flow can, as on Fabric).
        """
        proposal = self.new_proposal(name, *args).proposal
        ledger = self._gateway.ledger
        try:
            endorsed, status = ledger.submit(sign_proposal(proposal, self._gateway._signer))
        except ProposalRejected as exc:
            raise EndorseError(
                exc.message, transaction_id=proposal.tx_id, creator_refused=exc.creator_refused
            ) from None
        except (LedgerIntegrityError, OrderingKeyError):
            raise  # the stored ledger is not to be trusted, or cannot be written: say which
        except Exception as exc:  # sqlite errors, closed ledger: not a chaincode decision
            _raise_if_corrupt(ledger, exc)
            raise SubmitError(f"could not commit: {exc}", transaction_id=proposal.tx_id) from exc
        if not status.successful:
            raise CommitError(
                f"transaction {status.tx_id} committed as {status.code}",
                transaction_id=status.tx_id,
                code=status.code,
            )
        return endorsed.result

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        """Run a query against committed state; nothing is written or logged."""
        return self.new_proposal(name, *args).evaluate()


@dataclass(slots=True)
class EmbeddedProposal:
    """A signed proposal not yet endorsed."""

    _gateway: EmbeddedGateway
    proposal: Proposal

    @property
    def transaction_id(self) -> str:
        """The transaction id this proposal will commit under."""
        return self.proposal.tx_id

    def evaluate(self) -> bytes:
        """Evaluate as a query."""
        try:
            return self._gateway.ledger.evaluate(
                sign_proposal(self.proposal, self._gateway._signer)
            )
        except ProposalRejected as exc:
            raise GatewayError(
                exc.message,
                transaction_id=self.proposal.tx_id,
                creator_refused=exc.creator_refused,
            ) from None
        except sqlite3.DatabaseError as exc:
            _raise_if_corrupt(self._gateway.ledger, exc)
            raise

    def endorse(self) -> EmbeddedTransaction:
        """Simulate and collect the read/write set; nothing is committed yet."""
        try:
            endorsed = self._gateway.ledger.endorse(
                sign_proposal(self.proposal, self._gateway._signer)
            )
        except ProposalRejected as exc:
            raise EndorseError(
                exc.message,
                transaction_id=self.proposal.tx_id,
                creator_refused=exc.creator_refused,
            ) from None
        except sqlite3.DatabaseError as exc:
            _raise_if_corrupt(self._gateway.ledger, exc)
            raise
        return EmbeddedTransaction(self._gateway, endorsed)


@dataclass(slots=True)
class EmbeddedTransaction:
    """An endorsed transaction, ready to submit."""

    _gateway: EmbeddedGateway
    endorsed: EndorsedTransaction

    @property
    def result(self) -> bytes:
        """The chaincode's result from endorsement."""
        return self.endorsed.result

    @property
    def transaction_id(self) -> str:
        """The transaction id."""
        return self.endorsed.tx_id

    def submit(self) -> EmbeddedSubmitted:
        """Order and commit (the embedded ledger cuts one block per submit)."""
        try:
            (status,) = self._gateway.ledger.commit([self.endorsed])
        except (LedgerIntegrityError, OrderingKeyError):
            raise
        except Exception as exc:  # sqlite errors, closed ledger: not a chaincode decision
            _raise_if_corrupt(self._gateway.ledger, exc)
            raise SubmitError(
                f"could not commit: {exc}", transaction_id=self.endorsed.tx_id
            ) from exc
        return EmbeddedSubmitted(self.endorsed.result, status)


@dataclass(frozen=True, slots=True)
class EmbeddedSubmitted:
    """A committed transaction: its result and commit status."""

    result: bytes
    _status: TxStatus

    @property
    def transaction_id(self) -> str:
        """The transaction id."""
        return self._status.tx_id

    def get_status(self) -> TxStatus:
        """The commit status (code and block number)."""
        return self._status


def _satisfies_protocols(
    gateway: EmbeddedGateway, network: EmbeddedNetwork, contract: EmbeddedContract
) -> tuple[api.Gateway, api.Network, api.Contract]:
    # Never called: mypy checks here that the embedded classes satisfy the client protocols.
    return gateway, network, contract
