"""The world of the FHIR API tests: the server under test, its clients, and a digest of what
the consortium stores (to assert that a refused request changed nothing)."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from ehrshare.fhirapi import FhirServer
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium


@dataclass
class Fhir:
    """The server under test and a client per member (``anon`` sends no token)."""

    url: str
    consortium: Consortium
    clock: ManualClock
    tokens: dict[str, str]
    ids: dict[str, str]
    server: FhirServer

    def client(self, name: str | None) -> httpx.Client:
        headers = {"Content-Type": "application/fhir+json"}
        if name is not None:
            headers["Authorization"] = f"Bearer {self.tokens[name]}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def state_digest(consortium_dir: Path) -> str:
    """SHA-256 over the ledger database and the content store (names and bytes), so a test can
    assert that a refused request changed nothing. SQLite's shared-memory index is left out:
    readers rewrite it without changing anything stored."""
    h = hashlib.sha256()
    for area in ("ledger", "store"):
        for path in sorted((consortium_dir / area).rglob("*")):
            if not path.is_file() or path.name.endswith("-shm"):
                continue
            h.update(str(path.relative_to(consortium_dir)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class MtlsServer:
    """A FHIR server requiring mutual TLS, and what its clients need to reach it."""

    server: FhirServer
    server_ca: Path  # the CA that issued the server's certificate
    wallets: dict[str, Path]  # wallet directory of every member

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, name: str | None, headers: dict[str, str] | None = None) -> httpx.Client:
        """A client presenting ``name``'s wallet TLS certificate (none for None)."""
        ctx = ssl.create_default_context(cafile=str(self.server_ca))
        if name is not None:
            w = self.wallets[name]
            ctx.load_cert_chain(str(w / "tls-cert.pem"), str(w / "tls-key.pem"))
        sent = {"Content-Type": "application/fhir+json", **(headers or {})}
        return httpx.Client(base_url=self.url, verify=ctx, headers=sent, timeout=60)


def start_mtls_server(
    consortium: Consortium, tmp: Path, members: list[str], all_members: list[str]
) -> MtlsServer:
    """A real FHIR server on loopback with a certificate of HospitalA's CA, acting for
    ``members`` by their wallets' TLS certificates, trusting the consortium's CAs."""
    from ehrshare.fhirapi.gateway import gateway_for
    from ehrshare.fhirapi.mtls import CertificateMap, ca_files_of
    from ehrshare.identity import LocalCA
    from ehrshare.services.tls import issue_tls_certificate

    assert consortium.profile.path is not None
    root = consortium.profile.path.parent
    cert, key = issue_tls_certificate(LocalCA.load(root / "ca" / "HospitalAMSP"), "fhir")
    (tmp / "fhir-tls.pem").write_bytes(cert)
    (tmp / "fhir-tls.key").write_bytes(key)
    wallets = {n: consortium.profile.wallet(n).directory for n in all_members}
    cert_map = CertificateMap.build(ca_files_of(root, []), {n: wallets[n] for n in members})
    server = FhirServer(
        gateway_for(consortium.runtime, cert_map),
        ("127.0.0.1", 0),
        tls=(tmp / "fhir-tls.pem", tmp / "fhir-tls.key"),
        client_cas=cert_map.ca_bundle_pem,
    ).start()
    return MtlsServer(server, root / "ca" / "HospitalAMSP" / "ca-cert.pem", wallets)
