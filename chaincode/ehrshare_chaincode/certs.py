"""Reading the caller's X.509 certificate: enrollment id, OUs and Fabric CA attributes.

Fabric CA puts enrollment attributes into the certificate extension 1.2.3.4.5.6.7.8.1 as JSON
``{"attrs": {"ehrshare.role": "clinician"}}`` and the NodeOU role (client, admin, peer) into the
subject's OU. The contract derives roles from these, never from an argument. This module only
parses: the certificate's chain to the MSP root is checked by the peer (or the embedded ledger)
before the contract runs, and it must not be re-implemented here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .stub import ChaincodeError

__all__ = ["ATTRIBUTE_OID", "CertInfo", "parse_certificate"]

ATTRIBUTE_OID = x509.ObjectIdentifier("1.2.3.4.5.6.7.8.1")


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the contract needs from a certificate."""

    enrollment_id: str
    subject: str
    issuer: str
    organizational_units: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]
    sha256: str

    def attribute(self, name: str) -> str | None:
        """The Fabric CA attribute ``name``, or None."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    @property
    def client_key(self) -> str:
        """A stable key for this client: Fabric's ``x509::subject::issuer`` id, hashed."""
        return hashlib.sha256(f"x509::{self.subject}::{self.issuer}".encode()).hexdigest()


# Parsing is pure, so a cache is safe across transactions and peers; it matters for throughput.
@functools.lru_cache(maxsize=4096)
def parse_certificate(pem: bytes) -> CertInfo:
    """Parse a PEM certificate; a malformed one is a :class:`ChaincodeError`."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ChaincodeError("certificate is not a valid pem x.509 certificate") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise ChaincodeError("certificate has no common name")
    ous = tuple(
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    )
    attrs: dict[str, str] = {}
    try:
        ext = cert.extensions.get_extension_for_oid(ATTRIBUTE_OID)
    except x509.ExtensionNotFound:
        ext = None
    if ext is not None:
        raw = ext.value
        data = raw.value if isinstance(raw, x509.UnrecognizedExtension) else b""
        try:
            parsed = json.loads(data)
        except ValueError:
            raise ChaincodeError("certificate attribute extension is not valid json") from None
        found = parsed.get("attrs", {}) if isinstance(parsed, dict) else None
        if not isinstance(found, dict):
            raise ChaincodeError("certificate attribute extension has no attrs object")
        for k, v in found.items():
            if isinstance(k, str) and isinstance(v, str):
                attrs[k] = v
    return CertInfo(
        enrollment_id=str(cns[0].value),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        organizational_units=ous,
        attributes=tuple(sorted(attrs.items())),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )
