"""Fixtures for the FHIR API tests: a local consortium, a real FHIR server on loopback in front
of it (bearer tokens for a patient and two clinicians), and an HTTP client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir_world import Fhir

from ehrshare.fhirapi import FhirServer, TokenBook
from ehrshare.fhirapi.gateway import gateway_for
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium

MEMBERS = {
    "alice": ("HospitalA", "patient"),
    "bob": ("HospitalA", "patient"),
    "baker": ("HospitalB", "clinician"),
    "chen": ("HospitalC", "clinician"),
}


@pytest.fixture
def fhir(tmp_path: Path) -> Iterator[Fhir]:
    clock = ManualClock()
    consortium = Consortium.init(tmp_path / "consortium", clock=clock)
    ids = {}
    for name, (hospital, role) in MEMBERS.items():
        consortium.add_member(name, hospital, role)
        s = consortium.session(name)
        s.enroll()
        s.publish_type_keys()
        ids[name] = s.ibe_id
        s.close()
    book = TokenBook.load(tmp_path / "fhir-tokens.json")
    tokens = {}
    for name in MEMBERS:
        book, tokens[name] = book.issue(name)
    server = FhirServer(gateway_for(consortium.runtime, book), ("127.0.0.1", 0)).start()
    try:
        yield Fhir(server.url, consortium, clock, tokens, ids, server)
    finally:
        server.stop()
        consortium.close()
