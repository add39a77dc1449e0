"""Kubo stopped mid-flow: a clear error, and nothing half-written on chain."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.network.kubo import KuboDaemon
from ehrshare.provisioning import Consortium
from ehrshare.session import RecordStorageError


@pytest.mark.ipfs
@pytest.mark.slow
def test_kubo_down_means_nothing_on_chain(tmp_path: Path, kubo: KuboDaemon) -> None:
    with Consortium.init(tmp_path / "c", storage="kubo", kubo_url=kubo.api_url) as c:
        sessions = {}
        for name, hospital, role in (
            ("alice", "HospitalA", "patient"),
            ("adams", "HospitalA", "clinician"),
            ("baker", "HospitalB", "clinician"),
        ):
            c.add_member(name, hospital, role)
            sessions[name] = c.session(name)
            sessions[name].enroll()
            sessions[name].publish_type_keys(["lab"])
        alice, adams, baker = sessions["alice"], sessions["adams"], sessions["baker"]
        ref = adams.put_record(lab_observation(), patient=alice.ibe_id)
        alice.grant(baker.ibe_id, "lab", expires=dt.timedelta(days=1))
        assert baker.read_record(ref).status == "final"  # type: ignore[attr-defined]

        kubo.stop()
        before = (c.ledger.state_digest(), c.ledger.height())
        with pytest.raises(RecordStorageError) as info:
            adams.put_record(lab_observation(value=9.9), patient=alice.ibe_id)
        message = str(info.value)
        assert "nothing was registered on chain" in message
        assert "Kubo" in message
        assert (c.ledger.state_digest(), c.ledger.height()) == before
        assert len(alice.list_records()) == 1
