"""A consortium on the embedded ledger, shared by the chaincode and ledger tests.

The contract is exercised through the real path (signed proposal, certificate chain, simulation),
with a manual clock so expiry can be tested without sleeping.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ehrshare.hazmat.pairing import Scalar
from ehrshare.hazmat.tipre import MasterSecret
from ehrshare.ledger.errors import EndorseError
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox

T0 = 1_900_000_000
FAR = str(T0 + 10**7)
CAPSULE = base64.b64encode(b"\x01" * 96).decode()
# A real master public key and real type keys: PublishTypeKey checks each key's proof of
# knowledge against the mpk of the latest final DKG (toy master secret, tests only).
_MASTER = MasterSecret(Scalar.from_int(0x5EED))
MPK = base64.b64encode(_MASTER.public_key().to_bytes()).decode()


def type_key(ibe_id: str, record_type: str = "lab", type_epoch: int = 0) -> str:
    """ibe_id's real type public key under MPK, base64, as PublishTypeKey takes it."""
    tsk = _MASTER.extract(ibe_id).type_secret(record_type, type_epoch)
    return base64.b64encode(tsk.public_key(_MASTER.public_key()).to_bytes()).decode()


ALICE_LAB_KEY = type_key("Org1MSP/alice")
ALICE_LAB_KEY_1 = type_key("Org1MSP/alice", type_epoch=1)
ALICE_LAB_KEY_2 = type_key("Org1MSP/alice", type_epoch=2)
NONCE = "ab" * 32
NONCE2 = "cd" * 32
NONCE3 = "ef" * 32
NONCE5 = "a5" * 32
SHA = "0" * 64
KIM_KEY = base64.b64encode(b"\x01" + b"\x04" * 65).decode()
KAI_KEY = base64.b64encode(b"\x01" + b"\x05" * 65).decode()
KIM, KAI = "Org1MSP/kim", "Org2MSP/kai"
ROSTER = json.dumps([KIM, KAI])
REPLACE = "replace-master-key"  # the world has records: later DKGs replace its key on purpose
DKG_POLY = json.dumps([MPK, MPK])  # τ=2 coefficients
DKG_QUAL = json.dumps([KIM, KAI])
KINDS = {"deal": 1, "response": 2, "justification": 3}


def dkg_bundle(phase: str, nonce: str, sender: int, body: bytes = b"\x03" * 100) -> str:
    """A bundle with a real header (version, kind, nonce, sender) and an opaque body, base64."""
    raw = b"\x01" + bytes([KINDS[phase]]) + bytes.fromhex(nonce) + sender.to_bytes(2, "big")
    return base64.b64encode(raw + body).decode()


PROXY = "Org1MSP/pete"


@dataclass
class World:
    sandbox: Sandbox
    clock: ManualClock
    m: dict[str, Member]
    grants: dict[str, str]
    access_id: str
    expired_at: int
    kgc2: Member

    def record_args(self, record_id: str, owner: str = "Org1MSP/alice") -> tuple[str, ...]:
        return (record_id, owner, "lab", "bafyrecord0001", SHA, CAPSULE, "1")


