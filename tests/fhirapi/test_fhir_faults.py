"""``kill -9`` of the FHIR server at each step boundary of its write paths (the SDK's fault
points, ``EHRSHARE_FAULT_AT``, fire inside the server process): the client sees the connection
drop; after a restart nothing committed is lost, nothing half-made is usable, and the next
attempt succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fhir_world import cli_world, serve_process
from test_fhir_records import consent
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.fhirapi.auditevent import entries_from_bundle

runner = CliRunner()

ALICE_ID, BAKER_ID = "HospitalAMSP/alice", "HospitalBMSP/baker"
END = 4102444800  # 2100-01-01


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    w = cli_world(tmp_path_factory.mktemp("fhir-faults"))
    return {"profile": w["profile"], "alice": w["ALICE"], "baker": w["BAKER"]}


class Server:
    def __init__(self, profile: str, fault: str = "") -> None:
        self.proc = serve_process(
            profile, "--listen", "127.0.0.1:0", fault=fault, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://"), self.url

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            timeout=120,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture
def start(world: dict[str, str]) -> Iterator[object]:
    servers: list[Server] = []

    def _start(fault: str = "") -> Server:
        s = Server(world["profile"], fault)
        servers.append(s)
        return s

    yield _start
    for s in servers:
        s.stop()


def _killed(server: Server, request: object) -> None:
    with pytest.raises(httpx.TransportError):
        request()  # type: ignore[operator]
    assert server.proc.wait(timeout=60) == -signal.SIGKILL


def _observations(c: httpx.Client) -> int:
    r = c.get("/Observation", params={"patient": ALICE_ID})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


@pytest.mark.parametrize(("fault", "kept"), [("put.after_store", 0), ("put.after_register", 1)])
def test_a_create_killed_mid_way(world: dict, start: object, fault: str, kept: int) -> None:
    clean = start()  # type: ignore[operator]
    with clean.client(world["alice"]) as alice:
        before = _observations(alice)
    clean.stop()
    faulty = start(fault)  # type: ignore[operator]
    with faulty.client(world["alice"]) as alice:
        _killed(faulty, lambda: alice.post("/Observation", json=lab_observation()))
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice:
        assert _observations(alice) == before + kept  # a registered record is readable
        assert alice.post("/Observation", json=lab_observation()).status_code == 201
        assert _observations(alice) == before + kept + 1


@pytest.mark.parametrize(
    ("fault", "granted"), [("grant.after_deliver", False), ("grant.after_commit", True)]
)
def test_a_consent_killed_mid_way(world: dict, start: object, fault: str, granted: bool) -> None:
    clean = start()  # type: ignore[operator]
    with clean.client(world["alice"]) as alice:
        rid = alice.post("/Observation", json=lab_observation()).json()["id"]
    clean.stop()
    faulty = start(fault)  # type: ignore[operator]
    with faulty.client(world["alice"]) as alice:
        _killed(
            faulty, lambda: alice.post("/Consent", json=consent(ALICE_ID, BAKER_ID, "lab", END))
        )
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice, again.client(world["baker"]) as baker:
        active = [
            e["resource"]["id"]
            for e in alice.get("/Consent", params={"patient": ALICE_ID}).json()["entry"]
            if e["resource"]["status"] == "active"
        ]
        assert len(active) == (1 if granted else 0)
        assert baker.get(f"/Observation/{rid}").status_code == (200 if granted else 403)
        if not granted:
            r = alice.post("/Consent", json=consent(ALICE_ID, BAKER_ID, "lab", END))
            assert r.status_code == 201, r.text
            active = [r.json()["id"]]
            assert baker.get(f"/Observation/{rid}").status_code == 200
        for gid in active:  # leave no active grant to the next case
            assert alice.delete(f"/Consent/{gid}").status_code == 200


def test_a_revocation_killed_after_its_commit_holds(world: dict, start: object) -> None:
    clean = start()  # type: ignore[operator]
    with clean.client(world["alice"]) as alice:
        rid = alice.post("/Observation", json=lab_observation()).json()["id"]
        gid = alice.post("/Consent", json=consent(ALICE_ID, BAKER_ID, "lab", END)).json()["id"]
    clean.stop()
    faulty = start("revoke.after_commit")  # type: ignore[operator]
    with faulty.client(world["alice"]) as alice:
        _killed(faulty, lambda: alice.delete(f"/Consent/{gid}"))
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice, again.client(world["baker"]) as baker:
        assert alice.get(f"/Consent/{gid}").json()["status"] == "inactive"
        assert baker.get(f"/Observation/{rid}").status_code == 403
        # The kill came between the revocation's commit and the type-key rotation it starts:
        # the patient's next lab record finishes the rotation (her session holds the keys)
        # and is sealed to the new epoch, which the revoked grantee cannot read.
        r = alice.post("/Observation", json=lab_observation())
        assert r.status_code == 201, r.text
        assert baker.get(f"/Observation/{r.json()['id']}").status_code == 403
        assert alice.get(f"/Observation/{r.json()['id']}").status_code == 200


@pytest.mark.parametrize(
    ("fault", "version"), [("amend.after_store", 1), ("amend.after_register", 2)]
)
def test_an_update_killed_mid_way(world: dict, start: object, fault: str, version: int) -> None:
    clean = start()  # type: ignore[operator]
    with clean.client(world["alice"]) as alice:
        created = alice.post("/Observation", json=lab_observation(value=1.0))
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
    clean.stop()
    faulty = start(fault)  # type: ignore[operator]
    body = lab_observation(value=2.0) | {"id": rid}
    based_on_1 = {"If-Match": 'W/"1"'}
    with faulty.client(world["alice"]) as alice:
        _killed(faulty, lambda: alice.put(f"/Observation/{rid}", json=body, headers=based_on_1))
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice:
        now = alice.get(f"/Observation/{rid}").json()
        assert now["meta"]["versionId"] == str(version)  # the old version, or the whole new one
        assert now["valueQuantity"]["value"] == (1.0 if version == 1 else 2.0)
        assert alice.get(f"/Observation/{rid}/_history/1").json()["valueQuantity"]["value"] == 1.0
        # Re-sending the same If-Match update: applied if the killed one did not land, 412 if
        # it did (the client learns its update is in, instead of writing it twice).
        r = alice.put(f"/Observation/{rid}", json=body, headers=based_on_1)
        assert r.status_code == (200 if version == 1 else 412), r.text
        current = 2
        r = alice.put(
            f"/Observation/{rid}",
            json=lab_observation(value=3.0) | {"id": rid},
            headers={"If-Match": f'W/"{current}"'},
        )
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == str(current + 1)


def _gc(profile: str) -> list[str]:
    """``ehrshare store gc --older-than 0``: the ciphertexts no record names, removed."""
    result = runner.invoke(app, ["store", "gc", "-p", profile, "--older-than", "0", "--json"])
    assert result.exit_code == 0, result.output
    removed: list[str] = json.loads(result.stdout)["removed"]
    return removed


@pytest.mark.parametrize(
    ("fault", "kept"), [("write_records.after_store", 0), ("write_records.after_register", 2)]
)
def test_a_transaction_killed_mid_way_is_all_or_nothing(
    world: dict, start: object, fault: str, kept: int, tmp_path: Path
) -> None:
    """Killed after storing every entry's ciphertext, before the one ledger transaction: no
    entry is readable and the ciphertexts are orphans no pointer names (store gc removes
    exactly them). Killed after the transaction, before the answer: every entry is in. The
    retry succeeds either way, and the audit log, exported as AuditEvents, verifies."""
    clean = start()  # type: ignore[operator]
    with clean.client(world["alice"]) as alice:
        rid = alice.post("/Observation", json=lab_observation(value=1.0)).json()["id"]
        before = _observations(alice)
    clean.stop()
    _gc(world["profile"])  # earlier cases' orphans
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": lab_observation(value=5.0),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": lab_observation(value=2.0) | {"id": rid},
                "request": {"method": "PUT", "url": f"Observation/{rid}", "ifMatch": 'W/"1"'},
            },
            {
                "resource": lab_observation(value=6.0),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    faulty = start(fault)  # type: ignore[operator]
    with faulty.client(world["alice"]) as alice:
        _killed(faulty, lambda: alice.post("", json=bundle))
    orphans = _gc(world["profile"])
    assert len(orphans) == (3 if kept == 0 else 0)  # stored, never named by a pointer
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice:
        assert _observations(alice) == before + kept  # both new records, or neither
        updated = alice.get(f"/Observation/{rid}").json()
        assert updated["meta"]["versionId"] == ("1" if kept == 0 else "2")
        assert updated["valueQuantity"]["value"] == (1.0 if kept == 0 else 2.0)
        values = sorted(
            e["resource"]["valueQuantity"]["value"]
            for e in alice.get("/Observation", params={"patient": ALICE_ID}).json()["entry"]
        )
        assert (5.0 in values, 6.0 in values) == ((True, True) if kept else (False, False))
        # The retry: applied whole if the killed one did not land; if it did, its If-Match
        # is stale and the whole Bundle is refused (412), nothing written twice.
        r = alice.post("", json=bundle)
        assert r.status_code == (200 if kept == 0 else 412), r.text
        assert _observations(alice) == before + 2
        export = alice.get("/AuditEvent", params={"patient": ALICE_ID})
        assert export.status_code == 200, export.text
    again.stop()
    entries = entries_from_bundle(export.json())
    writes = [e for e in entries if e["action"] in ("RegisterRecord", "AmendRecord")]
    last = writes[-3:]  # the transaction that committed: three entries, one ledger transaction
    assert [e["action"] for e in last] == ["RegisterRecord", "AmendRecord", "RegisterRecord"]
    assert len({e["tx_id"] for e in last}) == 1
    assert last[1]["record_id"] == rid
    exported = tmp_path / "audit.json"
    exported.write_text(export.text, encoding="utf-8")
    result = runner.invoke(
        app, ["audit", "verify", "-p", world["profile"], "-w", "alice", "--fhir", str(exported)]
    )
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def _ledger_records(profile: str) -> set[str]:
    """alice's record ids on the ledger (``ehrshare record list``, not the server)."""
    result = runner.invoke(app, ["record", "list", "-p", profile, "-w", "alice", "--json"])
    assert result.exit_code == 0, result.output
    return {r["record_id"] for r in json.loads(result.stdout)}


@pytest.mark.parametrize(
    ("fault", "kept"),
    [
        ("put.after_store", 0),
        ("put.after_register", 1),
        ("write_records.after_store", 0),
        ("write_records.after_register", 2),
    ],
)
def test_a_conditional_create_resent_after_a_lost_answer_is_not_made_twice(
    world: dict, start: object, fault: str, kept: int
) -> None:
    """Killed after the submit, before the answer (the answer is lost), the client re-sends the
    same conditional create — one resource with If-None-Exist, or a Bundle of creates with
    ifNoneExist — and gets 200 with what the killed request registered: nothing is created
    twice. Killed before the submit, the re-send creates (201). A third send changes nothing."""
    system = "http://hosp.example/ids"
    names = [f"{fault}-a", f"{fault}-b"] if fault.startswith("write_records") else [f"{fault}-a"]

    def obs(name: str) -> dict:
        return lab_observation() | {"identifier": [{"system": system, "value": name}]}

    def send(c: httpx.Client) -> httpx.Response:
        if len(names) == 1:
            condition = {"If-None-Exist": f"identifier={system}|{names[0]}"}
            return c.post("/Observation", json=obs(names[0]), headers=condition)
        request = {"method": "POST", "url": "Observation"}
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": obs(n), "request": request | {"ifNoneExist": cond}}
                # The first claims on chain (system|value), the second (any system) does not.
                for n, cond in zip(
                    names,
                    (f"identifier={system}|{names[0]}", f"identifier={names[1]}"),
                    strict=True,
                )
            ],
        }
        return c.post("", json=bundle)

    before = _ledger_records(world["profile"])
    faulty = start(fault)  # type: ignore[operator]
    with faulty.client(world["alice"]) as alice:
        _killed(faulty, lambda: send(alice))
    killed = _ledger_records(world["profile"])
    assert len(killed - before) == kept and killed >= before
    again = start()  # type: ignore[operator]
    with again.client(world["alice"]) as alice:
        r = send(alice)
        assert r.status_code == (201 if kept == 0 and len(names) == 1 else 200), r.text
        if len(names) > 1:
            statuses = [e["response"]["status"] for e in r.json()["entry"]]
            assert statuses == (["200 OK"] * 2 if kept else ["201 Created"] * 2)
            ids = {e["resource"]["id"] for e in r.json()["entry"]}
        else:
            ids = {r.json()["id"]}
        if kept:
            assert ids == killed - before  # the records the killed request registered
        third = send(alice)
        assert third.status_code == 200, third.text
    again.stop()
    assert _ledger_records(world["profile"]) == before | ids


