"""Version-aware updates: ETag ``W/"n"`` and Last-Modified on every record answer, and
``If-Match`` on PUT — a stale version is 412 with nothing written, also when the record moves
on between the server's check and the ledger write (the chaincode checks again)."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
from fhir_world import Fhir, state_digest

import ehrshare.session.records as records
from ehrshare.demo import lab_observation
from ehrshare.fhir import parse_resource


def created(fhir: Fhir, value: float = 1.0) -> dict[str, Any]:
    with fhir.client("alice") as alice:
        r = alice.post("/Observation", json=lab_observation(value=value))
        assert r.status_code == 201, r.text
        assert r.headers["ETag"] == 'W/"1"'
        return dict(r.json())


def consortium_dir(fhir: Fhir) -> Any:
    assert fhir.consortium.profile.path is not None
    return fhir.consortium.profile.path.parent


def test_record_answers_carry_etag_and_last_modified(fhir: Fhir) -> None:
    obs = created(fhir)
    rid = obs["id"]
    with fhir.client("alice") as alice:
        for path in (f"/Observation/{rid}", f"/Observation/{rid}/_history/1"):
            r = alice.get(path)
            assert r.status_code == 200
            assert r.headers["ETag"] == 'W/"1"'
            when = email.utils.parsedate_to_datetime(r.headers["Last-Modified"])
            assert when.isoformat().replace("+00:00", "Z") == r.json()["meta"]["lastUpdated"]
        fhir.clock.advance(60)
        r = alice.put(f"/Observation/{rid}", json=lab_observation(value=2.0) | {"id": rid})
        assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"'
        assert alice.get(f"/Observation/{rid}").headers["ETag"] == 'W/"2"'
        assert alice.get(f"/Observation/{rid}/_history/1").headers["ETag"] == 'W/"1"'
        assert "Last-Modified" in r.headers


@pytest.mark.parametrize("tag", ['W/"1"', '"1"', "*"])
def test_if_match_of_the_current_version_updates(fhir: Fhir, tag: str) -> None:
    rid = created(fhir)["id"]
    with fhir.client("alice") as alice:
        body = lab_observation(value=2.0) | {"id": rid}
        r = alice.put(f"/Observation/{rid}", json=body, headers={"If-Match": tag})
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == "2"


def test_a_stale_if_match_is_412_and_writes_nothing(fhir: Fhir) -> None:
    rid = created(fhir)["id"]
    with fhir.client("alice") as alice:
        body = lab_observation(value=2.0) | {"id": rid}
        assert (
            alice.put(f"/Observation/{rid}", json=body, headers={"If-Match": 'W/"1"'}).status_code
            == 200
        )
        before = state_digest(consortium_dir(fhir))
        stale = lab_observation(value=3.0) | {"id": rid}
        for tag in ('W/"1"', 'W/"3"'):
            r = alice.put(f"/Observation/{rid}", json=stale, headers={"If-Match": tag})
            assert r.status_code == 412, r.text
            parse_resource(r.json())
            assert "is at version 2" in r.json()["issue"][0]["diagnostics"]
        assert state_digest(consortium_dir(fhir)) == before
        r = alice.put(f"/Observation/{rid}", json=stale, headers={"If-Match": 'W/"2"'})
        assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"


@pytest.mark.parametrize("tag", ["1", 'W/"x"', 'W/"0"', 'W/"1", W/"2"', 'W/""'])
def test_a_malformed_if_match_is_400_and_writes_nothing(fhir: Fhir, tag: str) -> None:
    rid = created(fhir)["id"]
    before = state_digest(consortium_dir(fhir))
    with fhir.client("alice") as alice:
        body = lab_observation(value=2.0) | {"id": rid}
        r = alice.put(f"/Observation/{rid}", json=body, headers={"If-Match": tag})
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    assert state_digest(consortium_dir(fhir)) == before


def test_an_update_landing_between_the_check_and_the_write_makes_it_412(
    fhir: Fhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer amends the record after the server checked If-Match and stored its
    ciphertext: the chaincode refuses the write in its own transaction."""
    rid = created(fhir)["id"]
    original = records.fault_point
    fired: list[str] = []

    def concurrent_update(name: str) -> None:
        if name == "amend.after_store" and not fired:
            fired.append(name)
            with fhir.consortium.session("alice") as other:
                other.amend_record(rid, lab_observation(value=7.0))
        original(name)

    monkeypatch.setattr(records, "fault_point", concurrent_update)
    with fhir.client("alice") as alice:
        body = lab_observation(value=2.0) | {"id": rid}
        r = alice.put(f"/Observation/{rid}", json=body, headers={"If-Match": 'W/"1"'})
        assert fired and r.status_code == 412, r.text
        now = alice.get(f"/Observation/{rid}").json()
        assert now["meta"]["versionId"] == "2" and now["valueQuantity"]["value"] == 7.0
        history = alice.get(f"/Observation/{rid}/_history").json()
        assert history["total"] == 2


def test_the_capability_statement_says_updates_are_version_aware(fhir: Fhir) -> None:
    with fhir.client(None) as anon:
        statement = anon.get("/metadata").json()
    parse_resource(statement)
    records = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Resource")
    assert records["versioning"] == "versioned-update"


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _put(rid: str, value: float, if_match: str | None) -> dict[str, Any]:
    request = {"method": "PUT", "url": f"Observation/{rid}"}
    if if_match is not None:
        request["ifMatch"] = if_match
    return {"resource": lab_observation(value=value) | {"id": rid}, "request": request}


def _post() -> dict[str, Any]:
    return {"resource": lab_observation(), "request": {"method": "POST", "url": "Observation"}}


def test_a_transaction_entry_with_a_stale_if_match_refuses_the_whole_bundle(fhir: Fhir) -> None:
    rid = created(fhir)["id"]
    before = state_digest(consortium_dir(fhir))
    with fhir.client("alice") as alice:
        r = alice.post("", json=_tx(_post(), _put(rid, 2.0, 'W/"2"')))
        assert r.status_code == 412, r.text
        assert "entry[1]" in r.json()["issue"][0]["diagnostics"]
        assert state_digest(consortium_dir(fhir)) == before
        r = alice.post("", json=_tx(_post(), _put(rid, 2.0, 'W/"1"')))
        assert r.status_code == 200, r.text
        assert r.json()["entry"][1]["response"]["etag"] == 'W/"2"'


@pytest.mark.parametrize(
    ("entry", "status"),
    [
        (
            {
                "resource": lab_observation(),
                "request": {"method": "POST", "url": "Observation", "ifMatch": 'W/"1"'},
            },
            422,
        ),
        ("malformed", 400),
    ],
)
def test_a_transaction_if_match_that_cannot_apply_is_refused(
    fhir: Fhir, entry: Any, status: int
) -> None:
    rid = created(fhir)["id"]
    if entry == "malformed":
        entry = _put(rid, 2.0, "1")
    before = state_digest(consortium_dir(fhir))
    with fhir.client("alice") as alice:
        r = alice.post("", json=_tx(_post(), entry))
        assert r.status_code == status, r.text
    assert state_digest(consortium_dir(fhir)) == before
