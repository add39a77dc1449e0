"""Reading the caller's X.509 certificate: enrollment id, OUs and Fabric CA attributes.

Fabric CA puts enrollment attributes into the certificate extension 1.2.3.4.5.6.7.8.1 as JSON
``{"attrs": {"ehrshare.role": "clinician"}}`` and the NodeOU role (client, admin, peer) into the
subject's OU. The contract derives roles from these, never from an argument.

The *creator's* chain to the MSP root is checked by the peer (or the embedded ledger) before the
contract runs; this module must not re-check it. A certificate handed to the contract as an
*argument* (``RegisterMember``) has been checked by nobody, so :func:`issued_by` verifies it
against the organisation's CA certificate the contract keeps on chain: issuer name, signature,
validity period at the transaction's time, and that it is not itself a CA certificate. Time is
always the caller's (the transaction timestamp), never a wall clock.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .stub import ChaincodeError

__all__ = ["ATTRIBUTE_OID", "CertInfo", "issued_by", "parse_certificate", "signature_problem"]

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
    is_ca: bool = False
    key_cert_sign: bool = False
    not_before: int = 0
    not_after: int = 0

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
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        # RFC 5280: without a key-usage extension the key is not restricted.
        key_cert_sign = bool(usage.key_cert_sign)
    except x509.ExtensionNotFound:
        key_cert_sign = True
    return CertInfo(
        enrollment_id=str(cns[0].value),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        organizational_units=ous,
        attributes=tuple(sorted(attrs.items())),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        is_ca=is_ca,
        key_cert_sign=key_cert_sign,
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
    )


@functools.lru_cache(maxsize=4096)
def signature_problem(cert_pem: bytes, ca_pem: bytes) -> str | None:
    """None when ``ca_pem``'s key signed ``cert_pem`` (and the names chain), else why not.

    Pure, hence cached: the answer depends only on the two byte strings. Both must already have
    passed :func:`parse_certificate`.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    if cert.issuer != ca.subject:
        return "issuer name differs"
    try:
        cert.verify_directly_issued_by(ca)
    except InvalidSignature:
        return "signature does not verify"
    except (ValueError, TypeError) as exc:
        # Unsupported key or signature algorithm: refused, never waved through.
        return f"signature cannot be checked ({exc})"
    return None


def issued_by(cert_pem: bytes, ca_pem: bytes, *, now: int, org: str) -> str | None:
    """None when ``cert_pem`` is a member certificate that ``org``'s CA ``ca_pem`` issued and
    that is valid at ``now`` (the transaction's timestamp, seconds); else the reason, a
    lower-case sentence naming the certificate's common name and the organisation."""
    cert = parse_certificate(cert_pem)
    ca = parse_certificate(ca_pem)
    name = cert.enrollment_id
    if cert.issuer != ca.subject:
        return f"certificate of {name} was not issued by the ca of {org}"
    if signature_problem(cert_pem, ca_pem) is not None:
        # Same issuer name, other key: exactly the forgery this check exists for.
        return f"certificate of {name} is not signed by the registered ca of {org}"
    if cert.is_ca:
        return f"certificate of {name} is a ca certificate; only member certificates register"
    if now < cert.not_before:
        return f"certificate of {name} is not valid before {cert.not_before} (tx time {now})"
    if now > cert.not_after:
        return f"certificate of {name} expired at {cert.not_after} (tx time {now})"
    return None
