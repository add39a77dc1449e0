"""Type-key epochs, the owner's side: rotating a type's key and re-keying the grants that remain.

The chain keeps the current epoch per (owner, type) (docs/chaincode.md "Type-key epochs"). A
patient's revocation moves the type to the next epoch with no key yet; :meth:`finish_rotation`
publishes that key and, for each remaining active root grant of the type, delivers the re-key
of the new epoch to the grant's proxy (pending there) and only then commits RekeyGrant — the
same order as an atomic grant. Killed anywhere, nothing half-made is usable: records wait for
the key, a grant without RekeyGrant does not cover records of the new epoch (a clear denial),
a pending re-key without its RekeyGrant is never applied; running it again (``ehrshare
type-key rotate``, ``grant repair`` or another revocation) completes it.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

from ehrshare.contract import Grant
from ehrshare.errors import EhrshareError
from ehrshare.faults import fault_point
from ehrshare.hazmat import tipre
from ehrshare.rekey_delivery import rekey_id, seal_rekey
from ehrshare.services.protocols import ProxyError
from ehrshare.session.core import FORMAT_VERSION, ProxyRoute, SessionCore
from ehrshare.session.errors import RequestRejected

_log = logging.getLogger(__name__)

__all__ = ["Rotation", "TypeKeyRotation"]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: the type's new epoch, the grants re-keyed for it, and those that
    were not (grant id → why; ``ehrshare grant repair`` finishes them)."""

    type: str
    type_epoch: int
    rekeyed: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)


