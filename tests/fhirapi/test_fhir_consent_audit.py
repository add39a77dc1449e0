"""Grants as Consent both ways, and the operation log as AuditEvents that an auditor can verify
offline from the exported Bundle."""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import json

import pytest
from fhir_world import Fhir
from test_fhir_records import consent, valid

from ehrshare.demo import lab_observation
from ehrshare.fhirapi.auditevent import AuditExportError, entries_from_bundle
from ehrshare_chaincode.auditlog import verify_entries


def test_a_grant_made_with_the_sdk_reads_back_as_the_same_consent(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    with fhir.consortium.session("alice") as s:
        grant = s.grant(baker_id, "imaging", expires=_dt.timedelta(days=3), max_hops=2)
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        mine = valid(alice.get(f"/Consent/{grant.grant_id}").json())
        theirs = valid(baker.get(f"/Consent/{grant.grant_id}").json())
        listed = valid(alice.get("/Consent", params={"patient": alice_id}).json())
    assert mine == theirs
    assert [e["resource"] for e in listed["entry"]] == [mine]
    assert mine["status"] == "active"
    assert mine["patient"]["identifier"]["value"] == alice_id
    assert mine["performer"][0]["identifier"]["value"] == alice_id
    assert mine["provision"]["actor"][0]["reference"]["identifier"]["value"] == baker_id
    assert mine["provision"]["code"][0]["coding"][0]["code"] == "imaging"
    end = _dt.datetime.fromisoformat(mine["provision"]["period"]["end"].replace("Z", "+00:00"))
    assert int(end.timestamp()) == grant.expiry
    hops = [e for e in mine["extension"] if e["url"] == "urn:ehrshare:fhir:extension:max-hops"]
    assert hops[0]["valueUnsignedInt"] == 2


def test_a_consent_made_over_fhir_is_the_grant_it_says(fhir: Fhir) -> None:
    alice_id, chen_id = fhir.ids["alice"], fhir.ids["chen"]
    end = fhir.clock.seconds + 7 * 86400
    body = consent(alice_id, chen_id, "lab", end)
    body["extension"] = [{"url": "urn:ehrshare:fhir:extension:max-hops", "valueUnsignedInt": 1}]
    with fhir.client("alice") as alice:
        r = alice.post("/Consent", json=body)
        assert r.status_code == 201, r.text
        gid = r.json()["id"]
    with fhir.consortium.session("alice") as s:
        g = s.get_grant(gid)
    assert (g.owner, g.grantee, g.type, g.expiry, g.max_hops, g.state) == (
        alice_id,
        chen_id,
        "lab",
        end,
        1,
        "active",
    )


def test_delete_revokes_and_only_the_grantor_may(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        gid = alice.post(
            "/Consent", json=consent(alice_id, baker_id, "lab", fhir.clock.seconds + 86400)
        ).json()["id"]
        r = baker.delete(f"/Consent/{gid}")
        assert r.status_code == 403, r.text
        assert alice.get(f"/Consent/{gid}").json()["status"] == "active"
        r = alice.delete(f"/Consent/{gid}")
        assert r.status_code == 200, r.text
        assert valid(r.json())["status"] == "inactive"


def test_an_expired_grant_is_an_inactive_consent(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    with fhir.client("alice") as alice:
        gid = alice.post(
            "/Consent", json=consent(alice_id, baker_id, "lab", fhir.clock.seconds + 60)
        ).json()["id"]
        fhir.clock.advance(61)
        assert alice.get(f"/Consent/{gid}").json()["status"] == "inactive"


@pytest.fixture
def exported(fhir: Fhir) -> dict:
    """An AuditEvent Bundle of alice's log after a create, a grant, a read and a denial."""
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        rid = alice.post("/Observation", json=lab_observation()).json()["id"]
        assert baker.get(f"/Observation/{rid}").status_code == 403
        alice.post("/Consent", json=consent(alice_id, baker_id, "lab", fhir.clock.seconds + 99))
        assert baker.get(f"/Observation/{rid}").status_code == 200
        bundle = alice.get("/AuditEvent", params={"patient": alice_id}).json()
    return valid(bundle)


def test_an_exported_audit_bundle_verifies_offline(fhir: Fhir, exported: dict) -> None:
    entries = entries_from_bundle(exported)
    chain = fhir.ids["alice"]
    result = verify_entries(chain, entries, {"seq": len(entries), "hash": entries[-1]["hash"]})
    assert result["valid"], result
    outcomes = [
        (e["resource"]["subtype"][-1]["code"], e["resource"]["outcome"]) for e in exported["entry"]
    ]
    assert ("AccessDecision", "4") in outcomes and ("AccessDecision", "0") in outcomes


def test_an_edited_audit_event_is_caught(exported: dict) -> None:
    denial = next(i for i, e in enumerate(exported["entry"]) if e["resource"]["outcome"] == "4")
    edited = copy.deepcopy(exported)
    edited["entry"][denial]["resource"]["outcome"] = "0"  # hide the denial
    with pytest.raises(AuditExportError, match=f"entry {denial + 1}: AuditEvent.outcome"):
        entries_from_bundle(edited)


def test_an_edited_carried_entry_breaks_the_chain(fhir: Fhir, exported: dict) -> None:
    edited = copy.deepcopy(exported)
    event = edited["entry"][-1]["resource"]
    ext = event["extension"][0]
    entry = json.loads(base64.b64decode(ext["valueBase64Binary"]))
    entry["actor"] = fhir.ids["chen"]  # blame someone else, and rewrite the visible agent too
    ext["valueBase64Binary"] = base64.b64encode(json.dumps(entry).encode()).decode()
    event["agent"][0]["who"]["identifier"]["value"] = fhir.ids["chen"]
    event["agent"][0]["who"]["display"] = f"{fhir.ids['chen']} ({entry['actor_msp']})"
    entries = entries_from_bundle(edited)
    head = {"seq": len(entries), "hash": entries_from_bundle(exported)[-1]["hash"]}
    result = verify_entries(fhir.ids["alice"], entries, head)
    assert not result["valid"]
    assert result["first_bad_seq"] == len(entries)


def test_provenance_names_who_created_each_record_and_when(fhir: Fhir) -> None:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    obs = lab_observation()
    obs["subject"] = {"identifier": {"system": "urn:ehrshare:member", "value": alice_id}}
    with fhir.client("baker") as baker, fhir.client("alice") as alice:
        rid = baker.post("/Observation", json=obs).json()["id"]
        own = alice.post("/Observation", json=lab_observation()).json()["id"]
        by_target = valid(alice.get("/Provenance", params={"target": f"Observation/{rid}"}).json())
        by_patient = valid(alice.get("/Provenance", params={"patient": alice_id}).json())
        assert alice.get("/Provenance").status_code == 400
        # chen has no grant: the chain refuses him the record's history
        with fhir.client("chen") as chen:
            assert chen.get("/Provenance", params={"target": rid}).status_code == 403
    [prov] = [e["resource"] for e in by_target["entry"]]
    assert prov["target"][0]["identifier"]["value"] == rid
    assert prov["agent"][0]["who"]["identifier"]["value"] == baker_id
    assert prov["activity"]["coding"][0]["code"] == "CREATE"
    authors = {
        e["resource"]["target"][0]["identifier"]["value"]: e["resource"]["agent"][0]["who"][
            "identifier"
        ]["value"]
        for e in by_patient["entry"]
    }
    assert authors == {rid: baker_id, own: alice_id}
