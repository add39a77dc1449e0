"""The embedded ledger: signatures and certificates, atomic commits, MVCC, events, restart."""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from ehrshare.identity import LocalCA
from ehrshare.ledger import (
    ChaincodeEvent,
    EmbeddedLedger,
    EndorseError,
    GatewayError,
    InMemoryCheckpointer,
    LedgerIntegrityError,
    SubmitError,
    connect,
)
from ehrshare.ledger.envelope import new_proposal, sign_proposal
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare.ledger.simulation import ProposalRejected
from ehrshare_chaincode.stub import ChaincodeError, ChaincodeStub

CAPSULE = base64.b64encode(b"\x01" * 64).decode()
SHA = "ab" * 32


def _patient_and_record(sb: Sandbox, n_records: int = 1) -> tuple[Member, Member]:
    alice = sb.member("Org1MSP", "alice", "patient")
    dave = sb.member("Org2MSP", "dave", "clinician")
    for i in range(n_records):
        dave.submit(
            "RegisterRecord", f"r-{i}", alice.ibe_id, "lab", "bafyrecord0001", SHA, CAPSULE, "1"
        )
    return alice, dave


def _proxy(sb: Sandbox) -> str:
    """A registered proxy identity for grants to name (GrantAccess requires one)."""
    return sb.member("Org2MSP", "pete", "proxy").ibe_id


# --- who may talk to the ledger ---------------------------------------------------------------


def test_signature_by_another_key_is_refused(sandbox: Sandbox) -> None:
    alice_id, _ = sandbox.cas["Org1MSP"].issue("alice", role="patient")
    _, mallory_signer = sandbox.cas["Org1MSP"].issue("mallory", role="patient")
    gw = connect(alice_id, mallory_signer, sandbox.ledger)
    contract = gw.get_network("ehrshare").get_contract("ehrshare")
    with pytest.raises(EndorseError) as info:
        contract.submit_transaction("RegisterIdentity")
    assert info.value.message == (
        "proposal signature does not verify against the creator's certificate"
    )
    with pytest.raises(GatewayError, match="proposal signature does not verify"):
        contract.evaluate_transaction("GetDKGResult")


def test_certificate_from_an_unknown_ca_is_refused(sandbox: Sandbox) -> None:
    rogue = LocalCA.create("Org1MSP")  # claims Org1MSP, but is not Org1MSP's CA
    member = sandbox.connect(*rogue.issue("eve", role="auditor"))
    with pytest.raises(EndorseError) as info:
        member.submit("RegisterIdentity")
    assert info.value.message == "creator certificate was not issued by its msp's ca"
    outsider = sandbox.connect(*LocalCA.create("Org9MSP").issue("oscar", role="patient"))
    with pytest.raises(EndorseError) as info:
        outsider.submit("RegisterIdentity")
    assert info.value.message == "organisation Org9MSP is not a channel member"


def test_tampered_proposal_and_replay_are_refused(sandbox: Sandbox) -> None:
    # RequestAccess by the owner: a write the chaincode would happily run twice, so the replay
    # is caught by the ledger's transaction-id check, not by the contract.
    alice, _ = _patient_and_record(sandbox)
    proposal = new_proposal(
        alice.identity,
        channel="ehrshare",
        chaincode="ehrshare",
        function="RequestAccess",
        args=(b"r-0",),
        timestamp_ns=sandbox.clock(),
    )
    signed = sign_proposal(proposal, alice.signer)
    forged = dataclasses.replace(
        signed, proposal_bytes=signed.proposal_bytes.replace(b'"RequestAccess"', b'"CheckApproval"')
    )
    with pytest.raises(ProposalRejected, match="signature does not verify"):
        sandbox.ledger.endorse(forged)
    sandbox.ledger.commit([sandbox.ledger.endorse(signed)])
    with pytest.raises(ProposalRejected) as info:
        sandbox.ledger.endorse(signed)
    assert info.value.message == f"transaction {proposal.tx_id} was already submitted"


def test_unknown_channel_and_chaincode(sandbox: Sandbox) -> None:
    alice = sandbox.member("Org1MSP", "alice", "patient")
    with pytest.raises(GatewayError, match="channel other does not exist"):
        alice.gateway.get_network("other")
    nope = alice.gateway.get_network("ehrshare").get_contract("nope")
    with pytest.raises(EndorseError, match="chaincode nope is not installed"):
        nope.submit_transaction("Anything")


# --- atomicity, MVCC, evaluate ------------------------------------------------------------------


def _write_then_fail(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    stub.put_state("k1", b"v1")
    stub.set_event("Wrote", b"{}")
    if function == "Fail":
        raise ChaincodeError("this transaction fails after writing")
    return b"{}"


def test_a_failing_transaction_leaves_nothing(sandbox: Sandbox) -> None:
    sandbox.ledger.install_chaincode("scratch", _write_then_fail)
    alice = sandbox.member("Org1MSP", "alice", "patient")
    scratch = alice.gateway.get_network("ehrshare").get_contract("scratch")
    before = (sandbox.ledger.state_digest(), sandbox.ledger.height())
    with pytest.raises(EndorseError, match="this transaction fails after writing"):
        scratch.submit_transaction("Fail")
    assert (sandbox.ledger.state_digest(), sandbox.ledger.height()) == before
    assert list(sandbox.ledger.state_items("scratch")) == []
    scratch.submit_transaction("Write")
    assert list(sandbox.ledger.state_items("scratch")) == [(b"k1", b"v1")]


def test_evaluate_writes_nothing(sandbox: Sandbox) -> None:
    _, dave = _patient_and_record(sandbox)
    before = (sandbox.ledger.state_digest(), sandbox.ledger.height())
    decision = json.loads(dave.contract.evaluate_transaction("RequestAccess", "r-0"))
    # Creating a record gives no re-encryption right: dave has no grant, so the answer is deny.
    assert decision["decision"] == "deny"
    assert (sandbox.ledger.state_digest(), sandbox.ledger.height()) == before


def test_stale_simulation_commits_as_mvcc_conflict(sandbox: Sandbox) -> None:
    _, dave = _patient_and_record(sandbox)
    first = dave.contract.new_proposal("RequestAccess", "r-0").endorse()
    second = dave.contract.new_proposal("RequestAccess", "r-0").endorse()
    assert first.submit().get_status().successful
    digest = sandbox.ledger.state_digest()
    status = second.submit().get_status()
    assert (status.code, status.successful) == ("MVCC_READ_CONFLICT", False)
    assert sandbox.ledger.state_digest() == digest  # the loser's writes were dropped
    assert sandbox.ledger.transaction_status(second.transaction_id) == status
    sandbox.ledger.verify()


def _range_counter(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    if function == "Add":
        stub.put_state(stub.create_composite_key("item", [args[0].decode()]), b"1")
        return b"{}"
    rows = stub.get_state_by_partial_composite_key("item", [])
    stub.put_state("count", str(len(rows)).encode())
    return str(len(rows)).encode()


def test_a_phantom_in_a_range_read_invalidates_the_transaction(sandbox: Sandbox) -> None:
    sandbox.ledger.install_chaincode("counter", _range_counter)
    alice = sandbox.member("Org1MSP", "alice", "patient")
    counter = alice.gateway.get_network("ehrshare").get_contract("counter")
    counter.submit_transaction("Add", "a")
    count = counter.new_proposal("Count").endorse()
    counter.submit_transaction("Add", "b")
    assert count.submit().get_status().code == "PHANTOM_READ_CONFLICT"
    assert counter.submit_transaction("Count") == b"2"


def test_blocks_batch_transactions_and_validate_them_in_order(sandbox: Sandbox) -> None:
    alice, dave = _patient_and_record(sandbox)
    carol = sandbox.member("Org1MSP", "carol", "patient")
    proposals = [
        dave.contract.new_proposal(
            "RegisterRecord", f"r-b{i}", owner.ibe_id, "lab", "bafyrecord0001", SHA, CAPSULE, "1"
        )
        for i, owner in enumerate([alice, carol, alice])
    ]
    endorsed = [p.endorse().endorsed for p in proposals]
    height = sandbox.ledger.height()
    statuses = sandbox.ledger.commit(endorsed)
    # The third writes alice's log head, which the first already moved: a conflict, as in Fabric.
    assert [s.code for s in statuses] == ["VALID", "VALID", "MVCC_READ_CONFLICT"]
    assert {s.block_number for s in statuses} == {height}
    assert sandbox.ledger.height() == height + 1
    sandbox.ledger.verify()


# --- events -------------------------------------------------------------------------------------


def test_events_replay_from_a_block_and_resume_from_a_checkpoint(sandbox: Sandbox) -> None:
    alice, _ = _patient_and_record(sandbox, n_records=4)
    network = alice.gateway.get_network("ehrshare")
    with network.get_chaincode_events("ehrshare", start_block=0, idle_timeout=0.3) as events:
        every = list(events)
    assert [e.event_name for e in every] == ["RegisterIdentity"] * 2 + ["RegisterRecord"] * 4
    for e in every:
        assert json.loads(e.payload)["tx_id"] == e.transaction_id
    checkpoint = InMemoryCheckpointer()
    with network.get_chaincode_events("ehrshare", start_block=0, idle_timeout=0.3) as events:
        for _, event in zip(range(3), events, strict=False):
            checkpoint.checkpoint_event(event)
    rest = list(network.get_chaincode_events("ehrshare", checkpoint=checkpoint, idle_timeout=0.3))
    assert rest == every[3:]


def test_live_events_reach_an_iterator_and_a_listener(sandbox: Sandbox) -> None:
    alice, dave = _patient_and_record(sandbox)
    heard: list[ChaincodeEvent] = []
    remove = sandbox.ledger.add_listener(heard.append)
    received: list[ChaincodeEvent] = []
    stream = alice.gateway.get_network("ehrshare").get_chaincode_events("ehrshare")

    def consume() -> None:
        for event in stream:
            received.append(event)
            if len(received) == 2:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    dave.submit("RequestAccess", "r-0")
    alice.submit("RegisterRecord", "r-live", alice.ibe_id, "lab", "bafylive", SHA, CAPSULE, "1")
    thread.join(timeout=30)
    stream.close()
    remove()
    assert [e.event_name for e in received] == ["RequestAccess", "RegisterRecord"]
    assert received == heard


# --- restart and integrity ------------------------------------------------------------------------


def test_everything_is_there_after_reopening(tmp_path: Path) -> None:
    clock = ManualClock(1_900_000_000)
    sb = Sandbox.open(tmp_path, clock=clock)
    alice, dave = _patient_and_record(sb, n_records=3)
    grant = alice.submit(
        "GrantAccess", "lab", dave.ibe_id, str(clock.seconds + 10**6), "0", "", "", _proxy(sb)
    )
    dave.submit("RequestAccess", "r-1")
    digest, height = sb.ledger.state_digest(), sb.ledger.height()
    trail = alice.evaluate("GetAuditTrail", "patient", alice.ibe_id, "100")
    sb.close()

    sb2 = Sandbox.open(tmp_path, clock=clock)
    assert (sb2.ledger.state_digest(), sb2.ledger.height()) == (digest, height)
    alice2 = sb2.connect(alice.identity, alice.signer)
    assert [r["record_id"] for r in alice2.evaluate("ListRecords", alice.ibe_id)["records"]] == [
        "r-0",
        "r-1",
        "r-2",
    ]
    assert alice2.evaluate("ListGrants", alice.ibe_id, "owner")["grants"] == [grant]
    assert alice2.evaluate("GetAuditTrail", "patient", alice.ibe_id, "100") == trail
    assert alice2.evaluate("VerifyAuditTrail", alice.ibe_id)["valid"] is True
    report = sb2.ledger.verify()
    assert report["blocks"] == height
    # New members can still be enrolled with the persisted CAs.
    sb2.member("Org2MSP", "zoe", "clinician")
    sb2.close()


def test_tampering_with_the_block_log_is_detected(sandbox: Sandbox) -> None:
    _patient_and_record(sandbox)
    sandbox.ledger.verify()
    db = sqlite3.connect(sandbox.ledger.directory / "ledger.sqlite", isolation_level=None)
    db.execute("UPDATE transactions SET response = X'7B7D' WHERE blk = 4")
    db.close()
    with pytest.raises(LedgerIntegrityError, match="block 4 transaction 0 does not match its hash"):
        sandbox.ledger.verify()


def test_reopening_with_another_channel_name_is_refused(tmp_path: Path) -> None:
    EmbeddedLedger.open(tmp_path, channel="one").close()
    with pytest.raises(ValueError, match="is for channel 'one', not 'two'"):
        EmbeddedLedger.open(tmp_path, channel="two")


def test_key_history_is_kept(sandbox: Sandbox) -> None:
    def history(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        if function == "Put":
            stub.put_state("k", args[0])
            return b""
        if function == "Del":
            stub.del_state("k")
            return b""
        return json.dumps(
            [[m.value.decode(), m.is_delete, m.tx_id] for m in stub.get_history_for_key("k")]
        ).encode()

    sandbox.ledger.install_chaincode("hist", history)
    alice = sandbox.member("Org1MSP", "alice", "patient")
    hist = alice.gateway.get_network("ehrshare").get_contract("hist")
    tx = [hist.new_proposal("Put", v).endorse().submit().transaction_id for v in ("a", "b")]
    tx.append(hist.new_proposal("Del").endorse().submit().transaction_id)
    got = json.loads(hist.evaluate_transaction("History"))
    assert got == [["a", False, tx[0]], ["b", False, tx[1]], ["", True, tx[2]]]


def test_concurrent_submits_in_one_process_do_not_conflict(sandbox: Sandbox) -> None:
    alice, dave = _patient_and_record(sandbox)
    expiry = str(sandbox.clock.seconds + 10**6)
    alice.submit("GrantAccess", "lab", dave.ibe_id, expiry, "0", "", "", _proxy(sandbox))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                assert dave.submit("RequestAccess", "r-0")["decision"] == "allow"
        except BaseException as exc:  # collected for the main thread's assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    trail = alice.evaluate("GetAuditTrail", "patient", alice.ibe_id, "100")["entries"]
    assert sum(e["action"] == "AccessDecision" for e in trail) == 40
    assert alice.evaluate("VerifyAuditTrail", alice.ibe_id)["valid"] is True


def test_submit_to_a_closed_ledger_is_a_submit_error(tmp_path: Path) -> None:
    ca = LocalCA.create("Org1MSP")
    ledger = EmbeddedLedger.open(tmp_path)
    ledger.add_organization("Org1MSP", ca.certificate_pem)
    with connect(*ca.issue("alice", role="patient"), tmp_path / "elsewhere") as gw:
        contract = gw.get_network("ehrshare").get_contract("ehrshare")
        gw.ledger.close()
        with pytest.raises(SubmitError) as info:
            contract.submit_transaction("RegisterIdentity")
        assert info.value.transaction_id
    ledger.close()


def test_clock_skew_check_is_on_by_default(tmp_path: Path) -> None:
    ca = LocalCA.create("Org1MSP")
    ledger = EmbeddedLedger.open(tmp_path)
    assert ledger.max_clock_skew_s == 300
    ledger.add_organization("Org1MSP", ca.certificate_pem)
    identity, signer = ca.issue("alice", role="patient")
    backdated = ManualClock(1_000_000_000)  # 2001: far outside the limit
    with connect(identity, signer, ledger, clock=backdated) as gw:
        contract = gw.get_network("ehrshare").get_contract("ehrshare")
        with pytest.raises(EndorseError, match=r"proposal timestamp 1000000000 is \d+ s behind "):
            contract.submit_transaction("RegisterIdentity")
    with connect(identity, signer, ledger) as gw:  # the real clock is within the limit
        gw.get_network("ehrshare").get_contract("ehrshare").submit_transaction("RegisterIdentity")
    ledger.close()
    with pytest.raises(ValueError, match="max_clock_skew_s must be a non-negative"):
        EmbeddedLedger.open(tmp_path, max_clock_skew_s=-1)


def test_backdating_past_an_expired_grant_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    t0 = 1_900_000_000
    clock = ManualClock(t0)
    sb = Sandbox.open(tmp_path, clock=clock)  # the ledger checks skew against this clock too
    alice = sb.member("Org1MSP", "alice", "patient")
    dave = sb.member("Org2MSP", "dave", "clinician")
    alice.submit(
        "RegisterRecord", "r-1", alice.ibe_id, "lab", "bafy12345678", "0" * 64, "AQID", "1"
    )
    alice.submit("GrantAccess", "lab", dave.ibe_id, str(t0 + 100), "0", "", "", _proxy(sb))
    clock.advance(1000)  # the grant expired 900 s ago
    assert dave.submit("RequestAccess", "r-1")["decision"] == "deny"
    before = (sb.ledger.height(), sb.ledger.state_digest())
    cheats = {"behind": ManualClock(t0 + 50), "ahead of": ManualClock(clock.seconds + 301)}
    for direction, cheat in cheats.items():
        with connect(dave.identity, dave.signer, sb.ledger, clock=cheat) as gw:
            contract = gw.get_network("ehrshare").get_contract("ehrshare")
            with pytest.raises(EndorseError) as info:
                contract.submit_transaction("RequestAccess", "r-1")
            assert f"s {direction} the ledger's clock ({clock.seconds}); the limit is 300 s" in (
                info.value.message
            )
            with pytest.raises(GatewayError, match=direction):
                contract.evaluate_transaction("GetRecord", "r-1")
    assert (sb.ledger.height(), sb.ledger.state_digest()) == before
    # Within the limit a client's clock may drift (the residual window the limit allows).
    with connect(
        dave.identity, dave.signer, sb.ledger, clock=ManualClock(clock.seconds - 299)
    ) as gw:
        decided = json.loads(
            gw.get_network("ehrshare")
            .get_contract("ehrshare")
            .submit_transaction("RequestAccess", "r-1")
        )
    assert decided["decision"] == "deny"
    sb.close()
