"""A channel membership change as a file the existing hospitals' admins sign, one by one.

Fabric changes a channel's members by a config update that a majority of the member
organisations' admins sign (the ``/Channel/Application/Admins`` policy, ``MAJORITY Admins``); the
signatures are collected by passing the update around, so each admin signs with its own key on
its own machine. :class:`MembershipUpdate` is that file for ``consortium add-hospital``: what is
changed (the join request), what it is changed *from* (the channel's member organisations and
their CAs when the update was computed — an update made against an older membership is stale,
as Fabric refuses one whose read set's versions moved) and the signatures. :func:`sign_update`
adds one admin's signature; :meth:`MembershipUpdate.signers` says which member organisations'
admins validly signed, checked against the CAs the channel trusts.

On a Fabric channel the file also carries the channel's ``ConfigUpdate`` (computed against the
config fetched from the orderer, the new organisation's anchor peer in it) and each admin's
signature carries, beside the one over the file's payload (which covers the update's bytes),
Fabric's ``ConfigSignature`` over it, made with the same key: one ``sign-update`` per admin
gives both, and the orderer enforces its ``MAJORITY Admins`` policy on the latter. Fabric counts
only certificates with the admin NodeOU, so on Fabric a signer must carry it.

This module computes and checks; it submits nothing (:mod:`ehrshare.joining` does) and must not
read any private key but the signing admin's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from ehrshare.errors import InvalidInput, Refused
from ehrshare.hospital import JoinRequest, issued_by
from ehrshare.identity import ATTRIBUTE_OID, ROLE_ATTRIBUTE, Identity, Signer, verify_signature
from ehrshare.jsontext import loads_untrusted
from ehrshare.services.vault import atomic_write

__all__ = [
    "UPDATE_VERSION",
    "InvalidUpdate",
    "MembershipUpdate",
    "NotAnAdmin",
    "NotEnoughSignatures",
    "StaleUpdate",
    "majority",
    "sign_update",
]

UPDATE_VERSION: Final = 1
_TAG: Final = b"ehrshare/membership-update/v1\x00"


class InvalidUpdate(InvalidInput):
    """An update file that does not parse, or that belongs to another request or consortium."""


class NotAnAdmin(Refused):
    """The signing wallet is not an admin of its organisation (admin OU or role attribute)."""


class NotEnoughSignatures(Refused):
    """Fewer than a majority of the member organisations' admins validly signed the update."""

    hint = "collect more with 'ehrshare consortium sign-update FILE -w ADMIN-WALLET', then rerun"


class StaleUpdate(Refused):
    """The channel's membership changed since the update was computed: compute it again."""


def majority(members: int) -> int:
    """Signatures a change needs among ``members`` organisations (Fabric's MAJORITY)."""
    return members // 2 + 1


def ca_digest(ca_pem: bytes) -> str:
    """How an update names a member's CA: SHA-256 of its PEM."""
    return hashlib.sha256(ca_pem).hexdigest()


def _has_admin_ou(identity: Identity) -> bool:
    try:
        units = identity.certificate.subject.get_attributes_for_oid(
            NameOID.ORGANIZATIONAL_UNIT_NAME
        )
    except ValueError:
        return False
    return "admin" in [str(a.value) for a in units]


def _is_admin(identity: Identity) -> bool:
    try:  # fields parse lazily: a damaged certificate fails here
        cert = identity.certificate
        units = [
            str(a.value)
            for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        ]
        if "admin" in units:
            return True
        ext = cert.extensions.get_extension_for_oid(ATTRIBUTE_OID).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    try:
        attrs = json.loads(getattr(ext, "value", b"{}")).get("attrs", {})
    except ValueError:
        return False
    return isinstance(attrs, dict) and attrs.get(ROLE_ATTRIBUTE) == "admin"


