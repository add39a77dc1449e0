"""The CapabilityStatement tells the truth: every interaction it lists answers (not 405), the
ones it leaves out are refused with 405; and the server answers concurrent clients, one
member's slow request holding up no other member's."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fhir_world import Fhir
from test_fhir_records import consent

from ehrshare.demo import lab_observation
from ehrshare.session import Session


def _request(fhir: Fhir, c: httpx.Client, rtype: str, code: str) -> httpx.Response:
    alice_id, baker_id = fhir.ids["alice"], fhir.ids["baker"]
    if rtype == "Resource":
        rtype = "Observation"
    body = (
        consent(alice_id, baker_id, "lab", fhir.clock.seconds + 999)
        if rtype == "Consent"
        else lab_observation()
    )
    if code == "create":
        return c.post(f"/{rtype}", json=body)
    if code == "search-type":
        return c.get(f"/{rtype}", params={"patient": alice_id})
    created = c.post(f"/{rtype}", json=body).json()["id"]
    if code == "read":
        return c.get(f"/{rtype}/{created}")
    if code == "update":
        status = "inactive" if rtype == "Consent" else "amended"
        return c.put(f"/{rtype}/{created}", json=body | {"id": created, "status": status})
    if code == "vread":
        return c.get(f"/{rtype}/{created}/_history/1")
    if code == "history-instance":
        return c.get(f"/{rtype}/{created}/_history")
    if code == "delete":
        return c.delete(f"/{rtype}/{created}")
    raise AssertionError(f"the test does not know interaction {code}")


def test_every_listed_interaction_answers_and_unlisted_ones_are_405(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        statement = alice.get("/metadata").json()
        listed = {
            (r["type"], i["code"])
            for r in statement["rest"][0]["resource"]
            for i in r["interaction"]
        }
        for rtype, code in sorted(listed):
            r = _request(fhir, alice, rtype, code)
            assert r.status_code in (200, 201, 403), (rtype, code, r.status_code, r.text)
        assert statement["rest"][0]["interaction"] == [{"code": "transaction"}]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": lab_observation(), "request": {"method": "POST", "url": "Observation"}}
            ],
        }
        assert alice.post("", json=bundle).status_code == 200
        assert [o["name"] for o in statement["rest"][0]["operation"]] == ["everything"]
        r = alice.get(f"/Patient/{fhir.ids['alice'].replace('/', '.')}/$everything")
        assert r.status_code == 200, r.text
        everything = ("create", "read", "update", "delete", "search-type")
        for rtype in ("Resource", "AuditEvent", "Provenance"):
            for code in everything:
                if (rtype, code) in listed:
                    continue
                if code in ("read", "update", "delete"):
                    target = "Observation" if rtype == "Resource" else rtype
                    if code == "read":
                        r = alice.get(f"/{target}/x")
                    elif code == "update":
                        r = alice.put(f"/{target}/x", json={"resourceType": target, "id": "x"})
                    else:
                        r = alice.delete(f"/{target}/x")
                else:
                    r = _request(fhir, alice, rtype, code)
                assert r.status_code == 405, (rtype, code, r.status_code, r.text)


def test_concurrent_clients_each_get_their_answer(fhir: Fhir) -> None:
    with fhir.client("alice") as alice:
        rids = [
            alice.post("/Observation", json=lab_observation(value=v)).json()["id"]
            for v in (1, 2, 3, 4)
        ]

    def read(i: int) -> float:
        with fhir.client("alice") as c:
            r = c.get(f"/Observation/{rids[i % 4]}")
            assert r.status_code == 200, r.text
            return float(r.json()["valueQuantity"]["value"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(read, range(16)))
    assert values == [float(i % 4 + 1) for i in range(16)]


def test_one_members_slow_request_does_not_hold_up_another_member(
    fhir: Fhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fhir.client("alice") as alice:
        rid = alice.post("/Observation", json=lab_observation()).json()["id"]
    release, entered = threading.Event(), threading.Event()
    original = Session.open_record_json

    def slow_for_alice(self: Session, *args: Any, **kwargs: Any) -> Any:
        if self.ibe_id == fhir.ids["alice"]:
            entered.set()
            assert release.wait(60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Session, "open_record_json", slow_for_alice)
    with ThreadPoolExecutor(max_workers=1) as pool, fhir.client("alice") as alice:
        pending = pool.submit(alice.get, f"/Observation/{rid}")
        assert entered.wait(60)
        try:
            with fhir.client("baker") as baker:
                baker.timeout = httpx.Timeout(15)
                r = baker.get(f"/Observation/{rid}")  # its own lock: answered meanwhile
            assert r.status_code == 403, r.text
            assert not pending.done()
        finally:
            release.set()
        assert pending.result(timeout=60).status_code == 200
