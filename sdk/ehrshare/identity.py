"""X.509 identities, ECDSA-P256 signers and a small local certificate authority.

Both ledger backends identify clients the way Fabric does: an MSP id plus an X.509 certificate, and
an ECDSA-P256 signature (low-S, DER) over each request. The embedded backend ships :class:`LocalCA`
so it needs no Fabric CA: one P-256 root per organisation issuing member certificates that carry the
NodeOU (``client``, ``admin``, ``peer``) in the subject's OU and Fabric CA's attribute extension
(OID 1.2.3.4.5.6.7.8.1, JSON ``{"attrs": {...}}``) with the ``ehrshare.role`` attribute.

What this module must not do: log or print private keys, or serialise them except through
:meth:`Signer.to_secret_bytes`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ATTRIBUTE_OID",
    "ROLE_ATTRIBUTE",
    "TLS_CLIENT_OU",
    "Identity",
    "LocalCA",
    "Signer",
    "verify_signature",
]

ATTRIBUTE_OID = x509.ObjectIdentifier("1.2.3.4.5.6.7.8.1")
ROLE_ATTRIBUTE = "ehrshare.role"
# The OU of TLS client certificates. It is not a Fabric NodeOU, so the certificate's subject
# differs from the member's ledger certificate: the chaincode keys clients by subject and issuer,
# so a TLS client key can never act as the member on the ledger.
TLS_CLIENT_OU = "tls"
# Order of the P-256 group: Fabric rejects signatures with s > n/2 (malleability).
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is: its MSP id and its certificate (PEM). Public; safe to log."""

    msp_id: str
    credentials: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return x509.load_pem_x509_certificate(self.credentials)

    @property
    def enrollment_id(self) -> str:
        """The certificate's common name (Fabric CA's enrollment id)."""
        return str(self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    @property
    def ibe_id(self) -> str:
        """The IBE identity string the chaincode derives: ``<msp id>/<enrollment id>``."""
        return f"{self.msp_id}/{self.enrollment_id}"


class Signer:
    """Signs requests with an ECDSA-P256 private key; signatures are DER and low-S like Fabric's."""

    __slots__ = ("_key",)

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"signer key must be on P-256, got {private_key.curve.name}")
        self._key = private_key

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA-SHA256 signature with s normalised to the lower half of the group order."""
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        if s > _P256_N // 2:
            s = _P256_N - s
        return encode_dss_signature(r, s)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The matching public key."""
        return self._key.public_key()

    def to_secret_bytes(self) -> bytes:
        """PKCS#8 PEM of the private key; the only way it leaves this object."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_secret_bytes(cls, pem: bytes) -> Signer:
        """Load a signer from :meth:`to_secret_bytes` output."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("signer key is not an elliptic-curve private key")
        return cls(key)

    def __repr__(self) -> str:
        return "Signer(<P-256 private key>)"

    def __hash__(self) -> int:
        raise TypeError("Signer holds a secret and is not hashable")

    def __eq__(self, other: object) -> bool:
        return self is other


