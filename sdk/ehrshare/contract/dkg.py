"""The key centre's part of the chaincode: DKG board, roster and results, one typed method each.

:class:`DkgBoardClient` is the only place the key centre (``ehrshare.services.kgc``) calls the
chaincode: each method names one contract function, builds its positional string arguments and
decides submit (writes) or evaluate (reads). The parsers below turn the chain's JSON answers
into protocol objects (:func:`dkg_config_from_chain`, :func:`roster_from_chain`,
:func:`reshare_config_from_chain`, :func:`public_polynomial_from_chain`) or read a session's
state (:func:`phase_closed`, :func:`senders`, :func:`closed_posters`, :func:`failure_text`).

This module must not wait, retry or decide anything about a session: that is the board's and
the node's job; it only speaks the chaincode's wire format.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from ehrshare.contract.calls import ErrorMap, transact
from ehrshare.hazmat.dkg import NONCE_SIZE, BundleKind, DKGConfig, PublicPolynomial
from ehrshare.hazmat.errors import EncodingError
from ehrshare.hazmat.kgc_keys import KGCNodePublicKey
from ehrshare.hazmat.pairing import G1
from ehrshare.hazmat.reshare import ReshareConfig
from ehrshare.hazmat.tipre import MasterPublicKey
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "DEFAULT_PHASE_TIMEOUT_S",
    "PHASE_DONE",
    "PHASE_FAILED",
    "PHASE_NAMES",
    "PHASE_ORDER",
    "DkgBoardClient",
    "PublishedView",
    "RosterKeys",
    "closed_posters",
    "dealer_threshold",
    "dkg_config_from_chain",
    "failure_text",
    "phase_closed",
    "public_polynomial_from_chain",
    "reshare_config_from_chain",
    "roster_from_chain",
    "senders",
]

_log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION: Final = 1
PHASE_NAMES: Final = {
    BundleKind.DEAL: "deal",
    BundleKind.RESPONSE: "response",
    BundleKind.JUSTIFICATION: "justification",
}
"""The chaincode's name of each bundle phase."""
PHASE_ORDER: Final = ("deal", "response", "justification")
PHASE_DONE: Final = "done"
"""The session phase after the justification phase closed (no more bundles)."""
PHASE_FAILED: Final = "failed"
"""The session phase after AbortDKGSession: no result will come (``failure`` says why)."""
DEFAULT_PHASE_TIMEOUT_S: Final = 60

SessionState: TypeAlias = dict[str, Any]
"""A GetDKGSession answer (or a GetDKGResult answer): the chaincode's JSON, as parsed."""


@dataclass(frozen=True)
class PublishedView:
    """The chain's answer to PublishDKGResult: ``outcome`` is ``pending``, ``final``,
    ``confirmed`` or ``conflict``; ``agree`` of ``threshold`` views are the same."""

    outcome: str
    agree: int
    threshold: int