def build_world(directory: Path, organizations: tuple[str, ...] = ("Org1MSP", "Org2MSP")) -> World:
    clock = ManualClock(T0)
    sb = Sandbox.open(directory, clock=clock, organizations=organizations)
    m = {
        "owner": sb.member("Org1MSP", "alice", "patient"),
        "grantee": sb.member("Org1MSP", "dave", "clinician"),
        "revoked_grantee": sb.member("Org1MSP", "erin", "clinician"),
        "expired_grantee": sb.member("Org1MSP", "frank", "clinician"),
        "other_patient": sb.member("Org1MSP", "carol", "patient"),
        "other_hospital_clinician": sb.member("Org2MSP", "zed", "clinician"),
        "org_admin": sb.member("Org1MSP", "admin", node_ou="admin"),
        "auditor": sb.member("Org1MSP", "audrey", "auditor"),
        "proxy": sb.member("Org1MSP", "pete", "proxy"),
        "kgc": sb.member("Org1MSP", "kim", "kgc"),
        "anonymous": sb.member("Org1MSP", "anon", "patient", register=False),
    }
    # RegisterMember verifies member certificates against this (and the matrix needs it).
    m["org_admin"].submit("RegisterOrgCA", sb.cas["Org1MSP"].certificate_pem.decode())
    alice = m["owner"]
    kim, kai = m["kgc"], sb.member("Org2MSP", "kai", "kgc")
    kim.submit("PublishKGCKey", KIM_KEY)
    kai.submit("PublishKGCKey", KAI_KEY)
    # The first DKG finishes before any type key: keys are checked against its mpk.
    m["org_admin"].submit("OpenDKGSession", NONCE, "2", ROSTER, "60")
    for phase in ("deal", "response"):
        kim.submit("PostDKGBundle", NONCE, phase, dkg_bundle(phase, NONCE, 1), "1")
        kai.submit("PostDKGBundle", NONCE, phase, dkg_bundle(phase, NONCE, 2), "1")
        kim.submit("CloseDKGPhase", NONCE, phase)
    for node in (kim, kai):
        node.submit("PublishDKGResult", NONCE, MPK, DKG_POLY, DKG_QUAL, "1")
    alice.submit("PublishTypeKey", "lab", ALICE_LAB_KEY, "1")
    alice.submit("RegisterRecord", "r-1", alice.ibe_id, "lab", "bafyrecord0001", SHA, CAPSULE, "1")
    grants = {}
    for role, expiry in (
        ("grantee", FAR),
        ("revoked_grantee", FAR),
        ("expired_grantee", str(T0 + 100)),
    ):
        g = alice.submit("GrantAccess", "lab", m[role].ibe_id, expiry, "1", "", "", PROXY)
        grants[role] = g["grant_id"]
    alice.submit("RevokeAccess", grants["revoked_grantee"])
    # The revocation moved alice's lab type to epoch 1; her session publishes its key next.
    alice.submit("RotateTypeKey", "lab", "1", ALICE_LAB_KEY_1, "1")
    access = m["grantee"].submit("RequestAccess", "r-1")
    assert access["decision"] == "allow"
    # A second session left in its deal phase (timed out once the clock moves on).
    m["org_admin"].submit("OpenDKGSession", NONCE2, "2", ROSTER, "60", REPLACE)
    # A third whose deal phase closes (timed out) with one dealer of τ=2: it may be aborted.
    m["org_admin"].submit("OpenDKGSession", NONCE5, "2", ROSTER, "60", REPLACE)
    kim.submit("PostDKGBundle", NONCE5, "deal", dkg_bundle("deal", NONCE5, 1), "1")
    clock.advance(1000)
    kim.submit("CloseDKGPhase", NONCE5, "deal")
    return World(sb, clock, m, grants, access["access_id"], T0 + 100, kai)


def endorse_error(member: Member, function: str, *args: str | bytes) -> str:
    """The chaincode's error for a proposal that must fail at endorsement (nothing submitted)."""
    with pytest.raises(EndorseError) as info:
        member.contract.new_proposal(function, *args).endorse()
    return info.value.message


def fails_without_change(w: World, member: Member, function: str, *args: str) -> str:
    """Submit a transaction that must fail; the state digest and height stay as they were."""
    before = (w.sandbox.ledger.state_digest(), w.sandbox.ledger.height())
    with pytest.raises(EndorseError) as info:
        member.submit(function, *args)
    assert (w.sandbox.ledger.state_digest(), w.sandbox.ledger.height()) == before
    return info.value.message


def three_kgc_nodes(w: World) -> tuple[Member, Member, Member, str]:
    """kim, kai and a third node with a published key; the three-node roster (json)."""
    kit = w.sandbox.member("Org2MSP", "kit", "kgc")
    kit.submit("PublishKGCKey", base64.b64encode(b"\x01" + b"\x06" * 65).decode())
    return w.m["kgc"], w.kgc2, kit, json.dumps([KIM, KAI, kit.ibe_id])


POLY3 = json.dumps([MPK] * 3)
"""A public polynomial of three commitments (the contract checks only its shape)."""
OTHER_MPK = base64.b64encode(b"\x09" * 48).decode()
"""An mpk no node published: a view that disagrees."""


def post_all(nonce: str, phase: str, nodes: Sequence[Member]) -> None:
    """Every node posts its bundle of ``phase``, in roster order."""
    for pos, node in enumerate(nodes, start=1):
        node.submit("PostDKGBundle", nonce, phase, dkg_bundle(phase, nonce, pos), "1")
