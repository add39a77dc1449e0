"""The KGC node service: one hospital's share of the key generation centre.

A :class:`KgcNode` holds its DKG share sealed at rest in its state directory (see
:mod:`ehrshare.services.vault` for why and how), publishes its long-term public key on chain
(PublishKGCKey), takes part in DKG sessions an org admin opened on chain (OpenDKGSession,
:func:`open_dkg_session`) through the chaincode board (:class:`LedgerBoard` implements
:class:`ehrshare.hazmat.board.Board` over PostDKGBundle / GetDKGBundles and waits for each phase's
committed CloseDKGPhase before reading it; each QUAL member posts its view of the result with
PublishDKGResult, final once τ agree), and answers extraction requests: only signed requests
(format 2, :class:`~ehrshare.hazmat.extract.SignedExtractionRequest`) whose certificate is the
one registered on chain for the identity (GetIdentity's ``cert_sha256``) and whose signature by
that certificate's key verifies — so the member's ledger key is needed, not just its TLS client
key — addressed to this node and its DKG's mpk, stamped within ``max_clock_skew_s`` of the
node's clock and not seen before (nonces kept in the state directory,
:class:`~ehrshare.services.extract_auth.SeenNonces`); only to the identity itself when the
caller is authenticated; rate-limited per requester (token bucket, injectable clock); each
partial key sealed to the requester's one-time reply key and signed; and each attempt logged
(who, for which identity, which node, the outcome or the reason for a refusal — never key
material).

The user side, :func:`extract_identity_key`, asks τ of n nodes through any :class:`KgcClient`
(in-process here, gRPC in :mod:`ehrshare.services.rpc`), tolerates nodes that are down, names and
excludes nodes whose partial key fails the pairing check or whose signature does not verify
under the roster of the chain's final DKG result (:func:`roster_from_chain`), and asks further
nodes until τ shares verify.

What this module must not do: log or raise with a share, a partial key or a reply key; trust a
requester field when an authenticated caller is given; answer before the share is loaded and the
identity checked on chain; write the share anywhere but through the vault; answer under a
session's share before the chain holds that session's final result.

:class:`DkgFollower` is what ``ehrshare kgc serve`` runs: it follows the chaincode's DKG events
(checkpoint in the state directory) and runs :meth:`KgcNode.run_dkg` for each session that names
the node. A session that can no longer finish is marked failed on chain (AbortDKGSession).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ehrshare import faults
from ehrshare.errors import EhrshareError, Unavailable
from ehrshare.hazmat.board import Board
from ehrshare.hazmat.dkg import (
    NONCE_SIZE,
    BundleKind,
    DKGConfig,
    DKGError,
    DKGNode,
    DKGResult,
    KeyShare,
    Phase,
    PublicPolynomial,
)
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.extract import (
    SIGNED_REQUEST_VERSION,
    InvalidPartialKey,
    NotEnoughPartialKeys,
    PartialKey,
    SignedExtractionRequest,
    combine_partial_keys,
    extract_partial_key,
    open_partial_key,
    verify_partial_keys,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey, KGCNodePublicKey, X25519KeyPair
from ehrshare.hazmat.pairing import G1, RngFn
from ehrshare.hazmat.reshare import ReshareConfig, ReshareNode, ResharePhase
from ehrshare.hazmat.tipre import IdentitySecretKey, MasterPublicKey
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.api import ChaincodeEvent, Contract, EventFollower, Network
from ehrshare.ledger.errors import LedgerError
from ehrshare.ledger.store import DEFAULT_MAX_CLOCK_SKEW_S
from ehrshare.services.extract_auth import (
    SeenNonces,
    certificate_der,
    sign_extraction_request,
    verify_request_signature,
)
from ehrshare.services.protocols import KgcClient
from ehrshare.services.ratelimit import TokenBucketLimiter
from ehrshare.services.vault import atomic_write, open_sealed_file, write_sealed_file

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "DEFAULT_PHASE_TIMEOUT_S",
    "PHASE_DONE",
    "PHASE_FAILED",
    "BadRequest",
    "BadSignature",
    "DKGSessionFailed",
    "DkgFollower",
    "DkgParticipation",
    "ExtractionFailed",
    "ExtractionOutcome",
    "IdentityNotRegistered",
    "InProcessKgcClient",
    "KgcError",
    "KgcNode",
    "KgcUnavailable",
    "LedgerBoard",
    "NoShare",
    "NotAuthorised",
    "OutdatedRequest",
    "RateLimited",
    "ReplayedRequest",
    "ReshareParticipation",
    "RosterKeys",
    "StaleRequest",
    "UnregisteredCertificate",
    "dkg_config_from_chain",
    "extract_identity_key",
    "failure_text",
    "open_dkg_session",
    "open_reshare_session",
    "phase_closed",
    "public_polynomial_from_chain",
    "reshare_config_from_chain",
    "roster_from_chain",
    "run_local_dkg",
    "run_local_reshare",
]

_log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION: Final = 1
_PHASE_NAMES: Final = {
    BundleKind.DEAL: "deal",
    BundleKind.RESPONSE: "response",
    BundleKind.JUSTIFICATION: "justification",
}
_PHASE_ORDER: Final = ("deal", "response", "justification")
PHASE_DONE: Final = "done"
"""The session phase after the justification phase closed (no more bundles)."""
PHASE_FAILED: Final = "failed"
"""The session phase after AbortDKGSession: no result will come (``failure`` says why)."""
_FOLLOW_FILE: Final = "dkg-follow.json"
DEFAULT_PHASE_TIMEOUT_S: Final = 60
_CURRENT_FILE: Final = "current-session"
_NOT_REGISTERED_MARK: Final = "is not registered"
_SEEN_NONCES_FILE: Final = "extraction-nonces.db"


# ---------------------------------------------------------------------------------------------
# errors (the gRPC layer maps each class to a status code and back)


class KgcError(EhrshareError):
    """Base class of KGC service errors; messages name the object and never hold secrets."""


class BadRequest(KgcError):
    """The extraction request bytes do not parse."""


class NotAuthorised(KgcError):
    """The authenticated caller may not ask for this identity's key."""


class IdentityNotRegistered(KgcError):
    """The identity is not registered on chain: no key is extracted for it."""


class OutdatedRequest(BadRequest):
    """The request is in a format this node no longer accepts (an unsigned, format-1 request):
    upgrade the client."""


class BadSignature(NotAuthorised):
    """The request's signature does not verify under the certificate it carries."""


class UnregisteredCertificate(NotAuthorised):
    """The request's certificate is not the one registered on chain for the identity."""


class StaleRequest(NotAuthorised):
    """The request's timestamp is outside the node's clock-skew window."""


class ReplayedRequest(NotAuthorised):
    """The request's nonce was already used within the window: a replay."""


