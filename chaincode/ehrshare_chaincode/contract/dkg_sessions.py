"""The KGC roster and DKG sessions: published node keys, opening a DKG or a resharing, and the
rules about a session that the board (:mod:`.dkg_board`) applies to its phases.

A DKG session is opened by an org admin with an ordered roster of KGC identities; the session
stores the roster with a snapshot of the keys they published, so users verify partial keys
against what the chain says rather than a file. The contract reads only a bundle's header
(``ehrshare.hazmat.dkg``'s wire format), never its body.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from .. import canonical
from ..auditlog import SYSTEM_CHAIN
from ..stub import ChaincodeError
from .checks import check_b64, check_ibe, check_int, json_ints, json_list
from .context import ADMIN, KGC, TxContext
from .functions import evaluate, submit
from .keys import (
    K_DKG,
    K_DKG_LATEST,
    K_DKG_RESULT,
    K_DKG_SESSION,
    K_DKG_VIEW,
    K_KGC_KEY,
    K_KGC_USE,
    K_RECORD,
)

__all__ = [
    "DKG_DONE",
    "DKG_FAILED",
    "DKG_HEADER_SIZE",
    "DKG_PHASES",
    "DKG_PHASE_KIND",
    "MAX_ABORT_REASON",
    "MAX_DKG_BUNDLE_BYTES",
    "MAX_KGC_KEY_BYTES",
    "MAX_KGC_NODES",
    "MAX_MPK_BYTES",
    "MAX_PHASE_TIMEOUT_S",
    "MIN_KGC_NODES",
    "DkgSessions",
    "check_bundle_header",
    "check_nonce",
    "check_phase",
    "check_reason",
    "dealer_threshold",
    "dkg_posters",
    "failed_message",
    "is_reshare",
    "load_dkg_session",
    "phase_senders",
    "takes_part",
    "view_counts",
]

DKG_PHASES = ("deal", "response", "justification")
MAX_DKG_BUNDLE_BYTES = 1024 * 1024
MAX_MPK_BYTES = 1024
DKG_DONE = "done"  # every phase closed: the session collects no more bundles
DKG_FAILED = "failed"  # aborted (AbortDKGSession): no result, no more bundles or views
MAX_ABORT_REASON = 200
# The kind byte of each phase's bundles (ehrshare.hazmat.dkg.BundleKind).
DKG_PHASE_KIND = {"deal": 1, "response": 2, "justification": 3}
# Header of every DKG bundle (ehrshare.hazmat.dkg's wire format): version, kind, 32-byte session
# nonce, big-endian u16 sender index. The contract reads only this header, never the body.
DKG_HEADER_SIZE = 1 + 1 + 32 + 2
MAX_KGC_KEY_BYTES = 1024
MIN_KGC_NODES = 2
MAX_KGC_NODES = 64  # the roster and its key snapshot live in one state value
MAX_PHASE_TIMEOUT_S = 7 * 24 * 3600
_NONCE_RE = re.compile(r"[0-9a-f]{64}")


def check_nonce(value: str) -> str:
    if not _NONCE_RE.fullmatch(value):
        raise ChaincodeError("session nonce must be 64 lower-case hex digits")
    return value


def check_phase(value: str) -> str:
    if value not in DKG_PHASES:
        raise ChaincodeError(f"phase {value!r} is not one of {', '.join(DKG_PHASES)}")
    return value


def check_bundle_header(raw: bytes, nonce: str, phase: str, position: int, poster: str) -> None:
    if len(raw) < DKG_HEADER_SIZE:
        raise ChaincodeError(
            f"dkg bundle is {len(raw)} bytes; its header alone is {DKG_HEADER_SIZE}"
        )
    kind = raw[1]
    if kind != DKG_PHASE_KIND[phase]:
        raise ChaincodeError(
            f"dkg bundle has kind {kind}; a {phase} bundle has kind {DKG_PHASE_KIND[phase]}"
        )
    if raw[2:34].hex() != nonce:
        raise ChaincodeError(f"dkg bundle is for session {raw[2:34].hex()}, not {nonce}")
    sender = int.from_bytes(raw[34:36], "big")
    if sender != position:
        raise ChaincodeError(
            f"dkg bundle names sender {sender}, but kgc {poster} is at position {position} "
            f"of the roster of dkg session {nonce}"
        )


def check_reason(value: str) -> str:
    if not 1 <= len(value) <= MAX_ABORT_REASON or not value.isprintable():
        raise ChaincodeError(
            f"abort reason must be 1-{MAX_ABORT_REASON} printable characters on one line"
        )
    return value


def failed_message(session: dict[str, Any]) -> str:
    failure = session.get("failure") or {}
    return (
        f"dkg session {session['nonce']} failed: {failure.get('cause', 'aborted')} "
        f"(aborted by {failure.get('by', '?')}: {failure.get('reason', '')})"
    )


def is_reshare(session: dict[str, Any]) -> bool:
    return session.get("kind") == "reshare"


def phase_senders(session: dict[str, Any], phase: str) -> list[str]:
    """Who posts in ``phase``: the roster, except in a resharing, where the old committee's
    dealers post deals and justifications and the new committee (the roster) responds."""
    if is_reshare(session) and phase != DKG_PHASES[1]:
        return list(session["dealers"])
    return list(session["roster"])


def takes_part(session: dict[str, Any], ibe_id: str | None) -> bool:
    return ibe_id in session["roster"] or ibe_id in session.get("dealers", [])


def dealer_threshold(session: dict[str, Any]) -> int:
    """How many dealers must qualify: τ, or for a resharing the old key's τ."""
    return int(session.get("previous_threshold", session["threshold"]))


