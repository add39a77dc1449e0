"""Conditional creates (FHIR R4 ``If-None-Exist``, a transaction entry's ``ifNoneExist``): a
create re-sent after a lost answer finds the record it made instead of making another one. The
condition is a search within the new resource's patient, over what the caller may read: no
match creates (201), one answers it (200, nothing written), several are 412 (nothing written);
a bad condition is 400 (a Bundle entry's unsupported parameter 422) before anything is read."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_world import Fhir, state_digest
from test_fhir_records import consent, valid
from test_fhir_search import reads_logged

from ehrshare.demo import lab_observation
from ehrshare.session import Session

HOSP = "http://hosp.example/ids"
_OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def _obs(value: str, system: str | None = HOSP, *, amount: float = 13.2) -> dict[str, Any]:
    ident = {"value": value} | ({"system": system} if system is not None else {})
    return lab_observation(value=amount) | {"identifier": [ident]}


def _cond(value: str) -> dict[str, str]:
    return {"If-None-Exist": f"identifier={HOSP}|{value}"}


def _records(fhir: Fhir, patient: str = "alice") -> list[str]:
    """The ids of the patient's records, from the ledger (through the SDK, not the server)."""
    with fhir.consortium.session(patient) as s:
        return sorted(ref.record_id for ref in s.list_records())


def _store(fhir: Fhir) -> str:
    """SHA-256 over the content store's files (names and bytes): what ciphertexts exist."""
    h = hashlib.sha256()
    root: Path = fhir.consortium.directory / "store"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _bundle(*entries: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": res, "request": req} for res, req in entries],
    }


def _post(rtype: str = "Observation", **extra: str) -> dict[str, Any]:
    return {"method": "POST", "url": rtype, **extra}


def test_if_none_exist_creates_once_then_answers_with_the_record(fhir: Fhir) -> None:
    before = _records(fhir)
    with fhir.client("alice") as alice:
        first = alice.post("/Observation", json=_obs("obs-123"), headers=_cond("obs-123"))
        assert first.status_code == 201, first.text
        rid = first.json()["id"]
        # The re-send (even with another body: FHIR compares the condition only) finds it.
        again = alice.post(
            "/Observation", json=_obs("obs-123", amount=99.0), headers=_cond("obs-123")
        )
        assert again.status_code == 200, again.text
        body = valid(again.json())
        assert (body["id"], body["valueQuantity"]["value"]) == (rid, 13.2)
        assert again.headers["location"].endswith(f"/Observation/{rid}/_history/1")
        assert again.headers["etag"] == 'W/"1"'
        assert "last-modified" in again.headers
    assert _records(fhir) == sorted([*before, rid])  # exactly one record on the ledger


def test_the_condition_forms_and_what_they_match(fhir: Fhir) -> None:
    """identifier ``system|value``, ``|value`` (no system), ``value`` (any system), commas
    as alternatives, ``_id``, ``&`` as AND, an optional ``Observation?`` prefix, URL-encoding."""
    with fhir.client("alice") as alice:
        with_system = alice.post("/Observation", json=_obs("v-1")).json()["id"]
        without = alice.post("/Observation", json=_obs("v-2", system=None)).json()["id"]
        cases = {
            f"identifier={HOSP}|v-1": with_system,
            "identifier=v-1": with_system,
            "identifier=|v-1": None,
            "identifier=http://other.example|v-1": None,
            "identifier=|v-2": without,
            "identifier=v-2": without,
            f"identifier={HOSP}|v-2": None,
            f"identifier=nothing,{HOSP}|v-1": with_system,
            f"Observation?identifier={HOSP}|v-1": with_system,
            "identifier=http%3A%2F%2Fhosp.example%2Fids%7Cv-1": with_system,
            f"_id={with_system}": with_system,
            f"_id=r-none,{without}": without,
            f"identifier=v-1&_id={with_system}": with_system,
            f"identifier=v-1&_id={without}": None,
            "identifier=v-1&identifier=v-2": None,  # AND: no record has both
        }
        for condition, expected in cases.items():
            # A body without identifier: a create made here matches no later case.
            r = alice.post(
                "/Observation", json=lab_observation(), headers={"If-None-Exist": condition}
            )
            if expected is None:
                assert r.status_code == 201, (condition, r.text)
                assert r.json()["id"] not in (with_system, without)
            else:
                assert (r.status_code, r.json().get("id")) == (200, expected), (condition, r.text)


