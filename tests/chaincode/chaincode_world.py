"""A consortium on the embedded ledger, shared by the chaincode and ledger tests.

The contract is exercised through the real path (signed proposal, certificate chain, simulation),
with a manual clock so expiry can be tested without sleeping.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox

T0 = 1_900_000_000
FAR = str(T0 + 10**7)
CAPSULE = base64.b64encode(b"\x01" * 96).decode()
TYPE_KEY = base64.b64encode(b"\x02" * 48).decode()
BUNDLE = base64.b64encode(b"\x03" * 200).decode()
NONCE = "ab" * 32
NONCE2 = "cd" * 32
SHA = "0" * 64
PROXY = "Org1MSP/pete"


@dataclass
class World:
    sandbox: Sandbox
    clock: ManualClock
    m: dict[str, Member]
    grants: dict[str, str]
    access_id: str
    expired_at: int

    def record_args(self, record_id: str, owner: str = "Org1MSP/alice") -> tuple[str, ...]:
        return (record_id, owner, "lab", "bafyrecord0001", SHA, CAPSULE, "1")


def build_world(directory: Path) -> World:
    clock = ManualClock(T0)
    sb = Sandbox.open(directory, clock=clock)
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
    alice = m["owner"]
    alice.submit("PublishTypeKey", "lab", TYPE_KEY, "1")
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
    access = m["grantee"].submit("RequestAccess", "r-1")
    assert access["decision"] == "allow"
    m["kgc"].submit("PostDKGBundle", NONCE, "deal", BUNDLE, "1")
    m["kgc"].submit("PublishDKGResult", NONCE, TYPE_KEY, f'["{TYPE_KEY}"]', '["Org1MSP/kim"]', "1")
    clock.advance(1000)
    return World(sb, clock, m, grants, access["access_id"], T0 + 100)
