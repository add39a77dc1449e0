"""Record searches by ``category`` and ``_lastUpdated``: the right records, nothing decrypted
that the chain's pointers already exclude, bad values a 400 OperationOutcome."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pytest
from fhir_world import Fhir
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.demo import lab_observation
from ehrshare.fhir import parse_resource
from ehrshare.fhirapi.outcome import FhirError
from ehrshare.fhirapi.search import parse_search

_OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def observation(category: str) -> dict[str, Any]:
    obs = lab_observation()
    obs["category"] = [{"coding": [{"system": _OBS_CAT, "code": category}]}]
    return obs


def ids(bundle: dict[str, Any]) -> list[str]:
    parse_resource(bundle)
    return sorted(e["resource"]["id"] for e in bundle["entry"])


def reads_logged(fhir: Fhir, name: str) -> int:
    with fhir.consortium.session(name) as s:
        return sum(1 for e in s.audit().entries if e["action"] == "RequestAccess")


def instant(seconds: int) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_category_searches_find_the_matching_records(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        made = {
            c: alice.post("/Observation", json=observation(c)).json()["id"]
            for c in ("laboratory", "vital-signs", "imaging")
        }

        def search(**params: str) -> list[str]:
            r = alice.get("/Observation", params=params)
            assert r.status_code == 200, r.text
            return ids(r.json())

        assert search(category="laboratory") == [made["laboratory"]]
        assert search(category=f"{_OBS_CAT}|vital-signs") == [made["vital-signs"]]
        assert search(category="http://example.org/other|vital-signs") == []
        assert search(category="laboratory,imaging") == sorted(
            [made["laboratory"], made["imaging"]]
        )
        assert search(category="urn:ehrshare:record-type|imaging") == [made["imaging"]]
        assert search(category="urn:ehrshare:record-type|lab") == [made["laboratory"]]
        assert search(category="survey") == []
        # two category parameters: both must hold
        assert search(category="laboratory", patient=fhir.ids["alice"]) == [made["laboratory"]]


def test_a_search_decrypts_only_what_the_pointers_allow(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        for c in ("laboratory", "vital-signs", "imaging", "imaging"):
            assert alice.post("/Observation", json=observation(c)).status_code == 201
        before = reads_logged(fhir, "alice")
        r = alice.get("/Observation", params={"category": "urn:ehrshare:record-type|imaging"})
        assert len(r.json()["entry"]) == 2
        assert reads_logged(fhir, "alice") == before + 2  # the two returned, no other
        r = alice.get("/Observation", params={"category": "laboratory"})
        assert len(r.json()["entry"]) == 1
        assert reads_logged(fhir, "alice") == before + 3  # the lab record type only
        r = alice.get("/Observation", params={"_lastUpdated": "lt2000-01-01"})
        assert r.json()["total"] == 0
        assert reads_logged(fhir, "alice") == before + 3  # nothing decrypted


def test_last_updated_prefixes_compare_with_the_version_time(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        first = alice.post("/Observation", json=lab_observation()).json()
        fhir.clock.advance(2 * 86400)
        second = alice.post("/Observation", json=lab_observation()).json()
        t1, t2 = (
            int(_dt.datetime.fromisoformat(r["meta"]["lastUpdated"]).timestamp())
            for r in (first, second)
        )
        a, b = first["id"], second["id"]
        day2 = instant(t2)[:10]

        def search(*values: str) -> list[str]:
            r = alice.get("/Observation", params=[("_lastUpdated", v) for v in values])
            assert r.status_code == 200, r.text
            return ids(r.json())

        assert search(f"ge{day2}") == [b]
        assert search(f"lt{day2}") == [a]
        assert search(day2) == [b]  # eq by default: within that day
        assert search(f"eq{instant(t1)}") == [a]
        assert search(f"ne{instant(t1)}") == [b]
        assert search(f"gt{instant(t1)}") == [b]
        assert search(f"le{instant(t1)}") == [a]
        assert search(f"ge{instant(t1)}", f"le{instant(t2)}") == sorted([a, b])
        assert search(f"gt{instant(t1)}", f"lt{instant(t2)}") == []
        assert search(f"ge{instant(t1 + 60)[:16]}+00:00") == [b]  # minute precision
        # an update moves the record's lastUpdated
        fhir.clock.advance(2 * 86400)
        assert alice.put(f"/Observation/{a}", json=first).status_code == 200
        assert search(f"gt{instant(t2)}") == [a]


def test_a_grantee_searches_only_what_its_grants_cover(fhir: Fhir) -> None:
    from test_fhir_records import consent

    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        lab = alice.post("/Observation", json=observation("laboratory")).json()["id"]
        alice.post("/Observation", json=observation("vital-signs"))
        end = fhir.clock.seconds + 86400
        c = consent(fhir.ids["alice"], fhir.ids["baker"], "lab", end)
        assert alice.post("/Consent", json=c).status_code == 201
        r = baker.get("/Observation", params={"patient": fhir.ids["alice"]})
        assert ids(r.json()) == [lab]
        r = baker.get("/Observation", params={"category": "vital-signs"})
        assert ids(r.json()) == []
        r = baker.get("/Observation", params={"category": "laboratory"})
        assert ids(r.json()) == [lab]
        r = baker.get("/Observation", params={"category": "urn:ehrshare:record-type|lab"})
        assert ids(r.json()) == [lab]


@pytest.mark.parametrize(
    "params",
    [
        {"_lastUpdated": "yesterday"},
        {"_lastUpdated": "ge2026-13-01"},
        {"_lastUpdated": "xx2026-01-01"},
        {"_lastUpdated": "2026-01-01T10:00"},  # a time without a zone
        {"_lastUpdated": "2026-02-30"},
        {"_lastUpdated": ""},
        {"category": ""},
        {"category": "laboratory,"},
        {"category": "http://x|"},
        {"category": "urn:ehrshare:record-type|Lab!"},
        {"_sort": "_lastUpdated"},
        {"_count": "10"},
    ],
)
def test_bad_search_values_are_400_and_decrypt_nothing(fhir: Fhir, params: dict) -> None:
    with fhir.client("alice") as alice:
        assert alice.post("/Observation", json=lab_observation()).status_code == 201
        before = reads_logged(fhir, "alice")
        r = alice.get("/Observation", params=params)
        assert r.status_code == 400, r.text
        body = r.json()
        parse_resource(body)
        assert body["resourceType"] == "OperationOutcome"
        assert reads_logged(fhir, "alice") == before


def test_the_capability_statement_lists_exactly_the_record_search_parameters(
    fhir: Fhir,
) -> None:
    with fhir.client("alice") as alice:
        statement = alice.get("/metadata").json()
        records = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Resource")
        names = {p["name"] for p in records["searchParam"]}
        assert names == {"patient", "category", "_lastUpdated"}
        for name, value in {
            "patient": fhir.ids["alice"],
            "category": "laboratory",
            "_lastUpdated": "ge2000",
        }.items():
            assert alice.get("/Observation", params={name: value}).status_code == 200


@given(st.datetimes(min_value=_dt.datetime(1971, 1, 1), max_value=_dt.datetime(9998, 1, 1)))
def test_a_dates_range_holds_exactly_its_own_instants(moment: _dt.datetime) -> None:
    t = moment.replace(microsecond=0, tzinfo=_dt.UTC)
    s = int(t.timestamp())
    for text in (t.strftime("%Y-%m-%dT%H:%M:%SZ"), t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")):
        (bound,) = parse_search("Observation", {"_lastUpdated": [text]}, None).updated
        assert bound.admits(s)
        (after,) = parse_search("Observation", {"_lastUpdated": ["gt" + text]}, None).updated
        (before,) = parse_search("Observation", {"_lastUpdated": ["lt" + text]}, None).updated
        assert not after.admits(s) and not before.admits(s)
        assert after.admits(bound.hi) and before.admits(bound.lo - 1)


@given(st.text(max_size=30))
def test_any_last_updated_text_parses_or_is_a_400(text: str) -> None:
    try:
        parse_search("Observation", {"_lastUpdated": [text]}, None)
    except FhirError as exc:
        assert exc.status == 400


def test_a_search_by_resource_type_reads_no_record_of_another_type(fhir: Fhir) -> None:
    """An Observation and a Specimen are both of record type lab: the pointers' kinds (their
    resourceTypes' labels) keep a search for one from reading the other."""
    specimen = {"resourceType": "Specimen"}  # alice's own: the caller is the patient
    with fhir.client("alice") as alice:
        obs = alice.post("/Observation", json=observation("laboratory")).json()["id"]
        made = alice.post("/Specimen", json=specimen)
        assert made.status_code == 201, made.text
        spec = made.json()["id"]
        before = reads_logged(fhir, "alice")
        found = alice.get("/Specimen", params={"patient": fhir.ids["alice"]}).json()
        assert spec in ids(found) and obs not in ids(found)
        assert reads_logged(fhir, "alice") == before + found["total"]  # the Specimens only
        lab = alice.get("/Observation", params={"category": "urn:ehrshare:record-type|lab"}).json()
        assert obs in ids(lab) and spec not in ids(lab)
        assert reads_logged(fhir, "alice") == before + found["total"] + lab["total"]
