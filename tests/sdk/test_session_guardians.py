"""Guardians through the SDK (embedded backend, in-process KGC nodes and proxies): a patient
registers a guardian, who grants, revokes and reads the audit trail for the patient within the
limits, and is refused beyond them or after removal."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sdk_people import People

from ehrshare.demo import lab_observation
from ehrshare.session import AccessDenied, RequestRejected, Session

DAY = dt.timedelta(days=1)


def guardian(people: People) -> Session:
    c = people.consortium
    c.add_member("gwen", "HospitalA", "guardian")
    gwen = c.session("gwen")
    gwen.enroll()
    gwen.publish_type_keys()
    return gwen


def test_guardian_acts_for_the_patient_within_its_limits(people: People) -> None:
    p = people
    gwen = guardian(p)
    ref = p.alice.put_record(lab_observation())
    direct = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY)
    entry = p.alice.add_guardian(gwen.ibe_id, types=["lab"], expires=DAY)
    assert entry.actions == ("audit", "grant", "revoke") and entry.state == "active"
    # Running it again neither fails nor gives the guardian a second grant.
    p.alice.add_guardian(gwen.ibe_id, types=["lab"], expires=DAY)
    assert len([g for g in p.alice.grants("owner") if g.grantee == gwen.ibe_id]) == 1

    given = gwen.grant_for(p.alice.ibe_id, p.baker.ibe_id, "lab")
    assert (given.owner, given.grantor) == (p.alice.ibe_id, gwen.ibe_id)
    assert p.baker.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    gwen.revoke(direct)
    with pytest.raises(AccessDenied, match=f"grant {direct.grant_id} is revoked"):
        p.chen.read_record(ref)
    trail = gwen.audit(p.alice.ibe_id)
    acted = [
        (e["action"], e["detail"].get("on_behalf_of"))
        for e in trail.entries
        if e["actor"] == gwen.ibe_id
    ]
    assert acted == [
        ("GrantAccess", p.alice.ibe_id),
        ("RevokeAccess", p.alice.ibe_id),
        ("AuditRead", p.alice.ibe_id),  # the read itself, logged before it was served
    ]


def test_guardian_is_refused_beyond_its_limits_and_after_removal(people: People) -> None:
    p = people
    gwen = guardian(p)
    ref = p.alice.put_record(lab_observation())
    p.alice.add_guardian(gwen.ibe_id, types=["lab"], expires=DAY)
    given = gwen.grant_for(p.alice.ibe_id, p.baker.ibe_id, "lab")
    direct = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY)
    # Narrowed to reading the audit trail: granting and revoking are refused.
    p.alice.add_guardian(gwen.ibe_id, types=["lab"], actions=["audit"], expires=DAY)
    limit = f"the guardianship of {gwen.ibe_id} for {p.alice.ibe_id} does not allow"
    with pytest.raises(RequestRejected, match=f"{limit} grant"):
        gwen.grant_for(p.alice.ibe_id, p.chen.ibe_id, "lab")
    with pytest.raises(RequestRejected, match=f"{limit} revoke"):
        gwen.revoke(direct)
    assert gwen.audit(p.alice.ibe_id).entries
    # Removed: nothing for the patient any more, and what it granted falls with its grant.
    p.alice.remove_guardian(gwen.ibe_id)
    with pytest.raises(RequestRejected, match=f"is not a guardian of {p.alice.ibe_id}"):
        gwen.audit(p.alice.ibe_id)
    with pytest.raises(AccessDenied, match="is revoked"):
        p.baker.read_record(ref)
    assert p.alice.get_grant(given.grant_id).state == "active"  # revoked through its parent
    with pytest.raises(RequestRejected):
        gwen.grant_for(p.alice.ibe_id, p.chen.ibe_id, "lab")


class _Counting:
    """A session's contract handle, counting the functions called through it."""

    def __init__(self, inner: object) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name not in ("submit_transaction", "evaluate_transaction"):
            return attr

        def counted(function: str, *args: str) -> object:
            self.calls.append(function)
            return attr(function, *args)  # type: ignore[operator]

        return counted


def test_reading_another_members_log_asks_the_readers_role_once_per_session(
    people: People,
) -> None:
    """A role never changes once registered: the second read of a patient's log by a guardian
    (and by an auditor) does not ask GetIdentity again; the guardian's reads are still logged
    first, each."""
    p = people
    gwen = guardian(p)
    p.alice.add_guardian(gwen.ibe_id, types=["lab"], expires=DAY)
    p.consortium.add_member("audra", "HospitalB", "auditor")
    audra = p.consortium.session("audra")
    audra.register()
    for reader, per_read in (
        (gwen, ["LogAuditRead", "GetAuditTrail"]),
        (audra, ["GetAuditTrail"]),
    ):
        counting = _Counting(reader.chain.contract)
        reader.chain.contract = counting  # type: ignore[assignment]
        first = reader.audit(p.alice.ibe_id)
        second = reader.audit(p.alice.ibe_id)
        assert counting.calls == ["GetIdentity", *per_read, *per_read]
        assert len(second.entries) >= len(first.entries) > 0
    reads = [e for e in p.alice.audit().entries if e["action"] == "AuditRead"]
    assert [e["actor"] for e in reads] == [gwen.ibe_id, gwen.ibe_id]
