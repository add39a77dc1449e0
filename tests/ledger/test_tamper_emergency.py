"""An emergency request edited by hand in the embedded ledger's state (approvals and status
forged) is not trusted: every transaction that reads it fails with LedgerIntegrityError and
commits nothing, and ``ledger verify`` names the block whose write was changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import forge
import pytest

from ehrshare.ledger import LedgerIntegrityError
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare_chaincode import canonical
from ehrshare_chaincode.stub import create_composite_key

T0 = 1_900_000_000
ALICE = "Org1MSP/alice"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, Member], str, int]]:
    sb = Sandbox.open(tmp_path / "sb", clock=ManualClock(T0))
    m = {
        "alice": sb.member("Org1MSP", "alice", "patient"),
        "dave": sb.member("Org1MSP", "dave", "clinician"),
        "admin2": sb.member("Org2MSP", "admin2", node_ou="admin"),
    }
    request = m["dave"].submit("RequestEmergency", ALICE, "unconscious")
    block = sb.ledger.height() - 1
    sb.ledger.verify()
    yield sb, m, str(request["request_id"]), block
    sb.close()


def test_forged_approvals_are_refused_by_every_write_and_by_verify(
    sandbox: tuple[Sandbox, dict[str, Member], str, int],
) -> None:
    sb, m, rid, block = sandbox
    key = create_composite_key("ehr.emergency", [rid]).encode()
    db = forge.open_db(sb.ledger.directory)
    (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    request = json.loads(raw)
    assert request["status"] == "pending"
    request["approvals"] = [
        {"admin": "Org2MSP/admin2", "msp_id": "Org2MSP", "at": T0},
        {"admin": "Org3MSP/x", "msp_id": "Org3MSP", "at": T0},
    ]
    request["status"], request["expires_at"] = "approved", T0 + 10**6
    forge.set_state(db, key, canonical.dumps(request))
    db.close()
    height = sb.ledger.height()
    for member, args in (
        (m["admin2"], ("ApproveEmergency", rid)),
        (m["alice"], ("ReviewEmergency", rid, "")),
    ):
        with pytest.raises(LedgerIntegrityError) as info:
            member.submit(*args)
        assert info.value.block == block
        assert "does not hold what block" in info.value.message
    assert sb.ledger.height() == height  # nothing committed on a forged state
    with pytest.raises(LedgerIntegrityError) as verified:
        sb.ledger.verify()
    assert verified.value.block == block
