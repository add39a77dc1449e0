"""A hand edit of a record pointer's ``kind`` (the opaque label of its FHIR resourceType) in
the embedded ledger's database is caught (issue 17), as an edit of its type label or cid is.

``ehrshare ledger verify`` and ``audit verify`` name the block that wrote the edited key (exit
5); a read of the record is an integrity failure (exit 5) and writes nothing: for the current
version the ledger's checked read of the pointer refuses the row; for an older version, whose
pointer is read by an evaluation (not checked), the SDK finds that the kind does not name the
resourceType the content decrypted to (an edited type label does not open the capsule, an
edited cid finds no content: the same RecordIntegrityError).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_world import invoke, make_world, state_digest

from ehrshare import RecordIntegrityError
from ehrshare.demo import lab_observation
from ehrshare.ledger import LedgerIntegrityError
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium
from ehrshare_chaincode import canonical
from ehrshare_chaincode.stub import create_composite_key

sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
try:
    import forge
finally:
    sys.path.pop(0)

OTHER_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def _forged(field: str, kind_of_specimen: str) -> str:
    """What a database administrator writes into ``field``: another resourceType's kind
    (which the SDK can compute, having the label key), another type label, another cid."""
    return {"kind": kind_of_specimen, "type": "t-" + "0" * 32, "cid": OTHER_CID}[field]


def _edit(ledger_dir: Path, key: bytes, field: str, value: str, *, history: bool) -> int:
    """Set ``field`` of the pointer stored at ``key`` (and its last history row, with
    ``history``); returns the block that wrote the key."""
    db = forge.open_db(ledger_dir)
    try:
        (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        pointer: dict[str, Any] = json.loads(raw)
        assert field in pointer and pointer[field] != value
        pointer[field] = value
        forge.set_state(db, key, canonical.dumps(pointer))
        if history:
            forge.set_history(db, key, canonical.dumps(pointer))
        return forge.last_write(db, key)[0]
    finally:
        db.close()


def _pointer_key(record_id: str, version: int | None = None) -> bytes:
    if version is None:
        return create_composite_key("ehr.rec", [record_id]).encode()
    return create_composite_key("ehr.recver", [record_id, f"{version:012d}"]).encode()


# --- the CLI: a current pointer edited -----------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    w = make_world(tmp_path_factory.mktemp("kind-tamper"))
    c = Consortium.open(w["profile"])
    try:
        with c.session("alice") as s:
            ref = s.get_record(w["record"])
            assert ref.kind == s.labels.kind("Observation")  # the CLI registers the kind
            w["specimen"] = s.labels.kind("Specimen")
    finally:
        c.close()
    return w


@pytest.fixture
def copy(world: dict[str, str], tmp_path: Path) -> Iterator[str]:
    target = tmp_path / "c"
    shutil.copytree(world["profile"], target)
    yield str(target)


@pytest.mark.parametrize("field", ["kind", "type", "cid"])
@pytest.mark.parametrize("history", [False, True], ids=["state", "state and history"])
def test_an_edited_pointer_fails_verify_audit_verify_and_the_read(
    world: dict[str, str], copy: str, field: str, history: bool
) -> None:
    rid = world["record"]
    key = _pointer_key(rid)
    block = _edit(
        Path(copy) / "ledger", key, field, _forged(field, world["specimen"]), history=history
    )
    verified = invoke("ledger", "verify", "-p", copy, "--json")
    assert verified.exit_code == 5, verified.output
    report = json.loads(verified.stdout)
    assert report["valid"] is False and report["first_bad_block"] == block
    if history:
        assert (
            "the key history of" in report["reason"]
            and "differs from the replay" in (report["reason"])
        )
    else:
        assert report["reason"].startswith("world state does not match the key history")
        assert f"ehr.rec/{rid}" in report["reason"]
    audit = invoke("audit", "verify", "-p", copy, "-w", "alice")
    assert audit.exit_code == 5, audit.output
    assert "does NOT verify" in audit.output and "ledger integrity" in audit.output
    before = state_digest(copy)
    read = invoke("record", "get", rid, "-p", copy, "-w", "alice")
    assert read.exit_code == 5, read.output
    assert f"world state key 'ehr.rec/{rid}' does not hold what block {block}" in read.output
    assert state_digest(copy) == before  # the refused read logged nothing


def test_an_unedited_copy_verifies_and_reads(world: dict[str, str], copy: str) -> None:
    """The control: the same commands on the copy before any edit."""
    assert invoke("ledger", "verify", "-p", copy).exit_code == 0
    assert invoke("audit", "verify", "-p", copy, "-w", "alice").exit_code == 0
    read = invoke("record", "get", world["record"], "-p", copy, "-w", "alice", "--json")
    assert read.exit_code == 0 and json.loads(read.stdout)["resourceType"] == "Observation"


# --- the SDK: an older version's pointer edited ----------------------------------------------


@pytest.fixture
def amended(tmp_path: Path) -> Iterator[tuple[Consortium, str]]:
    """alice's Observation at version 2."""
    c = Consortium.init(tmp_path / "c", clock=ManualClock())
    c.add_member("alice", "HospitalA", "patient")
    with c.session("alice") as s:
        s.enroll()
        s.publish_type_keys()
        ref = s.put_record(lab_observation())
        s.amend_record(ref.record_id, lab_observation(value=9.0))
    yield c, ref.record_id
    c.close()


@pytest.mark.parametrize("field", ["kind", "type", "cid"])
def test_an_edited_version_pointer_fails_the_read_of_that_version(
    amended: tuple[Consortium, str], field: str
) -> None:
    c, rid = amended
    assert c.profile.path is not None
    ledger_dir = c.profile.path.parent / "ledger"
    with c.session("alice") as s:
        old, _ = s.open_record(rid, version=1)
        assert old.kind == s.labels.kind("Observation")
        block = _edit(
            ledger_dir,
            _pointer_key(rid, 1),
            field,
            _forged(field, s.labels.kind("Specimen")),
            history=False,
        )
        with pytest.raises(RecordIntegrityError) as info:
            s.open_record(rid, version=1)
        if field == "kind":
            assert info.value.args[0] == (
                f"record {rid} version 1: its pointer's kind {s.labels.kind('Specimen')} does "
                "not name the resourceType its content decrypted to (Observation); the pointer "
                "was edited: run 'ehrshare ledger verify'"
            )
        with pytest.raises(RecordIntegrityError):
            s.open_record_json(rid, version=1)  # the FHIR API's read (its vread: 502)
        # The current version's pointer is another key, untouched: it still reads.
        now, model = s.open_record(rid)
        assert (now.version, model.get_resource_type()) == (2, "Observation")
    with pytest.raises(LedgerIntegrityError) as verified:
        c.runtime.backend.ledger.verify()  # type: ignore[attr-defined]
    assert verified.value.block == block


def test_an_edited_current_pointer_fails_the_sdk_read_too(
    amended: tuple[Consortium, str],
) -> None:
    c, rid = amended
    assert c.profile.path is not None
    with c.session("alice") as s:
        _edit(
            c.profile.path.parent / "ledger",
            _pointer_key(rid),
            "kind",
            s.labels.kind("Specimen"),
            history=False,
        )
        with pytest.raises(LedgerIntegrityError, match="does not hold what block"):
            s.open_record(rid)
