"""Break-glass emergency access on a real Fabric 2.3 network (the same chaincode as
tests/sdk/test_session_emergency.py): the patient's policy and pre-grant, a clinician's request,
one approval short (read denied and logged, the KGC nodes refuse the key), the second hospital's
approval (read, logged with purpose emergency), the patient's review, and expiry."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fabric_care_world import consortium

from ehrshare.demo import lab_observation
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.session import AccessDenied, EmergencyKeyRefused, RequestRejected

pytestmark = [pytest.mark.fabric, pytest.mark.slow]
__all__ = ["consortium"]  # the fixture, from fabric_care_world


def test_emergency_access_on_fabric(consortium: Consortium) -> None:
    c = consortium
    with (
        c.session("pat") as pat,
        c.session("adams") as adams,
        c.session(ADMIN_WALLET) as admin_a,
        c.session("admin-b") as admin_b,
        c.session("admin-c") as admin_c,
    ):
        ref = pat.put_record(lab_observation())
        policy = pat.set_emergency_policy(["lab"], duration=dt.timedelta(minutes=2))
        request = adams.emergency_request(pat.ibe_id, "unconscious, no grant on file")
        with pytest.raises(RequestRejected, match="is the requester's"):
            admin_a.approve_emergency(request.request_id)
        admin_b.approve_emergency(request.request_id)
        with pytest.raises(AccessDenied, match="has 1 of the 2 approvals it needs"):
            adams.read_emergency_record(request.request_id, ref)
        with pytest.raises(EmergencyKeyRefused, match="has 1 of the 2 approvals"):
            adams._emergency_key(policy.identity)
        approved = admin_c.approve_emergency(request.request_id)
        assert approved.status == "approved"
        _, resource = adams.read_emergency_record(request.request_id, ref)
        assert str(resource.status) == "final"  # type: ignore[attr-defined]
        decisions = [
            (e["outcome"], e["detail"].get("purpose"))
            for e in pat.audit().entries
            if e["action"] == "AccessDecision"
        ]
        assert decisions == [("deny", "emergency"), ("allow", "emergency")]
        assert [r.request_id for r in pat.emergency_reviews()] == [request.request_id]
        assert pat.review_emergency(request.request_id).review == "acknowledged"
        # Expiry: Fabric takes the transaction time from the client's clock.
        time.sleep(max(0, approved.expires_at - time.time()) + 2)
        with pytest.raises(AccessDenied, match="expired at"):
            adams.read_emergency_record(request.request_id, ref)
