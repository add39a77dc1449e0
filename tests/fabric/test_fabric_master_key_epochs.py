"""A new master key on a real Fabric network (the same chaincode as tests/sdk/
test_master_key_epochs.py): refused without the flag, and with it old and new records read for
the owner, and the old records for a grantee under the grant made before the new key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.ledger.errors import LedgerError
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.services.kgc import open_dkg_session, run_local_dkg
from ehrshare.session import AccessDenied

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def _read(c: Consortium, name: str, record_id: str) -> str:
    with c.session(name) as s:
        return str(s.read_record(record_id).status)  # type: ignore[attr-defined]


def test_a_new_master_key_on_fabric_keeps_old_records_readable(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c", ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        for name, hospital, role in (
            ("pat", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
        with c.session("pat") as pat, c.session("baker") as baker:
            old = pat.put_record(lab_observation()).record_id
            pat.grant(baker.ibe_id, "lab", expires=dt.timedelta(days=1))
            old_epoch = pat.epoch
        roster = [f"Hospital{h}MSP/kgc{i}" for i, h in enumerate("ABC", start=1)]
        with c.session(ADMIN_WALLET) as admin:
            with pytest.raises(LedgerError, match="--new-master-key"):
                open_dkg_session(
                    admin.contract, nonce=new_session_nonce(), roster=roster, threshold=2
                )
            run_local_dkg(
                c.kgc_nodes,
                nonce=new_session_nonce(),
                admin=admin.contract,
                threshold=2,
                poll=0.2,
                new_master_key=True,
            )
        for name in ("pat", "baker"):
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
                assert s.epoch != old_epoch
        with c.session("pat") as pat:
            new = pat.put_record(lab_observation()).record_id
        assert _read(c, "pat", old) == _read(c, "pat", new) == "final"
        assert _read(c, "baker", old) == "final"
        with pytest.raises(AccessDenied, match="was made under master key epoch"):
            _read(c, "baker", new)
