"""Type-key epochs: per (owner, record type), which type key new records are sealed under.

Epoch 0 is the type key :meth:`~.identities.Identities.PublishTypeKey` publishes. A patient's
:meth:`~.grants.Grants.RevokeAccess` moves the type of the revoked grant to the next epoch with
no key yet; :meth:`TypeEpochs.RotateTypeKey` publishes that epoch's key (or rotates and publishes
at once, for a suspected leak). Records are stamped with the epoch they were sealed under and are
refused while the current epoch has no key. A root grant names the epochs its proxy holds a
re-key for; :meth:`TypeEpochs.RekeyGrant` adds the current one after the owner delivered it.
What rotation protects: docs/security.md §3.2.
"""

from __future__ import annotations

import base64
from typing import Any

from .. import typekey
from ..stub import ChaincodeError
from .checks import MAX_TYPE_KEY_BYTES, check_b64, check_ibe, check_int, check_type, check_version
from .context import PATIENT, TxContext
from .functions import evaluate, submit
from .identities import current_epoch
from .keys import K_GRANT, K_TYPE_EPOCH, K_TYPEKEY

__all__ = [
    "MAX_TYPE_EPOCH",
    "TypeEpochs",
    "grant_type_epochs",
    "record_type_epoch",
    "rotate_type_epoch",
    "type_epoch_state",
]

MAX_TYPE_EPOCH = 2**31


def type_epoch_state(ctx: TxContext, owner: str, record_type: str) -> dict[str, Any]:
    """The current type-key epoch of (owner, type): ``{"type_epoch": n, "key": b64 or ""}``;
    epoch 0 (no rotation yet) carries the published key of PublishTypeKey, if any."""
    state = ctx.get_json(K_TYPE_EPOCH, owner, record_type)
    if state is not None:
        return dict(state)
    base = ctx.get_json(K_TYPEKEY, owner, record_type)
    return {
        "owner": owner,
        "type": record_type,
        "type_epoch": 0,
        "key": "" if base is None else str(base["key"]),
        "format_version": 0 if base is None else int(base["format_version"]),
        "epoch": "" if base is None else str(base.get("epoch", "")),
    }


def rotate_type_epoch(
    ctx: TxContext, owner: str, record_type: str, reason: str, key_b64: str = "", version: int = 0
) -> dict[str, Any]:
    """Move (owner, type) to the next epoch, with ``key_b64`` as its key or none yet."""
    current = type_epoch_state(ctx, owner, record_type)
    n = int(current["type_epoch"]) + 1
    if n > MAX_TYPE_EPOCH:
        raise ChaincodeError(f"type {record_type} of {owner} has rotated {n - 1} times; no more")
    state = {
        "owner": owner,
        "type": record_type,
        "type_epoch": n,
        "key": key_b64,
        "format_version": version,
        "epoch": current_epoch(ctx) if key_b64 else current["epoch"],
        "reason": reason,
        "rotated_at": ctx.now,
        "tx_id": ctx.tx_id,
    }
    ctx.put_json(state, K_TYPE_EPOCH, owner, record_type)
    return state


def record_type_epoch(ctx: TxContext, owner: str, record_type: str, given: str) -> int:
    """The epoch a new capsule of (owner, type) is stamped with: the current one, which must
    have a key. ``given`` is the epoch whose key the writer sealed under and must be the current
    one ("": not stated; the SDK always states it, a writer that does not is stamped the
    current epoch and must have read its key just before)."""
    current = type_epoch_state(ctx, owner, record_type)
    now = int(current["type_epoch"])
    n = now if given == "" else check_int(given, "type epoch", 0, MAX_TYPE_EPOCH)
    if n != now:
        raise ChaincodeError(
            f"type key {record_type} of {owner} is in epoch {now}, not {n}; encrypt the record "
            "again under the current type key"
        )
    if now > 0 and not current["key"]:
        raise ChaincodeError(
            f"type key {record_type} of {owner} is being rotated (epoch {now} has no key yet); "
            f"{owner} must finish it with RotateTypeKey first"
        )
    master = current_epoch(ctx)
    if now > 0 and current["epoch"] and current["epoch"] != master:
        raise ChaincodeError(
            f"type key {record_type} of {owner} (type epoch {now}) is of an earlier master key "
            f"(epoch {current['epoch']}, now {master}); {owner} must enrol again first"
        )
    return now


def grant_type_epochs(grant: dict[str, Any]) -> list[int]:
    """The type-key epochs a root grant's proxy holds a re-key for (grants from before epochs:
    epoch 0)."""
    return [int(e) for e in grant.get("type_epochs", [0])]


