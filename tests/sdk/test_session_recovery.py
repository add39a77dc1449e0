"""Recovery of a lost wallet through the SDK, on the embedded backend with in-process KGC nodes
and proxies: lose the wallet, recover it with two hospitals' admins, read the old records,
revoke an old grant; the old wallet is refused by the ledger and by the KGC nodes."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sdk_people import People

from ehrshare.demo import lab_observation
from ehrshare.key_extraction import ExtractionFailed, extract_identity_key
from ehrshare.provisioning import Consortium, ConsortiumError
from ehrshare.session import AccessDenied, RequestRejected, Session

DAY = dt.timedelta(days=1)


def admins(c: Consortium) -> tuple[Session, Session]:
    """The consortium's admin (hospital A) and a registered admin of hospital B."""
    c.add_member("admin-b", "HospitalB", "admin")
    a, b = c.session("admin"), c.session("admin-b")
    b.register()
    return a, b


def test_lost_wallet_recovered_by_two_hospitals(people: People) -> None:
    p, c = people, people.consortium
    old = p.alice
    ref = old.put_record(lab_observation())
    grant = old.grant(p.baker.ibe_id, "lab", expires=DAY)
    admin_a, admin_b = admins(c)

    wallet = c.reissue_member(old.ibe_id, "alice-new")
    cert = wallet.load_identity()[0].credentials.decode()
    first = admin_a.recover_member(old.ibe_id, cert)
    assert (first.status, first.approved_by, first.quorum) == ("open", ("HospitalAMSP",), 2)
    # Running it again at the same hospital counts once and changes nothing.
    assert admin_a.recover_member(old.ibe_id, cert).approved_by == ("HospitalAMSP",)
    assert old.grants() and old.role() == "patient"  # the old binding is still in force
    done = admin_b.recover_member(old.ibe_id, cert)
    assert done.done and done.approved_by == ("HospitalAMSP", "HospitalBMSP")

    with c.session("alice-new") as new:
        new.enroll()  # the KGC nodes extract the same identity key for the new certificate
        assert new.ibe_id == old.ibe_id
        assert new.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
        assert grant.grant_id in {g.grant_id for g in new.grants("owner")}
        new.revoke(grant.grant_id)
        with pytest.raises(AccessDenied, match=f"grant {grant.grant_id} is revoked"):
            p.baker.read_record(ref)
        public = new._master()[1]
        roster = new.roster

    # The old wallet: every ledger call is refused, and every KGC node refuses to extract.
    revoked = f"of identity {old.ibe_id} was revoked at"
    for call in (old.grants, old.list_records, old.role, lambda: old.read_record(ref)):
        with pytest.raises(RequestRejected, match=revoked):
            call()
    with pytest.raises(RequestRejected, match=revoked):
        old.grant(p.baker.ibe_id, "lab", expires=DAY)
    with pytest.raises(ExtractionFailed) as info:
        extract_identity_key(
            old.kgc, old.identity, old._signer, public=public, roster=roster, clock=old._clock
        )
    assert info.value.unavailable and all(
        "is not the one registered on chain" in why for why in info.value.unavailable.values()
    )


def test_one_hospital_cannot_recover_alone(people: People) -> None:
    c = people.consortium
    admin_a, _ = admins(c)
    c.add_member("admin-a2", "HospitalA", "admin")
    admin_a2 = c.session("admin-a2")
    admin_a2.register()
    wallet = c.reissue_member(people.alice.ibe_id, "alice-new")
    cert = wallet.load_identity()[0].credentials.decode()
    admin_a.recover_member(people.alice.ibe_id, cert)
    # A second admin of the same hospital: its hospital approved, so it counts once.
    again = admin_a2.recover_member(people.alice.ibe_id, cert)
    assert (again.status, again.approved_by) == ("open", ("HospitalAMSP",))
    with pytest.raises(RequestRejected, match="hospital HospitalAMSP already approved"):
        admin_a2.chain.approve_rebinding(people.alice.ibe_id, again.cert_sha256)
    assert people.alice.grants() == [] and people.alice.role() == "patient"
    with c.session("alice-new") as new, pytest.raises(Exception, match="not the one registered"):
        new.enroll()


def test_reissue_refuses_a_wallet_of_someone_else(people: People) -> None:
    c = people.consortium
    with pytest.raises(ConsortiumError, match="holds HospitalBMSP/baker, not"):
        c.reissue_member(people.alice.ibe_id, "baker")
    with pytest.raises(ConsortiumError, match="the CA of NowhereMSP is not in"):
        c.reissue_member("NowhereMSP/alice", "x")
    first = c.reissue_member(people.alice.ibe_id, "alice-new")
    again = c.reissue_member(people.alice.ibe_id, "alice-new")
    assert first.load_identity()[0].credentials == again.load_identity()[0].credentials
