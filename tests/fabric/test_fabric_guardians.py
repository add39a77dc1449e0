"""Guardians on a real Fabric 2.3 network (one network for the module, the same chaincode as
tests/sdk/test_session_guardians.py and tests/sdk/test_guardian_minor_cli.py): a patient's
guardian grants and revokes for the patient and reads its audit trail, each read logged on the
patient's chain before the peers serve it; a minor's guardian acts only once admins of two
other hospitals approved."""

from __future__ import annotations

import datetime as dt

import pytest
from fabric_care_world import consortium

from ehrshare.demo import lab_observation
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.session import AccessDenied, RequestRejected

pytestmark = [pytest.mark.fabric, pytest.mark.slow]
__all__ = ["consortium"]  # the fixture, from fabric_care_world

DAY = dt.timedelta(days=1)


def test_guardian_grants_revokes_and_its_audit_reads_are_logged(consortium: Consortium) -> None:
    c = consortium
    with c.session("alice") as alice, c.session("baker") as baker, c.session("gwen") as gwen:
        ref = alice.put_record(lab_observation())
        direct = alice.grant(baker.ibe_id, "lab", expires=DAY)
        alice.add_guardian(gwen.ibe_id, types=["lab"], expires=DAY)
        given = gwen.grant_for(alice.ibe_id, baker.ibe_id, "lab")
        assert (given.owner, given.grantor) == (alice.ibe_id, gwen.ibe_id)
        gwen.revoke(direct)
        # baker still reads, under the guardian's grant; not under the revoked one.
        assert str(baker.read_record(ref, grant=given.grant_id).status) == "final"  # type: ignore[attr-defined]
        with pytest.raises(AccessDenied, match="is revoked"):
            baker.read_record(ref, grant=direct.grant_id)
        # A read the SDK did not log first is refused by the peers.
        with pytest.raises(RequestRejected, match="as a guardian: log the read first"):
            gwen.chain.get_audit_trail("patient", alice.ibe_id)
        trail = gwen.audit(alice.ibe_id)
        last = trail.entries[-1]
        assert (last["action"], last["actor"], last["detail"]["on_behalf_of"]) == (
            "AuditRead",
            gwen.ibe_id,
            alice.ibe_id,
        )
        assert gwen.verify_audit(alice.ibe_id).checks["chaincode"]["valid"]
        own = alice.audit()
        assert [e["action"] for e in own.entries].count("AuditRead") == 2  # audit, then verify
        acted = [e["action"] for e in own.entries if e["actor"] == gwen.ibe_id]
        assert acted == ["GrantAccess", "RevokeAccess", "AuditRead", "AuditRead"]


def test_minors_guardian_acts_after_two_other_hospitals_approve(consortium: Consortium) -> None:
    c = consortium
    with (
        c.session("kid") as kid,
        c.session("baker") as baker,
        c.session("gwen") as gwen,
        c.session(ADMIN_WALLET) as admin_a,
        c.session("admin-b") as admin_b,
        c.session("admin-c") as admin_c,
    ):
        grant = kid.grant(baker.ibe_id, "lab", expires=DAY)
        proposed = admin_a.propose_minor_guardian(kid.ibe_id, gwen.ibe_id, types=[], expires=DAY)
        assert proposed.state == "proposed"
        assert admin_b.approve_minor_guardian(kid.ibe_id, gwen.ibe_id).state == "proposed"
        with pytest.raises(RequestRejected, match=f"is not a guardian of {kid.ibe_id}"):
            gwen.audit(kid.ibe_id)
        active = admin_c.approve_minor_guardian(kid.ibe_id, gwen.ibe_id)
        assert (active.state, active.approved_by) == ("active", ("HospitalBMSP", "HospitalCMSP"))
        gwen.revoke(grant)
        assert kid.get_grant(grant.grant_id).state == "revoked"
        actions = [e["action"] for e in gwen.audit(kid.ibe_id).entries]
        assert actions[-6:] == [
            "ProposeMinorGuardian",
            "ApproveMinorGuardian",
            "ApproveMinorGuardian",
            "MinorGuardianActive",
            "RevokeAccess",
            "AuditRead",
        ]
