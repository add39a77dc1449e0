"""Break-glass emergency access through the SDK, on the embedded backend with in-process KGC
nodes and proxies (real pairings, real re-encryption): the patient's policy and pre-grants, a
clinician's request, hospitals' admins' approvals, the KGC nodes' gate, reads logged with purpose
emergency, expiry and the patient's review."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sdk_people import People

from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium
from ehrshare.session import AccessDenied, EmergencyKeyRefused, RequestRejected, Session

HOUR = dt.timedelta(hours=1)


def admins(c: Consortium) -> tuple[Session, Session, Session]:
    """The admins of hospitals A (the consortium's), B and C, registered."""
    c.add_member("admin-b", "HospitalB", "admin")
    c.add_member("admin-c", "HospitalC", "admin")
    a, b, cc = c.session("admin"), c.session("admin-b"), c.session("admin-c")
    b.register()
    cc.register()
    return a, b, cc


def audit_decisions(alice: Session, requester: str) -> list[tuple[str, str | None]]:
    return [
        (e["outcome"], e["detail"].get("purpose"))
        for e in alice.audit().entries
        if e["action"] == "AccessDecision" and e["detail"].get("requester") == requester
    ]


def test_short_by_one_is_denied_and_logged_enough_reads_and_the_patient_reviews(
    people: People,
) -> None:
    p = people
    ref = p.alice.put_record(lab_observation())
    policy = p.alice.set_emergency_policy(["lab"], duration=HOUR)
    assert (policy.identity, policy.approvals, policy.distinct_hospitals) == (
        f"{p.alice.ibe_id}~emergency-1",
        2,
        True,
    )
    assert [g.grantee for g in p.alice.grants("owner")] == [policy.identity]
    _, admin_b, admin_c = admins(p.consortium)
    request = p.adams.emergency_request(p.alice.ibe_id, "unconscious, no grant on file")
    assert request.status == "pending"
    admin_b.approve_emergency(request.request_id)

    short = f"emergency {request.request_id} has 1 of the 2 approvals it needs"
    with pytest.raises(AccessDenied, match=short):
        p.adams.read_emergency_record(request.request_id, ref)
    assert audit_decisions(p.alice, p.adams.ibe_id) == [("deny", "emergency")]
    # Each KGC node asks the chain itself: no emergency key with one approval of two.
    with pytest.raises(EmergencyKeyRefused) as info:
        p.adams._emergency_key(policy.identity)
    assert short in str(info.value)

    done = admin_c.approve_emergency(request.request_id)
    assert done.status == "approved" and done.review == "pending"
    _, resource = p.adams.read_emergency_record(request.request_id, ref)
    assert resource.valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    assert audit_decisions(p.alice, p.adams.ibe_id) == [
        ("deny", "emergency"),
        ("allow", "emergency"),
    ]
    assert [r.record_id for r in p.adams.emergency_records(request.request_id)] == [ref.record_id]
    # Another clinician has no emergency of its own: the nodes refuse it the key.
    with pytest.raises(EmergencyKeyRefused, match="has no emergency request"):
        p.baker._emergency_key(policy.identity)

    # The patient is told, and reviews.
    pending = p.alice.emergency_reviews()
    assert [(r.request_id, r.requester, r.review) for r in pending] == [
        (request.request_id, p.adams.ibe_id, "pending")
    ]
    reviewed = p.alice.review_emergency(request.request_id, "I was in hospital A, fine")
    assert reviewed.review == "acknowledged"
    assert p.alice.review_emergency(request.request_id).review == "acknowledged"  # again: same
    assert p.alice.emergency_reviews() == []


def test_emergency_expires(people: People) -> None:
    p = people
    ref = p.alice.put_record(lab_observation())
    p.alice.set_emergency_policy(["lab"], duration=HOUR)
    _, admin_b, admin_c = admins(p.consortium)
    request = p.adams.emergency_request(p.alice.ibe_id, "car accident")
    admin_b.approve_emergency(request.request_id)
    approved = admin_c.approve_emergency(request.request_id)
    p.adams.read_emergency_record(request.request_id, ref)
    p.clock.advance(3601)
    expired = f"emergency {request.request_id} expired at {approved.expires_at}"
    with pytest.raises(AccessDenied, match=expired):
        p.adams.read_emergency_record(request.request_id, ref)
    with pytest.raises(EmergencyKeyRefused, match=expired):
        p.adams._emergency_key(approved.identity)


def test_own_hospital_approval_is_refused_under_distinct_hospitals(people: People) -> None:
    p = people
    p.alice.set_emergency_policy(["lab"], duration=HOUR)
    admin_a, admin_b, _ = admins(p.consortium)
    request = p.adams.emergency_request(p.alice.ibe_id, "stroke")
    with pytest.raises(RequestRejected) as info:
        admin_a.approve_emergency(request.request_id)
    assert info.value.reason == (
        "hospital HospitalAMSP is the requester's; the emergency policy of "
        f"{p.alice.ibe_id} needs approvals from other hospitals"
    )
    once = admin_b.approve_emergency(request.request_id)
    # Approving again at the same hospital changes nothing (safe after a crash).
    assert admin_b.approve_emergency(request.request_id) == once
    assert p.adams.emergency(request.request_id).approved_by == once.approved_by


def test_setting_the_policy_again_keeps_one_pregrant_per_type(people: People) -> None:
    p = people
    p.alice.set_emergency_policy(["lab"], duration=HOUR)
    p.alice.set_emergency_policy(["lab"], duration=2 * HOUR, approvals=1)
    policy = p.alice.emergency_policy()
    assert (policy.duration_s, policy.approvals, policy.default) == (7200, 1, False)
    assert [g.grantee for g in p.alice.grants("owner") if g.state == "active"] == [policy.identity]
    assert p.baker.emergency_policy(p.adams.ibe_id.replace("adams", "alice")).approvals == 1


def test_rotation_after_an_emergency_moves_the_pregrants_to_a_new_identity(
    people: People,
) -> None:
    p = people
    ref = p.alice.put_record(lab_observation())
    first = p.alice.set_emergency_policy(["lab"], duration=HOUR)
    _, admin_b, admin_c = admins(p.consortium)
    request = p.adams.emergency_request(p.alice.ibe_id, "car accident")
    admin_b.approve_emergency(request.request_id)
    admin_c.approve_emergency(request.request_id)
    p.adams.read_emergency_record(request.request_id, ref)
    with pytest.raises(RequestRejected, match="is in force until"):
        p.alice.rotate_emergency_identity()
    p.clock.advance(3601)
    p.alice.review_emergency(request.request_id)
    second = p.alice.rotate_emergency_identity()
    assert second.identity == f"{p.alice.ibe_id}~emergency-2" and second.generation == 2
    states = {(g.grantee, g.state) for g in p.alice.grants("owner")}
    assert states == {(first.identity, "revoked"), (second.identity, "active")}
    # The old identity's key opens nothing new; a new emergency reads under the new identity.
    again = p.baker.emergency_request(p.alice.ibe_id, "second visit")
    admin_b_refused = "hospital HospitalBMSP is the requester's"
    with pytest.raises(RequestRejected, match=admin_b_refused):
        admin_b.approve_emergency(again.request_id)
    p.consortium.add_member("admin-a2", "HospitalA", "admin")
    with p.consortium.session("admin-a2") as admin_a2:
        admin_a2.register()
        admin_a2.approve_emergency(again.request_id)
    admin_c.approve_emergency(again.request_id)
    _, resource = p.baker.read_emergency_record(again.request_id, ref)
    assert resource.valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    with pytest.raises(EmergencyKeyRefused, match="has no emergency request"):
        p.adams._emergency_key(second.identity)