class RateLimited(KgcError):
    """The requester used up its extraction budget; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoShare(KgcError):
    """The node holds no DKG share yet (no finished session)."""


class KgcUnavailable(Unavailable, KgcError):
    """The node could not be reached or did not answer (client side)."""


class DKGSessionFailed(DKGError):
    """The DKG session is marked failed on chain (AbortDKGSession); the message says why."""


def failure_text(state: dict[str, Any]) -> str:
    """One line saying why a failed session (a GetDKGSession answer) failed."""
    failure = state.get("failure") or {}
    return (
        f"dkg session {state.get('nonce', '?')} failed: {failure.get('cause', 'aborted')} "
        f"(aborted by {failure.get('by', '?')}: {failure.get('reason', '')})"
    )


# ---------------------------------------------------------------------------------------------
# the chaincode as DKG board


class LedgerBoard:
    """A :class:`~ehrshare.hazmat.board.Board` over the chaincode's DKG functions.

    Each KGC node posts with its own contract handle: the chaincode names the poster from the
    client certificate, refuses a second bundle per poster and phase (so equivocation on chain is
    impossible rather than merely provable), and refuses a bundle whose header names another
    sender index than the poster's roster position. Reading a phase is refused by the chaincode
    until its close committed (:meth:`wait_closed`), so every node reads the same set.
    """

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    def post(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        """Submit PostDKGBundle; returns once the transaction committed."""
        if len(session) != NONCE_SIZE:
            raise ValueError(f"session nonce must be {NONCE_SIZE} bytes, got {len(session)}")
        if not isinstance(bundle, bytes) or not bundle:
            raise ValueError("bundle must be non-empty bytes")
        self._contract.submit_transaction(
            "PostDKGBundle",
            session.hex(),
            _PHASE_NAMES[BundleKind(phase)],
            base64.b64encode(bundle).decode("ascii"),
            str(BUNDLE_FORMAT_VERSION),
        )

    def posted(self, session: bytes, phase: BundleKind) -> list[tuple[str, bytes]]:
        """(poster identity, bundle bytes) for every bundle of a closed phase."""
        raw = self._contract.evaluate_transaction(
            "GetDKGBundles", session.hex(), _PHASE_NAMES[BundleKind(phase)]
        )
        rows = json.loads(raw)
        out: list[tuple[str, bytes]] = []
        for row in rows:
            if int(row.get("format_version", 0)) != BUNDLE_FORMAT_VERSION:
                _log.warning("skipping dkg bundle of %s: unknown format version", row.get("poster"))
                continue
            out.append((str(row["poster"]), base64.b64decode(row["bundle"])))
        return out

    def read(self, session: bytes, phase: BundleKind) -> list[bytes]:
        """Every bundle of a closed phase (the nodes check signatures and de-duplicate)."""
        return [bundle for _, bundle in self.posted(session, phase)]

    def session_state(self, session: bytes) -> dict[str, Any]:
        """The session on chain: roster, key snapshot, τ, open phase and who posted in it."""
        state: dict[str, Any] = json.loads(
            self._contract.evaluate_transaction("GetDKGSession", session.hex())
        )
        return state

    def close_phase(self, session: bytes, phase: BundleKind) -> dict[str, Any]:
        """Submit CloseDKGPhase (refused unless everyone posted or the phase timed out)."""
        state: dict[str, Any] = json.loads(
            self._contract.submit_transaction(
                "CloseDKGPhase", session.hex(), _PHASE_NAMES[BundleKind(phase)]
            )
        )
        return state

    def abort(self, session: bytes, reason: str) -> dict[str, Any]:
        """Submit AbortDKGSession (refused unless the chain shows the session cannot finish)."""
        state: dict[str, Any] = json.loads(
            self._contract.submit_transaction("AbortDKGSession", session.hex(), reason)
        )
        return state

    def wait_closed(
        self,
        session: bytes,
        phase: BundleKind,
        *,
        give_up: float,
        poll: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> dict[str, Any]:
        """Return once the close of ``phase`` is committed; submit the close when it is due.

        The close is due when every roster node posted, or when ``now()`` (the node's idea of
        transaction time, seconds) passed the phase's timeout, or (justification phase) when
        every accused dealer posted; the chaincode decides by the transaction's own time, and a
        close that another node committed first simply fails here. Raises
        :class:`~ehrshare.hazmat.dkg.DKGError` after ``give_up`` seconds.
        """
        name = _PHASE_NAMES[BundleKind(phase)]
        stop = clock() + give_up
        while True:
            state = self.session_state(session)
            if state["phase"] == PHASE_FAILED:
                raise DKGSessionFailed(failure_text(state))
            if phase_closed(state, phase):
                return state
            if state["phase"] == name and (
                len(state["posted"]) >= len(_senders(state, phase))
                or now() >= int(state["phase_opened_at"]) + int(state["phase_timeout_s"])
                # Justifications: the chaincode closes early once the accused dealers posted,
                # which only it works out; ask, and a refusal costs one endorsement.
                or phase is BundleKind.JUSTIFICATION
            ):
                try:
                    return self.close_phase(session, phase)
                except LedgerError as exc:
                    # Another node's close committed first, or the chain's clock is behind ours.
                    _log.debug("closing %s of %s: %s", name, session.hex()[:16], exc.message)
            if clock() >= stop:
                raise DKGError(
                    f"the {name} phase of dkg session {session.hex()} was not closed within "
                    f"{give_up:.0f} s"
                )
            sleep(poll)


def phase_closed(state: dict[str, Any], phase: BundleKind) -> bool:
    """Whether a GetDKGSession answer shows ``phase`` closed (its bundle set is final)."""
    current = str(state["phase"])
    if current == PHASE_DONE:
        return True
    if current not in _PHASE_ORDER:  # failed: nothing more closes
        return False
    return _PHASE_ORDER.index(current) > _PHASE_ORDER.index(_PHASE_NAMES[BundleKind(phase)])


def _senders(state: dict[str, Any], phase: BundleKind) -> list[str]:
    """Who posts in ``phase`` of a GetDKGSession answer: the roster, or for a resharing the
    dealers (deal, justification) and the new committee (response)."""
    if state.get("kind") == "reshare" and phase is not BundleKind.RESPONSE:
        return [str(d) for d in state["dealers"]]
    return [str(m) for m in state["roster"]]


def _dealer_threshold(state: dict[str, Any]) -> int:
    """How many dealers a session needs: τ, or for a resharing the reshared key's τ."""
    return int(state.get("previous_threshold", state["threshold"]))


def _closed_posters(state: dict[str, Any], phase: BundleKind) -> list[str]:
    """Who had posted when ``phase`` closed (from the session's ``closed`` list)."""
    name = _PHASE_NAMES[BundleKind(phase)]
    for entry in state.get("closed", []):
        if entry.get("phase") == name:
            return [str(p) for p in entry.get("posters", [])]
    return []


