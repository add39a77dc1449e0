"""Identities, organisation CAs and type public keys: who is who on the channel.

The IBE identity of a member is ``"<MSP id>/<enrollment id>"``, the enrollment id being the
certificate's common name, so registration needs no argument and re-enrolment (a new certificate
with the same subject and issuer) keeps the identity. A type key's proof of knowledge is checked
here (:mod:`..typekey`) against the master public key of the latest final DKG.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .. import typekey
from ..auditlog import SYSTEM_CHAIN
from ..certs import CertInfo, issued_by, parse_certificate, signature_problem
from ..stub import ChaincodeError
from .checks import (
    MAX_TYPE_KEY_BYTES,
    cert_arg,
    check_b64,
    check_ibe,
    check_id,
    check_type,
    check_version,
    master_key_epoch,
)
from .context import ADMIN, PATIENT, ROLE_ATTRIBUTE, ROLES, Caller, TxContext
from .functions import evaluate, submit
from .keys import K_DKG_LATEST, K_DKG_RESULT, K_IBE, K_IDENTITY, K_ORG_CA, K_TYPEKEY

__all__ = ["Identities", "current_epoch", "fresh_type_key_epoch", "load_identity"]


class Identities:
    """RegisterIdentity, RegisterMember, the org CA functions and the type-key functions."""

    @submit
    def RegisterIdentity(self, ctx: TxContext) -> Any:
        """Register the caller with the role its certificate carries (attribute or admin OU)."""
        caller = ctx.caller
        role = caller.cert.attribute(ROLE_ATTRIBUTE)
        if role is None and "admin" in caller.cert.organizational_units:
            role = ADMIN
        if role is None:
            raise ChaincodeError(
                f"certificate of {caller.name} carries no {ROLE_ATTRIBUTE} attribute; "
                "an org admin must register it"
            )
        return self._register(
            ctx,
            caller.msp_id,
            caller.cert,
            role,
            registered_by=caller.name,
            action="RegisterIdentity",
        )

    @submit
    def RegisterMember(self, ctx: TxContext, cert_pem: str, role: str) -> Any:
        """An org admin registers a member of its own organisation with a role.

        The member's certificate is an argument nobody else has checked, so it must verify
        against the organisation's CA certificate on chain (:meth:`RegisterOrgCA`): issuer,
        signature, validity at the transaction's time, and not a CA certificate itself.
        """
        caller = ctx.caller
        if not caller.is_org_admin:
            raise ChaincodeError(f"identity {caller.name} is not an org admin")
        raw = cert_arg(cert_pem, "certificate")
        cert = parse_certificate(raw)
        org_ca = ctx.get_json(K_ORG_CA, caller.msp_id)
        if org_ca is None:
            raise ChaincodeError(
                f"the ca of {caller.msp_id} is not registered; its org admin must run "
                "RegisterOrgCA first"
            )
        if ctx.now > int(org_ca["not_after"]):
            raise ChaincodeError(
                f"the registered ca of {caller.msp_id} expired at {org_ca['not_after']}; "
                "rotate it with RotateOrgCA"
            )
        problem = issued_by(raw, str(org_ca["ca_pem"]).encode(), now=ctx.now, org=caller.msp_id)
        if problem is not None:
            raise ChaincodeError(problem)
        return self._register(
            ctx, caller.msp_id, cert, role, registered_by=caller.name, action="RegisterMember"
        )

    @submit
    def RegisterOrgCA(self, ctx: TxContext, ca_pem: str) -> Any:
        """An org admin puts its organisation's CA certificate on chain, once.

        The CA must have signed the admin's own certificate, whose chain the MSP has already
        checked: that binds the CA to the MSP, so another organisation (or a CA that merely
        copies this one's name) cannot be registered for it. Replacing it is
        :meth:`RotateOrgCA`, never a second RegisterOrgCA.
        """
        caller = self._org_admin(ctx)
        current = ctx.get_json(K_ORG_CA, caller.msp_id)
        if current is not None:
            raise ChaincodeError(
                f"the ca of {caller.msp_id} is already registered (sha256 {current['sha256']}); "
                "replace it with RotateOrgCA"
            )
        return self._put_org_ca(ctx, caller, ca_pem, previous_sha256="")

    @submit
    def RotateOrgCA(self, ctx: TxContext, ca_pem: str, previous_sha256: str) -> Any:
        """An org admin replaces its organisation's CA certificate, naming the one it replaces.

        The new CA is checked as in :meth:`RegisterOrgCA` (so the admin calls with a
        certificate the new CA issued); naming the old fingerprint makes a rotation deliberate
        and refuses one that raced with another. Identities already registered stay registered.
        """
        caller = self._org_admin(ctx)
        current = ctx.get_json(K_ORG_CA, caller.msp_id)
        if current is None:
            raise ChaincodeError(f"the ca of {caller.msp_id} is not registered; use RegisterOrgCA")
        if previous_sha256 != current["sha256"]:
            raise ChaincodeError(
                f"the registered ca of {caller.msp_id} has sha256 {current['sha256']}, "
                f"not {previous_sha256!r}"
            )
        return self._put_org_ca(ctx, caller, ca_pem, previous_sha256=previous_sha256)

    @evaluate
    def GetOrgCA(self, ctx: TxContext, msp_id: str) -> Any:
        """The CA certificate registered for an organisation.

        Open to every channel member, registered or not: a CA certificate is public (it is in
        the channel configuration too), and an org admin checks it before registering.
        """
        check_id(msp_id, "msp id")
        record = ctx.get_json(K_ORG_CA, msp_id)
        if record is None:
            raise ChaincodeError(f"the ca of {msp_id} is not registered")
        return record

    def _org_admin(self, ctx: TxContext) -> Caller:
        caller = ctx.caller
        if not caller.is_org_admin:
            raise ChaincodeError(f"identity {caller.name} is not an org admin")
        return caller

    def _put_org_ca(
        self, ctx: TxContext, caller: Caller, ca_pem: str, *, previous_sha256: str
    ) -> Any:
        raw = cert_arg(ca_pem, "ca certificate")
        ca = parse_certificate(raw)
        if not (ca.is_ca and ca.key_cert_sign):
            raise ChaincodeError(f"certificate {ca.subject} is not a ca certificate")
        if previous_sha256 == ca.sha256:
            raise ChaincodeError(f"ca certificate {ca.subject} is the one already registered")
        if not ca.not_before <= ctx.now <= ca.not_after:
            raise ChaincodeError(
                f"ca certificate {ca.subject} is valid from {ca.not_before} to {ca.not_after}, "
                f"not at tx time {ctx.now}"
            )
        _, creator_pem = ctx.stub.get_creator()
        if signature_problem(creator_pem, raw) is not None:
            raise ChaincodeError(
                f"ca certificate {ca.subject} did not issue the certificate of {caller.name}; "
                "an org admin registers the ca that issued its own certificate"
            )
        record = {
            "msp_id": caller.msp_id,
            "ca_pem": raw.decode(),
            "sha256": ca.sha256,
            "subject": ca.subject,
            "not_before": ca.not_before,
            "not_after": ca.not_after,
            "previous_sha256": previous_sha256,
            "registered_at": ctx.now,
            "registered_by": caller.name,
        }
        ctx.put_json(record, K_ORG_CA, caller.msp_id)
        detail = {"msp_id": caller.msp_id, "sha256": ca.sha256, "subject": ca.subject}
        if previous_sha256:
            detail["previous_sha256"] = previous_sha256
        ctx.log(SYSTEM_CHAIN, ctx.function, "ok", detail=detail)
        return record

    def _register(
        self,
        ctx: TxContext,
        msp_id: str,
        cert: CertInfo,
        role: str,
        registered_by: str,
        action: str,
    ) -> Any:
        if role not in ROLES:
            raise ChaincodeError(f"role {role!r} is not one of {', '.join(ROLES)}")
        ibe_id = f"{msp_id}/{cert.enrollment_id}"
        check_ibe(ibe_id)
        if "~emergency-" in ibe_id:
            # emergency.py: such an identity's key goes only to approved emergencies.
            raise ChaincodeError(
                f"identity {ibe_id} names an emergency identity; no member may be registered so"
            )
        if ctx.get_json(K_IDENTITY, cert.client_key) is not None:
            raise ChaincodeError(f"identity {ibe_id} is already registered")
        if ctx.get_json(K_IBE, ibe_id) is not None:
            raise ChaincodeError(f"ibe identity {ibe_id} is already taken")
        ident = {
            "ibe_id": ibe_id,
            "msp_id": msp_id,
            "role": role,
            "subject": cert.subject,
            "issuer": cert.issuer,
            "cert_sha256": cert.sha256,
            "registered_at": ctx.now,
            "registered_by": registered_by,
        }
        ctx.put_json(ident, K_IDENTITY, cert.client_key)
        ctx.put_json({"client_key": cert.client_key}, K_IBE, ibe_id)
        chain = ibe_id if role == PATIENT else SYSTEM_CHAIN
        ctx.log(chain, action, "ok", detail={"ibe_id": ibe_id, "role": role})
        return ident

    @evaluate
    def GetIdentity(self, ctx: TxContext, ibe_id: str) -> Any:
        """The public registration of an identity (role, MSP, certificate fingerprint)."""
        ctx.registered()
        ident = load_identity(ctx, ibe_id)
        return ident

    # --- type public keys --------------------------------------------------------------------

    @submit
    def PublishTypeKey(
        self, ctx: TxContext, record_type: str, key_b64: str, format_version: str
    ) -> Any:
        """Publish the caller's own type public key T_{id,t}; republishing rotates it.

        The key must be bound to the caller and the type and prove knowledge of h with
        T = h·mpk under the master public key of the latest final DKG (typekey.py)."""
        caller = ctx.registered()
        check_type(record_type)
        check_b64(key_b64, "type key", MAX_TYPE_KEY_BYTES)
        assert caller.ibe_id is not None
        typekey.check_type_key(
            base64.b64decode(key_b64),
            owner=caller.ibe_id,
            record_type=record_type,
            mpk_point=self._current_mpk(ctx),
        )
        value = {
            "ibe_id": caller.ibe_id,
            "type": record_type,
            "key": key_b64,
            "format_version": check_version(format_version),
            "epoch": current_epoch(ctx),
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(value, K_TYPEKEY, caller.ibe_id, record_type)
        chain = caller.ibe_id if caller.role == PATIENT else SYSTEM_CHAIN
        ctx.log(chain, "PublishTypeKey", "ok", detail={"type": record_type})
        return value

    def _current_mpk(self, ctx: TxContext) -> bytes:
        latest = ctx.get_json(K_DKG_LATEST)
        if latest is None:
            raise ChaincodeError(
                "no dkg session has finished; a type key is checked against its master public key"
            )
        result = ctx.get_json(K_DKG_RESULT, latest["nonce"])
        assert isinstance(result, dict)  # K_DKG_LATEST only ever names a final result
        try:
            raw = base64.b64decode(str(result["mpk"]), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        point = typekey.parse_mpk(raw)
        if point is None:
            raise ChaincodeError(
                f"the master public key of dkg session {latest['nonce']} is not a version "
                f"{typekey.KEY_VERSION} G1 point; type keys cannot be checked against it"
            )
        return point

    @evaluate
    def GetTypeKey(self, ctx: TxContext, ibe_id: str, record_type: str) -> Any:
        """Read someone's type public key (any registered identity may)."""
        ctx.registered()
        check_ibe(ibe_id)
        check_type(record_type)
        value = ctx.get_json(K_TYPEKEY, ibe_id, record_type)
        if value is None:
            raise ChaincodeError(f"type key {record_type} of {ibe_id} does not exist")
        return value


def load_identity(ctx: TxContext, ibe_id: str) -> dict[str, Any]:
    check_ibe(ibe_id)
    link = ctx.get_json(K_IBE, ibe_id)
    if link is None:
        raise ChaincodeError(f"identity {ibe_id} is not registered")
    ident = ctx.get_json(K_IDENTITY, link["client_key"])
    if not isinstance(ident, dict):
        raise ChaincodeError(f"identity {ibe_id} has no stored registration")
    return ident


def current_epoch(ctx: TxContext) -> str:
    """The current master key's epoch ("" before the first final DKG)."""
    latest = ctx.get_json(K_DKG_LATEST)
    if latest is None:
        return ""
    result = ctx.get_json(K_DKG_RESULT, latest["nonce"])
    assert isinstance(result, dict)  # K_DKG_LATEST only ever names a final result
    return master_key_epoch(str(result["mpk"]))


def fresh_type_key_epoch(ctx: TxContext, owner: str, record_type: str) -> str:
    """The current epoch, which a new capsule is stamped with; refused while the owner's
    type key on chain is of an earlier master key (the capsule would be sealed to it)."""
    epoch = current_epoch(ctx)
    key = ctx.get_json(K_TYPEKEY, owner, record_type)
    if key is not None and key.get("epoch") and key["epoch"] != epoch:
        raise ChaincodeError(
            f"type key {record_type} of {owner} is of an earlier master key (epoch "
            f"{key['epoch']}, now {epoch}); {owner} must enrol again first"
        )
    return epoch
