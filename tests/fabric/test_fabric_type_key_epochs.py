"""Type-key epochs on a real Fabric network (the same chaincode as tests/sdk/
test_type_key_epochs.py): a patient's revocation rotates the type on chain, the remaining
grantee reads records from before and after it, the revoked one neither, and a bad rotation is
refused by the peers."""

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
