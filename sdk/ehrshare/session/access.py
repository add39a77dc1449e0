"""Access: grant and forward atomically (re-key to the proxy first, then GrantAccess), repair a
grant whose proxy lost its re-key, list grants and their status, revoke."""

from __future__ import annotations

import datetime as _dt
import logging
import secrets
from collections.abc import Callable, Sequence

from ehrshare.contract import Grant, Page, RecordRef, StoredRecord
from ehrshare.errors import EhrshareError
from ehrshare.faults import fault_point
from ehrshare.hazmat import tipre
from ehrshare.rekey_delivery import rekey_id
from ehrshare.services.protocols import InvalidReKey, NotAuthorised, ProxyError, ProxyUnavailable
from ehrshare.session.core import Expiry
from ehrshare.session.errors import GrantNotServed, RequestRejected, RotationUnfinished
from ehrshare.session.rotation import TypeKeyRotation
from ehrshare.storage.replicated import ReplicatedStore, grantee_hospital

_log = logging.getLogger(__name__)


class Sharing(TypeKeyRotation):
    """A session's grants: giving, forwarding, repairing, listing and revoking them."""

    def _expiry(self, expires: Expiry) -> int:
        if isinstance(expires, _dt.timedelta):
            return self._now() + int(expires.total_seconds())
        if isinstance(expires, _dt.datetime):
            if expires.tzinfo is None:
                raise ValueError("expires must be timezone-aware (e.g. datetime.now(UTC) + ...)")
            return int(expires.timestamp())
        if isinstance(expires, int) and not isinstance(expires, bool):
            return expires
        raise TypeError("expires must be a datetime, a timedelta or unix seconds")

    def _give(
        self,
        step: str,
        *,
        sk: tipre.IdentitySecretKey,
        label: str,
        grantee: str,
        receiving: tipre.VerifiedTypePublicKey,
        expiry: int,
        max_hops: int,
        allowed_next: Sequence[str],
        parent_grant_id: str,
        proxy: str | None,
    ) -> Grant:
        """The atomic grant: re-key to the proxy under a fresh grant id, then GrantAccess."""
        route = self._route_for(grantee, proxy)
        proxy_key = self._proxy_key(route)
        grant_id = "g-" + secrets.token_hex(16)
        # A root grant covers every type-key epoch of the owner so far: one re-key each.
        epochs = 1 + (self._current_type_epoch(label) if not parent_grant_id else 0)
        try:
            sealed = [
                self._deliver_rekey(
                    rekey_id(grant_id, n),
                    self._type_secret(sk, label, n),
                    receiving,
                    route,
                    proxy_key,
                )
                for n in range(epochs)
            ]
        except Exception as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} did not take the re-key ({exc}); nothing was "
                "granted — retry when the proxy is up"
            ) from None
        fault_point(f"{step}.after_deliver")
        try:
            grant = self.chain.grant_access(
                label=label,
                grantee=grantee,
                expiry=expiry,
                max_hops=max_hops,
                allowed_next=allowed_next,
                parent_grant_id=parent_grant_id,
                proxy=route.ibe_id,
                grant_id=grant_id,
            )
        except RequestRejected:
            # Refused: the grant will never commit, so withdraw the re-key now (else the proxy
            # drops it after PENDING_TTL_S).
            try:
                route.client.revoke(grant_id)
            except Exception as exc:
                _log.warning(
                    "proxy %s keeps an unused re-key until it expires: %s", route.ibe_id, exc
                )
            raise
        fault_point(f"{step}.after_commit")
        # The grant is usable now; delivering again only lets the proxy take the re-key into
        # use at once rather than at the first read (or its GrantAccess event).
        try:
            for n, blob in enumerate(sealed):
                route.client.store_rekey(rekey_id(grant_id, n), blob)
        except Exception as exc:
            _log.info(
                "proxy %s takes grant %s into use at its first read: %s",
                route.ibe_id,
                grant_id,
                exc,
            )
        return grant

    def grant(
        self,
        grantee: str,
        type: str,
        *,
        expires: Expiry,
        max_hops: int = 0,
        allowed_next: Sequence[str] = (),
        proxy: str | None = None,
    ) -> Grant:
        """Let ``grantee`` read your records of ``type`` until ``expires``; ``max_hops`` is how
        many further referrals (forwards) the grantee may make. The re-key goes to ``proxy``
        (a proxy identity of the profile), by default the proxy of the grantee's hospital.
        Atomic: the grant commits only after its proxy took the re-key. In a private IPFS
        swarm the records it covers are then pinned at the grantee's hospital's node too
        (best effort: a node that is down is logged, the grant stands)."""
        sk = self._secret_key()
        label = self._label(type)
        receiving = self._type_key(grantee, label)  # fail before anything is committed
        grant = self._give(
            "grant",
            sk=sk,
            label=label,
            grantee=grantee,
            receiving=receiving,
            expiry=self._expiry(expires),
            max_hops=max_hops,
            allowed_next=allowed_next,
            parent_grant_id="",
            proxy=proxy,
        )
        self._pin_for_grantee(
            grantee,
            lambda bookmark: self.chain.list_records(self.ibe_id, bookmark=bookmark),
            label,
        )
        return grant

    def _pin_for_grantee(
        self,
        grantee: str,
        page: Callable[[str], Page[StoredRecord]],
        label: str | None = None,
        *,
        sparse: bool = False,
    ) -> None:
        """Pin the records ``page`` lists (of ``label`` only, if given) at the grantee's
        hospital's node, best effort: the grant stands whatever happens here."""
        store = self.store
        if not isinstance(store, ReplicatedStore):
            return
        msp = grantee_hospital(grantee)
        if msp not in store.stores:
            return
        try:
            listed = self._pages(page, sparse=sparse)
            records = [r.ref for r in listed if label is None or r.ref.label == label]
        except Exception as exc:
            _log.warning("records of the grant not pinned at %s's node: %s", msp, exc)
            return
        store.pin_many((msp, record.cid) for record in records)

    def forward(
        self,
        ref_or_grant: RecordRef | Grant | str,
        to: str,
        *,
        expires: Expiry | None = None,
        max_hops: int = 0,
        allowed_next: Sequence[str] = (),
        proxy: str | None = None,
    ) -> Grant:
        """Refer what you were granted to ``to`` (one hop further). Give the grant you hold, or
        a record it covers. ``expires`` defaults to the parent grant's expiry. The re-key goes
        to ``proxy``, by default the proxy of ``to``'s hospital. Atomic like :meth:`grant`."""
        sk = self._secret_key()
        parent = self._parent_grant(ref_or_grant)
        receiving = self._type_key(to, parent.label)
        grant = self._give(
            "forward",
            sk=sk,
            label=parent.label,
            grantee=to,
            receiving=receiving,
            expiry=parent.expiry if expires is None else self._expiry(expires),
            max_hops=max_hops,
            allowed_next=allowed_next,
            parent_grant_id=parent.grant_id,
            proxy=proxy,
        )
        # What the parent grant covers is what the forward covers: pin it where ``to`` reads.
        self._pin_for_grantee(
            to,
            lambda bookmark: self.chain.list_granted_records(parent.grant_id, bookmark=bookmark),
            sparse=True,
        )
        return grant

    def repair_grant(self, grant: Grant | str) -> Grant:
        """Deliver the re-key of an active grant you gave again, to the proxy it names.

        For a grant whose proxy holds no re-key (:class:`GrantNotServed` on reads: the proxy
        lost its state); a no-op for a grant that is fine. A
        proxy that is down changes nothing (:class:`ProxyError`); one that refuses the re-key
        gets the grant revoked, and :class:`GrantNotServed` says so — grant again then.
        """
        grant_id = grant.grant_id if isinstance(grant, Grant) else grant
        g = self.get_grant(grant_id)
        if g.grantor != self.ibe_id:
            raise RequestRejected(
                "grant repair",
                f"grant {grant_id} was given by {g.grantor}; only its grantor's wallet can "
                "deliver its re-key",
            )
        if g.state != "active":
            raise RequestRejected("grant repair", f"grant {grant_id} is {g.state}")
        if g.expiry <= self._now():
            raise RequestRejected("grant repair", f"grant {grant_id} has expired")
        sk = self._secret_key()
        receiving = self._type_key(g.grantee, g.label)
        route = self._route(g.proxy)
        proxy_key = self._proxy_key(route, f"grant {grant_id} is unchanged")
        try:
            self._deliver_rekey(
                grant_id, self._type_secret(sk, g.label), receiving, route, proxy_key
            )
            if g.hop == 0:
                self._deliver_epoch_rekeys(sk, g)
        except (ProxyUnavailable, ConnectionError) as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} is not reachable ({exc}); grant {grant_id} is "
                "unchanged — retry when it is up"
            ) from None
        except (InvalidReKey, NotAuthorised) as exc:
            # A definite refusal (not a passing failure): this grant cannot be served.
            revoked = self.revoke(grant_id)
            raise GrantNotServed(
                f"the proxy {route.ibe_id} refused the re-key of grant {grant_id} ({exc}); the "
                f"grant is {revoked.state} now — grant again",
                grant_ids=[grant_id],
                proxy=route.ibe_id,
            ) from None
        except Exception as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} could not take the re-key of grant {grant_id} "
                f"({exc}); the grant is unchanged — retry later"
            ) from None
        if g.hop == 0:
            # A rotation a crash (or a proxy that was down) left unfinished for this grant.
            self._finish_rotation(g.label)
        return self.get_grant(grant_id)

    def _parent_grant(self, ref_or_grant: RecordRef | Grant | str) -> Grant:
        if isinstance(ref_or_grant, Grant):
            return ref_or_grant
        if isinstance(ref_or_grant, str) and ref_or_grant.startswith("g-"):
            return self.get_grant(ref_or_grant)
        ref = ref_or_grant if isinstance(ref_or_grant, RecordRef) else None
        record = ref if ref is not None else self.get_record(str(ref_or_grant))
        now = self._now()
        for g in self.grants("grantee"):
            if (
                g.owner == record.owner
                and g.label == record.label
                and g.state == "active"
                and g.expiry > now
            ):
                return g
        raise RequestRejected(
            "GrantAccess", f"you hold no active grant covering record {record.record_id}"
        )

    def grant_status(self, grant: Grant) -> str:
        """What a grant is worth now: ``revoked``, ``expired``, ``broken`` (active on chain, but
        its proxy holds no re-key: repair it), ``active``, or ``unchecked`` (active on chain;
        its proxy is not in this profile or did not answer)."""
        if grant.state != "active":
            return grant.state
        if grant.expiry <= self._now():
            return "expired"
        try:
            held = self._route(grant.proxy).client.rekey_status(grant.grant_id)
        except Exception as exc:
            _log.info("grant %s: its proxy %s was not asked: %s", grant.grant_id, grant.proxy, exc)
            return "unchecked"
        return "broken" if held == "missing" else "active"

    def revoke(self, grant: Grant | str) -> Grant:
        """Revoke a grant (forward-only: what was read stays read). Later requests are denied
        by the chaincode; every proxy of the profile is told and deletes the re-keys it holds
        of the grant and of grants forwarded from it (a proxy that is down only delays that —
        the chain already refuses, and a served proxy also follows the revocation events).
        Revoking a grant that is already revoked tells the proxies again (a revocation whose
        process died before it told them is finished this way)."""
        grant_id = grant.grant_id if isinstance(grant, Grant) else grant
        try:
            revoked = self.chain.revoke_access(grant_id)
        except RequestRejected as exc:
            if exc.reason != f"grant {grant_id} is already revoked":
                raise
            # Revoked before (perhaps by a run killed before it told the proxies): tell them.
            revoked = self.chain.get_grant(grant_id)
        fault_point("revoke.after_commit")
        for route in self.proxies:
            try:
                route.client.revoke(grant_id)
            except Exception as exc:
                _log.warning(
                    "proxy %s did not delete the re-keys of %s yet: %s", route.ibe_id, grant_id, exc
                )
        if revoked.owner == self.ibe_id:
            # The chain moved the type to a new epoch: publish its key, re-key the rest.
            fault_point("revoke.after_proxies")
            try:
                self._finish_rotation(revoked.label)
            except EhrshareError as exc:
                name = revoked.type or revoked.label
                raise RotationUnfinished(
                    f"grant {grant_id} is revoked, but the new type-key epoch of {name!r} is "
                    f"not finished ({exc}); your next record of that type finishes it, or run "
                    f"'ehrshare type-key rotate --type {name}' when this is fixed"
                ) from None
        return revoked
