"""Mutual TLS for the KGC and proxy services: server certificates, trust, and who the caller is.

Servers present a certificate issued by their organisation's CA with subject alternative names
for the addresses clients dial (127.0.0.1 and localhost by default); clients present their TLS
client certificate — a key and certificate of their own (:meth:`LocalCA.issue_tls_client`, in
the wallet next to the ledger signing key), never the signing key itself. The server requires a
client certificate chaining to one of the consortium's CAs *and* carrying the clientAuth
extended key usage (so a ledger signing certificate, which has none, is refused), and the
caller's identity for authorisation is taken from that verified certificate —
``<MSP id>/<common name>``, exactly as the chaincode derives IBE identities — never from a
request field.

What this module must not do: log private keys, accept a certificate that does not verify under
a trusted CA or lacks clientAuth, or derive an identity from anything but the peer certificate
gRPC verified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ehrshare.identity import Identity, LocalCA, Signer

__all__ = [
    "REISSUE_HINT",
    "ClientTls",
    "ClientTrust",
    "ServerTls",
    "UnauthenticatedCaller",
    "issue_tls_certificate",
]


REISSUE_HINT = (
    "re-issue the wallet's TLS client certificate with "
    "'ehrshare consortium reissue-tls <wallet> -p <consortium dir>'"
)


class UnauthenticatedCaller(Exception):
    """The connection carries no verified client certificate of a consortium CA."""


def issue_tls_certificate(
    ca: LocalCA,
    name: str,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    valid_days: int = 365,
    client_auth: bool = False,
) -> tuple[bytes, bytes]:
    """A TLS server certificate (PEM) and its P-256 key (PKCS#8 PEM) issued by ``ca``.

    A member certificate with NodeOU ``peer`` whose IP/DNS subject alternative names and
    serverAuth usage come from :meth:`LocalCA.issue` (``hosts=``); TLS clients refuse a server
    certificate without SANs. ``client_auth`` also allows it as a TLS client certificate (a
    Fabric node dialling other nodes with it).
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    identity, signer = ca.issue(
        name, node_ou="peer", hosts=tuple(hosts), valid_days=valid_days, client_auth=client_auth
    )
    return identity.credentials, signer.to_secret_bytes()


def _msp_of(ca_cert: x509.Certificate) -> str:
    names = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not names:
        raise ValueError("CA certificate has no organisation name (the MSP id)")
    return str(names[0].value)


class ClientTrust:
    """The consortium CAs a server accepts client certificates from, keyed by MSP id."""

    def __init__(self, cas: Iterable[tuple[str, bytes]]) -> None:
        self._cas: list[tuple[str, x509.Certificate]] = []
        pems: list[bytes] = []
        for msp_id, pem in cas:
            self._cas.append((msp_id, x509.load_pem_x509_certificate(pem)))
            pems.append(pem.strip() + b"\n")
        if not self._cas:
            raise ValueError("a server needs at least one trusted client CA")
        self.bundle_pem = b"".join(pems)

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> ClientTrust:
        """CAs from PEM files; each CA's MSP id is its subject's organisation name."""
        entries = []
        for path in paths:
            pem = Path(path).read_bytes()
            entries.append((_msp_of(x509.load_pem_x509_certificate(pem)), pem))
        return cls(entries)

    def identity_of(self, cert_pem: bytes) -> str:
        """``<MSP id>/<common name>`` of a certificate issued by one of the trusted CAs."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        for msp_id, ca in self._cas:
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError):
                continue
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if not names:
                raise UnauthenticatedCaller("client certificate has no common name")
            common_name = names[0].value
            if isinstance(common_name, bytes):
                common_name = common_name.decode("utf-8")
            if not _client_auth(cert):
                # Most likely a ledger signing certificate (an old wallet, or a mix-up).
                raise UnauthenticatedCaller(
                    f"client certificate of {msp_id}/{common_name} has no clientAuth extended "
                    f"key usage; the ledger signing key may not open TLS connections: "
                    + REISSUE_HINT
                )
            return f"{msp_id}/{common_name}"
        raise UnauthenticatedCaller("client certificate is not issued by a consortium CA")

    def caller(self, context: Any) -> str:
        """The authenticated caller of a gRPC call (from the TLS peer certificate)."""
        auth = context.auth_context()
        certs = auth.get("x509_pem_cert") or []
        if not certs:
            raise UnauthenticatedCaller("the call carries no client certificate")
        return self.identity_of(bytes(certs[0]))


def _client_auth(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


@dataclass(frozen=True)
class ServerTls:
    """What a server needs: its certificate and key, and whom it trusts as clients."""

    certificate_pem: bytes
    private_key_pem: bytes
    trust: ClientTrust


@dataclass(frozen=True)
class ClientTls:
    """What a client needs: the CAs it trusts for servers, its certificate and key."""

    root_certificates_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes

    @classmethod
    def for_member(cls, identity: Identity, signer: Signer, roots: Iterable[bytes]) -> ClientTls:
        """A member's TLS client certificate and key (from :meth:`LocalCA.issue_tls_client`,
        or ``Wallet.load_tls``), trusting the given CA certificates.

        Refuses a certificate without clientAuth — a ledger signing certificate — here, before
        a server would, so the mistake is named where it is made.
        """
        if not _client_auth(identity.certificate):
            raise ValueError(
                f"certificate of {identity.ibe_id} is not a TLS client certificate (no "
                "clientAuth extended key usage); the ledger signing key may not be used for TLS"
            )
        return cls(
            b"".join(r.strip() + b"\n" for r in roots),
            identity.credentials,
            signer.to_secret_bytes(),
        )