def _try_abort(board: LedgerBoard, nonce: bytes, reason: str) -> dict[str, Any] | None:
    """Mark the session failed; the failed session (by us or a node that was first), or None
    when the chain says it can still finish."""
    try:
        state = board.abort(nonce, reason)
        _log.warning("%s", failure_text(state))
        return state
    except LedgerError as exc:
        state = board.session_state(nonce)
        if state["phase"] == PHASE_FAILED:
            return state
        _log.info("abort of dkg session %s refused: %s", nonce.hex()[:16], exc.message)
        return None


def dkg_config_from_chain(state: dict[str, Any]) -> DKGConfig:
    """The :class:`~ehrshare.hazmat.dkg.DKGConfig` of a session (or final result) on chain:
    node j is the j-th key of the snapshot the chaincode took when the session opened."""
    try:
        keys = tuple(
            KGCNodePublicKey.from_bytes(base64.b64decode(str(k), validate=True))
            for k in state["keys"]
        )
        return DKGConfig(keys, bytes.fromhex(str(state["nonce"])), int(state["threshold"]))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EncodingError(f"dkg session on chain is malformed: {exc}") from None


RosterKeys = Sequence[KGCNodePublicKey] | Mapping[int, KGCNodePublicKey]
"""Node j's key at position j-1 (a DKG's roster), or by share index (a reshared committee)."""


def roster_from_chain(result: dict[str, Any]) -> RosterKeys:
    """The KGC roster of a final GetDKGResult answer: node j's public key at position j-1, or,
    for a resharing's result (share indices need not be 1..n), a mapping share index → key.

    This is the trust anchor for partial keys: the keys the nodes published on chain, as the
    session snapshotted them, under the result τ nodes agreed on.
    """
    if result.get("kind") != "reshare":
        return dkg_config_from_chain(result).participants
    try:
        keys = [
            KGCNodePublicKey.from_bytes(base64.b64decode(str(k), validate=True))
            for k in result["keys"]
        ]
        return dict(zip((int(i) for i in result["indices"]), keys, strict=True))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EncodingError(f"reshare result on chain is malformed: {exc}") from None


def open_dkg_session(
    admin: Contract,
    *,
    nonce: bytes,
    roster: Sequence[str],
    threshold: int,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    new_master_key: bool = False,
) -> dict[str, Any]:
    """Open a DKG session on chain (``admin``: a contract handle with an org admin identity).

    ``roster`` is the ordered KGC identities (node j is ``roster[j-1]``); each must have
    published its key (:meth:`KgcNode.publish_key`). Once records exist the chain refuses a
    new master key unless ``new_master_key`` (records then keep the key of their epoch).
    """
    args = [nonce.hex(), str(threshold), json.dumps(list(roster)), str(phase_timeout_s)]
    if new_master_key:
        args.append("replace-master-key")
    state: dict[str, Any] = json.loads(admin.submit_transaction("OpenDKGSession", *args))
    return state


# ---------------------------------------------------------------------------------------------
# the node


