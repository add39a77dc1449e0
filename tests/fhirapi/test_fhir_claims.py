"""Conditional creates that hold across gateways and members (issue 17): a create under an
identifier condition takes an on-chain claim, so two requests that both found no match cannot
both create. Each race here is forced: both requests have evaluated their condition (found
nothing) before either writes, held at a barrier in front of the write — through two FhirServer
instances over one consortium (each with its own member locks, as two gateway processes have),
or as two members of one gateway."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_world import Fhir, state_digest
from test_fhir_conditional import HOSP, _bundle, _cond, _obs, _post, _records
from test_fhir_records import consent

from ehrshare.fhirapi import FhirServer, TokenBook
from ehrshare.fhirapi.gateway import gateway_for
from ehrshare.session import Session

ROUNDS = 4


@pytest.fixture
def second(fhir: Fhir, tmp_path: Path) -> Iterator[str]:
    """The URL of a second gateway over the same consortium (the same tokens)."""
    book = TokenBook.load(tmp_path / "fhir-tokens.json")
    server = FhirServer(gateway_for(fhir.consortium.runtime, book), ("127.0.0.1", 0)).start()
    try:
        yield server.url
    finally:
        server.stop()


def _hold_at_write(monkeypatch: pytest.MonkeyPatch, name: str) -> threading.Barrier:
    """Session.``name`` waits until two requests have reached it: both have found no match."""
    barrier = threading.Barrier(2, timeout=60)
    original = getattr(Session, name)

    def held(self: Session, *args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Session, name, held)
    return barrier


def _client(fhir: Fhir, url: str, name: str) -> httpx.Client:
    headers = {"Content-Type": "application/fhir+json"}
    headers["Authorization"] = f"Bearer {fhir.tokens[name]}"
    return httpx.Client(base_url=url, headers=headers, timeout=120)


def _race(sends: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        futures = [pool.submit(send) for send in sends]
        return [f.result(timeout=120) for f in futures]


def _one_created(answers: list[httpx.Response]) -> str:
    """One answer is 201, the others 200 with the same record; its id."""
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * (len(answers) - 1) + [201], [r.text for r in answers]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1, ids
    return ids.pop()


def test_two_gateways_sent_the_same_conditional_create_make_one_record(
    fhir: Fhir, second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_write(monkeypatch, "put_record")
    before = _records(fhir)
    made = []
    with _client(fhir, fhir.url, "alice") as one, _client(fhir, second, "alice") as two:
        for n in range(ROUNDS):
            value = f"gw-{n}"
            answers = _race(
                [
                    lambda c=c, v=value: c.post("/Observation", json=_obs(v), headers=_cond(v))
                    for c in (one, two)
                ]
            )
            made.append(_one_created(answers))
    assert _records(fhir) == sorted([*before, *made])


def test_a_patient_and_a_clinician_writing_for_her_make_one_record(
    fhir: Fhir, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id = fhir.ids["alice"]
    for_alice = {"subject": {"identifier": {"system": "urn:ehrshare:member", "value": alice_id}}}
    with fhir.client("alice") as alice:
        end = fhir.clock.seconds + 86400
        r = alice.post("/Consent", json=consent(alice_id, fhir.ids["baker"], "lab", end))
        assert r.status_code == 201, r.text
    _hold_at_write(monkeypatch, "put_record")
    before = _records(fhir)
    made = []
    with fhir.client("alice") as alice, fhir.client("baker") as baker:
        for n in range(ROUNDS):
            value = f"mb-{n}"
            answers = _race(
                [
                    lambda v=value: alice.post("/Observation", json=_obs(v), headers=_cond(v)),
                    lambda v=value: baker.post(
                        "/Observation", json=_obs(v) | for_alice, headers=_cond(v)
                    ),
                ]
            )
            made.append(_one_created(answers))
    assert _records(fhir) == sorted([*before, *made])


def test_two_gateways_sent_the_same_bundle_entry_make_one_record(
    fhir: Fhir, second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_at_write(monkeypatch, "write_records")
    before = _records(fhir)
    made = []
    with _client(fhir, fhir.url, "alice") as one, _client(fhir, second, "alice") as two:
        for n in range(ROUNDS):
            value = f"bd-{n}"
            bundle = _bundle((_obs(value), _post(ifNoneExist=f"identifier={HOSP}|{value}")))
            answers = _race([lambda c=c, b=bundle: c.post("", json=b) for c in (one, two)])
            assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
            statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in answers)
            assert statuses == ["200 OK", "201 Created"], statuses
            ids = {r.json()["entry"][0]["resource"]["id"] for r in answers}
            assert len(ids) == 1, ids
            made.append(ids.pop())
    assert _records(fhir) == sorted([*before, *made])


def test_a_claim_held_by_a_record_the_caller_cannot_read_is_412(fhir: Fhir) -> None:
    """chen has no grant: alice's record under the condition exists, chen may not see it, so
    its create is refused (412) and writes nothing — it neither duplicates nor learns it."""
    alice_id = fhir.ids["alice"]
    for_alice = {"subject": {"identifier": {"system": "urn:ehrshare:member", "value": alice_id}}}
    with fhir.client("alice") as alice, fhir.client("chen") as chen:
        first = alice.post("/Observation", json=_obs("hidden-1"), headers=_cond("hidden-1"))
        assert first.status_code == 201, first.text
        before = state_digest(fhir.consortium.directory)
        r = chen.post("/Observation", json=_obs("hidden-1") | for_alice, headers=_cond("hidden-1"))
        assert r.status_code == 412, r.text
        diagnostics = r.json()["issue"][0]["diagnostics"]
        assert "you may not read it" in diagnostics and first.json()["id"] not in diagnostics
        assert state_digest(fhir.consortium.directory) == before
        # Without the condition it may create (conditions are what claims are for).
        r = chen.post("/Observation", json=_obs("hidden-1") | for_alice)
        assert r.status_code == 201, r.text


def test_a_bundle_creating_twice_under_one_condition_is_refused(fhir: Fhir) -> None:
    cond = f"identifier={HOSP}|twice-1"
    bundle = _bundle(
        (_obs("twice-1"), _post(ifNoneExist=cond)), (_obs("twice-1"), _post(ifNoneExist=cond))
    )
    before = state_digest(fhir.consortium.directory)
    with fhir.client("alice") as alice:
        r = alice.post("", json=bundle)
    assert r.status_code == 422, r.text
    assert "entry[0] creates under the same condition" in r.json()["issue"][0]["diagnostics"]
    assert state_digest(fhir.consortium.directory) == before
