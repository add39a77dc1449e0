"""The FHIR API on a real Fabric 2.3 network: the same server in front of a consortium whose
ledger is Fabric (peers of three hospitals, a Raft orderer, our chaincode as ccaas). A patient
stores an Observation and consents for a clinician, who reads; the patient revokes; the
clinician's read is 403 and the AuditEvents (from the peers' ledger) show the denial."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import httpx
import pytest

from ehrshare.demo import lab_observation
from ehrshare.fhirapi import FhirServer, TokenBook
from ehrshare.fhirapi.gateway import gateway_for
from ehrshare.network.supervisor import pid_alive
from ehrshare.provisioning import Consortium

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def _consent(patient: str, grantee: str, end: str) -> dict:
    member = "urn:ehrshare:member"
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": member, "value": patient}},
        "provision": {
            "type": "permit",
            "period": {"end": end},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": (
                                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
                                ),
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"identifier": {"system": member, "value": grantee}},
                }
            ],
            "code": [{"coding": [{"system": "urn:ehrshare:record-type", "code": "lab"}]}],
        },
    }


def test_the_fhir_story_holds_on_fabric(tmp_path: Path) -> None:
    c = Consortium.init(tmp_path / "c", ledger="fabric")
    assert c.network is not None
    pids = list(c.network.pids().values())
    try:
        ids = {}
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
                ids[name] = s.ibe_id
        book = TokenBook.load(tmp_path / "tokens.json")
        book, alice_token = book.issue("alice")
        book, baker_token = book.issue("baker")
        server = FhirServer(gateway_for(c.runtime, book), ("127.0.0.1", 0)).start()
        headers = {"Content-Type": "application/fhir+json"}
        try:
            with (
                httpx.Client(
                    base_url=server.url,
                    headers=headers | {"Authorization": f"Bearer {alice_token}"},
                    timeout=120,
                ) as alice,
                httpx.Client(
                    base_url=server.url,
                    headers=headers | {"Authorization": f"Bearer {baker_token}"},
                    timeout=120,
                ) as baker,
            ):
                r = alice.post("/Observation", json=lab_observation())
                assert r.status_code == 201, r.text
                rid = r.json()["id"]
                assert baker.get(f"/Observation/{rid}").status_code == 403
                end = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(days=1)).isoformat()
                r = alice.post("/Consent", json=_consent(ids["alice"], ids["baker"], end))
                assert r.status_code == 201, r.text
                gid = r.json()["id"]
                r = baker.get(f"/Observation/{rid}")
                assert r.status_code == 200, r.text
                assert r.json()["valueQuantity"]["value"] == 13.2
                assert alice.delete(f"/Consent/{gid}").status_code == 200
                assert baker.get(f"/Observation/{rid}").status_code == 403
                events = alice.get("/AuditEvent", params={"patient": ids["alice"]}).json()
        finally:
            server.stop()
        decisions = [
            e["resource"]["outcome"]
            for e in events["entry"]
            if e["resource"]["subtype"][-1]["code"] == "AccessDecision"
        ]
        assert decisions == ["4", "0", "4"]
    finally:
        c.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    assert pids and not [p for p in pids if pid_alive(p)]
