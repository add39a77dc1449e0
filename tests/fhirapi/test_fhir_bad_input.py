"""Bad requests to the FHIR server: each answers an OperationOutcome with its status, and
nothing is written (the ledger and the content store are byte for byte unchanged)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fhir_world import Fhir, state_digest
from test_fhir_records import consent, valid

from ehrshare.demo import lab_observation


def _later(fhir: Fhir) -> int:
    return fhir.clock.seconds + 86400


Request = Callable[[Fhir, httpx.Client], httpx.Response]

CASES: dict[str, tuple[Request, int, str]] = {
    "malformed json": (
        lambda f, c: c.post("/Observation", content=b'{"resourceType": "Observation",'),
        400,
        "not JSON",
    ),
    "deeply nested JSON": (
        lambda f, c: c.post("/Observation", content=b"[" * 200_000 + b"]" * 200_000),
        400,
        "levels deep",
    ),
    "a JSON array": (lambda f, c: c.post("/Observation", content=b"[]"), 400, "JSON object"),
    "resourceType other than the URL's": (
        lambda f, c: c.post("/Condition", json=lab_observation()),
        400,
        "does not match",
    ),
    "invalid FHIR": (
        lambda f, c: c.post("/Observation", json={"resourceType": "Observation", "status": 7}),
        400,
        "invalid FHIR Observation",
    ),
    "unknown resource type": (
        lambda f, c: c.post("/Nonsense", json={"resourceType": "Nonsense"}),
        404,
        "not a FHIR R4 resource type",
    ),
    "record for an unknown patient": (
        lambda f, c: c.post(
            "/Observation",
            json=lab_observation()
            | {
                "subject": {
                    "identifier": {"system": "urn:ehrshare:member", "value": "HospitalAMSP/zed"}
                }
            },
        ),
        422,
        "HospitalAMSP/zed",
    ),
    "search for an unknown patient": (
        lambda f, c: c.get("/Observation", params={"patient": "HospitalAMSP/zed"}),
        404,
        "no such patient",
    ),
    "unsupported search parameter": (
        lambda f, c: c.get("/Observation", params={"code": "718-7"}),
        400,
        "unsupported search parameter",
    ),
    "read of an unknown record": (
        lambda f, c: c.get("/Observation/r-00000000000000000000000000000000"),
        404,
        "does not exist",
    ),
    "consent for someone else's records": (
        lambda f, c: c.post(
            "/Consent", json=consent(f.ids["bob"], f.ids["baker"], "lab", _later(f))
        ),
        403,
        "cannot consent for",
    ),
    "consent to an unknown grantee": (
        lambda f, c: c.post(
            "/Consent", json=consent(f.ids["alice"], "HospitalBMSP/nobody", "lab", _later(f))
        ),
        422,
        "no such member",
    ),
    "consent with a purpose of use": (
        lambda f, c: c.post(
            "/Consent",
            json=consent(
                f.ids["alice"],
                f.ids["baker"],
                "lab",
                _later(f),
                purpose=[
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ],
            ),
        ),
        422,
        "purpose",
    ),
    "consent for an unknown record type": (
        lambda f, c: c.post(
            "/Consent", json=consent(f.ids["alice"], f.ids["baker"], "nonsense", _later(f))
        ),
        422,
        "nonsense",
    ),
    "consent without an expiry": (
        lambda f, c: c.post(
            "/Consent",
            json=_without_end(consent(f.ids["alice"], f.ids["baker"], "lab", _later(f))),
        ),
        422,
        "period.end",
    ),
    "consent that has already expired": (
        lambda f, c: c.post(
            "/Consent", json=consent(f.ids["alice"], f.ids["baker"], "lab", f.clock.seconds - 60)
        ),
        422,
        "not in the future",
    ),
    "inactive consent to create": (
        lambda f, c: c.post(
            "/Consent",
            json=consent(f.ids["alice"], f.ids["baker"], "lab", _later(f)) | {"status": "inactive"},
        ),
        422,
        "status 'active'",
    ),
    "oversized body": (
        lambda f, c: c.post("/Observation", content=b"{" + b" " * (2 << 20) + b"}"),
        413,
        "at most",
    ),
    "not FHIR JSON": (
        lambda f, c: c.post(
            "/Observation",
            content=json.dumps(lab_observation()).encode(),
            headers={"Content-Type": "text/plain"},
        ),
        415,
        "application/fhir+json",
    ),
    "update of an unknown record (no update-as-create)": (
        lambda f, c: c.put("/Observation/r-1", json=lab_observation() | {"id": "r-1"}),
        404,
        "does not exist",
    ),
    "a PATCH": (
        lambda f, c: c.patch("/Observation/r-1", json=[{"op": "remove", "path": "/status"}]),
        405,
        "not supported",
    ),
    "creating an AuditEvent": (
        lambda f, c: c.post("/AuditEvent", json={"resourceType": "AuditEvent"}),
        405,
        "not supported",
    ),
}


def _without_end(c: dict[str, Any]) -> dict[str, Any]:
    del c["provision"]["period"]
    return c


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_an_operation_outcome_and_changes_nothing(fhir: Fhir, case: str) -> None:
    request, status, words = CASES[case]
    root = fhir.consortium.directory
    with fhir.client("alice") as alice:
        before = state_digest(root)
        r = request(fhir, alice)
        assert r.status_code == status, r.text
        outcome = valid(r.json())
        assert outcome["resourceType"] == "OperationOutcome"
        assert words in outcome["issue"][0]["diagnostics"], outcome
        assert "Traceback" not in r.text
        assert state_digest(root) == before
        # and the server still works
        assert alice.post("/Observation", json=lab_observation()).status_code == 201
