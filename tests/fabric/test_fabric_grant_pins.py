"""``ListGrantPins`` on a real Fabric network (issue 16): the peer's paginated range queries
page a grant's records, the bookmark resumes inside them, and the SDK (``store status`` /
``store repair``'s :func:`ehrshare.storemaint.grant_pins`) merges the parts into the same
answer whatever the page size. Builds its own network and checks by pid that it is gone."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from ehrshare import RecordWrite
from ehrshare.demo import lab_observation
from ehrshare.network.supervisor import pid_alive
from ehrshare.provisioning import Consortium
from ehrshare.storemaint import grant_pins

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def test_list_grant_pins_pages_a_grants_records_on_fabric(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c", ledger="fabric") as c:
        assert c.network is not None and c.network.running()
        pids = list(c.network.pids().values())
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("baker", "HospitalB", "clinician"),
        ):
            c.add_member(name, hospital, role)
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
        with c.session("alice") as alice:
            refs = alice.write_records(
                [RecordWrite(lab_observation(value=float(i))) for i in range(7)]
            )
            grant = alice.grant("HospitalBMSP/baker", "lab", expires=timedelta(days=1))
        want = sorted((r.record_id, 1, r.cid) for r in refs)
        for page_size in (100, 3, 1):
            (pins,) = grant_pins(c.profile, None, page_size=page_size)
            assert (pins.grant_id, pins.grantee_msp) == (grant.grant_id, "HospitalBMSP")
            assert sorted(pins.records) == want, page_size
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "the network left processes running"
