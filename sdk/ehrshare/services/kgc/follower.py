"""The DKG follower: what ``ehrshare kgc serve`` runs beside the extraction service.

:class:`DkgFollower` follows the chaincode's DKG events (checkpoint in the state directory) and
runs :meth:`KgcNode.run_dkg` or :meth:`KgcNode.run_reshare` for each session that names the node;
a session that can no longer finish is marked failed on chain by the node (AbortDKGSession).
It must not take part twice in one session or rejoin one whose dealing polynomial it lost.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Final

from ehrshare.contract.dkg import PHASE_ORDER
from ehrshare.hazmat.dkg import DKGError
from ehrshare.ledger.api import ChaincodeEvent, EventFollower, Network
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc.errors import DKGSessionFailed, KgcError
from ehrshare.services.kgc.node import KgcNode
from ehrshare.services.vault import atomic_write

__all__ = ["DkgFollower"]

_log = logging.getLogger("ehrshare.services.kgc")

_FOLLOW_FILE: Final = "dkg-follow.json"


class _Stopped(Exception):
    """The follower is stopping: a session thread leaves its wait."""


class DkgFollower:
    """Follows the chaincode's DKG events in a thread and takes part in the sessions that name
    this node, each in its own thread (:meth:`KgcNode.run_dkg`).

    ``OpenDKGSession`` naming ``ibe_id`` in its roster starts a session unless the node already
    holds a share of it or the session is past its deal phase (a node that restarts mid-session
    lost its dealing polynomial with the old process and cannot rejoin). ``PublishDKGResult``
    making a session final lets the node answer under it when it holds that share (a node that
    was down when the result became final catches up). The checkpoint — the last handled event
    — is kept in ``dkg-follow.json`` in the node's state directory, so a restart resumes after
    it; a fresh node reads from block 0, where finished sessions are skipped.
    """

    def __init__(
        self,
        node: KgcNode,
        network: Network,
        *,
        ibe_id: str,
        chaincode_name: str = "ehrshare",
        poll: float = 0.2,
    ) -> None:
        self._node = node
        self._network = network
        self._chaincode = chaincode_name
        self.ibe_id = ibe_id
        self._poll = poll
        self._events: EventFollower | None = None
        self._stopped = threading.Event()
        self._sessions: dict[bytes, threading.Thread] = {}
        self.outcomes: dict[bytes, str] = {}
        """How each session this follower ran ended: ``final``, ``failed: …`` or ``error: …``."""

    @property
    def checkpoint_path(self) -> Path:
        """Where the last handled event is recorded."""
        return self._node.state_dir / _FOLLOW_FILE

    def checkpoint(self) -> tuple[int | None, str | None]:
        """(block, transaction id) of the last handled event; (None, None) before the first."""
        try:
            data = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
            return int(data["block"]), (str(data["tx"]) if data.get("tx") else None)
        except FileNotFoundError:
            return None, None
        except (ValueError, KeyError, TypeError) as exc:
            raise KgcError(
                f"dkg follow checkpoint {self.checkpoint_path} is malformed: {exc}"
            ) from None

    def start(self) -> None:
        """Start following in a daemon thread (a broken event stream is opened again from the
        checkpoint; see :class:`~ehrshare.ledger.api.EventFollower`).

        First it finishes what a killed earlier process left of a resharing
        (:meth:`KgcNode.catch_up`): the open event of that session lies before the checkpoint
        and will not be seen again.
        """
        self._node.catch_up()
        block, _ = self.checkpoint()
        self._events = EventFollower(
            self._network,
            self._chaincode,
            self.checkpoint,
            self.handle_event,
            name=f"kgc node {self._node.index}: dkg follower",
            on_error=self._event_failed,
        )
        self._events.start("dkg-follower")
        _log.info(
            "kgc node %d follows dkg sessions as %s from %s",
            self._node.index,
            self.ibe_id,
            "block 0" if block is None else f"block {block} (checkpoint)",
        )

    def _event_failed(self, event: ChaincodeEvent, exc: Exception) -> bool:
        """One unreadable event or a failed read must not end the following: the session it
        was about is logged and skipped. Anything else breaks the stream, which is followed
        again from the checkpoint (so that event is tried again)."""
        if not isinstance(exc, KgcError | LedgerError | ValueError | KeyError):
            return False
        _log.error(
            "kgc node %d: dkg event %s in block %d: %s",
            self._node.index,
            event.event_name,
            event.block_number,
            exc,
        )
        return True

    def handle_event(self, event: ChaincodeEvent) -> None:
        """Act on one chaincode event, then record it as the checkpoint."""
        if event.event_name in (
            "OpenDKGSession",
            "OpenReshareSession",
            "PublishDKGResult",
            "AbortDKGSession",
        ):
            payload = json.loads(event.payload)
            for entry in payload.get("entries", []):
                detail = entry.get("detail") or {}
                try:
                    nonce = bytes.fromhex(str(detail.get("nonce", "")))
                except ValueError:
                    continue
                if entry.get("action") == "OpenDKGSession":
                    if self.ibe_id in detail.get("roster", []):
                        self._opened(nonce)
                elif entry.get("action") == "OpenReshareSession":
                    if self.ibe_id in detail.get("roster", []) + detail.get("dealers", []):
                        self._opened(nonce)
                elif entry.get("action") == "PublishDKGResult" and entry.get("outcome") == "final":
                    self._final(nonce)
                elif entry.get("action") == "AbortDKGSession":
                    _log.info(
                        "kgc node %d: dkg session %s was marked failed: %s",
                        self._node.index,
                        nonce.hex()[:16],
                        detail.get("cause"),
                    )
        record = {"block": event.block_number, "tx": event.transaction_id}
        atomic_write(self.checkpoint_path, json.dumps(record).encode("ascii"), mode=0o600)

    def _opened(self, nonce: bytes) -> None:
        tag = f"kgc node {self._node.index}: dkg session {nonce.hex()[:16]}"
        if nonce in self._sessions:
            return
        if self._node.holds_share(nonce):
            _log.info("%s: already taken part; skipping", tag)
            return
        state = self._node.chain.session_state(nonce)
        phase = str(state["phase"])
        joinable = {PHASE_ORDER[0]}
        if state.get("kind") == "reshare" and self.ibe_id not in state.get("dealers", []):
            # A new member deals nothing: its first post is its response, so it can still join
            # after the dealers have closed the deal phase (they are quick; a node that is
            # starting, or slow to see the event, was found missing its whole session).
            joinable.add(PHASE_ORDER[1])
        if phase not in joinable:
            _log.info("%s: the session is %s; not taking part", tag, phase)
            return
        if self.ibe_id in state.get("posted", []):
            _log.warning(
                "%s: this node posted its deal in an earlier process and cannot rejoin "
                "(the dealing polynomial is gone); the session goes on without it",
                tag,
            )
            return
        _log.info("%s: named in the roster; taking part", tag)
        thread = threading.Thread(
            target=self._take_part, args=(nonce,), name=f"dkg-{nonce.hex()[:8]}", daemon=True
        )
        self._sessions[nonce] = thread
        thread.start()

    def _take_part(self, nonce: bytes) -> None:
        tag = f"kgc node {self._node.index}: dkg session {nonce.hex()[:16]}"
        try:
            state = self._node.chain.session_state(nonce)
            if state.get("kind") == "reshare":
                self._node.run_reshare(nonce, poll=self._poll, sleep=self._sleep)
            else:
                self._node.run_dkg(nonce, poll=self._poll, sleep=self._sleep)
            self.outcomes[nonce] = "final"
            _log.info("%s: finished; the result is final", tag)
        except _Stopped:
            self.outcomes[nonce] = "stopped"
            _log.info("%s: stopped with the service", tag)
        except DKGSessionFailed as exc:
            self.outcomes[nonce] = f"failed: {exc}"
            _log.warning("%s: %s", tag, exc)
        except (DKGError, KgcError, LedgerError) as exc:
            self.outcomes[nonce] = f"error: {exc}"
            _log.error("%s: gave up: %s", tag, exc)
        except Exception as exc:
            self.outcomes[nonce] = f"error: {exc}"
            _log.exception("%s: failed unexpectedly", tag)

    def _final(self, nonce: bytes) -> None:
        # No share of the session may still mean a resharing that leaves this node out (then
        # adopt_final destroys its old share), so only the current session is skipped.
        if self._node.current_session == nonce:
            return
        try:
            latest = self._node.chain.result()
        except LedgerError:
            return
        # Only the chain's latest final result counts (replaying old events must not roll back).
        if latest.get("nonce") == nonce.hex():
            self._node.adopt_final(nonce)

    def _sleep(self, seconds: float) -> None:
        if self._stopped.wait(seconds):
            raise _Stopped

    def wait_sessions(self, timeout: float | None = None) -> None:
        """Join the session threads started so far (tests and orderly shutdown)."""
        for thread in list(self._sessions.values()):
            thread.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the event stream and the session threads (they leave at their next wait)."""
        self._stopped.set()
        if self._events is not None:
            self._events.stop(timeout)
        self.wait_sessions(timeout)
