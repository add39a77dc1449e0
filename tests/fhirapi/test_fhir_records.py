"""The FHIR server's records and who may call it: a real server on loopback, a real HTTP
client, the embedded backend. Every resource the server returns must validate as FHIR R4."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pytest
from fhir_world import Fhir

from ehrshare.demo import lab_observation
from ehrshare.fhir import parse_resource


def valid(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` after checking it is a valid FHIR R4 resource (and each Bundle entry too)."""
    parse_resource(body)
    for entry in body.get("entry", []):
        parse_resource(entry["resource"])
    return body


def consent(patient: str, grantee: str, record_type: str, end: int, **extra: Any) -> dict:
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"end": _dt.datetime.fromtimestamp(end, _dt.UTC).isoformat()},
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        }
                    ]
                },
                "reference": {"identifier": {"system": "urn:ehrshare:member", "value": grantee}},
            }
        ],
        "code": [{"coding": [{"system": "urn:ehrshare:record-type", "code": record_type}]}],
    }
    provision.update(extra)
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
        "patient": {"identifier": {"system": "urn:ehrshare:member", "value": patient}},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": provision,
    }


def test_metadata_is_a_capability_statement_without_a_token(fhir: Fhir) -> None:
    with fhir.client(None) as anon:
        r = anon.get("/metadata")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = valid(r.json())
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


def test_a_request_without_a_known_token_is_401(fhir: Fhir) -> None:
    with fhir.client(None) as anon:
        r = anon.get("/Observation")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert valid(r.json())["issue"][0]["code"] == "login"
        r = anon.get("/Observation", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401
        r = anon.get("/Observation", headers={"Authorization": f"Basic {fhir.tokens['alice']}"})
        assert r.status_code == 401


def test_patient_creates_and_reads_an_observation(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        r = alice.post("/Observation", json=lab_observation())
        assert r.status_code == 201, r.text
        created = valid(r.json())
        rid = created["id"]
        assert rid.startswith("r-")
        assert r.headers["location"] == f"{fhir.url}/Observation/{rid}/_history/1"
        assert created["meta"]["versionId"] == "1"
        r = alice.get(f"/Observation/{rid}")
        assert r.status_code == 200, r.text
        read = valid(r.json())
    assert read == created
    assert read["valueQuantity"]["value"] == 13.2
    # the SDK sees the same record, under the type its category says
    with fhir.consortium.session("alice") as s:
        ref = s.get_record(rid)
        assert ref.type == "lab"
        assert ref.owner == fhir.ids["alice"]


def test_a_clinician_reads_only_through_a_consent_and_not_after_revocation(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        rid = alice.post("/Observation", json=lab_observation()).json()["id"]
        denied = baker.get(f"/Observation/{rid}")
        assert denied.status_code == 403, denied.text
        assert valid(denied.json())["issue"][0]["code"] == "forbidden"

        end = fhir.clock.seconds + 86400
        r = alice.post("/Consent", json=consent(alice_id, baker_id, "lab", end))
        assert r.status_code == 201, r.text
        given = valid(r.json())
        assert given["status"] == "active"
        gid = given["id"]
        assert r.headers["location"] == f"{fhir.url}/Consent/{gid}"

        r = baker.get(f"/Observation/{rid}")
        assert r.status_code == 200, r.text
        assert valid(r.json())["code"]["coding"][0]["code"] == "718-7"
        found = valid(baker.get("/Observation", params={"patient": alice_id}).json())
        assert [e["resource"]["id"] for e in found["entry"]] == [rid]

        # revoke by updating the Consent's status, as a FHIR client does
        given["status"] = "inactive"
        r = alice.put(f"/Consent/{gid}", json=given)
        assert r.status_code == 200, r.text
        assert valid(r.json())["status"] == "inactive"
        assert baker.get(f"/Observation/{rid}").status_code == 403

        events = valid(alice.get("/AuditEvent", params={"patient": alice_id}).json())
    decisions = [
        e["resource"]
        for e in events["entry"]
        if {"system": "urn:ehrshare:audit-action", "code": "AccessDecision"}
        in e["resource"]["subtype"]
    ]
    assert [d["outcome"] for d in decisions] == ["4", "0", "0", "4"]
    assert all(
        d["agent"][0]["who"]["identifier"]["value"] == baker_id and d["action"] == "R"
        for d in decisions
    )
    actions = [e["resource"]["subtype"][-1]["code"] for e in events["entry"]]
    assert "RegisterRecord" in actions and "GrantAccess" in actions and "RevokeAccess" in actions


def test_search_by_patient_lists_only_that_type(fhir: Fhir) -> None:
    alice_id = fhir.ids["alice"]
    med = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": {"text": "aspirin"},
        "subject": {"reference": "Patient/alice"},
    }
    with fhir.client("alice") as alice:
        obs = alice.post("/Observation", json=lab_observation()).json()["id"]
        assert alice.post("/MedicationStatement", json=med).status_code == 201
        found = valid(alice.get("/Observation", params={"patient": alice_id}).json())
        assert [e["resource"]["id"] for e in found["entry"]] == [obs]
        assert found["total"] == 1
        # the record exists, but not as a Condition
        assert alice.get(f"/Condition/{obs}").status_code == 404


def test_a_clinician_stores_a_record_for_a_named_patient(fhir: Fhir) -> None:
    alice_id = fhir.ids["alice"]
    obs = lab_observation()
    obs["subject"] = {"identifier": {"system": "urn:ehrshare:member", "value": alice_id}}
    with fhir.client("baker") as baker:
        r = baker.post("/Observation", json=obs)
    assert r.status_code == 201, r.text
    with fhir.consortium.session("alice") as s:
        assert s.get_record(r.json()["id"]).owner == alice_id


def test_the_server_speaks_https_with_a_certificate(fhir: Fhir, tmp_path) -> None:
    import ipaddress
    import ssl

    import httpx
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ehrshare.fhirapi import FhirServer
    from ehrshare.fhirapi.gateway import gateway_for

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fhir.test")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    from ehrshare.fhirapi import TokenBook

    book = TokenBook.load(tmp_path / "tokens.json")
    book, token = book.issue("alice")
    server = FhirServer(
        gateway_for(fhir.consortium.runtime, book), ("127.0.0.1", 0), tls=(cert_file, key_file)
    ).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert_file))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(verify=ctx, headers=headers, timeout=60) as client:
            r = client.post(f"{server.url}/Observation", json=lab_observation())
            assert r.status_code == 201, r.text
            assert client.get(f"{server.url}/Observation/{r.json()['id']}").status_code == 200
        with httpx.Client(timeout=60) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get(f"{server.url}/metadata")
    finally:
        server.stop()
