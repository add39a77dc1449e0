"""A clinician's view: the records their valid grants let them read (ListGrantedRecords)."""

from __future__ import annotations

import datetime as dt

import pytest
from sdk_people import People

from ehrshare.demo import imaging_study, lab_observation
from ehrshare.session import RequestRejected

DAY = dt.timedelta(days=1)


def _ids(pairs: list[tuple[object, object]]) -> set[str]:
    return {ref.record_id for ref, _ in pairs}  # type: ignore[attr-defined]


def test_granted_records_follow_the_grants_type_owner_and_validity(people: People) -> None:
    p = people
    lab = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    lab2 = p.adams.put_record(lab_observation(value=9.9), patient=p.alice.ibe_id)
    p.adams.put_record(imaging_study(), patient=p.alice.ibe_id)  # another type: not listed
    assert p.baker.granted_records() == []

    grant = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=1)
    pairs = p.baker.granted_records()
    assert _ids(pairs) == {lab.record_id, lab2.record_id}
    assert {g.grant_id for _, g in pairs} == {grant.grant_id}
    assert all(ref.owner == p.alice.ibe_id and ref.type == "lab" for ref, _ in pairs)
    # Only the grantee sees them, and only through a grant it holds.
    assert p.chen.granted_records() == []
    with pytest.raises(RequestRejected, match="is not the grantee of grant"):
        p.chen._call("ListGrantedRecords", grant.grant_id, "10", "")

    # A referral lists the same records for the next hop.
    fwd = p.baker.forward(lab, p.chen.ibe_id)
    assert {g.grant_id for _, g in p.chen.granted_records()} == {fwd.grant_id}
    assert _ids(p.chen.granted_records()) == {lab.record_id, lab2.record_id}

    # Revoking the root empties both views (the referral's chain is no longer valid).
    p.alice.revoke(grant)
    assert p.baker.granted_records() == []
    assert p.chen.granted_records() == []
    with pytest.raises(RequestRejected, match="is revoked"):
        p.chen._call("ListGrantedRecords", fwd.grant_id, "10", "")


def test_granted_records_expire_with_the_grant(people: People) -> None:
    p = people
    p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    p.alice.grant(p.baker.ibe_id, "lab", expires=DAY)
    assert len(p.baker.granted_records()) == 1
    p.clock.advance(2 * 24 * 3600)
    assert p.baker.granted_records() == []


def test_granted_records_page_past_other_types(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = people
    # One record per page, and more records of another type than of the granted one: pages
    # the query filters down to nothing must not end the listing.
    for _ in range(8):
        p.adams.put_record(imaging_study(), patient=p.alice.ibe_id)
    lab = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    p.alice.grant(p.baker.ibe_id, "lab", expires=DAY)
    monkeypatch.setattr("ehrshare.session.records._PAGE", "1")
    assert _ids(p.baker.granted_records()) == {lab.record_id}