class KgcNode:
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
        self._limiter = TokenBucketLimiter(rate_limit_per_minute, period=60.0, clock=clock)
        self._refusal_log = TokenBucketLimiter(rate_limit_per_minute, period=60.0, clock=clock)
        self._refusals_unlogged: dict[str, int] = {}
        self._audit_lock = threading.Lock()
        self._rng = rng
        self._lock = threading.Lock()
        self._adopt_lock = threading.Lock()
        self._result: DKGResult | None = None
        self.ibe_id: str | None = None  # known once the node published its key
        self._wall_clock = wall_clock
        self.max_clock_skew_s = int(max_clock_skew_s)
        self._seen = SeenNonces(self.state_dir / _SEEN_NONCES_FILE)
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

    def _store_result(self, result: DKGResult) -> None:
        self._seal_result(result)
        self._promote(result)

    def _seal_result(self, result: DKGResult) -> None:
        """Keep a session's share sealed beside the current one; extraction does not use it
        until :meth:`_promote` (the previous share keeps answering until the result is final)."""
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
            latest = json.loads(self._contract.evaluate_transaction("GetDKGResult", ""))
        except LedgerError:
            return
        # Every session the latest key was reshared from, newest first.
        ancestors: list[bytes] = []
        step = latest
        while step.get("kind") == "reshare" and len(ancestors) < 1000:
            ancestors.append(bytes.fromhex(str(step["previous"])))
            try:
                step = json.loads(
                    self._contract.evaluate_transaction("GetDKGResult", ancestors[-1].hex())
                )
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
            final = json.loads(self._contract.evaluate_transaction("GetDKGResult", nonce.hex()))
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
        state = LedgerBoard(self._contract).session_state(nonce)
        if state.get("kind") != "reshare":
            return ""
        if (state.get("result") or {}).get("final"):
            self.adopt_final(nonce)
            return ""
        try:
            latest = json.loads(self._contract.evaluate_transaction("GetDKGResult", ""))
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
        outcome = _publish_reshare_view(self, state, DKGResult.from_secret_bytes(raw))
        if outcome in ("final", "confirmed"):
            self.adopt_final(nonce)
        return outcome

    # --- DKG ----------------------------------------------------------------------------------

    def publish_key(self) -> str:
        """Publish this node's public key on chain (PublishKGCKey); returns its identity.

        Call at start: sessions can only name nodes whose keys are on chain, and users check
        partial keys against the keys a final DKG result snapshotted, never against a file.
        """
        record = json.loads(
            self._contract.submit_transaction(
                "PublishKGCKey", base64.b64encode(self.public_key.to_bytes()).decode("ascii")
            )
        )
        self.ibe_id = str(record["ibe_id"])
        return self.ibe_id

    def dkg_config(self, nonce: bytes) -> DKGConfig:
        """The configuration of a session opened on chain, checked against this node's key."""
        state = LedgerBoard(self._contract).session_state(nonce)
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
        previous = json.loads(
            self._contract.evaluate_transaction("GetDKGResult", str(state["previous"]))
        )
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
        result = self._run(nonce, participation, board, give_up, poll, sleep, now, clock)
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
        return self._run(nonce, participation, board, give_up, poll, sleep, now, clock)

    def _run(
        self,
        nonce: bytes,
        participation: DkgParticipation | ReshareParticipation,
        board: LedgerBoard,
        give_up: float | None,
        poll: float,
        sleep: Callable[[float], None],
        now: Callable[[], float],
        clock: Callable[[], float],
    ) -> DKGResult | None:
        state = board.session_state(nonce)
        tau = _dealer_threshold(state)
        limit = give_up if give_up is not None else 2.0 * int(state["phase_timeout_s"]) + 60.0
        what = "reshare" if state.get("kind") == "reshare" else "dkg"
        tag = f"kgc node {self.index}: {what} session {nonce.hex()[:16]}"

        def closed(kind: BundleKind) -> dict[str, Any]:
            return board.wait_closed(nonce, kind, give_up=limit, poll=poll, sleep=sleep, now=now)

        participation.post_deal()
        _log.info("%s: posted its deal", tag)
        state = closed(BundleKind.DEAL)
        dealers = _closed_posters(state, BundleKind.DEAL)
        _log.info(
            "%s: deal phase closed with %d of %d dealers",
            tag,
            len(dealers),
            len(_senders(state, BundleKind.DEAL)),
        )
        if len(dealers) < tau:
            reason = f"kgc node {self.index}: {len(dealers)} dealers posted, threshold {tau}"
            failed = _try_abort(board, nonce, reason)
            if failed is None:
                raise DKGError(f"{tag}: too few dealers, but the chain refused to abort it")
            raise DKGSessionFailed(failure_text(failed))
        participation.post_response()
        _log.info("%s: posted its response", tag)
        closed(BundleKind.RESPONSE)
        _log.info("%s: response phase closed", tag)
        result: DKGResult | None = None
        try:
            if participation.post_justification():
                _log.info("%s: dealers were accused; waiting for the justification phase", tag)
                closed(BundleKind.JUSTIFICATION)
            result = participation.finish()
            _log.info("%s: finished its part (a new share sealed: %s)", tag, result is not None)
        except DKGSessionFailed:
            raise
        except DKGError as exc:
            # QUAL < τ, or no valid share for this node: it publishes nothing, and the session
            # either finishes without it or times out and is marked failed below.
            _log.warning("%s: no result at this node: %s", tag, exc)
        if isinstance(participation, ReshareParticipation) and not participation.receives:
            self._await_final_leaving(board, nonce, tag, limit, poll, sleep, now, clock)
            return None
        return self._await_final(board, nonce, result, tag, limit, poll, sleep, now, clock)

    def _await_final_leaving(
        self,
        board: LedgerBoard,
        nonce: bytes,
        tag: str,
        limit: float,
        poll: float,
        sleep: Callable[[float], None],
        now: Callable[[], float],
        clock: Callable[[], float],
    ) -> None:
        """A dealer leaving the committee: wait for the new committee's final result, then
        destroy this node's share (not before: until then it is the share that answers)."""
        stop = clock() + limit
        while True:
            if self.adopt_final(nonce):
                _log.info("%s: the new committee's result is final; share destroyed", tag)
                return
            state = board.session_state(nonce)
            if state["phase"] == PHASE_FAILED:
                raise DKGSessionFailed(failure_text(state))
            if state["phase"] == PHASE_DONE and now() >= int(state["phase_opened_at"]) + int(
                state["phase_timeout_s"]
            ):
                failed = _try_abort(board, nonce, f"kgc node {self.index}: no final result")
                if failed is not None:
                    raise DKGSessionFailed(failure_text(failed))
            if clock() >= stop:
                raise DKGError(f"{tag}: no final result within {limit:.0f} s")
            sleep(poll)

    def _await_final(
        self,
        board: LedgerBoard,
        nonce: bytes,
        result: DKGResult | None,
        tag: str,
        limit: float,
        poll: float,
        sleep: Callable[[float], None],
        now: Callable[[], float],
        clock: Callable[[], float],
    ) -> DKGResult:
        """Wait until the session's result is final (then answer under it) or the session
        failed; close a due justification phase and abort once the result phase timed out."""
        stop = clock() + limit
        while True:
            try:
                json.loads(self._contract.evaluate_transaction("GetDKGResult", nonce.hex()))
                final = True
            except LedgerError:
                final = False
            if final:
                if result is not None and self.adopt_final(nonce):
                    return result
                raise DKGError(
                    f"{tag}: the final result does not hold this node's share "
                    f"({'its view differs' if result is not None else 'it has no result'}); "
                    "it keeps answering under its previous session"
                )
            state = board.session_state(nonce)
            phase = str(state["phase"])
            if phase == PHASE_FAILED:
                raise DKGSessionFailed(failure_text(state))
            due = int(state["phase_opened_at"]) + int(state["phase_timeout_s"])
            if phase == _PHASE_NAMES[BundleKind.JUSTIFICATION]:
                # Nodes without complaints do not wait for this phase; once it closes (at once
                # when nobody is accused) the result phase's timeout starts.
                try:
                    board.close_phase(nonce, BundleKind.JUSTIFICATION)
                except LedgerError as exc:
                    _log.debug("%s: closing justification: %s", tag, exc.message)
            elif phase == PHASE_DONE and now() >= due:
                reason = f"kgc node {self.index}: no final result by the result timeout"
                failed = _try_abort(board, nonce, reason)
                if failed is not None:
                    raise DKGSessionFailed(failure_text(failed))
            if clock() >= stop:
                raise DKGError(f"{tag}: no final result within {limit:.0f} s")
            sleep(poll)

    # --- extraction ---------------------------------------------------------------------------

    def extract(self, request_bytes: bytes, *, requester: str | None = None) -> bytes:
        """Answer one signed extraction request with a sealed, signed partial key (response bytes).

        ``requester`` is the authenticated caller's identity (the gRPC layer takes it from the
        client certificate); it must be the identity whose key is asked for. In-process callers
        that authenticated the user themselves may leave it None. Either way the request must
        be signed with the identity's ledger key (its certificate the one on chain), be
        addressed to this node and its DKG, be fresh and not replayed; each refusal raises the
        :class:`KgcError` subclass that names the reason and is logged.
        """
        request = self._parse(request_bytes, requester)
        who = requester if requester is not None else request.identity
        if requester is not None and requester != request.identity:
            self._audit(request.identity, who, "refused: not the owner")
            raise NotAuthorised(
                f"identity {requester} may not extract the key of {request.identity}"
            )
        # Every check that a request is really the member's comes BEFORE the member's rate
        # budget is charged: otherwise whoever holds a stolen TLS key (but not the ledger key)
        # could spend the member's extractions with forged requests and lock it out.
        with self._lock:
            result = self._result
        self._check_addressed(request, who, result)
        now = self._wall_clock() // 1_000_000_000
        self._check_fresh(request, who, now)
        if not verify_request_signature(request):
            self._audit(request.identity, who, "refused: bad signature")
            raise BadSignature(
                f"the extraction request for {request.identity} is not signed by the key of the "
                "certificate it carries (requests are signed with the member's ledger key, not "
                "its TLS key)"
            )
        self._check_registered(request, who)
        if not self._seen.remember(
            request.identity,
            request.nonce,
            request.timestamp,
            now=now,
            window=self.max_clock_skew_s,
        ):
            self._audit(request.identity, who, "refused: replayed")
            raise ReplayedRequest(
                f"the extraction request for {request.identity} with nonce "
                f"{request.nonce.hex()} was already answered by KGC node {self.index}; "
                "a client makes a fresh request for every attempt"
            )
        if not self._limiter.try_acquire(who):
            wait = self._limiter.retry_after(who)
            self._audit(request.identity, who, "refused: rate limit")
            raise RateLimited(
                f"identity {who} exceeded {self._limiter.capacity} extractions per minute at "
                f"KGC node {self.index}; retry in {wait:.1f} s",
                retry_after=wait,
            )
        if result is None:
            self._audit(request.identity, who, "refused: no share")
            raise NoShare(f"KGC node {self.index} holds no DKG share yet")
        response = extract_partial_key(result.share, self._key, request, rng=self._rng)
        self._audit(request.identity, who, "ok", result.nonce)
        return response.to_bytes()

    def _parse(self, request_bytes: bytes, requester: str | None) -> SignedExtractionRequest:
        who = requester or "-"
        if request_bytes[:1] == bytes([1]):
            self._audit("-", who, "refused: outdated request format")
            raise OutdatedRequest(
                f"extraction request format 1 (unsigned) is no longer accepted by KGC node "
                f"{self.index}: it needs format {SIGNED_REQUEST_VERSION}, signed with the "
                "member's ledger key; upgrade the ehrshare client"
            )
        try:
            return SignedExtractionRequest.from_bytes(request_bytes)
        except EncodingError as exc:
            self._audit("-", who, "refused: malformed request")
            raise BadRequest(f"extraction request: {exc}") from None

    def _check_addressed(
        self, request: SignedExtractionRequest, who: str, result: DKGResult | None
    ) -> None:
        if request.node_index != self.index:
            self._audit(request.identity, who, "refused: addressed to another node")
            raise BadRequest(
                f"the extraction request is addressed to KGC node {request.node_index}, "
                f"not node {self.index}"
            )
        if result is not None and request.mpk != result.public.mpk.to_bytes():
            self._audit(request.identity, who, "refused: other mpk", result.nonce)
            raise BadRequest(
                f"the extraction request names mpk {request.mpk.hex()[:16]}…; KGC node "
                f"{self.index} holds a share of dkg session {result.nonce.hex()[:16]} "
                f"(mpk {result.public.mpk.to_bytes().hex()[:16]}…)"
            )

    def _check_fresh(self, request: SignedExtractionRequest, who: str, now: int) -> None:
        skew = request.timestamp - now
        if abs(skew) > self.max_clock_skew_s:
            direction = "ahead of" if skew > 0 else "behind"
            self._audit(request.identity, who, "refused: stale timestamp")
            raise StaleRequest(
                f"the extraction request timestamp {request.timestamp} is {abs(skew)} s "
                f"{direction} KGC node {self.index}'s clock ({now}); the limit is "
                f"{self.max_clock_skew_s} s: check the client's clock"
            )

    def _check_registered(self, request: SignedExtractionRequest, who: str) -> None:
        identity = request.identity
        try:
            ident = json.loads(self._contract.evaluate_transaction("GetIdentity", identity))
        except LedgerError as exc:
            if _NOT_REGISTERED_MARK in exc.message or "is not of the form" in exc.message:
                self._audit(identity, who, "refused: not registered")
                raise IdentityNotRegistered(
                    f"identity {identity} is not registered on chain; KGC node {self.index} "
                    "extracts keys only for registered identities"
                ) from None
            self._audit(identity, who, "refused: ledger error")
            raise KgcError(
                f"KGC node {self.index} could not check identity {identity} on chain: {exc}"
            ) from None
        registered = str(ident.get("cert_sha256", ""))
        presented = hashlib.sha256(request.certificate).hexdigest()
        if presented != registered:
            self._audit(identity, who, "refused: unregistered certificate")
            raise UnregisteredCertificate(
                f"the certificate in the extraction request (sha256 {presented[:16]}…) is not "
                f"the one registered on chain for {identity} (sha256 {registered[:16]}…); "
                "requests are signed with the member's ledger key and certificate"
            )

    def _audit(self, identity: str, who: str, outcome: str, nonce: bytes | None = None) -> None:
        # One line per extraction attempt; the log record carries the time. Refusals come
        # before the rate limit (see extract), so a flood of forged requests would flood the
        # log: refusals get their own per-caller budget, and what it drops is counted in the
        # caller's next logged refusal.
        if outcome.startswith("refused"):
            with self._audit_lock:
                if not self._refusal_log.try_acquire(who):
                    self._refusals_unlogged[who] = self._refusals_unlogged.get(who, 0) + 1
                    return
                dropped = self._refusals_unlogged.pop(who, 0)
            if dropped:
                outcome = f"{outcome} ({dropped} earlier refusals not logged)"
        _log.info(
            "extraction node=%d identity=%s requester=%s session=%s outcome=%s",
            self.index,
            identity,
            who,
            nonce.hex()[:16] if nonce is not None else "-",
            outcome,
        )


