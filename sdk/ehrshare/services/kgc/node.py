"""The KGC node: one hospital's share of the key generation centre.

A :class:`KgcNode` holds its DKG share sealed at rest in its state directory (see
:mod:`ehrshare.services.vault` for why and how), publishes its long-term public key on chain,
takes part in DKG and resharing sessions an org admin opened on chain (through
:class:`~ehrshare.services.kgc.board.LedgerBoard` and the one protocol driver,
:func:`~ehrshare.hazmat.board.drive`), promotes a session's share only once the chain's result is
final, catches up after a restart, and answers extraction requests
(:class:`~ehrshare.services.kgc.extraction.ExtractionServing`).

What this module must not do: log or raise with a share; write the share anywhere but through
the vault; answer under a session's share before the chain holds that session's final result;
call the chaincode other than through :class:`~ehrshare.contract.dkg.DkgBoardClient`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ehrshare import faults
from ehrshare.contract.dkg import (
    PHASE_FAILED,
    DkgBoardClient,
    dkg_config_from_chain,
    public_polynomial_from_chain,
    reshare_config_from_chain,
)
from ehrshare.hazmat.board import Board
from ehrshare.hazmat.dkg import (
    NONCE_SIZE,
    DKGConfig,
    DKGError,
    DKGNode,
    DKGResult,
    KeyShare,
    PublicPolynomial,
)
from ehrshare.hazmat.errors import DecryptionError, EncodingError
from ehrshare.hazmat.kgc_keys import KGCNodeKey, KGCNodePublicKey
from ehrshare.hazmat.pairing import RngFn
from ehrshare.hazmat.reshare import ReshareConfig, ReshareNode
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare.ledger.store import DEFAULT_MAX_CLOCK_SKEW_S
from ehrshare.services.extract_auth import SeenNonces
from ehrshare.services.kgc.board import LedgerBoard
from ehrshare.services.kgc.errors import KgcError
from ehrshare.services.kgc.extraction import ExtractionServing
from ehrshare.services.kgc.participation import (
    DkgParticipation,
    ReshareParticipation,
    publish_reshare_view,
)
from ehrshare.services.kgc.running import run_session
from ehrshare.services.vault import atomic_write, open_sealed_file, write_sealed_file

__all__ = ["KgcNode"]

_log = logging.getLogger("ehrshare.services.kgc")

_CURRENT_FILE: Final = "current-session"
_SEEN_NONCES_FILE: Final = "extraction-nonces.db"


class KgcNode(ExtractionServing):
    """One hospital's KGC node: holds its DKG share (sealed at rest in ``state_dir``), takes part
    in DKG sessions through the chaincode board, answers extraction requests only for identities
    registered on chain, seals each partial key to the requester, rate-limits and logs every
    extraction.

    ``contract`` is the ledger contract called with the node's own (role ``kgc``) identity.
    ``clock`` drives the rate limiter only (seconds, monotonic). ``wall_clock`` (nanoseconds,
    like the ledger's) is what request timestamps are checked against; a request stamped more
    than ``max_clock_skew_s`` from it is refused as stale, and its nonce is remembered (in
    ``state_dir``) for as long as it would be fresh.
    """

    def __init__(
        self,
        *,
        index: int,
        node_key: KGCNodeKey,
        state_dir: Path,
        contract: Contract,
        rate_limit_per_minute: int = 60,
        clock: Callable[[], float] = time.monotonic,
        rng: RngFn | None = None,
        wall_clock: Callable[[], int] = time.time_ns,
        max_clock_skew_s: int = DEFAULT_MAX_CLOCK_SKEW_S,
    ) -> None:
        if index < 1:
            raise ValueError(f"KGC node index must be at least 1, got {index}")
        if isinstance(max_clock_skew_s, bool) or max_clock_skew_s < 1:
            raise ValueError(
                f"max_clock_skew_s must be a positive number of seconds, got {max_clock_skew_s!r}"
            )
        self.index = index
        self._key = node_key
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._contract = contract
        self._chain = DkgBoardClient(contract)
        self._rng = rng
        self._lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self._result = None
        self.ibe_id: str | None = None  # known once the node published its key
        self._init_extraction(
            rate_limit_per_minute=rate_limit_per_minute,
            clock=clock,
            wall_clock=wall_clock,
            max_clock_skew_s=max_clock_skew_s,
            seen=SeenNonces(self.state_dir / _SEEN_NONCES_FILE),
        )
        self._load_current()

    def __repr__(self) -> str:
        return f"KgcNode(index={self.index}, key={self._key.public_key.fingerprint()})"

    # --- state --------------------------------------------------------------------------------

    @property
    def public_key(self) -> KGCNodePublicKey:
        """The node's long-term public keys (its roster entry)."""
        return self._key.public_key

    @property
    def contract(self) -> Contract:
        """The contract handle with the node's identity (for :class:`LedgerBoard`)."""
        return self._contract

    @property
    def chain(self) -> DkgBoardClient:
        """The chaincode's DKG functions, called with the node's identity."""
        return self._chain

    @property
    def public_polynomial(self) -> PublicPolynomial | None:
        """The public polynomial of the session whose share the node holds (None before a DKG)."""
        result = self._result
        return None if result is None else result.public

    def _share_path(self, nonce: bytes) -> Path:
        return self.state_dir / f"dkg-{nonce.hex()}.sealed"

    @staticmethod
    def _purpose(nonce: bytes, index: int) -> str:
        return f"kgc/dkg-result/{nonce.hex()}/{index}"

    def _load_current(self) -> None:
        pointer = self.state_dir / _CURRENT_FILE
        if not pointer.exists():
            return
        nonce = bytes.fromhex(pointer.read_text(encoding="ascii").strip())
        path = self._share_path(nonce)
        try:
            raw = open_sealed_file(path, self._key.encryption_key, self._purpose(nonce, self.index))
        except DecryptionError:
            raise KgcError(
                f"the sealed DKG share in {path} does not open with this node key "
                "(wrong key file, or the file was altered)"
            ) from None
        result = DKGResult.from_secret_bytes(raw)
        if result.index != self.index:
            raise KgcError(
                f"the DKG share in {path} belongs to node {result.index}, not node {self.index}"
            )
        self._result = result
        _log.info("kgc node %d: loaded the share of session %s", self.index, nonce.hex()[:16])

    def new_dkg_protocol(self, config: DKGConfig) -> DKGNode:
        """The pure protocol object of this node in a DKG session (its key, its RNG)."""
        return DKGNode(config, self._key, rng=self._rng)

    def new_reshare_protocol(
        self, config: ReshareConfig, old_share: KeyShare | None
    ) -> ReshareNode:
        """The pure protocol object of this node in a resharing; without ``old_share`` it
        deals nothing (a new member, or a dealer that holds no share of the reshared key)."""
        return ReshareNode(
            config, self._key, old_share=old_share, abstain=old_share is None, rng=self._rng
        )

    def store_share(self, result: DKGResult) -> None:
        """Seal a session's share and answer under it at once (a session without a chain
        result to wait for, e.g. on an in-memory board)."""
        self.seal_share(result)
        self._promote(result)

    def seal_share(self, result: DKGResult) -> None:
        """Keep a session's share sealed beside the current one; extraction does not use it
        until it is promoted (the previous share keeps answering until the result is final)."""
        write_sealed_file(
            self._share_path(result.nonce),
            self._key.encryption_key,
            self._purpose(result.nonce, result.index),
            result.to_secret_bytes(),
        )

    def _promote(self, result: DKGResult) -> None:
        # The pointer is public (a session nonce); written after the share so a crash in between
        # leaves the previous session current.
        atomic_write(self.state_dir / _CURRENT_FILE, result.nonce.hex().encode("ascii"))
        with self._lock:
            self._result = result

    @property
    def current_session(self) -> bytes | None:
        """The nonce of the session whose share answers extractions (None before a DKG)."""
        with self._lock:
            result = self._result
        return None if result is None else result.nonce

    def close(self) -> None:
        """Close the node's replay database (the node answers no extraction afterwards)."""
        self._seen.close()

    def catch_up(self) -> None:
        """Finish what a killed process left of a resharing: publish the view of a sealed new
        share or adopt it if its result is final (:meth:`resume_view`), and delete an old share
        that the chain's latest final resharing replaced (or that left this node out). Call at
        start, before following events. Problems (an altered share file, the ledger down) are
        logged, not raised: the node keeps answering under its current share."""
        try:
            self._catch_up()
        except (KgcError, LedgerError, EncodingError) as exc:
            _log.error("kgc node %d: catching up after a restart: %s", self.index, exc)

    def _catch_up(self) -> None:
        for nonce in self.sealed_sessions():
            if nonce == self.current_session:
                continue
            try:
                if self.resume_view(nonce):
                    _log.info(
                        "kgc node %d: published its view of reshare session %s after a restart",
                        self.index,
                        nonce.hex()[:16],
                    )
            except (KgcError, LedgerError, EncodingError) as exc:
                _log.error("kgc node %d: resuming session %s: %s", self.index, nonce.hex(), exc)
        try:
            latest = self._chain.result()
        except LedgerError:
            return
        # Every session the latest key was reshared from, newest first.
        ancestors: list[bytes] = []
        step = latest
        while step.get("kind") == "reshare" and len(ancestors) < 1000:
            ancestors.append(bytes.fromhex(str(step["previous"])))
            try:
                step = self._chain.result(ancestors[-1])
            except LedgerError:
                break
        if not ancestors:
            return
        if self.current_session == ancestors[0]:
            # promotes the sealed share of the latest resharing, or retires this node
            self.adopt_final(bytes.fromhex(str(latest["nonce"])))
        elif self.current_session in ancestors:
            # It missed a resharing altogether: its share is of a polynomial long replaced.
            (self.state_dir / _CURRENT_FILE).unlink(missing_ok=True)
            with self._lock:
                self._result = None
            _log.warning("kgc node %d: its share is from before the latest resharing", self.index)
        for nonce in self.sealed_sessions():
            if nonce in ancestors:
                self._destroy_share(nonce)

    def sealed_sessions(self) -> list[bytes]:
        """Nonces of every session whose share is sealed in the state directory."""
        out = []
        for path in sorted(self.state_dir.glob("dkg-*.sealed")):
            try:
                nonce = bytes.fromhex(path.name[len("dkg-") : -len(".sealed")])
            except ValueError:
                continue
            if len(nonce) == NONCE_SIZE:
                out.append(nonce)
        return out

    def holds_share(self, nonce: bytes) -> bool:
        """Whether a share of session ``nonce`` is sealed in the state directory."""
        return self._share_path(nonce).exists()

    def adopt_final(self, nonce: bytes) -> bool:
        """Answer extractions with the share of ``nonce`` once the chain's result of that
        session is final and equals this node's view; True when that share is now current.

        Call after a session: until then the node keeps answering under the previous final
        result, which is what users verify partial keys against.
        """
        with self._adopt_lock:  # the session thread and the follower may both get here
            return self._adopt_final(nonce)

    def _adopt_final(self, nonce: bytes) -> bool:
        if self.current_session == nonce:
            return True
        try:
            final = self._chain.result(nonce)
        except LedgerError as exc:
            _log.debug("kgc node %d: session %s not final: %s", self.index, nonce.hex()[:16], exc)
            return False
        path = self._share_path(nonce)
        try:
            raw = open_sealed_file(path, self._key.encryption_key, self._purpose(nonce, self.index))
        except FileNotFoundError:
            return self._retire(nonce, final)
        except DecryptionError:
            raise KgcError(
                f"the sealed DKG share in {path} does not open with this node key"
            ) from None
        result = DKGResult.from_secret_bytes(raw)
        if public_polynomial_from_chain(final).to_bytes() != result.public.to_bytes():
            _log.error(
                "kgc node %d: the final result of dkg session %s differs from this node's view; "
                "keeping session %s",
                self.index,
                nonce.hex()[:16],
                (self.current_session or b"").hex()[:16] or "-",
            )
            return False
        self._promote(result)
        _log.info(
            "kgc node %d: dkg session %s is final; extraction now answers under it",
            self.index,
            nonce.hex()[:16],
        )
        if final.get("kind") == "reshare":
            faults.fault_point("reshare.promoted")
            # The old share of the same secret: kept until now (the new committee's result
            # was not final), destroyed now that the pointer names the new share.
            self._destroy_share(bytes.fromhex(str(final["previous"])))
        return True

    def _retire(self, nonce: bytes, final: dict[str, Any]) -> bool:
        """A final resharing that leaves this node out of the committee: destroy its share of
        the reshared key. True when the node is retired (or already was)."""
        if final.get("kind") != "reshare":
            return False
        previous = bytes.fromhex(str(final["previous"]))
        if self.current_session != previous:
            return False
        # Also a member of the new committee that ended without a new share (it crashed
        # before sealing it): its old share is useless to the new committee, and old shares
        # must not outlive the resharing. It rejoins by a later resharing.
        pointer = self.state_dir / _CURRENT_FILE
        pointer.unlink(missing_ok=True)  # first: a crash after it leaves no current share
        with self._lock:
            self._result = None
        faults.fault_point("reshare.retired")
        self._destroy_share(previous)
        _log.info(
            "kgc node %d: reshare session %s is final without a new share for this node; "
            "its old share is destroyed",
            self.index,
            nonce.hex()[:16],
        )
        return True

    def _destroy_share(self, nonce: bytes) -> None:
        path = self._share_path(nonce)
        if self.current_session == nonce or not path.exists():
            return
        path.unlink()
        _log.info("kgc node %d: destroyed its share of session %s", self.index, nonce.hex()[:16])

    def resume_view(self, nonce: bytes) -> str:
        """Publish this node's view of a resharing whose new share it sealed in an earlier
        process that died before publishing, and adopt it if the result is final. Returns the
        chain's outcome, or ``""`` when there is nothing to publish (not a resharing, failed,
        or already final)."""
        state = self._chain.session_state(nonce)
        if state.get("kind") != "reshare":
            return ""
        if (state.get("result") or {}).get("final"):
            self.adopt_final(nonce)
            return ""
        try:
            latest = self._chain.result()
        except LedgerError:
            latest = {}
        if state["phase"] == PHASE_FAILED or latest.get("nonce") != state["previous"]:
            # It can never become final (failed, or another key became final since): the
            # sealed share is of a polynomial nobody completed; it goes.
            self._destroy_share(nonce)
            return ""
        path = self._share_path(nonce)
        try:
            raw = open_sealed_file(path, self._key.encryption_key, self._purpose(nonce, self.index))
        except DecryptionError:
            raise KgcError(
                f"the sealed DKG share in {path} does not open with this node key"
            ) from None
        outcome = publish_reshare_view(self, state, DKGResult.from_secret_bytes(raw))
        if outcome in ("final", "confirmed"):
            self.adopt_final(nonce)
        return outcome

    # --- DKG ----------------------------------------------------------------------------------

    def publish_key(self) -> str:
        """Publish this node's public key on chain (PublishKGCKey); returns its identity.

        Call at start: sessions can only name nodes whose keys are on chain, and users check
        partial keys against the keys a final DKG result snapshotted, never against a file.
        """
        self.ibe_id = self._chain.publish_key(self.public_key)
        return self.ibe_id

    def dkg_config(self, nonce: bytes) -> DKGConfig:
        """The configuration of a session opened on chain, checked against this node's key."""
        state = self._chain.session_state(nonce)
        config = dkg_config_from_chain(state)
        try:
            position = config.index_of(self.public_key)
        except DKGError:
            raise KgcError(
                f"KGC node {self.index}: its public key is not in the roster of dkg session "
                f"{nonce.hex()}"
            ) from None
        if position != self.index:
            raise KgcError(
                f"KGC node {self.index} is at position {position} of the roster of dkg session "
                f"{nonce.hex()}; its profile index must match"
            )
        return config

    def dkg_session(self, config: DKGConfig, board: Board | None = None) -> DkgParticipation:
        """This node's participation in one DKG session (phase by phase, for a driver)."""
        return DkgParticipation(self, config, board or LedgerBoard(self._contract))

    def reshare_session(
        self, nonce: bytes, board: LedgerBoard | None = None
    ) -> ReshareParticipation:
        """This node's participation in a resharing session opened on chain: as a dealer it
        re-deals its current share, which must be a share of the key being reshared."""
        board = board or LedgerBoard(self._contract)
        state = board.session_state(nonce)
        if state.get("kind") != "reshare":
            raise KgcError(f"dkg session {nonce.hex()} is not a resharing")
        previous = self._chain.result(bytes.fromhex(str(state["previous"])))
        config = reshare_config_from_chain(state, public_polynomial_from_chain(previous))
        with self._lock:
            current = self._result
        position = config.dealer_position(self.public_key)
        old_share = None
        if position is not None:
            if current is None or current.public.to_bytes() != config.old_public.to_bytes():
                # It still receives if it is a new member; the others need τ_old dealers.
                _log.warning(
                    "kgc node %d is a dealer of reshare session %s but holds no share of the key "
                    "it reshares (dkg session %s); it does not deal",
                    self.index,
                    nonce.hex()[:16],
                    str(state["previous"])[:16],
                )
            elif current.index != config.dealer_indices[position - 1]:
                raise KgcError(
                    f"KGC node {self.index} holds share {current.index}; the session expects "
                    f"share {config.dealer_indices[position - 1]} from it"
                )
            else:
                old_share = current.share
        recipient = config.recipient_position(self.public_key)
        if recipient is not None and config.recipient_indices[recipient - 1] != self.index:
            raise KgcError(
                f"KGC node {self.index} gets share index "
                f"{config.recipient_indices[recipient - 1]} in reshare session {nonce.hex()}; "
                "its profile index must match"
            )
        return ReshareParticipation(self, config, board, old_share, state)

    def run_dkg(
        self,
        nonce: bytes,
        *,
        give_up: float | None = None,
        poll: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> DKGResult:
        """Take part on its own in a session opened on chain (other nodes run elsewhere).

        Each phase ends with a committed CloseDKGPhase — submitted by whichever node finds it
        due first (everyone posted, or the phase's timeout passed) — and the node reads a
        phase's bundles only after that. The new share is sealed in the state directory next
        to the previous one and answers extractions only once the chain's result is final
        (:meth:`adopt_final`); the node waits for that before returning.

        A session that cannot finish is marked failed on chain (AbortDKGSession) by the first
        node that sees it: the deal phase closed with fewer than τ dealers, or every phase
        closed and the result phase's timeout passed without τ agreeing views. Raises
        :class:`DKGSessionFailed` when the session failed (marked by this node or another),
        :class:`~ehrshare.hazmat.dkg.DKGError` when a wait exceeded ``give_up`` seconds
        (default: twice the session's phase timeout plus a minute) or the final result does
        not hold this node's share.
        """
        config = self.dkg_config(nonce)
        board = LedgerBoard(self._contract)
        participation = self.dkg_session(config, board)
        result = run_session(self, nonce, participation, board, give_up, poll, sleep, now, clock)
        assert result is not None  # a DKG member always ends with a share or an error
        return result

    def run_reshare(
        self,
        nonce: bytes,
        *,
        give_up: float | None = None,
        poll: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> DKGResult | None:
        """Take part on its own in a resharing session opened on chain, like :meth:`run_dkg`:
        as a dealer (this node's current share is re-dealt), a new member, or both.

        Returns the new share (a new member) or None (a dealer leaving the committee). The
        current share keeps answering until the chain's result is final; only then is it
        replaced — or, for a leaving dealer, destroyed (:meth:`adopt_final`).
        """
        board = LedgerBoard(self._contract)
        participation = self.reshare_session(nonce, board)
        return run_session(self, nonce, participation, board, give_up, poll, sleep, now, clock)
