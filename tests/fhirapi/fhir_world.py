"""The world of the FHIR API tests: the server under test, its clients, and a digest of what
the consortium stores (to assert that a refused request changed nothing); and for the tests
that run the server as its own process, a consortium made with the CLI (:func:`cli_world`)
and the server process (:func:`serve_process`)."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.faults import FAULT_ENV
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


runner = CliRunner()


def cli(*args: str) -> str:
    """Run an ``ehrshare`` command in-process; asserts success, returns its last stdout line."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def cli_world(base: Path, *init_args: str) -> dict[str, str]:
    """A consortium made with the CLI in ``base/c`` (``init_args`` go to ``consortium
    init``): patient alice (HospitalA) and clinician baker (HospitalB), enrolled, a bearer
    token each. Keys: profile, ALICE, BAKER (tokens), ALICE_ID, BAKER_ID."""
    profile = str(base / "c")
    cli("consortium", "init", profile, *init_args)
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("baker", "HospitalB", "clinician"),
    ):
        cli("consortium", "add-member", name, "--hospital", hospital, "--role", role, "-p", profile)
        cli("enroll", "-p", profile, "-w", name)
    return {
        "profile": profile,
        "ALICE": cli("fhir", "token", "-p", profile, "-w", "alice", "--patient-own-gateway"),
        "BAKER": cli("fhir", "token", "-p", profile, "-w", "baker"),
        "ALICE_ID": "HospitalAMSP/alice",
        "BAKER_ID": "HospitalBMSP/baker",
    }


def serve_process(
    profile: str, *extra: str, fault: str = "", stderr: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``ehrshare fhir serve -p profile *extra`` as its own process (stop it by its pid);
    ``fault`` sets ``EHRSHARE_FAULT_AT`` in it, and nothing else does."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "ehrshare", "fhir", "serve", "-p", profile, *extra],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )


def server_cert(profile: str, tmp_path: Path) -> tuple[str, str]:
    """A TLS certificate and key for the server, from HospitalA's CA beside the profile."""
    from ehrshare.identity import LocalCA
    from ehrshare.services.tls import issue_tls_certificate

    cert, key = issue_tls_certificate(LocalCA.load(Path(profile) / "ca" / "HospitalAMSP"), "fhir")
    (tmp_path / "s.pem").write_bytes(cert)
    (tmp_path / "s.key").write_bytes(key)
    return str(tmp_path / "s.pem"), str(tmp_path / "s.key")


def wallet_client(profile: str, url: str, name: str) -> httpx.Client:
    """A client presenting wallet ``name``'s TLS certificate, trusting HospitalA's CA."""
    ctx = ssl.create_default_context(
        cafile=str(Path(profile) / "ca" / "HospitalAMSP" / "ca-cert.pem")
    )
    w = Path(profile) / "wallets" / name
    ctx.load_cert_chain(str(w / "tls-cert.pem"), str(w / "tls-key.pem"))
    headers = {"Content-Type": "application/fhir+json"}
    return httpx.Client(base_url=url, verify=ctx, headers=headers, timeout=120)