@dataclass
class DkgParticipation:
    """One node's way through one DKG session, one board phase per call.

    Call :meth:`post_deal`, then (once every node did) :meth:`post_response`, then
    :meth:`post_justification`, then :meth:`finish`. :func:`run_local_dkg` drives several nodes
    in lock step; :meth:`KgcNode.run_dkg` drives one node with phase deadlines.
    """

    node: KgcNode
    config: DKGConfig
    board: Board
    _proto: DKGNode = field(init=False)

    def __post_init__(self) -> None:
        self._proto = DKGNode(self.config, self.node._key, rng=self.node._rng)
        if self._proto.index != self.node.index:
            raise ValueError(
                f"KGC node {self.node.index} is at position {self._proto.index} of the DKG roster"
            )

    @property
    def session(self) -> bytes:
        """The session nonce."""
        return self.config.nonce

    def post_deal(self) -> None:
        """Deal: post commitments and the shares sealed to each node."""
        self.board.post(self.session, BundleKind.DEAL, self._proto.deals().to_bytes())

    def post_response(self) -> None:
        """Read every deal, post this node's verdict on each dealer."""
        response = self._proto.process_deals(self.board.read(self.session, BundleKind.DEAL))
        self.board.post(self.session, BundleKind.RESPONSE, response.to_bytes())

    def post_justification(self) -> bool:
        """Read the responses; post a justification if this node was complained about.

        Returns True when the session needs a justification phase (anyone complained).
        """
        justification = self._proto.process_responses(
            self.board.read(self.session, BundleKind.RESPONSE)
        )
        if justification is not None:
            self.board.post(self.session, BundleKind.JUSTIFICATION, justification.to_bytes())
        return self._proto.phase is Phase.AWAITING_JUSTIFICATIONS

    def finish(self) -> DKGResult:
        """Finish, seal the share into the state directory, publish mpk on chain."""
        if self._proto.phase is Phase.AWAITING_JUSTIFICATIONS:
            self._proto.process_justifications(
                self.board.read(self.session, BundleKind.JUSTIFICATION)
            )
        result = self._proto.result()
        if isinstance(self.board, LedgerBoard):
            # Sealed now, answering only once the chain's result is final (adopt_final): until
            # then users still verify partial keys against the previous final result.
            self.node._seal_result(result)
            if self._publish(result) in ("final", "confirmed"):
                self.node.adopt_final(result.nonce)
        else:
            self.node._store_result(result)
        _log.info(
            "kgc node %d finished dkg session %s: qual=%s",
            self.node.index,
            self.session.hex()[:16],
            list(result.qual),
        )
        return result

    def _publish(self, result: DKGResult) -> str:
        """Post this node's view of the result; it counts once τ nodes posted the same.
        Returns the chain's outcome (``pending``, ``final``, ``confirmed``, ``conflict``), or
        ``""`` when the node is outside QUAL and does not publish."""
        assert isinstance(self.board, LedgerBoard)
        if self.node.index not in result.qual:
            # Still a share holder (it received shares from QUAL), but only QUAL members'
            # views count on chain: a disqualified dealer gets no say in the result.
            _log.info("kgc node %d is outside QUAL; it does not publish", self.node.index)
            return ""
        roster = [str(x) for x in self.board.session_state(self.session)["roster"]]
        answer = json.loads(
            # Views of one session are posted concurrently and each reads the others' range:
            # a read conflict is proposed again by the ledger client (the answer is idempotent).
            self.node._contract.submit_transaction(
                "PublishDKGResult",
                self.session.hex(),
                base64.b64encode(MasterPublicKey(result.public.mpk).to_bytes()).decode("ascii"),
                json.dumps(
                    [
                        base64.b64encode(c.to_bytes()).decode("ascii")
                        for c in result.public.commitments
                    ]
                ),
                json.dumps(sorted(roster[j - 1] for j in result.qual)),
                str(BUNDLE_FORMAT_VERSION),
            )
        )
        _log.info(
            "kgc node %d published its dkg result view: %s (%d of %d agree)",
            self.node.index,
            answer["outcome"],
            answer["agree"],
            answer["threshold"],
        )
        return str(answer["outcome"])


