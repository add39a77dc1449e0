"""A FHIR client this project did not write drives the server: ``fhirclient`` (SMART on FHIR's
Python client, R4 models, PyPI). The story of issue 17: a patient stores an Observation and
consents for a clinician, the clinician reads, the patient revokes by updating the Consent, the
clinician's read is refused (403), and the AuditEvents show it. Every resource the server sends
back is parsed by fhirclient's own (strict) R4 models."""

from __future__ import annotations

import datetime as _dt

import pytest
from fhir_world import Fhir
from fhirclient.models.auditevent import AuditEvent
from fhirclient.models.bundle import Bundle
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.consent import Consent
from fhirclient.models.observation import Observation
from fhirclient.server import FHIRPermissionDeniedException, FHIRServer
from test_fhir_records import consent

from ehrshare.demo import lab_observation


def _server(fhir: Fhir, name: str) -> FHIRServer:
    server = FHIRServer(None, base_uri=fhir.url + "/")
    server.session.headers["Authorization"] = f"Bearer {fhir.tokens[name]}"
    return server


def test_fhirclient_stores_consents_reads_revokes_and_audits(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    alice, baker = _server(fhir, "alice"), _server(fhir, "baker")

    capability = CapabilityStatement(alice.request_json("metadata"))
    assert capability.fhirVersion == "4.0.1"

    created = Observation(lab_observation()).create(alice)
    rid = Observation(created).id
    assert rid.startswith("r-")

    end = fhir.clock.seconds + 86400
    given = Consent(Consent(consent(alice_id, baker_id, "lab", end)).create(alice))
    assert given.status == "active"
    assert given.provision.period.end.date == _dt.datetime.fromtimestamp(end, _dt.UTC)

    read = Observation.read(rid, baker)
    assert read.valueQuantity.value == 13.2
    assert read.code.coding[0].code == "718-7"

    given.status = "inactive"
    updated = Consent(given.update(alice))
    assert updated.status == "inactive"
    with pytest.raises(FHIRPermissionDeniedException):
        Observation.read(rid, baker)

    listed = Bundle(alice.request_json(f"Consent?patient={alice_id}"))
    assert [Consent(e.resource.as_json()).status for e in listed.entry] == ["inactive"]
    events = Bundle(alice.request_json(f"AuditEvent?patient={alice_id}"))
    decisions = [
        AuditEvent(e.resource.as_json())
        for e in events.entry
        if any(s.code == "AccessDecision" for s in e.resource.subtype)
    ]
    assert [d.outcome for d in decisions] == ["0", "4"]
    assert all(d.agent[0].who.identifier.value == baker_id for d in decisions)
