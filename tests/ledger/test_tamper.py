"""Hand edits of the embedded ledger's database are caught, and the first bad block is named.

Each scenario is an edit a database administrator can make with plain SHA-256 (no key): see
:mod:`forge`. Where it matters, a second variant re-signs the rewritten blocks with the
ledger's ordering key (the attacker holding the ledger's host): the replay still catches what
the chaincode would not have written, and witnesses' signed heads catch the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forge
import pytest

from ehrshare.identity import LocalCA
from ehrshare.ledger import EmbeddedLedger, LedgerIntegrityError, connect
from ehrshare.ledger.envelope import Proposal, new_proposal, serialize_identity
from ehrshare.ledger.records import _block_hash
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare_chaincode import canonical
from ehrshare_chaincode.stub import create_composite_key

T0 = 1_900_000_000
FAR = str(T0 + 10**7)
CAPSULE = base64.b64encode(b"\x01" * 96).decode()
SHA = "0" * 64
PROXY = "Org1MSP/pete"
ALICE = "Org1MSP/alice"


@dataclass
class World:
    sb: Sandbox
    m: dict[str, Member]
    grants: dict[str, str]
    blocks: dict[str, int]  # step -> its block

    @property
    def dir(self) -> Path:
        return self.sb.ledger.directory

    def db(self) -> sqlite3.Connection:
        return forge.open_db(self.dir)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(T0)
    sb = Sandbox.open(tmp_path / "sb", clock=clock)
    m = {"alice": sb.member("Org1MSP", "alice", "patient")}
    alice_registers = sb.ledger.height() - 1
    m |= {
        "frank": sb.member("Org2MSP", "frank", "clinician"),
        "dave": sb.member("Org2MSP", "dave", "clinician"),
        "pete": sb.member("Org1MSP", "pete", "proxy"),
        "audrey": sb.member("Org1MSP", "audrey", "auditor"),
    }
    alice = m["alice"]
    blocks: dict[str, int] = {"alice registers": alice_registers}
    grants: dict[str, str] = {}

    def step(name: str, member: Member, *args: str) -> Any:
        out = member.submit(*args)
        blocks[name] = sb.ledger.height() - 1
        return out

    step("record", alice, "RegisterRecord", "r-1", ALICE, "lab", "bafyrecord1", SHA, CAPSULE, "1")
    for who, expiry in (("frank", str(T0 + 100)), ("dave", FAR)):
        g = step(
            f"grant {who}", alice, "GrantAccess", "lab", m[who].ibe_id, expiry, "1", "", "", PROXY
        )
        grants[who] = g["grant_id"]
    clock.advance(200)
    assert step("frank reads", m["frank"], "RequestAccess", "r-1")["decision"] == "deny"
    assert step("dave reads", m["dave"], "RequestAccess", "r-1")["decision"] == "allow"
    assert step("dave reads again", m["dave"], "RequestAccess", "r-1")["decision"] == "allow"
    sb.ledger.verify()  # a clean ledger verifies
    yield World(sb, m, grants, blocks)
    sb.close()


def _grant_key(grant_id: str) -> bytes:
    return create_composite_key("ehr.grant", [grant_id]).encode()


def _log_key(chain: str, seq: int) -> bytes:
    return create_composite_key("ehr.log", [chain, f"{seq:012d}"]).encode()


def _value(db: sqlite3.Connection, key: bytes) -> Any:
    (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return json.loads(raw)


def _verify_fails(world: World, **kwargs: Any) -> LedgerIntegrityError:
    with pytest.raises(LedgerIntegrityError) as info:
        world.sb.ledger.verify(**kwargs)
    return info.value


def _extend_frank(db: sqlite3.Connection, world: World) -> tuple[bytes, bytes]:
    key = _grant_key(world.grants["frank"])
    grant = _value(db, key)
    grant["expiry"] = int(FAR)
    return key, canonical.dumps(grant)


# --- L1, L2: the world state (and its history) edited by hand --------------------------------


def test_l1_extended_grant_in_state_only_fails_the_read_and_verify(world: World) -> None:
    db = world.db()
    key, value = _extend_frank(db, world)
    forge.set_state(db, key, value)
    db.close()
    height = world.sb.ledger.height()
    with pytest.raises(LedgerIntegrityError) as info:
        world.m["frank"].submit("RequestAccess", "r-1")
    assert info.value.block == world.blocks["grant frank"]
    assert "does not hold what block" in info.value.message
    assert world.sb.ledger.height() == height  # nothing committed on a forged state
    exc = _verify_fails(world)
    assert exc.block == world.blocks["grant frank"]
    assert exc.message.startswith("world state does not match the key history replayed")


def test_l2_extended_grant_in_state_and_history_fails_the_read_and_verify(world: World) -> None:
    db = world.db()
    key, value = _extend_frank(db, world)
    forge.set_state(db, key, value)
    forge.set_history(db, key, value)
    db.close()
    with pytest.raises(LedgerIntegrityError) as info:
        world.m["frank"].submit("RequestAccess", "r-1")
    assert info.value.block == world.blocks["grant frank"]
    exc = _verify_fails(world)
    assert exc.block == world.blocks["grant frank"]
    assert "the key history of" in exc.message and "differs from the replay" in exc.message


def test_a_grant_rewritten_in_its_transaction_fails_the_read(world: World) -> None:
    db = world.db()
    key, value = _extend_frank(db, world)
    start = forge.set_written(db, key, value)
    forge.rehash(db, start)
    db.close()
    # This process verified that write before (cached): it sees the state no longer matches.
    with pytest.raises(LedgerIntegrityError, match="does not hold what block"):
        world.m["frank"].submit("RequestAccess", "r-1")
    # A process opening the ledger now finds the block's signature broken.
    frank = world.m["frank"]
    fresh = EmbeddedLedger.open(world.dir, clock=world.sb.clock)
    try:
        contract = connect(frank.identity, frank.signer, fresh, clock=world.sb.clock)
        with pytest.raises(LedgerIntegrityError) as info:
            contract.get_network("ehrshare").get_contract("ehrshare").submit_transaction(
                "RequestAccess", "r-1"
            )
    finally:
        fresh.close()
    assert info.value.block == world.blocks["grant frank"]
    assert info.value.message.endswith("whose block signature does not verify")


# --- L3c: a decision flipped and the audit chain re-hashed -----------------------------------


def _flip_franks_decision(db: sqlite3.Connection) -> tuple[int, int]:
    """Frank's denied AccessDecision → allow; every later entry and the head re-hashed.
    Returns (the forged entry's seq, the first rewritten block)."""
    return forge.flip_decision(db, ALICE, "Org2MSP/frank")


@pytest.mark.parametrize("resign", [False, True], ids=["sha256 only", "with ordering key"])
def test_l3c_forged_decision_with_rehashed_chain_is_caught(world: World, resign: bool) -> None:
    db = world.db()
    seq, first = _flip_franks_decision(db)
    forge.rehash(db, first, ledger_dir=world.dir if resign else None, channel="ehrshare")
    db.close()
    auditor = world.m["audrey"]
    # What the chaincode alone sees: the forged decision, in a chain that verifies.
    page = auditor.evaluate("GetAuditTrail", "patient", ALICE, "50", "")
    assert page["entries"][seq - 1]["outcome"] == "allow"
    assert auditor.evaluate("VerifyAuditTrail", ALICE)["valid"] is True
    exc = _verify_fails(world)
    assert exc.block == world.blocks["frank reads"] == first
    if resign:
        assert exc.message == f"block {first} transaction 0: its write set differs from the replay"
    else:
        assert exc.message == f"block {first}: the orderer's signature does not verify"


# --- L4: the tail deleted ----------------------------------------------------------------------


def test_l4_deleted_tail_is_caught_against_a_witnessed_head(world: World, tmp_path: Path) -> None:
    from ehrshare.ledger.witness import read_head, sign_head

    ledger = world.sb.ledger
    height, head = ledger.head()
    audrey = world.m["audrey"]
    signed = sign_head(
        channel="ehrshare",
        height=height,
        head=head,
        orderer=ledger.ordering.fingerprint,
        identity=audrey.identity,
        signer=audrey.signer,
        signed_at=T0,
    )
    (tmp_path / "head.json").write_bytes(signed.to_json())
    witnessed = read_head(tmp_path / "head.json")
    assert ledger.verify(against=[witnessed])["witnesses"][0]["height"] == height
    db = world.db()
    forge.truncate(db, height - 2)  # dave's two reads
    db.close()
    assert world.blocks["dave reads"] == height - 2
    # A shorter chain is still a valid chain: only another copy of the head can tell.
    assert ledger.verify()["height"] == height - 2
    exc = _verify_fails(world, against=[witnessed])
    assert exc.block == height - 2
    assert exc.message == (
        f"the ledger has {height - 2} blocks but Org1MSP/audrey witnessed {height} "
        f"({tmp_path / 'head.json'}): blocks {height - 2}..{height - 1} were removed"
    )


def test_a_witnessed_head_with_a_bad_signature_is_not_trusted(world: World) -> None:
    from ehrshare.ledger.witness import sign_head

    ledger = world.sb.ledger
    height, head = ledger.head()
    audrey = world.m["audrey"]
    signed = sign_head(
        channel="ehrshare",
        height=height,
        head=head,
        orderer=ledger.ordering.fingerprint,
        identity=audrey.identity,
        signer=world.m["dave"].signer,
        signed_at=T0,
    )
    exc = _verify_fails(world, against=[signed])
    assert exc.message == "the witnessed head cannot be trusted: its signature does not verify"


# --- reordering, forged signatures, replaced certificates --------------------------------------


def _swap_blocks(db: sqlite3.Connection, a: int) -> None:
    b, tmp = a + 1, -1
    for table, col in (("transactions", "blk"), ("history", "blk"), ("state", "blk")):
        db.execute(f"UPDATE {table} SET {col} = ? WHERE {col} = ?", (tmp, a))
        db.execute(f"UPDATE {table} SET {col} = ? WHERE {col} = ?", (a, b))
        db.execute(f"UPDATE {table} SET {col} = ? WHERE {col} = ?", (b, tmp))


@pytest.mark.parametrize("resign", [False, True], ids=["sha256 only", "with ordering key"])
def test_reordered_blocks_are_caught(world: World, resign: bool) -> None:
    a = world.blocks["grant frank"]
    db = world.db()
    _swap_blocks(db, a)
    forge.rehash(db, a, ledger_dir=world.dir if resign else None, channel="ehrshare")
    db.close()
    exc = _verify_fails(world)
    assert exc.block == a
    if resign:
        assert exc.message == f"block {a} transaction 0: its write set differs from the replay"
    else:
        assert exc.message == f"block {a}: the orderer's signature does not verify"


@pytest.mark.parametrize("resign", [False, True], ids=["sha256 only", "with ordering key"])
def test_a_forged_client_signature_is_caught(world: World, resign: bool) -> None:
    target = world.blocks["grant dave"]
    forged = world.m["dave"].signer  # someone else's key signs alice's proposal
    db = world.db()
    (proposal,) = db.execute(
        "SELECT proposal FROM transactions WHERE blk = ?", (target,)
    ).fetchone()
    db.execute(
        "UPDATE transactions SET signature = ? WHERE blk = ?",
        (forged.sign(bytes(proposal)), target),
    )
    forge.rehash(db, target, ledger_dir=world.dir if resign else None, channel="ehrshare")
    db.close()
    exc = _verify_fails(world)
    assert (exc.block, exc.txn) == ((target, 0) if resign else (target, None))
    assert exc.message == (
        f"block {target} transaction 0: proposal signature does not verify against the "
        "creator's certificate"
        if resign
        else f"block {target}: the orderer's signature does not verify"
    )


def test_a_replaced_client_certificate_is_caught(world: World) -> None:
    """Alice's grant re-made by a look-alike 'Org1MSP/alice' from a rogue CA, fully re-signed."""
    target = world.blocks["grant dave"]
    rogue_id, rogue_signer = LocalCA.create("Org1MSP").issue("alice", role="patient")
    db = world.db()
    (raw,) = db.execute("SELECT proposal FROM transactions WHERE blk = ?", (target,)).fetchone()
    old = Proposal.from_bytes(bytes(raw))
    new = new_proposal(
        rogue_id,
        channel=old.channel,
        chaincode=old.chaincode,
        function=old.function,
        args=old.args,
        timestamp_ns=old.timestamp_seconds * 10**9 + old.timestamp_nanos,
        nonce=old.nonce,
    )
    assert new.creator == serialize_identity(rogue_id)
    body = new.to_bytes()
    db.execute(
        "UPDATE transactions SET proposal = ?, signature = ?, tx_id = ? WHERE blk = ?",
        (body, rogue_signer.sign(body), new.tx_id, target),
    )
    db.execute("UPDATE history SET tx_id = ? WHERE blk = ?", (new.tx_id, target))
    forge.rehash(db, target, ledger_dir=world.dir, channel="ehrshare")
    db.close()
    exc = _verify_fails(world)
    assert (exc.block, exc.txn) == (target, 0)
    assert exc.message == (
        f"block {target} transaction 0: creator certificate was not issued by its msp's ca"
    )


@pytest.mark.parametrize("resign", [False, True], ids=["sha256 only", "with ordering key"])
def test_a_replaced_organisation_ca_is_caught(world: World, resign: bool) -> None:
    rogue = LocalCA.create("Org1MSP")
    db = world.db()
    (added,) = db.execute("SELECT added_block FROM msp WHERE msp_id = 'Org1MSP'").fetchone()
    db.execute("UPDATE msp SET ca_pem = ? WHERE msp_id = 'Org1MSP'", (rogue.certificate_pem,))
    if resign:
        data = hashlib.sha256(b"config:Org1MSP\x00" + rogue.certificate_pem).digest()
        db.execute("UPDATE blocks SET data_hash = ? WHERE number = ?", (data, added))
        forge.rehash(db, added, ledger_dir=world.dir, channel="ehrshare")
    db.close()
    exc = _verify_fails(world)
    if resign:
        # The CA now matches its block, but every Org1MSP member's transaction stops chaining.
        first = world.blocks["alice registers"]  # the first transaction by an Org1MSP member
        assert (exc.block, exc.txn) == (first, 0)
        assert exc.message == (
            f"block {first} transaction 0: creator certificate was not issued by its msp's ca"
        )
    else:
        assert exc.block == added
        assert exc.message == (
            f"config block {added}: the ca certificate of Org1MSP is not the one the block admitted"
        )


def test_a_replaced_ordering_certificate_is_caught(world: World) -> None:
    from ehrshare.ledger.ordering import (
        KEY_FILE,
        block_message,
        genesis_data_hash,
        new_ordering_identity,
    )
    from ehrshare.ledger.witness import sign_head

    ledger = world.sb.ledger
    height, head = ledger.head()
    audrey = world.m["audrey"]
    witnessed = sign_head(
        channel="ehrshare",
        height=height,
        head=head,
        orderer=ledger.ordering.fingerprint,
        identity=audrey.identity,
        signer=audrey.signer,
        signed_at=T0,
    )
    # Without re-signing, the genesis block no longer binds the certificate.
    ordering, signer = new_ordering_identity()
    db = world.db()
    db.execute("UPDATE meta SET value = ? WHERE name = 'orderer_ca'", (ordering.ca_pem.decode(),))
    db.execute(
        "UPDATE meta SET value = ? WHERE name = 'orderer_cert'", (ordering.cert_pem.decode(),)
    )
    exc = _verify_fails(world)
    assert (exc.block, exc.message) == (0, "block 0: the orderer's signature does not verify")
    # The host's owner makes a whole new ordering identity and re-signs every block with it.
    os.replace(world.dir / KEY_FILE, world.dir / "old-key.pem")
    (world.dir / KEY_FILE).write_bytes(signer.to_secret_bytes())
    data = genesis_data_hash("ehrshare", ordering)
    db.execute(
        "UPDATE blocks SET data_hash = ?, hash = ? WHERE number = 0",
        (data, _block_hash(0, b"\x00" * 32, data)),
    )
    forge.rehash(db, 1, ledger_dir=world.dir, channel="ehrshare")

    db.execute(
        "UPDATE block_sigs SET signature = ? WHERE number = 0",
        (signer.sign(block_message("ehrshare", 0, _block_hash(0, b"\x00" * 32, data))),),
    )
    db.close()
    fresh = type(ledger).open(world.dir, channel="ehrshare", clock=world.sb.clock)
    try:
        assert fresh.verify()["orderer"] == ordering.fingerprint  # consistent on its own
        with pytest.raises(LedgerIntegrityError) as info:
            fresh.verify(against=[witnessed])
    finally:
        fresh.close()
    assert info.value.block == 0
    assert info.value.message == (
        "the ordering certificate differs from the one Org1MSP/audrey witnessed (the witnessed "
        "head): the chain was re-signed"
    )


def test_unsigned_proposal_bytes_cannot_be_swapped_in(world: World) -> None:
    """A proposal edited in place (same signature) no longer verifies."""
    target = world.blocks["grant frank"]
    db = world.db()
    (raw,) = db.execute("SELECT proposal FROM transactions WHERE blk = ?", (target,)).fetchone()
    body = json.loads(raw)
    body["args"][2] = base64.b64encode(FAR.encode()).decode()  # the expiry
    db.execute(
        "UPDATE transactions SET proposal = ? WHERE blk = ?",
        (json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), target),
    )
    forge.rehash(db, target, ledger_dir=world.dir, channel="ehrshare")
    db.close()
    exc = _verify_fails(world)
    assert (exc.block, exc.txn) == (target, 0)
    assert exc.message.endswith(
        "proposal signature does not verify against the creator's certificate"
    )
