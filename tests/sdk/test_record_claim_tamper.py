"""A hand edit of a claim key (``ehr.claim``: which record a conditional create's claim names)
in the embedded ledger's database is caught (issue 17): ``ehrshare ledger verify`` names the
block that wrote the key (exit 5), as for any other edited state; a registration that reads the
edited key (one taking that claim) is refused as an integrity failure and registers nothing
(its ciphertext, stored first, is left unreferenced: ``ehrshare store gc`` removes it)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_world import invoke

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

SYSTEM = "http://hosp.example/ids"


@pytest.fixture
def claimed(tmp_path: Path) -> Iterator[tuple[Consortium, str, str, str]]:
    """alice's two Observations, the first registered with a claim: (consortium, claim, the
    record holding it, the other record)."""
    c = Consortium.init(tmp_path / "c", clock=ManualClock())
    c.add_member("alice", "HospitalA", "patient")
    with c.session("alice") as s:
        s.enroll()
        s.publish_type_keys()
        claim = s.labels.claim(s.ibe_id, "Observation", SYSTEM, "obs-1")
        holder = s.put_record(lab_observation(), claim=claim).record_id
        other = s.put_record(lab_observation(value=9.0)).record_id
        assert s.find_claim(s.ibe_id, claim)[0] == holder
    yield c, claim, holder, other
    c.close()


def _edit_claim(ledger_dir: Path, key: bytes, record_id: str, *, history: bool) -> int:
    """Point the claim stored at ``key`` to ``record_id``; the block that wrote the key."""
    db = forge.open_db(ledger_dir)
    try:
        (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        value = json.loads(raw)
        assert value["record_id"] != record_id
        value["record_id"] = record_id
        forge.set_state(db, key, canonical.dumps(value))
        if history:
            forge.set_history(db, key, canonical.dumps(value))
        return forge.last_write(db, key)[0]
    finally:
        db.close()


def _ledger_digest(ledger_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(ledger_dir.rglob("*")):
        if path.is_file() and not path.name.endswith("-shm"):
            h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@pytest.mark.parametrize("history", [False, True], ids=["state", "state and history"])
def test_an_edited_claim_fails_verify_and_the_next_registration_with_it(
    claimed: tuple[Consortium, str, str, str], history: bool
) -> None:
    c, claim, _holder, other = claimed
    assert c.profile.path is not None
    profile = c.profile.path.parent
    with c.session("alice") as s:
        owner = s.ibe_id
    assert invoke("ledger", "verify", "-p", str(profile)).exit_code == 0  # the control
    key = create_composite_key("ehr.claim", [owner, claim]).encode()
    block = _edit_claim(profile / "ledger", key, other, history=history)
    verified = invoke("ledger", "verify", "-p", str(profile), "--json")
    assert verified.exit_code == 5, verified.output
    report = json.loads(verified.stdout)
    assert report["valid"] is False and report["first_bad_block"] == block, report
    if not history:
        assert f"ehr.claim/{owner}/{claim}" in report["reason"], report["reason"]
    before = _ledger_digest(profile / "ledger")
    with c.session("alice") as s, pytest.raises(LedgerIntegrityError):
        s.put_record(lab_observation(), claim=claim)
    assert _ledger_digest(profile / "ledger") == before