class DkgBoardClient:
    """The DKG functions of the EHR chaincode, called through one contract handle.

    Use it wherever the key centre or an org admin reads or writes DKG state: the handle's
    identity is the caller the chaincode sees (a KGC node posts as itself, an admin opens and
    aborts). Every ledger failure surfaces as the handle's :class:`~ehrshare.ledger.errors.
    LedgerError`, or what ``errors`` maps it to; answers are returned as the chaincode sent them
    (JSON objects) unless a typed result exists.
    """

    def __init__(self, contract: Contract, *, errors: ErrorMap | None = None) -> None:
        self._contract = contract
        self._errors = errors

    @property
    def contract(self) -> Contract:
        """The contract handle calls go through."""
        return self._contract

    def _call(self, function: str, *args: str) -> Any:
        return json.loads(transact(self._contract, function, *args, errors=self._errors))

    # --- roster -------------------------------------------------------------------------------

    def publish_key(self, public_key: KGCNodePublicKey) -> str:
        """PublishKGCKey (submit): the caller's node key on chain; returns its identity."""
        record = self._call(
            "PublishKGCKey", base64.b64encode(public_key.to_bytes()).decode("ascii")
        )
        return str(record["ibe_id"])

    def identity(self, ibe_id: str) -> dict[str, Any]:
        """GetIdentity (evaluate): a registered identity's record (``cert_sha256``, …)."""
        record: dict[str, Any] = self._call("GetIdentity", ibe_id)
        return record

    # --- sessions -----------------------------------------------------------------------------

    def open_session(
        self,
        *,
        nonce: bytes,
        roster: Sequence[str],
        threshold: int,
        phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
        new_master_key: bool = False,
    ) -> SessionState:
        """OpenDKGSession (submit, org admin)."""
        args = [nonce.hex(), str(threshold), json.dumps(list(roster)), str(phase_timeout_s)]
        if new_master_key:
            args.append("replace-master-key")
        state: SessionState = self._call("OpenDKGSession", *args)
        return state

    def open_reshare(
        self,
        *,
        nonce: bytes,
        roster: Sequence[str],
        indices: Sequence[int],
        dealers: Sequence[str],
        threshold: int,
        phase_timeout_s: int = DEFAULT_PHASE_TIMEOUT_S,
    ) -> SessionState:
        """OpenReshareSession (submit, org admin)."""
        state: SessionState = self._call(
            "OpenReshareSession",
            nonce.hex(),
            str(threshold),
            json.dumps(list(roster)),
            json.dumps([int(i) for i in indices]),
            json.dumps(list(dealers)),
            str(phase_timeout_s),
        )
        return state

    def session_state(self, session: bytes) -> SessionState:
        """GetDKGSession (evaluate): roster, key snapshot, τ, open phase and who posted in it."""
        state: SessionState = self._call("GetDKGSession", session.hex())
        return state

    def post_bundle(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        """PostDKGBundle (submit): one bundle of the open phase, as the caller."""
        if len(session) != NONCE_SIZE:
            raise ValueError(f"session nonce must be {NONCE_SIZE} bytes, got {len(session)}")
        if not isinstance(bundle, bytes) or not bundle:
            raise ValueError("bundle must be non-empty bytes")
        transact(
            self._contract,
            "PostDKGBundle",
            session.hex(),
            PHASE_NAMES[BundleKind(phase)],
            base64.b64encode(bundle).decode("ascii"),
            str(BUNDLE_FORMAT_VERSION),
            errors=self._errors,
        )

    def bundles(self, session: bytes, phase: BundleKind) -> list[tuple[str, bytes]]:
        """GetDKGBundles (evaluate): (poster identity, bundle bytes) of a closed phase; rows of
        an unknown format version are skipped."""
        rows = self._call("GetDKGBundles", session.hex(), PHASE_NAMES[BundleKind(phase)])
        out: list[tuple[str, bytes]] = []
        for row in rows:
            if int(row.get("format_version", 0)) != BUNDLE_FORMAT_VERSION:
                _log.warning("skipping dkg bundle of %s: unknown format version", row.get("poster"))
                continue
            out.append((str(row["poster"]), base64.b64decode(row["bundle"])))
        return out

    def close_phase(self, session: bytes, phase: BundleKind) -> SessionState:
        """CloseDKGPhase (submit; refused unless everyone posted or the phase timed out)."""
        state: SessionState = self._call(
            "CloseDKGPhase", session.hex(), PHASE_NAMES[BundleKind(phase)]
        )
        return state

    def abort(self, session: bytes, reason: str) -> SessionState:
        """AbortDKGSession (submit; refused unless the chain shows the session cannot finish)."""
        state: SessionState = self._call("AbortDKGSession", session.hex(), reason)
        return state

    # --- results ------------------------------------------------------------------------------

    def publish_result(
        self, session: bytes, public: PublicPolynomial, qual: Sequence[str]
    ) -> PublishedView:
        """PublishDKGResult (submit): the caller's view of a session's result; ``qual`` names
        the qualified dealers by identity. It counts once τ views agree."""
        answer = self._call(
            "PublishDKGResult",
            session.hex(),
            base64.b64encode(MasterPublicKey(public.mpk).to_bytes()).decode("ascii"),
            json.dumps(
                [base64.b64encode(c.to_bytes()).decode("ascii") for c in public.commitments]
            ),
            json.dumps(sorted(qual)),
            str(BUNDLE_FORMAT_VERSION),
        )
        return PublishedView(str(answer["outcome"]), int(answer["agree"]), int(answer["threshold"]))

    def result(self, session: bytes | None = None) -> SessionState:
        """GetDKGResult (evaluate): the final result of ``session``, or the latest final one
        when None. Raises the ledger's error when the session has no final result."""
        state: SessionState = self._call("GetDKGResult", "" if session is None else session.hex())
        return state

    def is_final(self, session: bytes) -> bool:
        """Whether the chain holds a final result of ``session`` (a failed read says no)."""
        try:
            self.result(session)
        except LedgerError:
            return False
        return True


# ---------------------------------------------------------------------------------------------
# reading chain state


def failure_text(state: SessionState) -> str:
    """One line saying why a failed session (a GetDKGSession answer) failed."""
    failure = state.get("failure") or {}
    return (
        f"dkg session {state.get('nonce', '?')} failed: {failure.get('cause', 'aborted')} "
        f"(aborted by {failure.get('by', '?')}: {failure.get('reason', '')})"
    )


def phase_closed(state: SessionState, phase: BundleKind) -> bool:
    """Whether a GetDKGSession answer shows ``phase`` closed (its bundle set is final)."""
    current = str(state["phase"])
    if current == PHASE_DONE:
        return True
    if current not in PHASE_ORDER:  # failed: nothing more closes
        return False
    return PHASE_ORDER.index(current) > PHASE_ORDER.index(PHASE_NAMES[BundleKind(phase)])


def senders(state: SessionState, phase: BundleKind) -> list[str]:
    """Who posts in ``phase`` of a GetDKGSession answer: the roster, or for a resharing the
    dealers (deal, justification) and the new committee (response)."""
    if state.get("kind") == "reshare" and phase is not BundleKind.RESPONSE:
        return [str(d) for d in state["dealers"]]
    return [str(m) for m in state["roster"]]


def dealer_threshold(state: SessionState) -> int:
    """How many dealers a session needs: τ, or for a resharing the reshared key's τ."""
    threshold: Any = state.get("previous_threshold", state["threshold"])
    return int(threshold)


def closed_posters(state: SessionState, phase: BundleKind) -> list[str]:
    """Who had posted when ``phase`` closed (from the session's ``closed`` list)."""
    name = PHASE_NAMES[BundleKind(phase)]
    for entry in state.get("closed", []):
        if entry.get("phase") == name:
            return [str(p) for p in entry.get("posters", [])]
    return []


def dkg_config_from_chain(state: SessionState) -> DKGConfig:
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


def roster_from_chain(result: SessionState) -> RosterKeys:
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


def reshare_config_from_chain(state: SessionState, old_public: PublicPolynomial) -> ReshareConfig:
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


def public_polynomial_from_chain(result: Mapping[str, object]) -> PublicPolynomial:
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
