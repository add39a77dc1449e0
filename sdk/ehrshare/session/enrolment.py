"""Enrolment: register on chain, get the identity key from τ KGC nodes, publish type keys."""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ehrshare.faults import fault_point
from ehrshare.session.core import FORMAT_VERSION
from ehrshare.session.errors import EnrollmentError, RequestRejected
from ehrshare.session.rotation import TypeKeyRotation

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """Which KGC nodes answered, which were down, which sent keys that failed verification."""

    ibe_id: str
    used: tuple[int, ...]
    failed: dict[int, str]
    invalid: tuple[int, ...]


class Enrolment(TypeKeyRotation):
    """A session's enrolment: registering, the identity key from τ KGC nodes, type keys."""

    def role(self) -> str:
        """This identity's role as registered on chain (from its certificate)."""
        return self.chain.get_identity(self.ibe_id).role

    def register(self) -> dict[str, Any]:
        """Register this identity on chain (idempotent); its role comes from its certificate."""
        try:
            return self.chain.get_identity(self.ibe_id).data
        except RequestRejected:
            return self.chain.register_identity().data

    def enroll(self, *, timeout: float = 10.0) -> EnrollmentResult:
        """Register, then get ``sk_id`` from τ KGC nodes and keep it in the wallet.

        Nodes are asked in turn until τ partial keys verify against the public polynomial on
        chain; a node that is down is skipped, one whose key fails verification is named and
        excluded (never combined). Raises :class:`EnrollmentError` when fewer than τ verify.
        """
        from ehrshare.key_extraction import ExtractionFailed, extract_identity_key

        self.register()
        fault_point("enroll.after_register")
        _, public = self._master()
        try:
            # Each request is signed with the ledger key (the TLS key only opens the channel):
            # the nodes check the signature against the certificate registered on chain.
            outcome = extract_identity_key(
                self.kgc,
                self.identity,
                self._signer,
                public=public,
                roster=self.roster,
                timeout=timeout,
                clock=self._clock,
            )
        except ExtractionFailed as exc:
            why = (
                " (partial keys are checked against the KGC roster of the chain's final DKG result)"
                if exc.invalid
                else ""
            )
            raise EnrollmentError(
                f"enrolment of {self.ibe_id} failed: {exc}{why}",
                failed=exc.unavailable,
                invalid=exc.invalid,
            ) from None
        fault_point("enroll.after_extract")
        self._sk = outcome.secret_key
        self._type_secrets.clear()
        self._sk_checked = True  # combine_partial_keys checked it against mpk
        if self.wallet is not None:
            # Kept next to the keys of earlier master keys, which read earlier records.
            self.wallet.save_secret_key(outcome.secret_key, self.epoch)
        fault_point("enroll.after_save")
        bad = set(outcome.unavailable) | set(outcome.invalid)
        used = tuple(c.index for c in self.kgc if c.index not in bad)[: public.threshold]
        _log.info("enrolled %s", self.ibe_id)
        return EnrollmentResult(self.ibe_id, used, dict(outcome.unavailable), outcome.invalid)

    def publish_type_keys(self, types: Sequence[str] | None = None) -> list[str]:
        """Publish T_{id,t} for each type (all configured types by default); returns the types
        whose key was (re)published. Keys already on chain and unchanged are skipped."""
        sk = self._secret_key()
        mpk, _ = self._master()
        published = []
        for name in types if types is not None else self.mapping.types:
            label = self._label(name)
            key_b64 = base64.b64encode(
                self._type_secret(sk, label).public_key(mpk).to_bytes()
            ).decode()
            try:
                if self.chain.get_type_key(self.ibe_id, label).key == key_b64:
                    continue
            except RequestRejected:
                pass
            self.chain.publish_type_key(label, key_b64, FORMAT_VERSION)
            published.append(name)
        for name in types if types is not None else self.mapping.types:
            # A type rotated before a new master key: its epoch key is of the old mpk, so move
            # it to a next epoch under the new one (grants of the old key do not serve its
            # records anyway, docs/operations.md §7).
            label = self._label(name)
            try:
                state = self.chain.get_type_key_epoch(self.ibe_id, label)
            except RequestRejected:
                continue
            if state.type_epoch > 0 and state.key and state.epoch not in (None, self.epoch):
                self._publish_epoch_key(sk, label, state.type_epoch + 1)
                if name not in published:
                    published.append(name)
        return published