def verify_signature(identity: Identity, message: bytes, signature: bytes) -> bool:
    """True when signature is a valid low-S ECDSA-SHA256 signature by the identity's key."""
    public = identity.certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        _, s = decode_dss_signature(signature)
    except ValueError:
        return False
    if s > _P256_N // 2:
        return False
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _general_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a host name (checked, never guessed)."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host {host!r} must be a non-empty address or DNS name")
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    ):
        raise ValueError(f"host {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(host)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class LocalCA:
    """One organisation's certificate authority: a P-256 root that issues member certificates.

    Use it for the embedded backend and tests; a Fabric network uses its own crypto material.
    """

    def __init__(
        self, msp_id: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
    ) -> None:
        self.msp_id = msp_id
        self._key = key
        self.certificate = certificate

    @classmethod
    def create(
        cls, msp_id: str, *, valid_days: int = 3650, now: _dt.datetime | None = None
    ) -> LocalCA:
        """A fresh root CA for ``msp_id``, valid from ``now`` (default: the wall clock)."""
        if not msp_id or "/" in msp_id:
            raise ValueError(f"msp id {msp_id!r} must be non-empty and contain no '/'")
        key = ec.generate_private_key(ec.SECP256R1())
        now = now or _now()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, msp_id),
                x509.NameAttribute(NameOID.COMMON_NAME, f"ca.{msp_id}"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            # Fabric's MSP refuses a CA certificate without a subject key identifier.
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        # Fabric's MSP (2.1, 2.3) built with Go >= 1.15 refuses a root whose self-signature has a
        # high S: it rewrites the root to low-S and Go will not chain the copy to itself. ECDSA
        # signing is randomised, so re-sign until S <= n/2 (each try succeeds with p = 1/2).
        while True:
            cert = builder.sign(key, hashes.SHA256())
            if decode_dss_signature(cert.signature)[1] <= _P256_N // 2:
                return cls(msp_id, key, cert)

    @property
    def certificate_pem(self) -> bytes:
        """The root certificate in PEM (what the ledger trusts for this MSP)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        enrollment_id: str,
        *,
        role: str | None = None,
        node_ou: str = "client",
        attributes: dict[str, str] | None = None,
        valid_days: int = 365,
        hosts: Sequence[str] = (),
        client_auth: bool = False,
        now: _dt.datetime | None = None,
    ) -> tuple[Identity, Signer]:
        """Enrol a member: a new P-256 key and a certificate with its NodeOU and role attribute.

        ``hosts`` (IP addresses or DNS names) make it a TLS server certificate as well: they go
        into the subject alternative names, with the serverAuth extended key usage, because TLS
        clients match the address they dial against the SANs, never the common name.
        ``client_auth`` adds the clientAuth usage next to serverAuth, for a node whose TLS
        certificate also opens connections (Fabric peers and Raft orderers). ``now``
        (default: the wall clock) starts the validity period; a sandbox on a manual clock
        passes its own time so the chaincode finds the certificate valid at transaction time.
        """
        if not enrollment_id or "/" in enrollment_id:
            raise ValueError(f"enrollment id {enrollment_id!r} must be non-empty, without '/'")
        if node_ou not in ("client", "admin", "peer", "orderer"):
            raise ValueError(f"node OU {node_ou!r} is not client, admin, peer or orderer")
        if isinstance(hosts, str):
            raise TypeError("hosts must be a sequence of host names or addresses, not one string")
        sans = [_general_name(host) for host in hosts]
        attrs = dict(attributes or {})
        if role is not None:
            attrs[ROLE_ATTRIBUTE] = role
        if client_auth and not sans:
            raise ValueError("client_auth is for TLS server certificates: give hosts as well")
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if sans else []
        if client_auth:
            usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        return self._issue(enrollment_id, node_ou, sans, usage, attrs, valid_days, now)

    def issue_tls_client(
        self, enrollment_id: str, *, valid_days: int = 365, now: _dt.datetime | None = None
    ) -> tuple[Identity, Signer]:
        """A TLS client certificate for a member, with its own new P-256 key.

        Subject ``O=<msp>, OU=tls, CN=<enrollment id>`` (so services name the caller
        ``<msp>/<enrollment id>`` as before) and the clientAuth extended key usage, which the
        services require. Keep it apart from the ledger signing key: that key signs
        transactions, this one only opens TLS connections, and neither works in the other's
        place (see ``docs/security.md``).
        """
        if not enrollment_id or "/" in enrollment_id:
            raise ValueError(f"enrollment id {enrollment_id!r} must be non-empty, without '/'")
        return self._issue(
            enrollment_id,
            TLS_CLIENT_OU,
            [],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            {},
            valid_days,
            now,
        )

    def _issue(
        self,
        enrollment_id: str,
        node_ou: str,
        sans: list[x509.GeneralName],
        usage: list[x509.ObjectIdentifier],
        attrs: dict[str, str],
        valid_days: int,
        now: _dt.datetime | None,
    ) -> tuple[Identity, Signer]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = now or _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.msp_id),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, node_ou),
                        x509.NameAttribute(NameOID.COMMON_NAME, enrollment_id),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if attrs:
            payload = json.dumps({"attrs": attrs}, sort_keys=True).encode()
            builder = builder.add_extension(
                x509.UnrecognizedExtension(ATTRIBUTE_OID, payload), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        identity = Identity(self.msp_id, cert.public_bytes(serialization.Encoding.PEM))
        return identity, Signer(key)

    def save(self, directory: Path) -> None:
        """Write ``ca-cert.pem`` and ``ca-key.pem`` (mode 0600) into directory."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca-cert.pem").write_bytes(self.certificate_pem)
        key_path = directory / "ca-key.pem"
        key_path.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        (directory / "msp-id").write_text(self.msp_id, encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> LocalCA:
        """Read a CA written by :meth:`save`."""
        cert = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (directory / "ca-key.pem").read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / 'ca-key.pem'} is not an elliptic-curve key")
        return cls((directory / "msp-id").read_text(encoding="utf-8").strip(), key, cert)

    def __repr__(self) -> str:
        return f"LocalCA(msp_id={self.msp_id!r})"
