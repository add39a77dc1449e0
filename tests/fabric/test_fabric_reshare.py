"""Resharing on a real Fabric network: the same chaincode refuses a new DKG once records exist,
runs OpenReshareSession with its committee rules and MVCC-ordered phases, and the key moved to a
new committee (a node out, a node in, τ up) keeps every record readable. Needs `make tools`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.ledger.errors import LedgerError
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.services.kgc import open_dkg_session, run_local_reshare

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def test_reshare_on_fabric_keeps_records_and_refuses_a_new_key(tmp_path: Path) -> None:
    hospitals = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")
    with Consortium.init(tmp_path / "c", hospitals=hospitals, committee=3, ledger="fabric") as c:
        c.add_member("pat", "HospitalA", "patient")
        with c.session("pat") as pat:
            pat.enroll()
            pat.publish_type_keys()
            record = pat.put_record(lab_observation()).record_id
        before = c.dkg_result()
        with c.session(ADMIN_WALLET) as admin:
            with pytest.raises(LedgerError) as refused:
                open_dkg_session(
                    admin.contract,
                    nonce=new_session_nonce(),
                    roster=["HospitalAMSP/kgc1", "HospitalBMSP/kgc2", "HospitalCMSP/kgc3"],
                    threshold=2,
                )
            assert "reshare the key to a new committee instead" in refused.value.message
            run_local_reshare(
                c.kgc_nodes,
                nonce=new_session_nonce(),
                admin=admin.contract,
                members=[1, 3, 4],
                dealers=[1, 2, 3],
                threshold=3,
                poll=0.2,
            )
        after = c.dkg_result()
        assert after["mpk"] == before["mpk"] and after["indices"] == [1, 3, 4]
        with c.session("pat") as pat:
            assert pat.read_record(record).status == "final"  # type: ignore[attr-defined]
        c.add_member("dora", "HospitalD", "clinician")
        with c.session("dora") as dora:
            assert len(dora.enroll().used) == 3