def test_several_matches_are_412_and_nothing_is_written(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        for _ in range(2):
            assert alice.post("/Observation", json=_obs("dup")).status_code == 201
        records, store = _records(fhir), _store(fhir)
        r = alice.post("/Observation", json=_obs("dup"), headers=_cond("dup"))
        assert r.status_code == 412, r.text
        outcome = valid(r.json())
        assert outcome["resourceType"] == "OperationOutcome"
        assert "matches 2 Observation records" in outcome["issue"][0]["diagnostics"]
        # A Bundle with such an entry is refused whole: its other, new entry is not written.
        bundle = _bundle(
            (_obs("fresh"), _post(ifNoneExist=f"identifier={HOSP}|fresh")),
            (_obs("dup"), _post(ifNoneExist=f"identifier={HOSP}|dup")),
        )
        r = alice.post("", json=bundle)
        assert r.status_code == 412, r.text
        assert "entry[1].request.ifNoneExist" in r.json()["issue"][0]["diagnostics"]
    assert (_records(fhir), _store(fhir)) == (records, store)


BAD_HEADERS = {
    "empty": ("", "give a search"),
    "no value": ("identifier", "not a search query"),
    "empty value": ("identifier=", "an empty value"),
    "unsupported parameter": ("code=http://loinc.org|718-7", "unsupported parameter(s) code"),
    "patient is the resource's own": ("patient=x&identifier=a", "unsupported parameter(s)"),
    "a modifier": ("identifier:of-type=a", "unsupported parameter(s) identifier:of-type"),
    "another type": ("Patient?identifier=a", "names type 'Patient'"),
    "system without value": (f"identifier={HOSP}|", "give a value"),
    "escapes": ("identifier=a\\,b", "escaped characters"),
    "an empty alternative": ("identifier=a,", "an empty alternative"),
    "not UTF-8": ("identifier=%ff", "not a search query"),
    "too long": ("identifier=" + "a" * 3000, "longer than"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_a_bad_condition_is_400_before_anything_is_read(fhir: Fhir, case: str) -> None:
    header, words = BAD_HEADERS[case]
    with fhir.client("alice") as alice:
        assert alice.post("/Observation", json=_obs("a")).status_code == 201
        before = state_digest(fhir.consortium.directory)  # ledger too: not even a logged read
        r = alice.post("/Observation", json=_obs("a"), headers={"If-None-Exist": header})
        assert r.status_code == 400, r.text
        assert words in valid(r.json())["issue"][0]["diagnostics"]
        assert "Traceback" not in r.text
        assert state_digest(fhir.consortium.directory) == before


def test_if_none_exist_on_anything_but_a_record_create_is_400(fhir: Fhir) -> None:
    """On an update, a Consent, a transaction: 400; on a create with an invalid body, 400 too
    although a record matches."""
    cond = _cond("a")
    with fhir.client("alice") as alice:
        rid = alice.post("/Observation", json=_obs("a")).json()["id"]
        before = state_digest(fhir.consortium.directory)
        end = fhir.clock.seconds + 86400
        requests = [
            alice.put(f"/Observation/{rid}", json=_obs("a") | {"id": rid}, headers=cond),
            alice.post(
                "/Consent",
                json=consent(fhir.ids["alice"], fhir.ids["baker"], "lab", end),
                headers=cond,
            ),
            alice.post("", json=_bundle((_obs("b"), _post())), headers=cond),
            alice.post("/Observation", json={"resourceType": "Observation"}, headers=cond),
        ]
        for r in requests:
            assert r.status_code == 400, r.text
        assert "If-None-Exist is for a create" in requests[0].text
        assert state_digest(fhir.consortium.directory) == before


def test_a_resent_bundle_of_conditional_creates_writes_nothing_new(fhir: Fhir) -> None:
    bundle = _bundle(
        (_obs("b-1", amount=1.0), _post(ifNoneExist=f"identifier={HOSP}|b-1")),
        (_obs("b-2", amount=2.0), _post(ifNoneExist="identifier=b-2")),
    )
    with fhir.client("alice") as alice:
        first = alice.post("", json=bundle)
        assert first.status_code == 200, first.text
        done = valid(first.json())["entry"]
        assert [e["response"]["status"] for e in done] == ["201 Created"] * 2
        records, store = _records(fhir), _store(fhir)
        again = alice.post("", json=bundle)  # the answer was lost: the client sends it again
        assert again.status_code == 200, again.text
        redone = valid(again.json())["entry"]
        assert [e["response"]["status"] for e in redone] == ["200 OK"] * 2
        assert [e["response"]["location"] for e in redone] == [
            e["response"]["location"] for e in done
        ]
        assert [e["resource"]["valueQuantity"]["value"] for e in redone] == [1.0, 2.0]
    assert _records(fhir) == records
    assert _store(fhir) == store  # byte for byte: not one ciphertext more


def test_a_bundle_creates_what_does_not_exist_and_answers_what_does(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        old = alice.post("/Observation", json=_obs("old")).json()["id"]
        bundle = _bundle(
            (_obs("old"), _post(ifNoneExist="identifier=old")),
            (_obs("new"), _post(ifNoneExist="identifier=new")),
            (_obs("plain"), _post()),
        )
        r = alice.post("", json=bundle)
        assert r.status_code == 200, r.text
        entries = r.json()["entry"]
        statuses = [e["response"]["status"] for e in entries]
        assert statuses == ["200 OK", "201 Created", "201 Created"]
        assert entries[0]["response"]["location"] == f"Observation/{old}/_history/1"
        assert entries[0]["resource"]["id"] == old
        new_ids = {entries[1]["resource"]["id"], entries[2]["resource"]["id"]}
    assert set(_records(fhir)) == {old} | new_ids


def test_bundle_conditions_see_what_was_stored_before_the_bundle(fhir: Fhir) -> None:
    """Two new entries with the same condition are both created (their conditions do not see
    each other); a condition matching a record another entry updates answers the version
    before the Bundle, while the update makes the next one."""
    with fhir.client("alice") as alice:
        rid = alice.post("/Observation", json=_obs("kept", amount=1.0)).json()["id"]
        bundle = _bundle(
            (_obs("twin"), _post(ifNoneExist="identifier=twin")),
            (_obs("twin"), _post(ifNoneExist="identifier=twin")),
            (
                _obs("kept", amount=2.0) | {"id": rid},
                {"method": "PUT", "url": f"Observation/{rid}"},
            ),
            (_obs("kept"), _post(ifNoneExist="identifier=kept")),
        )
        r = alice.post("", json=bundle)
        assert r.status_code == 200, r.text
        entries = r.json()["entry"]
        statuses = [e["response"]["status"] for e in entries]
        assert statuses == ["201 Created", "201 Created", "200 OK", "200 OK"]
        assert entries[0]["resource"]["id"] != entries[1]["resource"]["id"]
        assert entries[2]["response"]["location"] == f"Observation/{rid}/_history/2"
        assert entries[3]["response"]["location"] == f"Observation/{rid}/_history/1"
        assert entries[3]["resource"]["valueQuantity"]["value"] == 1.0
        # The twins now exist twice: the next conditional create for them is 412.
        assert alice.post("/Observation", json=_obs("twin"), headers=_cond("twin")).status_code == (
            412
        )


BAD_ENTRIES = {
    "malformed": ({"ifNoneExist": "identifier"}, 400, "not a search query"),
    "unsupported parameter": ({"ifNoneExist": "code=718-7"}, 422, "unsupported parameter(s)"),
    "not a string": ({"ifNoneExist": ["identifier=a"]}, 422, "only a create takes one"),
}


@pytest.mark.parametrize("case", [*sorted(BAD_ENTRIES), "on an update"])
def test_a_bad_entry_condition_refuses_the_bundle_before_anything_is_read(
    fhir: Fhir, case: str
) -> None:
    with fhir.client("alice") as alice:
        rid = alice.post("/Observation", json=_obs("a")).json()["id"]
        before = state_digest(fhir.consortium.directory)
        if case == "on an update":
            request = {"method": "PUT", "url": f"Observation/{rid}", "ifNoneExist": "_id=x"}
            resource, status, words = _obs("a") | {"id": rid}, 422, "only a create takes one"
        else:
            extra, status, words = BAD_ENTRIES[case]
            request, resource = _post(**extra), _obs("b")
        r = alice.post("", json=_bundle((_obs("c"), _post()), (resource, request)))
        assert r.status_code == status, r.text
        diagnostics = valid(r.json())["issue"][0]["diagnostics"]
        assert "entry[1].request" in diagnostics and words in diagnostics, diagnostics
        assert "Traceback" not in r.text
        assert state_digest(fhir.consortium.directory) == before


def test_a_grantee_matches_only_what_it_may_read(fhir: Fhir) -> None:
    """A clinician's condition is evaluated over the patient's records its grants cover: a
    matching record it cannot read does not count, so its create duplicates it (documented);
    the patient, who reads both, then gets 412."""
    alice_id = fhir.ids["alice"]
    for_alice = {"subject": {"identifier": {"system": "urn:ehrshare:member", "value": alice_id}}}
    vitals = _obs("vs-1") | for_alice
    vitals["category"] = [{"coding": [{"system": _OBS_CAT, "code": "vital-signs"}]}]
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        lab = alice.post("/Observation", json=_obs("lab-1")).json()["id"]
        assert alice.post("/Observation", json=vitals).status_code == 201
        end = fhir.clock.seconds + 86400
        r = alice.post("/Consent", json=consent(alice_id, fhir.ids["baker"], "lab", end))
        assert r.status_code == 201, r.text
        # Covered by the grant (lab): found, nothing written.
        r = baker.post("/Observation", json=_obs("lab-1") | for_alice, headers=_cond("lab-1"))
        assert (r.status_code, r.json()["id"]) == (200, lab), r.text
        # Not covered (vital-signs): baker cannot see it, so it creates a second one.
        before = _records(fhir)
        r = baker.post("/Observation", json=vitals, headers=_cond("vs-1"))
        assert r.status_code == 201, r.text
        assert len(_records(fhir)) == len(before) + 1
        r = alice.post("/Observation", json=vitals, headers=_cond("vs-1"))
        assert r.status_code == 412, r.text
    with fhir.client("bob") as bob:  # only the patient's own records count: alice's are not
        r = bob.post("/Observation", json=_obs("lab-1"), headers=_cond("lab-1"))
        assert r.status_code == 201, r.text


def test_two_concurrent_conditional_creates_of_one_member_create_once(
    fhir: Fhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The member's lock serialises them: the second evaluates its condition only after the
    first's record is registered, and finds it."""
    entered, release = threading.Event(), threading.Event()
    listings: list[str] = []
    put, list_records = Session.put_record, Session.list_records

    def held_put(self: Session, *args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(60)
        return put(self, *args, **kwargs)

    def counted_list(self: Session, *args: Any, **kwargs: Any) -> Any:
        listings.append(self.ibe_id)
        return list_records(self, *args, **kwargs)

    before = _records(fhir)
    monkeypatch.setattr(Session, "put_record", held_put)
    monkeypatch.setattr(Session, "list_records", counted_list)

    def send() -> httpx.Response:
        with fhir.client("alice") as c:
            return c.post("/Observation", json=_obs("once"), headers=_cond("once"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(send)
        assert entered.wait(60)  # the first is between its condition and its write
        second = pool.submit(send)
        time.sleep(1.0)
        try:
            assert listings == [fhir.ids["alice"]]  # the second has not evaluated its own
            assert not second.done()
        finally:
            release.set()
        answers = sorted(
            (f.result(timeout=60) for f in (first, second)), key=lambda r: r.status_code
        )
    assert [r.status_code for r in answers] == [200, 201], [r.text for r in answers]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert _records(fhir) == sorted([*before, answers[1].json()["id"]])


def test_a_condition_reads_only_records_of_its_resource_type(fhir: Fhir) -> None:
    """A Specimen and the Observations are all of record type lab: the pointers' kinds keep a
    Specimen's condition from decrypting (a logged read each) any Observation."""
    specimen = {"resourceType": "Specimen", "identifier": [{"system": HOSP, "value": "sp-1"}]}
    with fhir.client("alice") as alice:
        for value in ("sp-1", "obs-k2"):  # an Observation with the very same identifier too
            assert alice.post("/Observation", json=_obs(value)).status_code == 201
        before = reads_logged(fhir, "alice")
        first = alice.post("/Specimen", json=specimen, headers=_cond("sp-1"))
        assert first.status_code == 201, first.text
        assert reads_logged(fhir, "alice") == before  # no Specimen yet: nothing decrypted
        again = alice.post("/Specimen", json=specimen, headers=_cond("sp-1"))
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert reads_logged(fhir, "alice") == before + 1  # the Specimen, no Observation


def test_the_capability_statement_says_conditional_create(fhir: Fhir) -> None:
    with fhir.client(None) as anon:
        statement = anon.get("/metadata").json()
    records = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Resource")
    assert records["conditionalCreate"] is True
    assert "If-None-Exist" in records["documentation"]
    others = [r for r in statement["rest"][0]["resource"] if r["type"] != "Resource"]
    assert all("conditionalCreate" not in r for r in others)
