"""The FHIR API on a real Fabric 2.3 network, as a hospital runs it: ``ehrshare fhir serve
--mtls`` as its own process in front of a consortium whose ledger is Fabric (peers of three
hospitals, a Raft orderer, our chaincode as ccaas), callers named by their wallets' TLS client
certificates. A patient stores an Observation and consents for a clinician, who reads (also by
a category search); the patient updates it with If-Match (a stale one is 412: the chaincode's
expected version on Fabric); the patient revokes; the clinician's read is 403, a consortium
member the server does not serve is 401; a transaction Bundle (a create and an update) commits
as one ledger transaction (WriteRecords); the AuditEvents (from the peers' ledger) show the
decisions and the writes; a conditional create sent twice, then as a Bundle entry, makes one
record; and sent at once through two gateway processes, one record (the chain's claim)."""

from __future__ import annotations

import datetime as _dt
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.fhirapi.auditevent import entries_from_bundle
from ehrshare.network.supervisor import pid_alive
from ehrshare.provisioning import Consortium

sys.path.insert(0, str(Path(__file__).parents[1] / "fhirapi"))
from fhir_world import serve_process, server_cert, wallet_client

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

_HOSP = "http://hosp.example/ids"


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


def test_the_fhir_story_holds_on_fabric_over_mutual_tls(tmp_path: Path) -> None:
    c = Consortium.init(tmp_path / "c", ledger="fabric")
    assert c.network is not None
    pids = list(c.network.pids().values())
    profile = str(tmp_path / "c")
    try:
        ids = {}
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
            ("chen", "HospitalC", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
                ids[name] = s.ibe_id
        cert, key = server_cert(profile, tmp_path)
        serve_args = (
            *("--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--mtls"),
            *("--member", "alice", "--member", "baker", "--patient-own-gateway"),
        )
        proc = serve_process(profile, *serve_args)
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("https://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
            with (
                wallet_client(profile, url, "alice") as alice,
                wallet_client(profile, url, "baker") as baker,
                wallet_client(profile, url, "chen") as chen,
            ):
                r = alice.post("/Observation", json=lab_observation())
                assert r.status_code == 201, r.text
                assert r.headers["ETag"] == 'W/"1"'
                rid = r.json()["id"]
                assert baker.get(f"/Observation/{rid}").status_code == 403
                assert chen.get(f"/Observation/{rid}").status_code == 401  # not served
                end = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(days=1)).isoformat()
                r = alice.post("/Consent", json=_consent(ids["alice"], ids["baker"], end))
                assert r.status_code == 201, r.text
                gid = r.json()["id"]
                r = baker.get(f"/Observation/{rid}")
                assert r.status_code == 200, r.text
                assert r.json()["valueQuantity"]["value"] == 13.2
                newer = lab_observation(value=14.1) | {"id": rid}
                r = alice.put(f"/Observation/{rid}", json=newer, headers={"If-Match": 'W/"1"'})
                assert r.status_code == 200, r.text
                r = alice.put(f"/Observation/{rid}", json=newer, headers={"If-Match": 'W/"1"'})
                assert r.status_code == 412, r.text
                r = baker.get("/Observation", params={"category": "laboratory"})
                assert r.status_code == 200, r.text
                found = [e["resource"] for e in r.json()["entry"]]
                assert [(o["id"], o["meta"]["versionId"]) for o in found] == [(rid, "2")]
                assert alice.delete(f"/Consent/{gid}").status_code == 200
                assert baker.get(f"/Observation/{rid}").status_code == 403
                # A transaction Bundle: a new record and a version, one ledger transaction
                # (WriteRecords through the ccaas chaincode server).
                r = alice.post(
                    "",
                    json={
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [
                            {
                                "resource": lab_observation(value=15.0),
                                "request": {"method": "POST", "url": "Observation"},
                            },
                            {
                                "resource": lab_observation(value=16.0) | {"id": rid},
                                "request": {
                                    "method": "PUT",
                                    "url": f"Observation/{rid}",
                                    "ifMatch": 'W/"2"',
                                },
                            },
                        ],
                    },
                )
                assert r.status_code == 200, r.text
                made = [e["response"]["location"] for e in r.json()["entry"]]
                assert made[1] == f"Observation/{rid}/_history/3"
                assert alice.get(f"/Observation/{rid}").json()["valueQuantity"]["value"] == 16.0
                events = alice.get("/AuditEvent", params={"patient": ids["alice"]}).json()
                # A conditional create over Fabric: the first makes the record, the same one
                # re-sent (a lost answer) finds it and writes nothing; a Bundle entry's
                # ifNoneExist finds it too. The condition reads the pointers from the peers.
                cond = {"If-None-Exist": f"identifier={_HOSP}|lab-77"}
                tagged = lab_observation(value=17.0) | {
                    "identifier": [{"system": _HOSP, "value": "lab-77"}]
                }
                r = alice.post("/Observation", json=tagged, headers=cond)
                assert r.status_code == 201, r.text
                made_id = r.json()["id"]
                r = alice.post("/Observation", json=tagged, headers=cond)
                assert r.status_code == 200, r.text
                assert r.json()["id"] == made_id
                r = alice.post(
                    "",
                    json={
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [
                            {
                                "resource": tagged,
                                "request": {
                                    "method": "POST",
                                    "url": "Observation",
                                    "ifNoneExist": f"identifier={_HOSP}|lab-77",
                                },
                            }
                        ],
                    },
                )
                assert r.status_code == 200, r.text
                assert r.json()["entry"][0]["response"]["status"] == "200 OK"
                with c.session("alice") as s:
                    mine = [ref for ref in s.list_records() if ref.record_id == made_id]
                    assert len(mine) == 1 and mine[0].version == 1
                    assert len(s.list_records()) == 3  # rid, the Bundle's new one, made_id
                # Two gateway processes (behind a load balancer) sent one conditional create
                # at once: the chain's claim lets one register (the other fails MVCC or the
                # claim check when proposed again), and every answer names that one record.
                other = serve_process(profile, *serve_args)
                try:
                    assert other.stdout is not None
                    url2 = other.stdout.readline().strip()
                    assert url2.startswith("https://127.0.0.1:"), url2
                    with wallet_client(profile, url2, "alice") as alice2:
                        twice = lab_observation(value=18.0) | {
                            "identifier": [{"system": _HOSP, "value": "lab-78"}]
                        }
                        cond2 = {"If-None-Exist": f"identifier={_HOSP}|lab-78"}
                        with ThreadPoolExecutor(max_workers=4) as pool:
                            answers = list(
                                pool.map(
                                    lambda i: (alice, alice2)[i % 2].post(
                                        "/Observation", json=twice, headers=cond2
                                    ),
                                    range(4),
                                )
                            )
                    codes = sorted(r.status_code for r in answers)
                    assert codes == [200, 200, 200, 201], [r.text for r in answers]
                    assert len({r.json()["id"] for r in answers}) == 1
                finally:
                    os.kill(other.pid, signal.SIGTERM)
                    assert other.wait(timeout=60) == 0
                with c.session("alice") as s:
                    assert len(s.list_records()) == 4
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        decisions = [
            e["resource"]["outcome"]
            for e in events["entry"]
            if e["resource"]["subtype"][-1]["code"] == "AccessDecision"
        ]
        assert decisions == ["4", "0", "0", "4", "0"]  # the last: alice reads her update
        amends = [
            e["resource"]["outcome"]
            for e in events["entry"]
            if e["resource"]["subtype"][-1]["code"] == "AmendRecord"
        ]
        assert amends == ["0", "0"]  # the stale update left no trace but its refusal to the client
        written = [
            e
            for e in entries_from_bundle(events)
            if e["action"] in ("RegisterRecord", "AmendRecord")
        ]
        assert [e["action"] for e in written[-2:]] == ["RegisterRecord", "AmendRecord"]
        assert written[-2]["tx_id"] == written[-1]["tx_id"]  # the Bundle: one transaction
    finally:
        c.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    assert pids and not [p for p in pids if pid_alive(p)]
