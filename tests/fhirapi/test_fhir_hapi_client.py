"""HAPI FHIR's generic client (Java; Maven Central) drives the server over HTTPS with mutual TLS:
the story of issue 17 — a patient stores an Observation (a conditional create, sent twice:
made once), updates it (history, vread), stores two
more in a transaction and consents for a clinician, the clinician reads and asks for
$everything, the patient revokes by updating the Consent, the clinician's read is 403, the
AuditEvents show both decisions. The program is ``tests/fhirapi/hapi`` (built by ``make
hapi-client``, part of ``make tools``, into ``network/build/hapi``); HAPI parses every response
with its own R4 models."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fhir_world import Fhir, start_mtls_server

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "network" / "build" / "hapi"
JAR = BUILD / "hapi-story.jar"
SOURCE = ROOT / "tests" / "fhirapi" / "hapi"


def _classpath() -> str:
    sources = [SOURCE / "pom.xml", *SOURCE.rglob("*.java")]
    built = JAR.stat().st_mtime if JAR.is_file() else None
    if (
        built is None
        or shutil.which("java") is None
        or any(src.stat().st_mtime > built for src in sources)
    ):
        # Older than its sources (as make sees it): the program would tell the old story.
        message = (
            f"the HAPI client program is not built or is stale ({JAR}): run 'make hapi-client'"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI builds it ('make test' needs 'make tools')
        pytest.skip(message)
    return f"{JAR}{os.pathsep}{BUILD / 'lib' / '*'}"


def test_hapi_client_stores_consents_reads_revokes_and_audits(fhir: Fhir, tmp_path: Path) -> None:
    classpath = _classpath()
    server = start_mtls_server(fhir.consortium, tmp_path, ["alice", "baker"], ["alice", "baker"])
    try:
        alice, baker = server.wallets["alice"], server.wallets["baker"]
        result = subprocess.run(
            [
                *("java", "-cp", classpath, "org.ehrshare.tests.HapiStory"),
                *(server.url, str(server.server_ca)),
                *(fhir.ids["alice"], str(alice / "tls-cert.pem"), str(alice / "tls-key.pem")),
                *(fhir.ids["baker"], str(baker / "tls-cert.pem"), str(baker / "tls-key.pem")),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "capabilities 4.0.1",
        "created Observation",
        "conditional create found it",
        "updated to version 2, history 2",
        "transaction of 2",
        "created Consent",
        "clinician read 14.1",
        "clinician $everything 3 Observations 1 Consent",
        "revoked by update",
        "clinician read 403",
        "audit decisions 0 4",
    ]
