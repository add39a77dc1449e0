"""Recovery of a lost wallet on a real Fabric 2.3 network (the same chaincode as
tests/sdk/test_session_recovery.py): two hospitals' admins rebind the patient's identity; the
new wallet enrols, reads the old record and revokes the old grant; the old wallet is refused by
the peers and by the KGC nodes. Then a guardian revokes for the patient within its limits."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.key_extraction import ExtractionFailed, extract_identity_key
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.session import AccessDenied, RequestRejected

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

DAY = dt.timedelta(days=1)


def test_lost_wallet_recovered_on_fabric(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c", ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        for name, hospital, role in (
            ("pat", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
            ("gwen", "HospitalA", "guardian"),
            ("admin-b", "HospitalB", "admin"),
        ):
            c.add_member(name, hospital, role)
            if role != "admin":
                with c.session(name) as s:
                    s.enroll()
                    s.publish_type_keys(["lab"])
        with c.session("pat") as old, c.session("baker") as baker:
            ref = old.put_record(lab_observation())
            grant = old.grant(baker.ibe_id, "lab", expires=DAY)
            ibe_id = old.ibe_id
            wallet = c.reissue_member(ibe_id, "pat-new")
            cert = wallet.load_identity()[0].credentials.decode()
            with c.session(ADMIN_WALLET) as admin_a, c.session("admin-b") as admin_b:
                admin_a.register()
                admin_b.register()
                assert not admin_a.recover_member(ibe_id, cert).done
                assert old.role() == "patient"  # the old binding holds until the quorum
                assert admin_b.recover_member(ibe_id, cert).done
            with c.session("pat-new") as new:
                new.enroll()
                assert str(new.read_record(ref).status) == "final"  # type: ignore[attr-defined]
                new.revoke(grant.grant_id)
                with pytest.raises(AccessDenied, match="is revoked"):
                    baker.read_record(ref)
                public, roster = new._master()[1], new.roster
                with c.session("gwen") as gwen:
                    direct = new.grant(baker.ibe_id, "lab", expires=DAY)
                    new.add_guardian(gwen.ibe_id, types=["lab"], actions=["revoke"], expires=DAY)
                    gwen.revoke(direct)
                    with pytest.raises(RequestRejected, match="does not allow audit"):
                        gwen.audit(ibe_id)
            with pytest.raises(RequestRejected, match=f"of identity {ibe_id} was revoked at"):
                old.grants()
            with pytest.raises(ExtractionFailed):
                extract_identity_key(
                    old.kgc, old.identity, old._signer, public=public, roster=roster
                )
