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

A running service takes a new consortium CA without a restart: :class:`ReloadingClientTrust`
reads its CAs from files (``--client-ca`` files and the ``*.pem`` of a ``--client-ca-dir``) and
reads them again when they change (a ``stat`` of each, at every new TLS handshake and every
call); the gRPC server asks it for the current CA bundle before each handshake
(:func:`ehrshare.services.rpc._server`). A set that cannot be read whole — a file unreadable or
malformed mid-run, or no CA left — is logged and the last good set stays in force.

What this module must not do: log private keys, accept a certificate that does not verify under
a trusted CA or lacks clientAuth, or derive an identity from anything but the peer certificate
gRPC verified.
"""

from __future__ import annotations

import logging
import os
import threading
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
    "ReloadingClientTrust",
    "ServerTls",
    "UnauthenticatedCaller",
    "issue_tls_certificate",
]


_log = logging.getLogger(__name__)

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
        self._set = _CaSet.of(cas)

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> ClientTrust:
        """CAs from PEM files; each CA's MSP id is its subject's organisation name."""
        return cls(_read_pem_files(paths))

    @property
    def bundle_pem(self) -> bytes:
        """The trusted CA certificates (PEM, concatenated): what the TLS handshake checks."""
        return self._set.bundle_pem

    @property
    def generation(self) -> int:
        """Counts the changes of the set (0: the set it started with)."""
        return 0

    def refresh(self) -> bool:
        """Read the set again if its files changed; True if it changed (never, here)."""
        return False

    def identity_of(self, cert_pem: bytes) -> str:
        """``<MSP id>/<common name>`` of a certificate issued by one of the trusted CAs."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        for msp_id, ca in self._set.cas:
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
        self.refresh()  # a CA removed since the connection opened no longer names its callers
        return self.identity_of(bytes(certs[0]))


@dataclass(frozen=True)
class _CaSet:
    cas: tuple[tuple[str, x509.Certificate], ...]
    bundle_pem: bytes

    @classmethod
    def of(cls, entries: Iterable[tuple[str, bytes]]) -> _CaSet:
        cas = []
        pems: list[bytes] = []
        for msp_id, pem in entries:
            cas.append((msp_id, x509.load_pem_x509_certificate(pem)))
            pems.append(pem.strip() + b"\n")
        if not cas:
            raise ValueError("a server needs at least one trusted client CA")
        return cls(tuple(cas), b"".join(pems))


def _read_pem_files(paths: Iterable[Path]) -> list[tuple[str, bytes]]:
    entries = []
    for path in paths:
        pem = Path(path).read_bytes()
        try:
            entries.append((_msp_of(x509.load_pem_x509_certificate(pem)), pem))
        except ValueError as exc:
            raise ValueError(f"{path} is not a CA certificate (PEM): {exc}") from None
    return entries


_Stamp = tuple[tuple[str, int, int, int], ...]


class ReloadingClientTrust(ClientTrust):
    """The client CAs in ``files`` and in ``directory`` (its ``*.pem``), read again when they
    change.

    :meth:`refresh` compares each file's inode, size and modification time with the last look
    (a ``stat`` per file: cheap enough for every handshake) and reads the set again when they
    differ. A set that fails to read whole — a file unreadable, not a PEM certificate, or no
    CA left — is logged as an error and the last good set stays in force; the next change of
    the files is tried again. The first read must succeed (raises ``ValueError`` /
    ``OSError``)."""

    def __init__(self, files: Sequence[Path] = (), directory: Path | None = None) -> None:
        self.files = tuple(Path(f) for f in files)
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp = self._look()
        super().__init__(_read_pem_files(self._paths()))
        self._generation = 0

    def _paths(self) -> list[Path]:
        paths = list(self.files)
        if self.directory is not None:
            # Not the dot-named temporary files of an atomic write under way (or killed).
            paths += sorted(
                p
                for p in self.directory.glob("*.pem")
                if not p.name.startswith(".") and p.is_file()
            )
        return paths

    def _look(self) -> _Stamp:
        stamp = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                stamp.append((str(path), -1, -1, -1))
                continue
            stamp.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    @property
    def generation(self) -> int:
        return self._generation

    def refresh(self) -> bool:
        stamp = self._look()
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # taken before reading: a change while reading is seen next time
            try:
                fresh = _CaSet.of(_read_pem_files(self._paths()))
            except (OSError, ValueError) as exc:
                _log.error("client CAs not re-read, the last good set stays in force: %s", exc)
                return False
            if fresh.bundle_pem == self._set.bundle_pem:
                return False
            self._set = fresh
            self._generation += 1
        _log.info("client CAs re-read: %s", ", ".join(msp for msp, _ in fresh.cas))
        return True


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