def load_dkg_session(ctx: TxContext, nonce: str) -> dict[str, Any]:
    session = ctx.get_json(K_DKG_SESSION, nonce)
    if not isinstance(session, dict):
        raise ChaincodeError(f"dkg session {nonce} does not exist")
    return session


def dkg_posters(ctx: TxContext, nonce: str, phase: str) -> list[str]:
    rows = ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, phase])
    return [str(canonical.loads(kv.value, "stored dkg bundle")["poster"]) for kv in rows]


def view_counts(ctx: TxContext, nonce: str) -> dict[str, int]:
    """How many result views of a session were published per digest (agreeing views share one)."""
    counts: dict[str, int] = {}
    for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce]):
        d = str(canonical.loads(kv.value, "stored dkg view")["digest"])
        counts[d] = counts.get(d, 0) + 1
    return counts


class DkgSessions:
    """PublishKGCKey, GetKGCKey, OpenDKGSession, OpenReshareSession and GetDKGSession."""

    @submit
    def PublishKGCKey(self, ctx: TxContext, public_key_b64: str) -> Any:
        """A KGC node publishes its long-term DKG/extraction public key (re-publishing the same
        key only logs; a new key is refused while a session still collecting bundles uses the
        old one)."""
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        check_b64(public_key_b64, "kgc public key", MAX_KGC_KEY_BYTES)
        existing = ctx.get_json(K_KGC_KEY, caller.ibe_id)
        if existing is not None and existing["public_key"] == public_key_b64:
            ctx.log(
                SYSTEM_CHAIN,
                "PublishKGCKey",
                "repeated",
                detail={"kgc": caller.ibe_id, "sha256": existing["sha256"]},
            )
            return existing
        if existing is not None:
            for kv in ctx.stub.get_state_by_partial_composite_key(K_KGC_USE, [caller.ibe_id]):
                _, attrs = ctx.stub.split_composite_key(kv.key)
                session = ctx.get_json(K_DKG_SESSION, attrs[1])
                if session is not None and session["phase"] not in (DKG_DONE, DKG_FAILED):
                    raise ChaincodeError(
                        f"kgc {caller.ibe_id} cannot replace its public key: dkg session "
                        f"{attrs[1]} is still collecting bundles with it"
                    )
        record = {
            "ibe_id": caller.ibe_id,
            "public_key": public_key_b64,
            "sha256": hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest(),
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(record, K_KGC_KEY, caller.ibe_id)
        ctx.log(
            SYSTEM_CHAIN,
            "PublishKGCKey",
            "replaced" if existing is not None else "ok",
            detail={"kgc": caller.ibe_id, "sha256": record["sha256"]},
        )
        return record

    @evaluate
    def GetKGCKey(self, ctx: TxContext, ibe_id: str) -> Any:
        """The public key a KGC node published."""
        ctx.registered()
        check_ibe(ibe_id, "kgc")
        record = ctx.get_json(K_KGC_KEY, ibe_id)
        if record is None:
            raise ChaincodeError(f"kgc {ibe_id} has not published a public key")
        return record

    @submit
    def OpenDKGSession(
        self,
        ctx: TxContext,
        nonce: str,
        threshold: str,
        roster_json: str,
        phase_timeout_s: str,
        replace_master_key: str = "",
    ) -> Any:
        """An org admin opens a DKG session: the ordered roster (node j is entry j), τ and the
        phase timeout; the roster's published keys are snapshotted into the session.

        A DKG makes a new master key. Once a key is final and records exist, that would leave
        every record unreadable under the new key, so it is refused unless
        ``replace_master_key`` is ``"replace-master-key"``; OpenReshareSession changes the
        committee and keeps the key.
        """
        caller = ctx.registered(ADMIN)
        check_nonce(nonce)
        if replace_master_key not in ("", "replace-master-key"):
            raise ChaincodeError(
                "replace_master_key must be empty or 'replace-master-key', got "
                f"{replace_master_key!r}"
            )
        roster = [check_ibe(x, "roster member") for x in json_list(roster_json, "roster")]
        if not MIN_KGC_NODES <= len(roster) <= MAX_KGC_NODES:
            raise ChaincodeError(
                f"roster has {len(roster)} members; a dkg needs {MIN_KGC_NODES} to {MAX_KGC_NODES}"
            )
        seen: set[str] = set()
        for member in roster:
            if member in seen:
                raise ChaincodeError(f"kgc {member} appears twice in the roster")
            seen.add(member)
        # τ=1 would hand every node the master key (the DKG refuses it too).
        tau = check_int(threshold, "threshold", 2, len(roster))
        timeout = check_int(phase_timeout_s, "phase timeout", 1, MAX_PHASE_TIMEOUT_S)
        if ctx.stub.get_state(ctx.key(K_DKG_SESSION, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")
        if ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")
        latest = ctx.get_json(K_DKG_LATEST)
        # A full scan, but of a rare admin transaction; a record counter would be a hot key that
        # every RegisterRecord writes.
        if (
            latest is not None
            and not replace_master_key
            and ctx.stub.get_state_by_partial_composite_key(K_RECORD, [])
        ):
            raise ChaincodeError(
                f"a new dkg would replace the master key of dkg session {latest['nonce']}, under "
                "which records are stored; reshare the key to a new committee instead "
                "(OpenReshareSession, 'ehrshare kgc reshare'), or open it deliberately with "
                "'ehrshare kgc dkg open --new-master-key' (records keep the key of their epoch)"
            )
        keys: list[str] = []
        owner_of: dict[str, str] = {}
        for member in roster:
            record = ctx.get_json(K_KGC_KEY, member)
            if record is None:
                raise ChaincodeError(f"kgc {member} has not published a public key")
            key = str(record["public_key"])
            if key in owner_of:
                raise ChaincodeError(
                    f"kgc {owner_of[key]} and kgc {member} published the same public key"
                )
            owner_of[key] = member
            keys.append(key)
        session = {
            "nonce": nonce,
            "threshold": tau,
            "roster": roster,
            "keys": keys,
            "phase": DKG_PHASES[0],
            "phase_opened_at": ctx.now,
            "phase_timeout_s": timeout,
            "closed": [],
            "opened_at": ctx.now,
            "opened_by": caller.name,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(session, K_DKG_SESSION, nonce)
        for member in roster:
            ctx.put_index(K_KGC_USE, member, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "OpenDKGSession",
            "ok",
            detail={"nonce": nonce, "threshold": tau, "roster": roster},
        )
        return session

    @submit
    def OpenReshareSession(
        self,
        ctx: TxContext,
        nonce: str,
        threshold: str,
        roster_json: str,
        indices_json: str,
        dealers_json: str,
        phase_timeout_s: str,
    ) -> Any:
        """An org admin opens a resharing of the latest final key to a new committee: the new
        roster (ordered KGC identities), their share indices, the dealers (members of the
        current committee) and the new τ. The master key stays; the result must keep it.

        A member of the current committee keeps its share index; a new member takes an index
        no current member holds. At least the current τ dealers are needed.
        """
        caller = ctx.registered(ADMIN)
        check_nonce(nonce)
        latest = ctx.get_json(K_DKG_LATEST)
        if latest is None:
            raise ChaincodeError("no dkg session has finished; there is no key to reshare")
        current = ctx.get_json(K_DKG_RESULT, latest["nonce"])
        assert isinstance(current, dict)  # K_DKG_LATEST only ever names a final result
        old_roster: list[str] = list(current["roster"])
        old_indices: list[int] = list(current.get("indices") or range(1, len(old_roster) + 1))
        old_tau = int(current["threshold"])
        roster = [check_ibe(x, "roster member") for x in json_list(roster_json, "roster")]
        if not MIN_KGC_NODES <= len(roster) <= MAX_KGC_NODES:
            raise ChaincodeError(
                f"roster has {len(roster)} members; a committee needs {MIN_KGC_NODES} to "
                f"{MAX_KGC_NODES}"
            )
        if len(set(roster)) != len(roster):
            raise ChaincodeError("the roster names a kgc twice")
        indices = json_ints(indices_json, "indices")
        if len(indices) != len(roster):
            raise ChaincodeError(
                f"indices has {len(indices)} entries; the roster has {len(roster)}"
            )
        if len(set(indices)) != len(indices) or any(not 1 <= i <= 65535 for i in indices):
            raise ChaincodeError("share indices must be distinct integers from 1 to 65535")
        held = dict(zip(old_indices, old_roster, strict=True))
        for member, index in zip(roster, indices, strict=True):
            if member in old_roster and old_indices[old_roster.index(member)] != index:
                raise ChaincodeError(
                    f"kgc {member} holds share {old_indices[old_roster.index(member)]} of the "
                    f"current key; it keeps that index, not {index}"
                )
            if member not in old_roster and index in held:
                raise ChaincodeError(
                    f"share index {index} belongs to kgc {held[index]} of the current committee; "
                    f"give kgc {member} another index"
                )
        dealers = [check_ibe(x, "dealer") for x in json_list(dealers_json, "dealers")]
        if len(set(dealers)) != len(dealers):
            raise ChaincodeError("the dealers name a kgc twice")
        for member in dealers:
            if member not in old_roster:
                raise ChaincodeError(
                    f"dealer {member} is not in the committee of dkg session {latest['nonce']}"
                )
        if len(dealers) < old_tau:
            raise ChaincodeError(
                f"{len(dealers)} dealers cannot reshare a key with threshold {old_tau}"
            )
        tau = check_int(threshold, "threshold", 2, len(roster))
        timeout = check_int(phase_timeout_s, "phase timeout", 1, MAX_PHASE_TIMEOUT_S)
        if ctx.stub.get_state(ctx.key(K_DKG_SESSION, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")

        def snapshot(members: list[str]) -> list[str]:
            keys: list[str] = []
            for member in members:
                record = ctx.get_json(K_KGC_KEY, member)
                if record is None:
                    raise ChaincodeError(f"kgc {member} has not published a public key")
                if record["public_key"] in keys:
                    raise ChaincodeError(f"kgc {member} published the same key as another kgc")
                keys.append(str(record["public_key"]))
            return keys

        session = {
            "nonce": nonce,
            "kind": "reshare",
            "threshold": tau,
            "roster": roster,
            "keys": snapshot(roster),
            "indices": indices,
            "dealers": dealers,
            "dealer_keys": snapshot(dealers),
            "dealer_indices": [old_indices[old_roster.index(d)] for d in dealers],
            "previous": latest["nonce"],
            "previous_threshold": old_tau,
            "mpk": current["mpk"],
            "phase": DKG_PHASES[0],
            "phase_opened_at": ctx.now,
            "phase_timeout_s": timeout,
            "closed": [],
            "opened_at": ctx.now,
            "opened_by": caller.name,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(session, K_DKG_SESSION, nonce)
        for member in sorted(set(roster) | set(dealers)):
            ctx.put_index(K_KGC_USE, member, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "OpenReshareSession",
            "ok",
            detail={
                "nonce": nonce,
                "threshold": tau,
                "roster": roster,
                "dealers": dealers,
                "previous": latest["nonce"],
            },
        )
        return session

    @evaluate
    def GetDKGSession(self, ctx: TxContext, nonce: str) -> Any:
        """A session's roster, key snapshot, τ and phases, with who posted in the open phase and
        how far its result got (``result``: final, views published, the largest agreeing set)."""
        ctx.registered()
        check_nonce(nonce)
        session = load_dkg_session(ctx, nonce)
        posted: list[str] = []
        if session["phase"] in DKG_PHASES:
            posted = dkg_posters(ctx, nonce, session["phase"])
        counts = view_counts(ctx, nonce)
        final = ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None
        result = {
            "final": final,
            "views": sum(counts.values()),
            "agree": max(counts.values(), default=0),
        }
        return {**session, "posted": posted, "result": result}
