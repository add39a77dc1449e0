"""``Session.amend_record`` and ``open_record(version=)``: a new version of a record, encrypted
for its owner like the first; older versions readable by the owner only; the record type, the
caller's right to amend and the size are checked before anything is stored."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pytest
from sdk_people import People

from ehrshare.demo import lab_observation
from ehrshare.session import (
    AccessDenied,
    RecordTooLarge,
    RecordTypeChanged,
    RequestRejected,
    VersionNotReadable,
)


def _vital_signs() -> dict[str, object]:
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    return lab_observation() | {"category": [{"coding": [{"system": cat, "code": "vital-signs"}]}]}


def _stored(people: People) -> set[Path]:
    assert people.consortium.profile.path is not None
    store = people.consortium.profile.path.parent / "store"
    return {p for p in store.rglob("*") if p.is_file()}


def _value(model: object) -> float:
    return float(model.valueQuantity.value)  # type: ignore[attr-defined]


def test_a_new_version_is_current_and_the_old_one_stays_the_owners(people: People) -> None:
    ref = people.alice.put_record(lab_observation(value=1.0))
    people.clock.advance(30)
    v2 = people.alice.amend_record(ref.record_id, lab_observation(value=2.0))
    assert (v2.record_id, v2.version, v2.owner) == (ref.record_id, 2, ref.owner)
    assert v2.updated_at == ref.created_at + 30 and v2.created_at == ref.created_at
    assert _value(people.alice.read_record(ref.record_id)) == 2.0
    old_ref, old = people.alice.open_record(ref.record_id, version=1)
    assert (old_ref.version, _value(old)) == (1, 1.0)

    people.alice.grant(people.baker.ibe_id, "lab", expires=_dt.timedelta(days=1))
    assert _value(people.baker.read_record(ref.record_id)) == 2.0
    with pytest.raises(VersionNotReadable, match="grantee read the current version only"):
        people.baker.open_record(ref.record_id, version=1)


def test_an_amendment_is_checked_before_anything_is_stored(people: People) -> None:
    ref = people.alice.put_record(lab_observation(value=1.0))
    people.alice.grant(people.baker.ibe_id, "lab", expires=_dt.timedelta(days=1))
    stored = _stored(people)
    with pytest.raises(RecordTypeChanged, match="of type vital-signs would change it"):
        people.alice.amend_record(ref.record_id, _vital_signs())
    with pytest.raises(RequestRejected, match="may not amend"):
        people.baker.amend_record(ref.record_id, lab_observation(value=9.0))
    with pytest.raises((RequestRejected, AccessDenied)):
        people.chen.amend_record(ref.record_id, lab_observation(value=9.0))
    big = lab_observation(marker="x" * (people.alice.max_record_bytes + 1))
    with pytest.raises(RecordTooLarge):
        people.alice.amend_record(ref.record_id, big)
    assert _stored(people) == stored
    assert people.alice.get_record(ref.record_id).version == 1
