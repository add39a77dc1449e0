"""A record's ``kind``: the SDK registers every record with the opaque label of its FHIR
resourceType (an HMAC under the consortium's label key, distinct from the type labels), and a
new version must be of the same resourceType (refused before anything is stored)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from test_session_write_records import _stored

from ehrshare import RecordTypeChanged, RecordWrite, Session
from ehrshare.demo import lab_observation
from ehrshare.fhir import TypeLabels
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    c = Consortium.init(tmp_path_factory.mktemp("record-kind") / "c", clock=ManualClock())
    c.add_member("alice", "HospitalA", "patient")
    with c.session("alice") as s:
        s.enroll()
        s.publish_type_keys()
    yield c
    c.close()


@pytest.fixture
def alice(world: Consortium) -> Iterator[Session]:
    with world.session("alice") as s:
        yield s


def specimen() -> dict[str, Any]:
    return {"resourceType": "Specimen", "note": [{"text": "a specimen of the caller's"}]}


def test_kind_labels_are_opaque_keyed_and_apart_from_type_labels() -> None:
    key = os.urandom(32)
    labels = TypeLabels(key, ["lab"])
    kind = labels.kind("Observation")
    assert kind.startswith("k-") and len(kind) == 34
    assert kind == TypeLabels(key).kind("Observation")  # deterministic under one key
    assert kind != labels.kind("Specimen")
    assert kind != TypeLabels(os.urandom(32)).kind("Observation")  # another consortium's key
    assert kind[2:] != labels.opaque("lab")[2:]
    assert "Observation" not in kind and hashlib.sha256(b"Observation").hexdigest()[:32] != kind[2:]
    for bad in ("observation", "", "Obs ervation", "A" * 65):
        with pytest.raises(ValueError, match="not a FHIR resource type"):
            labels.kind(bad)


def test_every_record_is_registered_with_its_resource_types_kind(alice: Session) -> None:
    obs = alice.put_record(lab_observation())
    spec = alice.put_record(specimen())
    assert obs.kind == alice.labels.kind("Observation")
    assert spec.kind == alice.labels.kind("Specimen")
    assert obs.label == spec.label  # both of record type lab: only the kind tells them apart
    assert alice.get_record(obs.record_id).kind == obs.kind
    listed = {r.record_id: r.kind for r in alice.list_records()}
    assert listed[obs.record_id] == obs.kind and listed[spec.record_id] == spec.kind
    refs = alice.write_records([RecordWrite(specimen()), RecordWrite(lab_observation())])
    assert [r.kind for r in refs] == [spec.kind, obs.kind]
    again = alice.amend_record(obs.record_id, lab_observation(value=9.0))
    assert again.version == 2 and again.kind == obs.kind


def test_a_version_of_another_resource_type_is_refused_before_anything_is_stored(
    alice: Session, world: Consortium
) -> None:
    obs = alice.put_record(lab_observation())
    before = _stored(world)
    with pytest.raises(RecordTypeChanged, match="not a Specimen"):
        alice.amend_record(obs.record_id, specimen())
    with pytest.raises(RecordTypeChanged, match="not a Specimen"):
        alice.write_records([RecordWrite(specimen(), obs.record_id)])
    assert alice.get_record(obs.record_id).version == 1
    assert _stored(world) == before
