"""Grants: who may read which patient's records of a type, until when, over how many hops.

A grant is valid at time t when it and every grant above it are active, of the record's master
key and unexpired at t; :func:`grant_problem` is that rule, used by every function that decides
on a grant.
"""

from __future__ import annotations

from typing import Any

from ..stub import ChaincodeError
from .checks import GRANT_ID_RE, MAX_HOPS, check_ibe, check_id, check_int, check_type, json_list
from .context import AUDITOR, GUARDIAN, PATIENT, PROXY, TxContext
from .emergency import pregrant_allowed
from .functions import evaluate, reads, submit
from .guardians import guardian_problem
from .identities import current_epoch, fresh_type_key_epoch, load_identity
from .keys import (
    K_DKG_LATEST,
    K_GRANT,
    K_GRANT_BY_GRANTEE,
    K_GRANT_BY_GRANTOR,
    K_GRANT_BY_OWNER,
    K_GRANT_MATCH,
    K_IBE,
    K_LOG_HEAD,
    K_TYPE_EPOCH,
    K_TYPEKEY,
)
from .type_epochs import grant_type_epochs, rotate_type_epoch, type_epoch_state

__all__ = ["Grants", "grant_problem", "load_grant", "valid_grant"]


class Grants:
    """GrantAccess, RevokeAccess, GetGrant and ListGrants."""

    @submit
    @reads(
        lambda record_type, grantee, _expiry, _hops, _next, parent_grant_id, proxy, grant_id="": [
            (K_IBE, grantee),
            (K_IBE, proxy),
            (K_DKG_LATEST,),
            (K_TYPEKEY, grantee, record_type),
            *([(K_GRANT, grant_id)] if grant_id else []),
            *([(K_GRANT, parent_grant_id)] if parent_grant_id else []),
        ]
    )
    def GrantAccess(
        self,
        ctx: TxContext,
        record_type: str,
        grantee: str,
        expiry: str,
        max_hops: str,
        allowed_next: str,
        parent_grant_id: str,
        proxy: str,
        grant_id: str = "",
    ) -> Any:
        """Grant ``grantee`` access to the owner's records of a type until ``expiry``.

        The owner grants directly; a grantee forwards (``parent_grant_id``) within its remaining
        hops, never beyond its own expiry and only to an allowed next grantee when a list is set.
        ``proxy`` names the registered proxy identity that holds this grant's re-key: only that
        proxy re-encrypts this grant's hop. It is required and must not be empty (a grant no
        proxy can serve would decide requests that nobody can fulfil). ``grant_id`` is the id
        the grantor chose (``g-`` and 32 lower-case hex digits) and already delivered the re-key
        under, so the grant is usable from the moment it commits; without it the id is derived
        from the transaction id.
        """
        caller = ctx.registered()
        assert caller.ibe_id is not None
        if proxy == "":
            raise ChaincodeError("grant needs the proxy that will hold its re-key")
        check_type(record_type)
        check_ibe(grantee, "grantee")
        exp = check_int(expiry, "expiry", 0, 2**62)
        hops = check_int(max_hops, "max hops", 0, MAX_HOPS)
        next_ok = [
            check_ibe(x, "allowed next grantee")
            for x in json_list(allowed_next, "allowed next grantees")
        ]
        if parent_grant_id == "":
            if caller.role != PATIENT:
                raise ChaincodeError(f"identity {caller.name} is not a patient and may not grant")
            owner, hop = caller.ibe_id, 0
        else:
            parent = load_grant(ctx, parent_grant_id)
            if parent["grantee"] != caller.ibe_id:
                raise ChaincodeError(
                    f"identity {caller.name} is not the grantee of grant {parent_grant_id}"
                )
            problem = grant_problem(ctx, parent)
            if problem is not None:
                raise ChaincodeError(problem)
            if int(parent["max_hops"]) < 1:
                raise ChaincodeError(f"grant {parent_grant_id} allows no further hops")
            if parent.get("epoch") and parent["epoch"] != current_epoch(ctx):
                raise ChaincodeError(
                    f"grant {parent_grant_id} was made under an earlier master key; it can "
                    "no longer be forwarded (ask the owner for a new grant)"
                )
            if parent["type"] != record_type:
                raise ChaincodeError(f"grant {parent_grant_id} does not cover type {record_type}")
            if hops > int(parent["max_hops"]) - 1:
                raise ChaincodeError(
                    f"max hops {hops} exceeds the {int(parent['max_hops']) - 1} left by grant "
                    f"{parent_grant_id}"
                )
            if exp > int(parent["expiry"]):
                raise ChaincodeError(f"expiry {exp} is later than grant {parent_grant_id} allows")
            if parent["allowed_next"] and grantee not in parent["allowed_next"]:
                raise ChaincodeError(
                    f"grant {parent_grant_id} does not allow forwarding to {grantee}"
                )
            owner, hop = parent["owner"], int(parent["hop"]) + 1
            if caller.role == GUARDIAN:
                # A guardian's forward is a grant on the patient's behalf: within its limits.
                problem = guardian_problem(ctx, caller, owner, "grant", record_type)
                if problem is not None:
                    raise ChaincodeError(problem)
        if parent_grant_id:
            ctx.prefetch((K_LOG_HEAD, owner))
        else:  # a root grant also reads the owner's type-key epoch (below)
            ctx.prefetch((K_TYPE_EPOCH, owner, record_type), (K_LOG_HEAD, owner))
        if grantee in (caller.ibe_id, owner):
            raise ChaincodeError(f"identity {grantee} may not be granted its own records")
        if ctx.get_json(K_IBE, grantee) is None and not (
            hop == 0 and pregrant_allowed(ctx, owner, grantee)  # emergency.py
        ):
            raise ChaincodeError(f"grantee {grantee} is not registered")
        if exp <= ctx.now:
            raise ChaincodeError(f"expiry {exp} is not after the transaction time {ctx.now}")
        self._check_proxy(ctx, proxy)
        # The re-key is made to the grantee's type key on chain: one of an earlier master key
        # would leave the grantee a capsule none of its keys of this grant's epoch opens.
        epoch = fresh_type_key_epoch(ctx, grantee, record_type)
        if grant_id == "":
            grant_id = "g-" + ctx.tx_id[:32]
        elif not GRANT_ID_RE.fullmatch(grant_id):
            raise ChaincodeError(
                f"grant id {grant_id!r} is invalid: use 'g-' and 32 lower-case hex digits"
            )
        elif ctx.stub.get_state(ctx.key(K_GRANT, grant_id)) is not None:
            raise ChaincodeError(f"grant {grant_id} already exists")
        grant = {
            "grant_id": grant_id,
            "owner": owner,
            "grantor": caller.ibe_id,
            "grantee": grantee,
            "type": record_type,
            "expiry": exp,
            "max_hops": hops,
            "hop": hop,
            "allowed_next": sorted(set(next_ok)),
            "parent_grant_id": parent_grant_id,
            "proxy": proxy,
            "state": "active",
            "epoch": epoch,
            "created_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        if not parent_grant_id:
            # The owner delivered a re-key for each type-key epoch so far (type_epochs.py).
            current = int(type_epoch_state(ctx, owner, record_type)["type_epoch"])
            grant["type_epochs"] = list(range(current + 1))
        ctx.put_json(grant, K_GRANT, grant_id)
        ctx.put_index(K_GRANT_BY_OWNER, owner, grant_id)
        ctx.put_index(K_GRANT_BY_GRANTEE, grantee, grant_id)
        if parent_grant_id:
            # A forward: its grantor (a grantee further up) finds it here, not by owner.
            ctx.put_index(K_GRANT_BY_GRANTOR, caller.ibe_id, grant_id)
        ctx.put_index(K_GRANT_MATCH, owner, record_type, grantee, grant_id)
        detail: dict[str, Any] = {
            "grantee": grantee,
            "type": record_type,
            "expiry": exp,
            "max_hops": hops,
            "hop": hop,
            "proxy": proxy,
        }
        if caller.role == GUARDIAN:
            detail["on_behalf_of"] = owner
        ctx.log(owner, "GrantAccess", "ok", grant_id=grant_id, detail=detail)
        return grant

    def _check_proxy(self, ctx: TxContext, proxy: str) -> None:
        check_ibe(proxy, "proxy")
        if ctx.get_json(K_IBE, proxy) is None:
            raise ChaincodeError(f"proxy {proxy} is not registered")
        if load_identity(ctx, proxy)["role"] != PROXY:
            raise ChaincodeError(f"identity {proxy} is not a proxy")

    @submit
    def RevokeAccess(self, ctx: TxContext, grant_id: str) -> Any:
        """Revoke a grant (its owner or its grantor); forwarded grants below it fail with it."""
        caller = ctx.registered()
        grant = load_grant(ctx, grant_id)
        on_behalf = caller.name not in (grant["owner"], grant["grantor"])
        if on_behalf:
            problem = (
                guardian_problem(ctx, caller, grant["owner"], "revoke", grant["type"])
                if caller.role == GUARDIAN
                else None
            )
            if caller.role != GUARDIAN or (
                problem == f"identity {caller.name} is not a guardian of {grant['owner']}"
            ):
                raise ChaincodeError(f"identity {caller.name} may not revoke grant {grant_id}")
            if problem is not None:
                raise ChaincodeError(problem)
        if grant["state"] != "active":
            raise ChaincodeError(f"grant {grant_id} is already revoked")
        revoked = dict(grant)
        revoked.update({"state": "revoked", "revoked_at": ctx.now, "revoked_by": caller.name})
        ctx.put_json(revoked, K_GRANT, grant_id)
        detail = {"grantee": grant["grantee"], "type": grant["type"]}
        if on_behalf:
            detail["on_behalf_of"] = grant["owner"]
        if caller.name == grant["owner"]:
            # The revoked side may hold the type key (docs/security.md §3.2): records from now
            # on wait for the next epoch's key, which the owner's session publishes next.
            state = rotate_type_epoch(ctx, grant["owner"], str(grant["type"]), "revoke")
            detail["type_epoch"] = state["type_epoch"]
            revoked["type_epoch"] = state["type_epoch"]
        ctx.log(grant["owner"], "RevokeAccess", "ok", grant_id=grant_id, detail=detail)
        return revoked

    @evaluate
    def GetGrant(self, ctx: TxContext, grant_id: str) -> Any:
        """One grant: its owner, grantor, grantee, a proxy or an auditor."""
        caller = ctx.registered()
        grant = load_grant(ctx, grant_id)
        if caller.role not in (AUDITOR, PROXY) and caller.name not in (
            grant["owner"],
            grant["grantor"],
            grant["grantee"],
        ):
            raise ChaincodeError(f"identity {caller.name} may not read grant {grant_id}")
        return grant

    @evaluate
    def ListGrants(
        self, ctx: TxContext, party: str, side: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of the grants a party gave as the patient (side ``owner``), forwarded as a
        grantee (side ``grantor``), or received (side ``grantee``)."""
        caller = ctx.registered()
        check_ibe(party, "party")
        indexes = {
            "owner": K_GRANT_BY_OWNER,
            "grantor": K_GRANT_BY_GRANTOR,
            "grantee": K_GRANT_BY_GRANTEE,
        }
        if side not in indexes:
            raise ChaincodeError(f"side {side!r} is not owner, grantor or grantee")
        if caller.name != party and caller.role != AUDITOR:
            raise ChaincodeError(f"identity {caller.name} may not list grants of {party}")
        index = indexes[side]
        grants, next_bm = ctx.index_page(index, party, K_GRANT, page_size, bookmark)
        return {"grants": grants, "bookmark": next_bm}


def load_grant(ctx: TxContext, grant_id: str) -> dict[str, Any]:
    check_id(grant_id, "grant id")
    grant = ctx.get_json(K_GRANT, grant_id)
    if grant is None:
        raise ChaincodeError(f"grant {grant_id} does not exist")
    result: dict[str, Any] = grant
    return result


def grant_problem(
    ctx: TxContext,
    grant: dict[str, Any],
    walked: list[dict[str, Any]] | None = None,
    epoch: str = "",
    type_epoch: int | None = None,
) -> str | None:
    """Why a grant is not valid now (walking its forwarding chain), or None.

    ``walked`` collects the grants read, leaf first, so a caller that also needs the chain
    does not read every grant a second time (on a peer, each read is a round trip).
    ``epoch``: the master-key epoch of the record to be read; a grant's re-keys come from
    the type keys of the epoch it was made in, so a grant of another epoch does not serve.
    ``type_epoch``: the record's type-key epoch, which the root grant must hold a re-key for.
    """
    current: dict[str, Any] | None = grant
    child: dict[str, Any] | None = None
    while current is not None:
        if walked is not None:
            walked.append(current)
        if current["state"] != "active":
            return f"grant {current['grant_id']} is revoked"
        if epoch and current.get("epoch") and current["epoch"] != epoch:
            return (
                f"grant {current['grant_id']} was made under master key epoch "
                f"{current['epoch']}, the record under epoch {epoch}; a grant covers only "
                "records of its own master key (the owner still reads the record)"
            )
        if ctx.now >= int(current["expiry"]):
            return f"grant {current['grant_id']} expired at {current['expiry']}"
        if child is not None and (
            int(child["max_hops"]) >= int(current["max_hops"])
            or int(child["hop"]) != int(current["hop"]) + 1
        ):
            return f"grant {child['grant_id']} exceeds the hops of its parent"
        parent_id = current["parent_grant_id"]
        covered = type_epoch is None or type_epoch in grant_type_epochs(current)
        if not parent_id and not covered:
            return (
                f"grant {current['grant_id']} holds no re-key for type-key epoch {type_epoch} "
                f"of {current['owner']}; the owner delivers it with grant repair"
            )
        child = current
        current = load_grant(ctx, parent_id) if parent_id else None
    return None


def valid_grant(
    ctx: TxContext,
    owner: str,
    record_type: str,
    grantee: str,
    walked: list[dict[str, Any]] | None = None,
    epoch: str = "",
    type_epoch: int | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """The first valid grant (key order) for (owner, type, grantee), else the reason.

    ``walked`` receives the valid grant's chain, leaf first (see :func:`grant_problem`).
    """
    rows = ctx.scanned.get((K_GRANT_MATCH, owner, record_type, grantee))
    if rows is None:  # not scanned ahead by RequestAccess's hints (access.py), or not this one
        rows = ctx.stub.get_state_by_partial_composite_key(
            K_GRANT_MATCH, [owner, record_type, grantee]
        )
    first_problem = ""
    for kv in rows:
        _, attrs = ctx.stub.split_composite_key(kv.key)
        grant = load_grant(ctx, attrs[3])
        tried: list[dict[str, Any]] = []
        problem = grant_problem(ctx, grant, tried, epoch, type_epoch)
        if problem is None:
            if walked is not None:
                walked.extend(tried)
            return grant, ""
        if not first_problem:
            first_problem = problem
    if first_problem:
        return None, first_problem
    return None, f"identity {grantee} has no grant for type {record_type} of {owner}"