class TypeKeyRotation(SessionCore):
    """A session's type-key epochs: rotating, finishing a rotation, re-key delivery."""

    def _proxy_key(self, route: ProxyRoute, unchanged: str = "nothing was granted") -> bytes:
        # Asked before anything else: a proxy that is down fails the call while nothing is on
        # chain yet.
        try:
            return route.client.public_key()
        except Exception as exc:
            raise ProxyError(
                f"the re-encryption proxy {route.ibe_id} is not reachable ({exc}); {unchanged} "
                "— retry when it is up"
            ) from None

    def _deliver_rekey(
        self,
        name: str,
        delegating: tipre.TypeSecretKey,
        receiving: tipre.VerifiedTypePublicKey,
        route: ProxyRoute,
        proxy_key: bytes,
    ) -> bytes:
        """Seal a fresh re-key to the proxy under re-key id ``name`` (a grant id, or
        :func:`~ehrshare.rekey_delivery.rekey_id` of a grant and an epoch) and deliver it;
        returns the sealed bytes (opaque to anyone but that proxy) for a confirming delivery."""
        rekey = tipre.generate_rekey(delegating, receiving)
        sealed = seal_rekey(proxy_key, name, rekey)
        del rekey
        route.client.store_rekey(name, sealed)
        return sealed

    def _current_type_epoch(self, label: str) -> int:
        try:
            return self.chain.get_type_key_epoch(self.ibe_id, label).type_epoch
        except RequestRejected:
            return 0  # no type key yet: GrantAccess says so

    def rotate_type_key(self, type: str) -> Rotation:
        """Move your records of ``type`` to a new type-key epoch now (for a suspected leak of
        the type key; revoking a grant does this by itself). Records created from now on are
        sealed under the new epoch's key; earlier ones keep theirs (docs/security.md §3.2).
        Your remaining grants of the type are re-keyed for the new epoch. Finishes a rotation
        a revocation began instead of starting another."""
        sk = self._secret_key()
        label = self._label(type)
        self._type_key(self.ibe_id, label)  # enrolled and published: says what to do if not
        state = self.chain.get_type_key_epoch(self.ibe_id, label)
        n = state.type_epoch if state.type_epoch > 0 and not state.key else state.type_epoch + 1
        self._publish_epoch_key(sk, label, n)
        return self._rekey_grants(sk, label, n)

    def finish_rotation(self, type: str) -> Rotation:
        """Complete the rotation of ``type`` a revocation began (or one a crash interrupted):
        publish the current epoch's key if it has none, and re-key every remaining grant of
        the type that does not cover the epoch yet. A no-op for a type never rotated."""
        return self._finish_rotation(self._label(type))

    def _finish_rotation(self, label: str) -> Rotation:
        state = self.chain.get_type_key_epoch(self.ibe_id, label)
        name = self.labels.reveal(label) or label
        if state.type_epoch == 0:
            return Rotation(name, 0)
        sk = self._secret_key()
        if not state.key:
            self._publish_epoch_key(sk, label, state.type_epoch)
        return self._rekey_grants(sk, label, state.type_epoch)

    def _publish_epoch_key(self, sk: tipre.IdentitySecretKey, label: str, n: int) -> None:
        mpk, _ = self._master()
        key = self._type_secret(sk, label, n).public_key(mpk)
        self.chain.rotate_type_key(
            label, n, base64.b64encode(key.to_bytes()).decode(), FORMAT_VERSION
        )
        _log.info("type %s of %s is in type-key epoch %d", label, self.ibe_id, n)
        fault_point("rotate.after_key")

    def _rekey_grants(self, sk: tipre.IdentitySecretKey, label: str, n: int) -> Rotation:
        now = self._now()
        rekeyed: list[str] = []
        failed: dict[str, str] = {}
        for g in self.grants("owner"):
            # Every epoch up to n it misses: an interrupted rotation may have skipped one.
            missing = [k for k in range(1, n + 1) if k not in g.type_epochs]
            if g.label != label or g.hop != 0 or g.state != "active" or g.expiry <= now:
                continue
            if not missing:
                continue
            try:
                for k in missing:
                    self._rekey_grant(sk, g, k)
                rekeyed.append(g.grant_id)
            except EhrshareError as exc:
                _log.warning("grant %s not re-keyed for type epoch %d: %s", g.grant_id, n, exc)
                failed[g.grant_id] = str(exc)
        return Rotation(self.labels.reveal(label) or label, n, tuple(rekeyed), failed)

    def _rekey_grant(self, sk: tipre.IdentitySecretKey, g: Grant, n: int) -> None:
        """Deliver grant ``g``'s re-key of epoch ``n`` (pending at its proxy), then RekeyGrant,
        then deliver again so the proxy takes it into use at once."""
        route = self._route(g.proxy)
        proxy_key = self._proxy_key(route, f"grant {g.grant_id} is unchanged")
        receiving = self._type_key(g.grantee, g.label)
        name = rekey_id(g.grant_id, n)
        try:
            sealed = self._deliver_rekey(
                name, self._type_secret(sk, g.label, n), receiving, route, proxy_key
            )
        except EhrshareError:
            raise
        except Exception as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} did not take the re-key of grant {g.grant_id} for "
                f"type epoch {n} ({exc}); the grant is unchanged — run grant repair later"
            ) from None
        fault_point("rotate.after_deliver")
        try:
            self.chain.rekey_grant(g.grant_id, n)
        except RequestRejected as exc:
            if exc.reason != f"grant {g.grant_id} covers type epoch {n} already":
                raise
        fault_point("rotate.after_rekey")
        try:
            route.client.store_rekey(name, sealed)
        except Exception as exc:
            _log.info("proxy %s takes %s into use at its first read: %s", route.ibe_id, name, exc)

    def _deliver_epoch_rekeys(self, sk: tipre.IdentitySecretKey, g: Grant) -> None:
        """Deliver again the re-keys of every type epoch ≥ 1 a root grant covers (a proxy that
        lost its state lost those too)."""
        route = self._route(g.proxy)
        proxy_key = self._proxy_key(route, f"grant {g.grant_id} is unchanged")
        receiving = self._type_key(g.grantee, g.label)
        for n in g.type_epochs:
            if n > 0:
                self._deliver_rekey(
                    rekey_id(g.grant_id, n),
                    self._type_secret(sk, g.label, n),
                    receiving,
                    route,
                    proxy_key,
                )