@dataclass
class ReshareParticipation:
    """One node's way through one resharing session (dealer, new member or both), one board
    phase per call, like :class:`DkgParticipation`. Built by :meth:`KgcNode.reshare_session`."""

    node: KgcNode
    config: ReshareConfig
    board: LedgerBoard
    old_share: KeyShare | None
    state: dict[str, Any]
    _proto: ReshareNode = field(init=False)

    def __post_init__(self) -> None:
        self._proto = ReshareNode(
            self.config,
            self.node._key,
            old_share=self.old_share,
            abstain=self.old_share is None,
            rng=self.node._rng,
        )

    @property
    def session(self) -> bytes:
        """The session nonce."""
        return self.config.nonce

    @property
    def receives(self) -> bool:
        """Whether this node is in the new committee."""
        return self._proto.recipient_position is not None

    def post_deal(self) -> None:
        """A dealer posts its re-dealt share (new members that do not deal post nothing)."""
        deal = self._proto.deals()
        if deal is not None:
            self.board.post(self.session, BundleKind.DEAL, deal.to_bytes())

    def post_response(self) -> None:
        """Read every deal; a new member posts its verdict on each dealer."""
        response = self._proto.process_deals(self.board.read(self.session, BundleKind.DEAL))
        if response is not None:
            self.board.post(self.session, BundleKind.RESPONSE, response.to_bytes())

    def post_justification(self) -> bool:
        """Read the responses; a dealer complained about posts its justification. True when
        the session needs a justification phase."""
        justification = self._proto.process_responses(
            self.board.read(self.session, BundleKind.RESPONSE)
        )
        if justification is not None:
            self.board.post(self.session, BundleKind.JUSTIFICATION, justification.to_bytes())
        return self._proto.phase is ResharePhase.AWAITING_JUSTIFICATIONS

    def finish(self) -> DKGResult | None:
        """Finish; a new member seals its new share beside the current one (which keeps
        answering until the result is final) and publishes its view. None for a leaving dealer."""
        if self._proto.phase is ResharePhase.AWAITING_JUSTIFICATIONS:
            self._proto.process_justifications(
                self.board.read(self.session, BundleKind.JUSTIFICATION)
            )
        if not self.receives:
            return None
        result = self._proto.result()
        self.node._seal_result(result)
        faults.fault_point("reshare.sealed")
        if self._publish(result) in ("final", "confirmed"):
            self.node.adopt_final(result.nonce)
        _log.info(
            "kgc node %d finished reshare session %s: qual=%s",
            self.node.index,
            self.session.hex()[:16],
            list(result.qual),
        )
        return result

    def _publish(self, result: DKGResult) -> str:
        return _publish_reshare_view(self.node, self.state, result)


def _publish_reshare_view(node: KgcNode, state: dict[str, Any], result: DKGResult) -> str:
    """A new member posts its view of a resharing; QUAL is named by the dealers' identities.
    Returns the chain's outcome (``pending``, ``final``, ``confirmed``, ``conflict``)."""
    by_index = dict(
        zip((int(i) for i in state["dealer_indices"]), map(str, state["dealers"]), strict=True)
    )
    answer = json.loads(
        node.contract.submit_transaction(
            "PublishDKGResult",
            result.nonce.hex(),
            base64.b64encode(MasterPublicKey(result.public.mpk).to_bytes()).decode("ascii"),
            json.dumps(
                [base64.b64encode(c.to_bytes()).decode("ascii") for c in result.public.commitments]
            ),
            json.dumps(sorted(by_index[i] for i in result.qual)),
            str(BUNDLE_FORMAT_VERSION),
        )
    )
    _log.info(
        "kgc node %d published its reshare view: %s (%d of %d agree)",
        node.index,
        answer["outcome"],
        answer["agree"],
        answer["threshold"],
    )
    return str(answer["outcome"])