class TypeEpochs:
    """RotateTypeKey, GetTypeKeyEpoch and RekeyGrant."""

    @submit
    def RotateTypeKey(
        self, ctx: TxContext, record_type: str, type_epoch: str, key_b64: str, format_version: str
    ) -> Any:
        """The caller's type key of ``type_epoch``: the next epoch (rotate now), or the current
        one while it has no key (finishing the rotation a revocation started).

        The key is checked as :meth:`~.identities.Identities.PublishTypeKey` checks it; it must
        differ from every key of this type the chain holds now (an old key again is no
        rotation). Needs the type's epoch-0 key on chain (enrolment publishes it)."""
        caller = ctx.registered(PATIENT)
        assert caller.ibe_id is not None
        check_type(record_type)
        n = check_int(type_epoch, "type epoch", 1, MAX_TYPE_EPOCH)
        check_b64(key_b64, "type key", MAX_TYPE_KEY_BYTES)
        version = check_version(format_version)
        base = ctx.get_json(K_TYPEKEY, caller.ibe_id, record_type)
        if base is None:
            raise ChaincodeError(f"type key {record_type} of {caller.ibe_id} does not exist")
        current = type_epoch_state(ctx, caller.ibe_id, record_type)
        now = int(current["type_epoch"])
        if key_b64 in (base["key"], current["key"]):
            raise ChaincodeError(
                f"type key {record_type} of {caller.ibe_id} for epoch {n} is a key already used"
            )
        typekey.check_type_key(
            base64.b64decode(key_b64),
            owner=caller.ibe_id,
            record_type=record_type,
            mpk_point=self._current_mpk(ctx),  # type: ignore[attr-defined]
        )
        if n == now + 1:
            state = rotate_type_epoch(
                ctx, caller.ibe_id, record_type, "rotate", key_b64=key_b64, version=version
            )
        elif n == now and not current["key"]:
            state = dict(current) | {
                "key": key_b64,
                "format_version": version,
                "epoch": current_epoch(ctx),
            }
            ctx.put_json(state, K_TYPE_EPOCH, caller.ibe_id, record_type)
        else:
            raise ChaincodeError(
                f"type key {record_type} of {caller.ibe_id} is in epoch {now}"
                + ("" if current["key"] or now == 0 else " (no key yet)")
                + f"; epoch {n} is neither the next one nor the current one without a key"
            )
        ctx.log(caller.ibe_id, "RotateTypeKey", "ok", detail={"type": record_type, "type_epoch": n})
        return state

    @evaluate
    def GetTypeKeyEpoch(self, ctx: TxContext, ibe_id: str, record_type: str) -> Any:
        """The current type-key epoch of someone's type and its key ("" while a rotation is not
        finished): what a writer seals a new record to. Any registered identity may read it."""
        ctx.registered()
        check_ibe(ibe_id)
        check_type(record_type)
        state = type_epoch_state(ctx, ibe_id, record_type)
        if int(state["type_epoch"]) == 0 and not state["key"]:
            raise ChaincodeError(f"type key {record_type} of {ibe_id} does not exist")
        return state

    @submit
    def RekeyGrant(self, ctx: TxContext, grant_id: str, type_epoch: str) -> Any:
        """The owner says grant ``grant_id``'s proxy has the re-key for type epoch ``type_epoch``
        (delivered first, pending there until this commits): the grant then covers records of
        that epoch too. Any epoch up to the current one (a rotation interrupted before it
        re-keyed a grant leaves an earlier epoch to catch up on); the current one once it has a
        key. Only for the owner's own active grants (forwards hang off them)."""
        caller = ctx.registered(PATIENT)
        assert caller.ibe_id is not None
        from .grants import grant_problem, load_grant  # grants imports this module

        grant = load_grant(ctx, grant_id)
        n = check_int(type_epoch, "type epoch", 1, MAX_TYPE_EPOCH)
        if grant["owner"] != caller.ibe_id or grant["grantor"] != caller.ibe_id:
            raise ChaincodeError(f"identity {caller.name} may not re-key grant {grant_id}")
        problem = grant_problem(ctx, grant)
        if problem is not None:
            raise ChaincodeError(problem)
        current = type_epoch_state(ctx, caller.ibe_id, str(grant["type"]))
        now = int(current["type_epoch"])
        if n > now:
            raise ChaincodeError(
                f"type key {grant['type']} of {caller.ibe_id} is in epoch {now}; grant "
                f"{grant_id} cannot be re-keyed for epoch {n}"
            )
        if n == now and not current["key"]:
            raise ChaincodeError(
                f"type key {grant['type']} of {caller.ibe_id} is in epoch {now} with no key yet; "
                f"grant {grant_id} is re-keyed for it once RotateTypeKey published it"
            )
        epochs = grant_type_epochs(grant)
        if n in epochs:
            raise ChaincodeError(f"grant {grant_id} covers type epoch {n} already")
        rekeyed = dict(grant) | {"type_epochs": sorted([*epochs, n])}
        ctx.put_json(rekeyed, K_GRANT, grant_id)
        ctx.log(
            caller.ibe_id,
            "RekeyGrant",
            "ok",
            grant_id=grant_id,
            detail={"type": grant["type"], "type_epoch": n},
        )
        return rekeyed
