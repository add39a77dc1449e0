"""Type-key epochs on a real Fabric network (the same chaincode as tests/sdk/
test_type_key_epochs.py): a patient's revocation rotates the type on chain, the remaining
grantee reads records from before and after it, the revoked one neither, a bad rotation is
refused by the peers, and a rotation left without its key (a revocation killed after its commit)
is finished by the patient's next record."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium
from ehrshare.session import AccessDenied
from ehrshare.session.errors import RequestRejected

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def test_a_revocation_rotates_the_type_key_on_fabric(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c", ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        for name, hospital, role in (
            ("pat", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
            ("chen", "HospitalC", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
        with c.session("pat") as pat, c.session("baker") as baker, c.session("chen") as chen:
            day = dt.timedelta(days=1)
            keep = pat.grant(baker.ibe_id, "lab", expires=day)
            gone = pat.grant(chen.ibe_id, "lab", expires=day)
            old = pat.put_record(lab_observation(1.0))
            pat.revoke(gone)
            label = pat.labels.opaque("lab")
            assert pat.chain.get_type_key_epoch(pat.ibe_id, label).type_epoch == 1
            assert pat.get_grant(keep.grant_id).type_epochs == (0, 1)
            new = baker.put_record(lab_observation(2.0), patient=pat.ibe_id)
            assert pat.chain.get_record(new.record_id).type_epoch == 1
            for ref, value in ((old, 1.0), (new, 2.0)):
                assert baker.read_record(ref).model_dump()["valueQuantity"]["value"] == value
                assert pat.read_record(ref).model_dump()["valueQuantity"]["value"] == value
                with pytest.raises(AccessDenied, match=f"grant {gone.grant_id} is revoked"):
                    chen.read_record(ref)
            with pytest.raises(RequestRejected, match="this needs role patient"):
                baker.rotate_type_key("lab")
            assert pat.rotate_type_key("lab").rekeyed == (keep.grant_id,)
            # A revocation whose process died right after its commit (revoke.after_commit):
            # epoch 3 has no key. A clinician's record for the patient is refused; the
            # patient's own next record finishes the rotation on the peers and is sealed to it.
            again = pat.grant(chen.ibe_id, "lab", expires=day)
            pat.chain.revoke_access(again.grant_id)
            assert pat.chain.get_type_key_epoch(pat.ibe_id, label).key == ""
            with pytest.raises(RequestRejected, match=r"is being rotated \(epoch 3 has no key"):
                baker.put_record(lab_observation(3.0), patient=pat.ibe_id)
            healed = pat.put_record(lab_observation(4.0))
            assert pat.chain.get_record(healed.record_id).type_epoch == 3
            assert pat.get_grant(keep.grant_id).type_epochs == (0, 1, 2, 3)
            assert baker.read_record(healed).model_dump()["valueQuantity"]["value"] == 4.0
            with pytest.raises(AccessDenied, match="is revoked"):
                chen.read_record(healed)