def reshare_config_from_chain(state: dict[str, Any], old_public: PublicPolynomial) -> ReshareConfig:
    """The :class:`~ehrshare.hazmat.reshare.ReshareConfig` of a resharing session on chain
    (``old_public``: the public polynomial of the session it reshares)."""

    def keys(field_name: str) -> tuple[KGCNodePublicKey, ...]:
        return tuple(
            KGCNodePublicKey.from_bytes(base64.b64decode(str(k), validate=True))
            for k in state[field_name]
        )

    try:
        return ReshareConfig(
            old_public=old_public,
            dealers=keys("dealer_keys"),
            dealer_indices=tuple(int(i) for i in state["dealer_indices"]),
            recipients=keys("keys"),
            recipient_indices=tuple(int(i) for i in state["indices"]),
            nonce=bytes.fromhex(str(state["nonce"])),
            threshold=int(state["threshold"]),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EncodingError(f"reshare session on chain is malformed: {exc}") from None


def open_reshare_session(
    admin: Contract,
    *,
    nonce: bytes,
    roster: Sequence[str],
    indices: Sequence[int],
    dealers: Sequence[str],
    threshold: int,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
) -> dict[str, Any]:
    """Open a resharing of the latest final key on chain (``admin``: an org admin's handle).

    ``roster``: the new committee in order, ``indices`` their share indices (a current member
    keeps its own); ``dealers``: current members that re-deal their shares (at least τ_old).
    """
    state: dict[str, Any] = json.loads(
        admin.submit_transaction(
            "OpenReshareSession",
            nonce.hex(),
            str(threshold),
            json.dumps(list(roster)),
            json.dumps([int(i) for i in indices]),
            json.dumps(list(dealers)),
            str(phase_timeout_s),
        )
    )
    return state


def run_local_reshare(
    nodes: Sequence[KgcNode],
    *,
    nonce: bytes,
    admin: Contract,
    members: Sequence[int],
    dealers: Sequence[int],
    threshold: int = 0,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    skip: Sequence[int] = (),
) -> PublicPolynomial:
    """Reshare the latest final key among in-process KGC nodes, each posting as itself.

    ``members``: node indices of the new committee (each node's index is its share index);
    ``dealers``: node indices of current members that re-deal. ``nodes`` must hold every node
    named. ``skip`` names nodes that are down (they post nothing; a phase then closes at its
    timeout, so tests pass a ``now`` that moves). Returns the new public polynomial once the
    chain's result is final; every node adopts it (new share answers, old share destroyed).
    """
    by_index = {n.index: n for n in nodes}
    missing = sorted((set(members) | set(dealers)) - set(by_index))
    if missing:
        raise ValueError(f"no KGC node object for node indices {missing}")
    ids = {i: by_index[i].publish_key() for i in sorted(set(members) | set(dealers))}
    tau = threshold or len(members) // 2 + 1
    open_reshare_session(
        admin,
        nonce=nonce,
        roster=[ids[i] for i in members],
        indices=list(members),
        dealers=[ids[i] for i in dealers],
        threshold=tau,
        phase_timeout_s=phase_timeout_s,
    )
    live = [by_index[i] for i in sorted(set(members) | set(dealers)) if i not in skip]
    for node in by_index.values():
        if node.index not in skip:
            node.catch_up()  # a killed earlier run may have left a final result half-adopted
    board = LedgerBoard(live[0].contract)
    sessions = []
    for node in live:
        try:
            sessions.append(node.reshare_session(nonce, LedgerBoard(node.contract)))
        except DKGError as exc:  # a leaving dealer without a share: it has no part
            _log.warning(
                "kgc node %d sits out reshare session %s: %s", node.index, nonce.hex(), exc
            )

    def close(kind: BundleKind) -> None:
        board.wait_closed(
            nonce, kind, give_up=2.0 * phase_timeout_s + 60.0, poll=poll, sleep=sleep, now=now
        )

    for s in sessions:
        s.post_deal()
    close(BundleKind.DEAL)
    state = board.session_state(nonce)
    if len(_closed_posters(state, BundleKind.DEAL)) < _dealer_threshold(state):
        failed = _try_abort(board, nonce, "too few dealers posted")
        raise DKGSessionFailed(failure_text(failed or state))
    for s in sessions:
        s.post_response()
    close(BundleKind.RESPONSE)
    needs = [s.post_justification() for s in sessions]
    if any(needs):
        close(BundleKind.JUSTIFICATION)
    results = [r for r in (s.finish() for s in sessions) if r is not None]
    if len({r.public.to_bytes() for r in results}) != 1:
        raise DKGError("KGC nodes finished the resharing with different public polynomials")
    try:
        final = json.loads(live[0].contract.evaluate_transaction("GetDKGResult", nonce.hex()))
    except LedgerError as exc:
        # The old shares keep answering: nothing was adopted or destroyed.
        raise DKGError(f"the resharing did not finish: {exc.message}") from None
    public = public_polynomial_from_chain(final)
    if public.to_bytes() != results[0].public.to_bytes():
        raise DKGError("the final reshare result on chain differs from the nodes' result")
    for node in live:
        node.adopt_final(nonce)
    for node in by_index.values():
        if node.index not in skip:
            node.catch_up()  # shares sealed for sessions a killed earlier run left behind go too
    return public


def run_local_dkg(
    nodes: Sequence[KgcNode],
    *,
    nonce: bytes,
    admin: Contract,
    threshold: int = 0,
    phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    poll: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
    new_master_key: bool = False,
) -> DKGResult:
    """Run one DKG session on chain among in-process KGC nodes, each posting as itself.

    For the embedded backend, tests and demos. Every node publishes its key, ``admin`` (an org
    admin's contract handle) opens the session with the nodes ordered by index as the roster
    (node j must have index j), and the phases run in lock step, each closed by a committed
    CloseDKGPhase before anyone reads it. Returns node 1's result once the chain holds a final
    result (τ nodes agreed) equal to it.
    """
    ordered = sorted(nodes, key=lambda n: n.index)
    if [n.index for n in ordered] != list(range(1, len(ordered) + 1)):
        raise ValueError(f"KGC node indices must be 1..n, got {[n.index for n in ordered]}")
    roster = [n.publish_key() for n in ordered]
    tau = threshold or len(ordered) // 2 + 1
    open_dkg_session(
        admin,
        nonce=nonce,
        roster=roster,
        threshold=tau,
        phase_timeout_s=phase_timeout_s,
        new_master_key=new_master_key,
    )
    sessions = [n.dkg_session(n.dkg_config(nonce)) for n in ordered]
    board = LedgerBoard(ordered[0].contract)

    def close(kind: BundleKind) -> None:
        board.wait_closed(
            nonce, kind, give_up=2.0 * phase_timeout_s + 60.0, poll=poll, sleep=sleep, now=now
        )

    for s in sessions:
        s.post_deal()
    close(BundleKind.DEAL)
    for s in sessions:
        s.post_response()
    close(BundleKind.RESPONSE)
    needs = [s.post_justification() for s in sessions]
    if any(needs):
        close(BundleKind.JUSTIFICATION)
    results = [s.finish() for s in sessions]
    if len({r.public.to_bytes() for r in results}) != 1:
        raise DKGError("KGC nodes finished with different public polynomials")
    final = json.loads(ordered[0].contract.evaluate_transaction("GetDKGResult", nonce.hex()))
    if public_polynomial_from_chain(final).to_bytes() != results[0].public.to_bytes():
        raise DKGError("the final dkg result on chain differs from the nodes' result")
    for node in ordered:
        node.adopt_final(nonce)
    return results[0]


def public_polynomial_from_chain(result: dict[str, object]) -> PublicPolynomial:
    """The public polynomial from a GetDKGResult answer (checks every point and that mpk=A_0).

    On chain, ``mpk`` is a :class:`~ehrshare.hazmat.tipre.MasterPublicKey` encoding and each
    ``public_poly`` entry a 48-byte compressed G1 commitment, all base64.
    """
    coefficients = result.get("public_poly")
    if not isinstance(coefficients, list) or not coefficients:
        raise EncodingError("dkg result has no public polynomial")
    points = tuple(G1.from_bytes(base64.b64decode(str(c), validate=True)) for c in coefficients)
    public = PublicPolynomial(points)
    mpk = MasterPublicKey.from_bytes(base64.b64decode(str(result.get("mpk", "")), validate=True))
    if mpk.point != public.mpk:
        raise EncodingError("dkg result mpk is not the polynomial's constant term")
    return public


# ---------------------------------------------------------------------------------------------
# following sessions opened on chain (``ehrshare kgc serve``)


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
        state = LedgerBoard(self._node.contract).session_state(nonce)
        phase = str(state["phase"])
        joinable = {_PHASE_ORDER[0]}
        if state.get("kind") == "reshare" and self.ibe_id not in state.get("dealers", []):
            # A new member deals nothing: its first post is its response, so it can still join
            # after the dealers have closed the deal phase (they are quick; a node that is
            # starting, or slow to see the event, was found missing its whole session).
            joinable.add(_PHASE_ORDER[1])
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
            state = LedgerBoard(self._node.contract).session_state(nonce)
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
            latest = json.loads(self._node.contract.evaluate_transaction("GetDKGResult", ""))
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


# ---------------------------------------------------------------------------------------------
# the user side


class InProcessKgcClient:
    """A :class:`KgcClient` that calls a :class:`KgcNode` directly (embedded backend).

    ``requester`` is the identity the application authenticated (its own enrolled identity);
    the node refuses requests for any other identity. The request goes through the same checks
    as over gRPC (signature by the registered ledger certificate, freshness, replay).
    """

    def __init__(self, node: KgcNode, *, requester: str) -> None:
        self._node = node
        self.index = node.index
        self.requester = requester

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        """Call the node (``timeout`` is accepted for protocol compatibility)."""
        del timeout
        return self._node.extract(request_bytes, requester=self.requester)


class ExtractionFailed(NotEnoughPartialKeys, KgcError):
    """Fewer than τ KGC nodes gave a valid partial key; names the unreachable and bad nodes."""

    def __init__(
        self, have: int, need: int, invalid: Sequence[int], unavailable: dict[int, str]
    ) -> None:
        super().__init__(have, need, invalid)
        self.unavailable = dict(unavailable)
        down = "; ".join(f"node {j}: {why}" for j, why in sorted(unavailable.items()))
        message = f"{self.args[0]}" + (f"; unavailable: {down}" if down else "")
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ExtractionOutcome:
    """The user's key, and which nodes were skipped (to report them to the consortium)."""

    secret_key: IdentitySecretKey
    invalid: tuple[int, ...]
    unavailable: dict[int, str]


def extract_identity_key(
    clients: Sequence[KgcClient],
    member: Identity,
    signer: Signer,
    *,
    public: PublicPolynomial,
    roster: RosterKeys,
    timeout: float = 10.0,
    rng: RngFn | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> ExtractionOutcome:
    """Get ``sk_id`` of ``member`` from τ of the KGC nodes behind ``clients`` (in that order).

    ``member`` and ``signer`` are the member's *ledger* certificate and key (registered on
    chain): each node gets its own request, signed with them, naming the node, the mpk, a fresh
    nonce and the time from ``clock`` (nanoseconds). One reply key serves every node.
    A node that cannot be reached or refuses is skipped and reported; a node whose answer does
    not open, is signed by another node, or fails the pairing check is named in ``invalid`` and
    never combined. Raises :class:`ExtractionFailed` when fewer than τ valid shares came back.
    """
    need = public.threshold
    identity = member.ibe_id
    reply = X25519KeyPair.generate(rng)
    mpk = public.mpk.to_bytes()
    certificate_der(member)  # a malformed certificate fails here, before any node is asked
    verified: list[PartialKey] = []
    invalid: list[int] = []
    unavailable: dict[int, str] = {}
    pending = list(clients)
    while len(verified) < need and pending:
        batch: list[PartialKey] = []
        while pending and len(verified) + len(batch) < need:
            client = pending.pop(0)
            request = sign_extraction_request(
                member,
                signer,
                reply_key=reply.public_bytes,
                node_index=client.index,
                mpk=mpk,
                timestamp=clock() // 1_000_000_000,
                rng=rng,
            )
            partial = _ask(client, request, reply, roster, timeout, invalid)
            if isinstance(partial, str):
                unavailable[client.index] = partial
            elif partial is not None:
                batch.append(partial)
        check = verify_partial_keys(batch, public, rng=rng)
        invalid.extend(check.invalid)
        good = {v.index for v in check.verified}
        verified.extend(p for p in batch if p.index in good)
    if len(verified) < need:
        raise ExtractionFailed(len(verified), need, invalid, unavailable)
    final = verify_partial_keys(verified, public, rng=rng)
    key = combine_partial_keys(final.verified, public)
    if invalid or unavailable:
        _log.warning(
            "extraction of %s: invalid shares from nodes %s, unavailable nodes %s",
            identity,
            sorted(invalid),
            sorted(unavailable),
        )
    return ExtractionOutcome(key, tuple(sorted(invalid)), unavailable)


def _ask(
    client: KgcClient,
    request: SignedExtractionRequest,
    reply: X25519KeyPair,
    roster: RosterKeys,
    timeout: float,
    invalid: list[int],
) -> PartialKey | str | None:
    """One node's partial key; a str says why the node is unavailable; None means invalid."""
    try:
        answer = client.extract(request.to_bytes(), timeout=timeout)
    except KgcError as exc:
        return str(exc)
    try:
        partial = open_partial_key(answer, request=request, reply_key=reply, roster=roster)
    except (VerificationError, DecryptionError, EncodingError, InvalidPartialKey) as exc:
        _log.warning("KGC node %d sent an unusable answer: %s", client.index, exc)
        invalid.append(client.index)
        return None
    if partial.index != client.index:
        _log.warning("KGC node %d answered as node %d", client.index, partial.index)
        invalid.append(client.index)
        return None
    return partial
