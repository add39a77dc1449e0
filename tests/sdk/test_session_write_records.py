"""``Session.write_records``: several records and versions in one ledger transaction, checked
before anything is stored; a refusal leaves the ledger and the store as they were."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from ehrshare import InvalidWrites, RecordWrite, RequestRejected, Session, VersionConflict
from ehrshare.demo import lab_observation
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    c = Consortium.init(tmp_path_factory.mktemp("write-records") / "c", clock=ManualClock())
    for name in ("alice", "bob"):
        c.add_member(name, "HospitalA", "patient")
        with c.session(name) as s:
            s.enroll()
            s.publish_type_keys()
    yield c
    c.close()


@pytest.fixture
def alice(world: Consortium) -> Iterator[Session]:
    with world.session("alice") as s:
        yield s


def _stored(world: Consortium) -> str:
    """A digest of the ledger's and the store's files (what a refusal must not change)."""
    assert world.profile.path is not None
    root = world.profile.path.parent
    h = hashlib.sha256()
    for area in ("ledger", "store"):
        for path in sorted((root / area).rglob("*")):
            if path.is_file() and not path.name.endswith("-shm"):
                h.update(
                    str(path.relative_to(root)).encode()
                    + hashlib.sha256(path.read_bytes()).digest()
                )
    return h.hexdigest()


def test_new_records_and_a_version_in_one_transaction(alice: Session) -> None:
    old = alice.put_record(lab_observation(value=1.0))
    refs = alice.write_records(
        [
            RecordWrite(lab_observation(value=2.0)),
            RecordWrite(lab_observation(value=3.0), old.record_id, if_version=1),
        ]
    )
    assert [r.version for r in refs] == [1, 2] and refs[1].record_id == old.record_id
    assert alice.read_record(refs[0]).valueQuantity.value == 2.0  # type: ignore[attr-defined]
    assert alice.read_record(old.record_id).valueQuantity.value == 3.0  # type: ignore[attr-defined]
    tx = {e["tx_id"] for e in alice.audit(record=refs[0].record_id).entries[:1]}
    tx |= {
        e["tx_id"]
        for e in alice.audit(record=old.record_id).entries
        if e["action"] == "AmendRecord"
    }
    assert len(tx) == 1


def test_bad_calls_store_nothing(world: Consortium, alice: Session) -> None:
    old = alice.put_record(lab_observation())
    before = _stored(world)
    with pytest.raises(InvalidWrites, match="at least one"):
        alice.write_records([])
    with pytest.raises(InvalidWrites, match="at most once"):
        alice.write_records(
            [RecordWrite(lab_observation(), old.record_id)] * 2,
        )
    with pytest.raises(VersionConflict, match=f"record {old.record_id} is at version 1, not 4"):
        alice.write_records(
            [
                RecordWrite(lab_observation()),
                RecordWrite(lab_observation(), old.record_id, if_version=4),
            ]
        )
    assert _stored(world) == before


def test_a_write_the_chaincode_refuses_releases_every_ciphertext(
    world: Consortium, alice: Session
) -> None:
    with world.session("bob") as bob:
        bob_id = bob.ibe_id
    before = _stored(world)
    with pytest.raises(RequestRejected, match=f"write 1: identity {alice.ibe_id} may not create"):
        alice.write_records(
            [RecordWrite(lab_observation()), RecordWrite(lab_observation(), patient=bob_id)]
        )
    assert _stored(world) == before
