"""The CapabilityStatement tells the truth: every interaction it lists answers (not 405), the
ones it leaves out are refused with 405; and the server answers concurrent clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from fhir_world import Fhir
from test_fhir_records import consent

from ehrshare.demo import lab_observation


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
        return c.put(f"/{rtype}/{created}", json=body | {"id": created, "status": "inactive"})
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
