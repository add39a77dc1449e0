"""The operation log: every path leaves its entry, the event carries it, tampering is detected."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest
from chaincode_world import FAR, PROXY, World

from ehrshare.ledger import ChaincodeEvent, LedgerIntegrityError
from ehrshare_chaincode.auditlog import SYSTEM_CHAIN, entry_hash, verify_entries
from ehrshare_chaincode.stub import create_composite_key

ALICE = "Org1MSP/alice"


def _chain(w: World, chain: str) -> list[dict[str, object]]:
    auditor = w.m["auditor"]
    out: list[dict[str, object]] = []
    bookmark = ""
    while True:
        page = auditor.evaluate("GetAuditTrail", "patient", chain, "7", bookmark)
        out += page["entries"]
        bookmark = page["bookmark"]
        if not bookmark:
            return out


def test_world_setup_left_one_entry_per_operation_in_order(world: World) -> None:
    actions = [(e["action"], e["outcome"]) for e in _chain(world, ALICE)]
    assert actions == [
        ("RegisterIdentity", "ok"),
        ("PublishTypeKey", "ok"),
        ("RegisterRecord", "ok"),
        ("GrantAccess", "ok"),
        ("GrantAccess", "ok"),
        ("GrantAccess", "ok"),
        ("RevokeAccess", "ok"),
        ("RotateTypeKey", "ok"),
        ("RequestAccess", "requested"),
        ("AccessDecision", "allow"),
    ]
    system = [e["action"] for e in _chain(world, SYSTEM_CHAIN)]
    assert system.count("RegisterIdentity") == 9  # every non-patient registered member
    assert system[-15:] == [
        "PublishKGCKey",
        "PublishKGCKey",
        "OpenDKGSession",
        "PostDKGBundle",
        "PostDKGBundle",
        "CloseDKGPhase",
        "PostDKGBundle",
        "PostDKGBundle",
        "CloseDKGPhase",
        "PublishDKGResult",
        "PublishDKGResult",
        "OpenDKGSession",
        "OpenDKGSession",
        "PostDKGBundle",
        "CloseDKGPhase",
    ]
    assert world.m["auditor"].evaluate("VerifyAuditTrail", ALICE)["valid"] is True


def test_every_path_appends_and_emits_its_entries(fresh_world: World) -> None:
    w = fresh_world
    events: list[ChaincodeEvent] = []
    remove = w.sandbox.ledger.add_listener(events.append)
    alice, dave, zed, proxy = (
        w.m["owner"],
        w.m["grantee"],
        w.m["other_hospital_clinician"],
        w.m["proxy"],
    )
    steps: list[tuple[Callable[[], object], list[tuple[str, str]]]] = [
        (lambda: zed.submit("RegisterRecord", *w.record_args("r-9")), [("RegisterRecord", "ok")]),
        (
            lambda: alice.submit(
                "AmendRecord", "r-9", "bafyrecord0009", "9" * 64, w.record_args("x")[5], "1"
            ),
            [("AmendRecord", "ok")],
        ),
        (
            lambda: alice.submit("GrantAccess", "lab", zed.ibe_id, FAR, "0", "", "", PROXY),
            [("GrantAccess", "ok")],
        ),
        (
            lambda: zed.submit("RequestAccess", "r-9"),
            [("RequestAccess", "requested"), ("AccessDecision", "allow")],
        ),
        (
            lambda: w.m["other_patient"].submit(
                "GrantAccess", "lab", dave.ibe_id, FAR, "0", "", "", PROXY
            ),
            [],
        ),  # carol's chain, not alice's
        (
            lambda: w.m["auditor"].submit("RequestAccess", "r-9"),
            [("RequestAccess", "requested"), ("AccessDecision", "deny")],
        ),
        (
            lambda: proxy.submit("ReportReencryption", w.access_id, "failed", "bad rekey"),
            [("ReportReencryption", "failed")],
        ),
        (lambda: alice.submit("RevokeAccess", w.grants["grantee"]), [("RevokeAccess", "ok")]),
    ]
    for run, expected in steps:
        before = _chain(w, ALICE)
        n_events = len(events)
        run()
        after = _chain(w, ALICE)
        assert after[: len(before)] == before
        new = [(e["action"], e["outcome"]) for e in after[len(before) :]]
        assert new == expected
        assert len(events) == n_events + 1
        payload = json.loads(events[-1].payload)
        if expected:
            assert payload["entries"] == after[len(before) :]
    remove()
    record_trail = w.m["auditor"].evaluate("GetAuditTrail", "record", "r-9")["entries"]
    assert [e["action"] for e in record_trail] == [
        "RegisterRecord",
        "AmendRecord",
        "RequestAccess",
        "AccessDecision",
        "RequestAccess",
        "AccessDecision",
    ]
    for chain in (ALICE, "Org1MSP/carol", SYSTEM_CHAIN):
        assert w.m["auditor"].evaluate("VerifyAuditTrail", chain)["valid"] is True


def test_a_failed_transaction_leaves_no_entry(world: World) -> None:
    alice = world.m["owner"]
    before = _chain(world, ALICE)
    with pytest.raises(Exception, match="record r-404 does not exist"):
        alice.submit("RequestAccess", "r-404")
    assert _chain(world, ALICE) == before


def _log_key(chain: str, seq: int) -> bytes:
    return create_composite_key("ehr.log", [chain, f"{seq:012d}"]).encode()


def _edit(db: sqlite3.Connection, key: bytes, change: Callable[[dict[str, object]], None]) -> None:
    (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    entry = json.loads(raw)
    change(entry)
    db.execute(
        "UPDATE state SET value = ? WHERE key = ?",
        (json.dumps(entry, sort_keys=True, separators=(",", ":")).encode(), key),
    )


def _swap(db: sqlite3.Connection, a: bytes, b: bytes) -> None:
    va = db.execute("SELECT value FROM state WHERE key = ?", (a,)).fetchone()[0]
    vb = db.execute("SELECT value FROM state WHERE key = ?", (b,)).fetchone()[0]
    db.execute("UPDATE state SET value = ? WHERE key = ?", (vb, a))
    db.execute("UPDATE state SET value = ? WHERE key = ?", (va, b))


TAMPERING: dict[str, Callable[[sqlite3.Connection], None]] = {
    "edit outcome": lambda db: _edit(db, _log_key(ALICE, 9), lambda e: e.update(outcome="deny")),
    "edit actor": lambda db: _edit(db, _log_key(ALICE, 3), lambda e: e.update(actor="Org1MSP/x")),
    "edit timestamp": lambda db: _edit(db, _log_key(ALICE, 1), lambda e: e.update(timestamp=1)),
    "rehash an edited entry": lambda db: _edit(
        db,
        _log_key(ALICE, 4),
        lambda e: e.update(
            outcome="deny",
            hash=entry_hash({**e, "outcome": "deny"}),
        ),
    ),
    "delete middle entry": lambda db: db.execute(
        "DELETE FROM state WHERE key = ?", (_log_key(ALICE, 5),)
    ),
    "delete last entry": lambda db: db.execute(
        "DELETE FROM state WHERE key = ?", (_log_key(ALICE, 9),)
    ),
    "swap two entries": lambda db: _swap(db, _log_key(ALICE, 4), _log_key(ALICE, 5)),
    "edit chain head": lambda db: _edit(
        db, create_composite_key("ehr.loghead", [ALICE]).encode(), lambda e: e.update(seq=8)
    ),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampering_with_any_stored_entry_is_detected(fresh_world: World, how: str) -> None:
    w = fresh_world
    auditor = w.m["auditor"]
    assert auditor.evaluate("VerifyAuditTrail", ALICE)["valid"] is True
    db = sqlite3.connect(w.sandbox.ledger.directory / "ledger.sqlite", isolation_level=None)
    TAMPERING[how](db)
    db.close()
    report = auditor.evaluate("VerifyAuditTrail", ALICE)
    assert report["valid"] is False
    assert report["reason"]
    # The ledger's own check sees that state no longer matches the history it committed.
    with pytest.raises(LedgerIntegrityError, match="world state does not match the key history"):
        w.sandbox.ledger.verify()


def test_offline_verification_of_a_downloaded_trail(world: World) -> None:
    entries = _chain(world, ALICE)
    head = {"seq": entries[-1]["seq"], "hash": entries[-1]["hash"]}
    assert verify_entries(ALICE, entries, head)["valid"] is True
    assert verify_entries(ALICE, entries[:-1], head)["reason"] == (
        "chain head does not match the last entry"
    )
    bad = [dict(e) for e in entries]
    bad[2]["detail"] = {"type": "x"}
    assert verify_entries(ALICE, bad, head) == {
        "chain": ALICE,
        "valid": False,
        "length": len(entries),
        "first_bad_seq": 3,
        "reason": "entry 3 does not match its hash",
    }


def test_the_state_digest_covers_every_key_and_sees_a_hand_edit(fresh_world: World) -> None:
    """What `ledger verify` compares across the organisations' Fabric peers: equal states give
    equal digests, a committed change or a hand edit of one stored row changes it."""
    w = fresh_world
    auditor, patient = w.m["auditor"], w.m["owner"]
    first = auditor.evaluate("StateDigest")
    assert first == patient.evaluate("StateDigest")  # any registered member; same answer
    db = sqlite3.connect(w.sandbox.ledger.directory / "ledger.sqlite", isolation_level=None)
    (keys,) = db.execute("SELECT COUNT(*) FROM state").fetchone()
    assert first["keys"] == keys  # every row of the contract's state, none missed
    key = create_composite_key("ehr.grant", [w.grants["grantee"]]).encode()
    _edit(db, key, lambda g: g.update(expiry=int(g["expiry"]) + 86400))
    db.close()
    edited = auditor.evaluate("StateDigest")
    assert edited["keys"] == first["keys"] and edited["sha256"] != first["sha256"]