def test_two_gateway_processes_sent_one_conditional_create_at_once_make_one_record(
    world: dict, start: object
) -> None:
    """Two ``ehrshare fhir serve`` processes over one consortium (as behind a load balancer:
    a re-sent request may land on the other one), each sent the same conditional create
    several times at once: one record per identifier, every answer names it."""
    system = "http://hosp.example/ids"
    servers = [start(), start()]  # type: ignore[operator]
    clients = [s.client(world["alice"]) for s in servers]
    before = _ledger_records(world["profile"])
    made = set()
    try:
        for n in range(3):
            name = f"two-gateways-{n}"
            body = lab_observation() | {"identifier": [{"system": system, "value": name}]}
            condition = {"If-None-Exist": f"identifier={system}|{name}"}
            with ThreadPoolExecutor(max_workers=6) as pool:
                answers = list(
                    pool.map(
                        lambda i, b=body, h=condition: clients[i % 2].post(
                            "/Observation", json=b, headers=h
                        ),
                        range(6),
                    )
                )
            codes = sorted(r.status_code for r in answers)
            assert codes == [200] * 5 + [201], [r.text for r in answers]
            ids = {r.json()["id"] for r in answers}
            assert len(ids) == 1, ids
            made |= ids
    finally:
        for c in clients:
            c.close()
    assert _ledger_records(world["profile"]) == before | made
