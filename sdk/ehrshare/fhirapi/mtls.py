"""Who is calling the FHIR server, by mutual TLS: the member's wallet TLS client certificate.

The TLS handshake already checked that the client holds the key of a certificate chaining to one
of the consortium's CAs (the server's ``ssl`` context trusts exactly those); this module then
names the member as the KGC and proxy services do (:class:`ehrshare.services.tls.ClientTrust`:
``<MSP id>/<common name>``, clientAuth required) and maps it to the wallet the server acts for
— only if the certificate is *that wallet's own* ``tls-cert.pem``, byte for byte, so a
certificate replaced by ``consortium reissue-tls`` stops working at once, and a member whose
wallet the server was not told to serve is refused (401).

This module must not open sessions or read private keys: it reads certificates only.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ehrshare.errors import ConfigurationError, UsageError
from ehrshare.fhirapi.auth import Credentials
from ehrshare.fhirapi.outcome import FhirError
from ehrshare.services.tls import ClientTrust, UnauthenticatedCaller

__all__ = ["CertificateMap", "ServedWalletError", "ca_files_of"]


class ServedWalletError(UsageError):
    """A wallet the server was asked to act for cannot be served by mutual TLS."""


def ca_files_of(profile_dir: Path, listed: Iterable[Path]) -> list[Path]:
    """The consortium CA certificates a server trusts for clients: the profile's ``cas``, else
    (a consortium made by ``consortium init``) ``ca/*/ca-cert.pem`` beside the profile."""
    files = list(listed)
    if not files:
        files = sorted(profile_dir.glob("ca/*/ca-cert.pem"))
    if not files:
        raise ConfigurationError(
            "mutual TLS needs the consortium's CA certificates: the profile lists none ('cas') "
            "and there is no ca/*/ca-cert.pem beside it; give them with --client-ca"
        )
    return files


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@dataclass(frozen=True, slots=True)
class CertificateMap:
    """The consortium CAs the server trusts, and for each member it acts for, the wallet and
    that wallet's TLS client certificate (DER)."""

    trust: ClientTrust
    wallets: Mapping[str, tuple[str, bytes]]  # ibe id -> (wallet name, certificate DER)

    @classmethod
    def build(cls, ca_pems: Iterable[Path], served: Mapping[str, Path]) -> CertificateMap:
        """From CA certificate files and ``{wallet name: wallet directory}``; each wallet must
        hold a TLS client certificate issued by one of the CAs (else :class:`ServedWalletError`,
        naming the wallet and how to re-issue)."""
        trust = ClientTrust.from_pem_files(ca_pems)
        wallets: dict[str, tuple[str, bytes]] = {}
        for name, directory in sorted(served.items()):
            cert_file = directory / "tls-cert.pem"
            try:
                pem = cert_file.read_bytes()
            except FileNotFoundError:
                raise ServedWalletError(
                    f"wallet {name} has no TLS client certificate ({cert_file} is missing); "
                    "re-issue it with 'ehrshare consortium reissue-tls'"
                ) from None
            try:
                ibe_id = trust.identity_of(pem)
            except (UnauthenticatedCaller, ValueError) as exc:
                raise ServedWalletError(
                    f"wallet {name}'s TLS certificate cannot authenticate here: {exc}"
                ) from None
            wallets[ibe_id] = (name, _der(pem))
        return cls(trust, wallets)

    @property
    def wallet_names(self) -> frozenset[str]:
        """The wallets the server acts for."""
        return frozenset(name for name, _ in self.wallets.values())

    @property
    def mutual_tls(self) -> bool:
        """True: the client certificate names the caller."""
        return True

    @property
    def ca_bundle_pem(self) -> bytes:
        """The trusted CA certificates, for the server's ``ssl`` context."""
        return self.trust.bundle_pem

    def wallet_for_request(self, credentials: Credentials) -> str:
        """The wallet of the member whose certificate the TLS handshake verified."""
        der = credentials.client_certificate
        if der is None:
            raise FhirError(
                401,
                "this server authenticates by mutual TLS: present your wallet's "
                "TLS client certificate (tls-cert.pem, tls-key.pem)",
            )
        try:
            ibe_id = self.trust.identity_of(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))
        except (UnauthenticatedCaller, ValueError) as exc:
            raise FhirError(401, f"client certificate refused: {exc}") from None
        known = self.wallets.get(ibe_id)
        if known is None:
            raise FhirError(401, f"this server does not act for {ibe_id}")
        name, expected = known
        if der != expected:
            raise FhirError(
                401,
                f"the client certificate of {ibe_id} is not the one in its wallet (re-issued?); "
                "use the wallet's current tls-cert.pem",
            )
        return name
