"""Record versions through the FHIR API: ``PUT`` stores a new version (AmendRecord), ``_history``
and ``_history/{vid}`` read them (every version for the owner, the current one for a grantee),
``Patient/{id}/$everything`` gathers what the caller may read, and a ``transaction`` Bundle is
checked whole before anything is written. Refused requests change nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_world import Fhir, state_digest
from test_fhir_records import consent, valid

from ehrshare.demo import lab_observation
from ehrshare_chaincode import canonical
from ehrshare_chaincode.stub import create_composite_key


def _root(fhir: Fhir) -> Any:
    assert fhir.consortium.profile.path is not None
    return fhir.consortium.profile.path.parent


def _create(c: httpx.Client, value: float = 13.2) -> str:
    r = c.post("/Observation", json=lab_observation(value=value))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _update(c: httpx.Client, rid: str, value: float, **extra: Any) -> httpx.Response:
    body = lab_observation(value=value) | {"id": rid, "status": "amended"} | extra
    return c.put(f"/Observation/{rid}", json=body)


def _grant(fhir: Fhir, alice: httpx.Client, to: str = "baker") -> str:
    end = fhir.clock.seconds + 86400
    r = alice.post("/Consent", json=consent(fhir.ids["alice"], fhir.ids[to], "lab", end))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_put_stores_a_new_version_and_history_reads_each(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        rid = _create(alice)
        fhir.clock.advance(60)
        r = _update(alice, rid, 14.1)
        assert r.status_code == 200, r.text
        assert r.headers["location"].endswith(f"/Observation/{rid}/_history/2")
        assert r.headers["etag"] == 'W/"2"'
        assert valid(r.json())["meta"]["versionId"] == "2"

        now = valid(alice.get(f"/Observation/{rid}").json())
        assert (now["valueQuantity"]["value"], now["meta"]["versionId"]) == (14.1, "2")
        v1 = valid(alice.get(f"/Observation/{rid}/_history/1").json())
        assert (v1["valueQuantity"]["value"], v1["meta"]["versionId"]) == (13.2, "1")
        assert v1["meta"]["lastUpdated"] < now["meta"]["lastUpdated"]

        history = valid(alice.get(f"/Observation/{rid}/_history").json())
        assert history["type"] == "history"
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
        assert alice.get(f"/Observation/{rid}/_history/3").status_code == 404
        assert alice.get(f"/Observation/{rid}/_history/x").status_code == 404

        provenance = alice.get("/Provenance", params={"target": rid}).json()
        assert [e["resource"]["activity"]["coding"][0]["code"] for e in provenance["entry"]] == [
            "CREATE",
            "UPDATE",
        ]


def test_a_grantee_reads_the_current_version_only(fhir: Fhir) -> None:
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        rid = _create(alice)
        assert _update(alice, rid, 14.1).status_code == 200
        _grant(fhir, alice)
        assert baker.get(f"/Observation/{rid}").json()["valueQuantity"]["value"] == 14.1
        assert baker.get(f"/Observation/{rid}/_history/2").status_code == 200
        old = baker.get(f"/Observation/{rid}/_history/1")
        assert old.status_code == 403
        assert "only the owner reads older versions" in old.json()["issue"][0]["diagnostics"]
        history = valid(baker.get(f"/Observation/{rid}/_history").json())
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2"]


@pytest.mark.parametrize(
    ("who", "change", "status"),
    [
        ("baker", {}, 403),  # a grantee may read, not amend
        ("chen", {}, 403),  # a stranger may not even see it
        ("alice", {"id": "r-other"}, 400),  # the body's id is not the URL's
        ("alice", {"valueQuantity": {"value": "lots"}}, 400),  # invalid FHIR
        (
            "alice",
            {
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/"
                                "observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ]
            },
            422,
        ),  # another record type
        (
            "alice",
            {
                "subject": {
                    "identifier": {"system": "urn:ehrshare:member", "value": "HospitalAMSP/bob"}
                }
            },
            422,
        ),  # moved to another patient
    ],
)
def test_a_refused_update_changes_nothing(
    fhir: Fhir, who: str, change: dict[str, Any], status: int
) -> None:
    with fhir.client("alice") as alice:
        rid = _create(alice)
        _grant(fhir, alice)
    before = state_digest(_root(fhir))
    with fhir.client(who) as c:
        r = _update(c, rid, 99.0, **change)
    assert r.status_code == status, r.text
    assert valid(r.json())["resourceType"] == "OperationOutcome"
    assert state_digest(_root(fhir)) == before


def test_an_update_as_another_resource_type_is_422_and_changes_nothing(fhir: Fhir) -> None:
    """A Specimen is of record type lab too: the pointer's kind, not a decryption, refuses a
    Specimen as the next version of an Observation."""
    with fhir.client("alice") as alice:
        rid = _create(alice)
        before = state_digest(_root(fhir))
        r = alice.put(f"/Specimen/{rid}", json={"resourceType": "Specimen", "id": rid})
        assert r.status_code == 422, r.text
        assert "not a Specimen" in valid(r.json())["issue"][0]["diagnostics"]
        assert state_digest(_root(fhir)) == before
        assert alice.get(f"/Observation/{rid}").json()["meta"]["versionId"] == "1"


def test_update_of_an_unknown_record_is_404_not_a_create(fhir: Fhir) -> None:
    before = state_digest(_root(fhir))
    with fhir.client("alice") as alice:
        r = _update(alice, "r-" + "0" * 32, 1.0)
    assert r.status_code == 404, r.text
    assert state_digest(_root(fhir)) == before


def test_everything_is_what_the_caller_may_read(fhir: Fhir) -> None:
    alice_path = fhir.ids["alice"].replace("/", ".")
    with fhir.client("alice") as alice:
        rids = {_create(alice, 1.0), _create(alice, 2.0)}
        gid = _grant(fhir, alice)
        mine = valid(alice.get(f"/Patient/{alice_path}/$everything").json())
    assert {e["resource"]["id"] for e in mine["entry"]} == rids | {gid}
    with fhir.client("baker") as baker:
        theirs = valid(baker.get(f"/Patient/{alice_path}/$everything").json())
    assert {e["resource"]["id"] for e in theirs["entry"]} == rids | {gid}
    with fhir.client("chen") as chen:
        nothing = valid(chen.get(f"/Patient/{alice_path}/$everything").json())
        assert nothing["entry"] == []
        assert chen.get(f"/Patient/{alice_path}/$everything", params={"x": "1"}).status_code == 400
        assert chen.get("/Patient/HospitalAMSP.nobody/$everything").status_code == 404


def _bundle(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}


def test_a_transaction_creates_and_updates(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        rid = _create(alice)
        put = lab_observation(value=20.0) | {"id": rid}
        r = alice.post(
            "",
            json=_bundle(
                _post(lab_observation(value=1.0)),
                {"resource": put, "request": {"method": "PUT", "url": f"Observation/{rid}"}},
                _post(lab_observation(value=2.0)),
            ),
        )
        assert r.status_code == 200, r.text
        body = valid(r.json())
        assert body["type"] == "transaction-response"
        assert [e["response"]["status"] for e in body["entry"]] == [
            "201 Created",
            "200 OK",
            "201 Created",
        ]
        assert body["entry"][1]["response"]["location"] == f"Observation/{rid}/_history/2"
        assert alice.get(f"/Observation/{rid}").json()["valueQuantity"]["value"] == 20.0
        found = alice.get("/Observation", params={"patient": fhir.ids["alice"]}).json()
        assert found["total"] == 3


@pytest.mark.parametrize(
    ("bundle", "status"),
    [
        (_bundle(_post(lab_observation()), _post({"resourceType": "Observation"})), 400),
        (_bundle(_post(lab_observation()), kind="batch"), 422),
        (_bundle(_post(lab_observation()), _post(consent("A/a", "B/b", "lab", 1))), 422),
        (_bundle(), 400),
        (
            _bundle(
                _post(lab_observation()),
                {
                    "resource": lab_observation(),
                    "request": {"method": "DELETE", "url": "Observation/x"},
                },
            ),
            422,
        ),
        (
            _bundle(
                _post(lab_observation()),
                {
                    "resource": lab_observation() | {"id": "r-" + "0" * 32},
                    "request": {"method": "PUT", "url": "Observation/r-" + "0" * 32},
                },
            ),
            404,
        ),
        (
            _bundle(
                _post(lab_observation()),
                _post(
                    lab_observation()
                    | {
                        "subject": {
                            "identifier": {
                                "system": "urn:ehrshare:member",
                                "value": "HospitalAMSP/nobody",
                            }
                        }
                    }
                ),
            ),
            422,
        ),
        ({"resourceType": "Observation"}, 400),
    ],
)
def test_a_transaction_with_one_bad_entry_writes_nothing(
    fhir: Fhir, bundle: dict[str, Any], status: int
) -> None:
    before = state_digest(_root(fhir))
    with fhir.client("alice") as alice:
        r = alice.post("", json=bundle)
    assert r.status_code == status, r.text
    assert valid(r.json())["resourceType"] == "OperationOutcome"
    assert state_digest(_root(fhir)) == before


def test_a_transaction_the_chaincode_refuses_writes_nothing(fhir: Fhir) -> None:
    """Entries that pass the server's checks but one of which the chaincode refuses (a patient
    may create records only for herself): the Bundle's one ledger transaction is refused,
    the ciphertexts already stored are released, the ledger and the store are as before."""
    bob = {"identifier": {"system": "urn:ehrshare:member", "value": fhir.ids["bob"]}}
    with fhir.client("alice") as alice:
        rid = _create(alice)
        before = state_digest(_root(fhir))
        r = alice.post(
            "",
            json=_bundle(
                _post(lab_observation(value=1.0)),
                {
                    "resource": lab_observation(value=2.0) | {"id": rid},
                    "request": {"method": "PUT", "url": f"Observation/{rid}"},
                },
                _post(lab_observation(value=3.0) | {"subject": bob}),
            ),
        )
        assert r.status_code == 403, r.text
        text = valid(r.json())["issue"][0]["diagnostics"]
        assert "nothing was written" in text
        assert f"write 2: identity {fhir.ids['alice']} may not create records for" in text
        assert state_digest(_root(fhir)) == before
        assert alice.get(f"/Observation/{rid}").json()["meta"]["versionId"] == "1"


def test_a_transaction_is_one_ledger_transaction_with_every_entry_logged(fhir: Fhir) -> None:
    """Every entry leaves the log entry its single request would (RegisterRecord, AmendRecord),
    all from one ledger transaction, and the chain still verifies."""
    with fhir.client("alice") as alice:
        rid = _create(alice)
        r = alice.post(
            "",
            json=_bundle(
                _post(lab_observation(value=1.0)),
                {
                    "resource": lab_observation(value=2.0) | {"id": rid},
                    "request": {"method": "PUT", "url": f"Observation/{rid}"},
                },
                _post(lab_observation(value=3.0)),
            ),
        )
        assert r.status_code == 200, r.text
        ids = [e["resource"]["id"] for e in r.json()["entry"]]
    with fhir.consortium.session("alice") as session:
        trail = session.audit()
        verified = session.verify_audit()
    written = [e for e in trail.entries if e["action"] in ("RegisterRecord", "AmendRecord")]
    assert [(e["action"], e["record_id"]) for e in written[-3:]] == [
        ("RegisterRecord", ids[0]),
        ("AmendRecord", rid),
        ("RegisterRecord", ids[2]),
    ]
    assert len({e["tx_id"] for e in written[-3:]}) == 1
    assert written[-4]["tx_id"] != written[-1]["tx_id"]  # the earlier create: its own
    assert verified.valid


def test_a_vread_of_a_version_whose_kind_was_edited_is_502(fhir: Fhir) -> None:
    """An older version's pointer is read unchecked (a query); its kind, hand-edited in the
    ledger's database to another resourceType's, does not name what the content decrypts to:
    an integrity failure (502), not an answer (issue 17; tests/sdk/test_record_kind_tamper.py)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
    try:
        import forge
    finally:
        sys.path.pop(0)
    with fhir.client("alice") as alice:
        rid = _create(alice)
        assert _update(alice, rid, 14.1).status_code == 200
        assert alice.get(f"/Observation/{rid}/_history/1").status_code == 200
        key = create_composite_key("ehr.recver", [rid, f"{1:012d}"]).encode()
        db = forge.open_db(_root(fhir) / "ledger")
        try:
            (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            pointer = json.loads(raw)
            pointer["kind"] = fhir.consortium.profile.labels().kind("Specimen")
            forge.set_state(db, key, canonical.dumps(pointer))
        finally:
            db.close()
        r = alice.get(f"/Observation/{rid}/_history/1")
        assert r.status_code == 502, r.text
        assert "does not name the resourceType" in r.text
        assert alice.get(f"/Observation/{rid}").status_code == 200  # the current version