@dataclass(frozen=True)
class Signature:
    """One admin's signature over an update's digest."""

    msp_id: str
    certificate: str
    signature: bytes
    config_signature: bytes | None = None
    """Fabric's serialised ``ConfigSignature`` over the update's ``config_update``."""

    def to_dict(self) -> dict[str, str]:
        """The file's form."""
        out = {
            "msp_id": self.msp_id,
            "certificate": self.certificate,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        if self.config_signature is not None:
            out["config_signature"] = base64.b64encode(self.config_signature).decode("ascii")
        return out


@dataclass(frozen=True)
class MembershipUpdate:
    """Adding one hospital to a channel: the change, its base and the signatures so far."""

    consortium_id: str
    channel: str
    base: dict[str, str]
    """MSP id → :func:`ca_digest` of every member organisation when the update was made."""
    request: JoinRequest
    signatures: tuple[Signature, ...] = ()
    config_update: bytes | None = None
    """Fabric: the serialised ``ConfigUpdate`` adding the organisation (None: embedded)."""
    anchor_peer: str | None = None
    """Fabric: ``host:port`` of the new organisation's peer, its anchor peer in the update."""

    def payload(self) -> dict[str, Any]:
        """What every admin signs."""
        out = {
            "version": UPDATE_VERSION,
            "kind": "add-hospital",
            "consortium_id": self.consortium_id,
            "channel": self.channel,
            "base": dict(sorted(self.base.items())),
            "request_sha256": self.request.sha256,
        }
        if self.config_update is not None:
            out["fabric"] = {
                "config_update": base64.b64encode(self.config_update).decode("ascii"),
                "anchor_peer": self.anchor_peer,
            }
        return out

    def digest(self) -> bytes:
        """The bytes signed: a domain tag and the payload's canonical JSON."""
        canonical = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"))
        return _TAG + canonical.encode()

    @classmethod
    def compute(
        cls,
        consortium_id: str,
        channel: str,
        organizations: Mapping[str, bytes],
        request: JoinRequest,
        *,
        config_update: bytes | None = None,
        anchor_peer: str | None = None,
    ) -> MembershipUpdate:
        """The update adding ``request``'s hospital to a channel whose members are
        ``organizations`` (MSP id → CA PEM); refuses a hospital that is already a member.
        On Fabric, ``config_update`` is the channel's ``ConfigUpdate`` adding it."""
        if request.msp_id in organizations:
            raise StaleUpdate(f"{request.msp_id} is already a member of channel {channel}")
        return cls(
            consortium_id=consortium_id,
            channel=channel,
            base={msp: ca_digest(pem) for msp, pem in organizations.items()},
            request=request,
            config_update=config_update,
            anchor_peer=anchor_peer,
        )

    def signers(self, organizations: Mapping[str, bytes]) -> list[str]:
        """The member organisations (of ``organizations``: MSP id → CA PEM) whose admin
        validly signed: certificate issued by that CA, admin, signature over :meth:`digest`."""
        message = self.digest()
        valid: set[str] = set()
        for sig in self.signatures:
            pem = organizations.get(sig.msp_id)
            if pem is None:
                continue
            identity = Identity(sig.msp_id, sig.certificate.encode("ascii"))
            try:
                cert = identity.certificate
                ca = x509.load_pem_x509_certificate(pem)
            except ValueError:
                continue
            if not issued_by(cert, ca) or not _is_admin(identity):
                continue
            if not verify_signature(identity, message, sig.signature):
                continue
            if self.config_update is not None and not self._fabric_signed(sig, identity):
                continue
            valid.add(sig.msp_id)
        return sorted(valid)

    def _fabric_signed(self, sig: Signature, identity: Identity) -> bool:
        """The signature's ``ConfigSignature`` is by the same admin (admin NodeOU) over the
        update's ``config_update``."""
        from ehrshare.network.fabric.config_update import verify_config_signature

        if sig.config_signature is None or not _has_admin_ou(identity):
            return False
        assert self.config_update is not None
        parts = verify_config_signature(self.config_update, sig.config_signature)
        if parts is None:
            return False
        msp, creator, signed, signature = parts
        if msp != sig.msp_id or creator != identity.credentials:
            return False
        return verify_signature(identity, signed, signature)

    def config_signatures(self, signers: Sequence[str]) -> list[Any]:
        """Fabric's ``ConfigSignature`` messages of ``signers``' admins (already checked)."""
        from ehrshare.network.fabric.config_update import configtx_pb2

        wanted = set(signers)
        config_signature: Any = configtx_pb2.ConfigSignature
        return [
            config_signature.FromString(s.config_signature)
            for s in self.signatures
            if s.msp_id in wanted and s.config_signature is not None
        ]

    def check_base(self, organizations: Mapping[str, bytes]) -> None:
        """Refuse an update computed against another membership than ``organizations``."""
        now = {msp: ca_digest(pem) for msp, pem in organizations.items()}
        if now != self.base:
            raise StaleUpdate(
                f"the members of channel {self.channel} changed since this update was computed "
                f"({sorted(self.base)} then, {sorted(now)} now); compute it again"
            )

    def require_majority(self, organizations: Mapping[str, bytes]) -> list[str]:
        """The signers, or :class:`NotEnoughSignatures` when they are not a majority."""
        signers = self.signers(organizations)
        need = majority(len(organizations))
        if len(signers) < need:
            raise NotEnoughSignatures(
                f"{len(signers)} of the {len(organizations)} member hospitals' admins signed the "
                f"update adding {self.request.msp_id} ({', '.join(signers) or 'none'}); "
                f"{need} are needed"
            )
        return signers

    def to_json(self) -> str:
        """The file's text."""
        data = {
            **self.payload(),
            "request": self.request.body() | {"sha256": self.request.sha256},
            "signatures": [s.to_dict() for s in self.signatures],
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        """Write the file whole (a crash leaves the old one)."""
        atomic_write(path, self.to_json().encode(), mode=0o644)

    @classmethod
    def load(cls, path: Path) -> MembershipUpdate:
        """Read an update file; the join request inside is checked as on its own."""
        try:
            data = loads_untrusted(path.read_bytes())
        except FileNotFoundError:
            raise InvalidUpdate(f"update file {path} does not exist") from None
        except ValueError as exc:
            raise InvalidUpdate(f"update file {path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != UPDATE_VERSION:
            raise InvalidUpdate(f"{path} is not a version-{UPDATE_VERSION} membership update")
        if data.get("kind") != "add-hospital":
            raise InvalidUpdate(f"{path} is not an add-hospital update")
        request = JoinRequest.from_text(json.dumps(data.get("request")))
        base = data.get("base")
        if not isinstance(base, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in base.items()
        ):
            raise InvalidUpdate(f"{path}: base is not a map of MSP ids to CA digests")
        if data.get("request_sha256") != request.sha256:
            raise InvalidUpdate(f"{path}: request_sha256 does not match the request inside")
        signatures = []
        for entry in data.get("signatures", []):
            try:
                fabric_sig = entry.get("config_signature")
                signatures.append(
                    Signature(
                        msp_id=str(entry["msp_id"]),
                        certificate=str(entry["certificate"]),
                        signature=base64.b64decode(entry["signature"], validate=True),
                        config_signature=None
                        if fabric_sig is None
                        else base64.b64decode(fabric_sig, validate=True),
                    )
                )
            except (KeyError, TypeError, ValueError):
                raise InvalidUpdate(f"{path}: a signature entry is malformed") from None
        for key in ("consortium_id", "channel"):
            if not isinstance(data.get(key), str):
                raise InvalidUpdate(f"{path}: {key} is missing")
        config_update, anchor = None, None
        fabric = data.get("fabric")
        if fabric is not None:
            try:
                config_update = base64.b64decode(fabric["config_update"], validate=True)
                anchor = str(fabric["anchor_peer"])
            except (KeyError, TypeError, ValueError):
                raise InvalidUpdate(f"{path}: the fabric section is malformed") from None
        return cls(
            consortium_id=data["consortium_id"],
            channel=data["channel"],
            base=dict(base),
            request=request,
            signatures=tuple(signatures),
            config_update=config_update,
            anchor_peer=anchor,
        )


def sign_update(update: MembershipUpdate, identity: Identity, signer: Signer) -> MembershipUpdate:
    """``update`` with one more signature, by the admin ``identity`` (replacing an earlier one of
    its organisation). Refuses a signer that is not an admin or whose organisation is not among
    the update's base members (a new hospital does not sign its own admission)."""
    if not _is_admin(identity):
        raise NotAnAdmin(
            f"{identity.ibe_id} is not an admin of {identity.msp_id}; an update is signed by a "
            "member hospital's admin (admin OU or role admin)"
        )
    if identity.msp_id not in update.base:
        raise NotAnAdmin(
            f"{identity.msp_id} is not a member of channel {update.channel}; only members sign"
        )
    config_sig = None
    if update.config_update is not None:
        from ehrshare.network.fabric.config_update import config_signature

        if not _has_admin_ou(identity):
            raise NotAnAdmin(
                f"{identity.ibe_id}'s certificate lacks the admin NodeOU that Fabric's Admins "
                "policies count (a wallet issued before admins carried it): sign with a "
                "hospital admin wallet issued now, or the org's Fabric admin"
            )
        config_sig = config_signature(
            update.config_update, identity.msp_id, identity.credentials, signer.sign
        ).SerializeToString()
    signature = Signature(
        identity.msp_id,
        identity.credentials.decode("ascii"),
        signer.sign(update.digest()),
        config_sig,
    )
    kept = tuple(s for s in update.signatures if s.msp_id != identity.msp_id)
    return replace(update, signatures=(*kept, signature))
