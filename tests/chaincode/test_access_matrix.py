"""Every contract function × every kind of caller: allowed, or denied with the exact error text.

Each case is endorsed (simulated with the caller's real signed proposal) but not committed, so the
cases do not change the shared world and can run in any order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from chaincode_world import (
    ALICE_LAB_KEY,
    ALICE_LAB_KEY_2,
    CAPSULE,
    DKG_POLY,
    DKG_QUAL,
    FAR,
    KIM_KEY,
    MPK,
    NONCE,
    NONCE2,
    NONCE3,
    NONCE5,
    PROXY,
    REPLACE,
    ROSTER,
    SHA,
    World,
    dkg_bundle,
    type_key,
)

from ehrshare.ledger import EndorseError
from ehrshare_chaincode import FUNCTIONS

ROLES = (
    "owner",
    "grantee",
    "revoked_grantee",
    "expired_grantee",
    "other_patient",
    "other_hospital_clinician",
    "org_admin",
    "auditor",
    "proxy",
    "kgc",
    "anonymous",
)
ROLE_OF = {
    "owner": "patient",
    "grantee": "clinician",
    "revoked_grantee": "clinician",
    "expired_grantee": "clinician",
    "other_patient": "patient",
    "other_hospital_clinician": "clinician",
    "org_admin": "admin",
    "auditor": "auditor",
    "proxy": "proxy",
    "kgc": "kgc",
}
REGISTERED = frozenset(ROLES) - {"anonymous"}
ALICE = "Org1MSP/alice"
ALICE_EMERGENCY = "Org1MSP/alice~emergency-1"
CLINICIANS = frozenset(
    {"grantee", "revoked_grantee", "expired_grantee", "other_hospital_clinician"}
)
NONCE_RESHARE = "a9" * 32
# Functions whose entries carry the action of the single function each write is.
LOGGED_AS = {"WriteRecords": ("RegisterRecord", "AmendRecord")}


@dataclass(frozen=True)
class Case:
    function: str
    args: Callable[[World], tuple[str, ...]]
    allowed: frozenset[str]
    denied: Callable[[World, str, str], str]
    chaincode_function: str = ""


def _role_needed(*roles: str) -> Callable[[World, str, str], str]:
    def msg(w: World, name: str, role: str) -> str:
        return f"identity {name} has role {ROLE_OF[role]}; this needs role " + " or ".join(roles)

    return msg


def _newbie_cert(w: World) -> tuple[str, ...]:
    identity, _ = w.sandbox.cas["Org1MSP"].issue("newbie", now=w.sandbox.now())
    return (identity.credentials.decode(), "clinician")


def _new_alice_cert(w: World) -> tuple[str, ...]:
    identity, _ = w.sandbox.cas["Org1MSP"].issue("alice", role="patient", now=w.sandbox.now())
    return (ALICE, identity.credentials.decode(), "")


def _not_admin_or(admin_error: Callable[[World], str]) -> Callable[[World, str, str], str]:
    def msg(w: World, name: str, role: str) -> str:
        return admin_error(w) if role == "org_admin" else f"identity {name} is not an org admin"

    return msg


def _org1_ca(w: World) -> str:
    return w.sandbox.cas["Org1MSP"].certificate_pem.decode()


def _org1_ca_sha(w: World) -> str:
    return str(w.m["auditor"].evaluate("GetOrgCA", "Org1MSP")["sha256"])


CASES = [
    Case(
        "RegisterIdentity",
        lambda w: (),
        frozenset({"anonymous"}),
        lambda w, n, r: f"identity {n} is already registered",
    ),
    Case(
        "RegisterMember",
        _newbie_cert,
        frozenset({"org_admin"}),
        lambda w, n, r: f"identity {n} is not an org admin",
    ),
    # The world registered Org1's CA: a second registration is refused, a rotation to the
    # same certificate too; everyone else is not an org admin.
    Case(
        "RegisterOrgCA",
        lambda w: (_org1_ca(w),),
        frozenset(),
        _not_admin_or(
            lambda w: (
                f"the ca of Org1MSP is already registered (sha256 {_org1_ca_sha(w)}); "
                "replace it with RotateOrgCA"
            )
        ),
    ),
    Case(
        "RotateOrgCA",
        lambda w: (_org1_ca(w), _org1_ca_sha(w)),
        frozenset(),
        _not_admin_or(
            lambda w: "ca certificate CN=ca.Org1MSP,O=Org1MSP is the one already registered"
        ),
    ),
    Case("GetOrgCA", lambda w: ("Org1MSP",), frozenset(ROLES), lambda w, n, r: ""),
    Case("GetIdentity", lambda w: (ALICE,), REGISTERED, lambda w, n, r: ""),
    # A type key is bound to its owner's tag: only alice can publish alice's key (every
    # registered identity may publish its own, test_contract.py).
    Case(
        "PublishTypeKey",
        lambda w: ("lab", ALICE_LAB_KEY, "1"),
        frozenset({"owner"}),
        lambda w, n, r: f"type key lab is not bound to identity {n}",
    ),
    Case("GetTypeKey", lambda w: (ALICE, "lab"), REGISTERED, lambda w, n, r: ""),
    # Type-key epochs: only the owner (a patient) rotates its own type or re-keys its own
    # grants; carol, a patient too, has no lab key to rotate and gave no grant.
    Case(
        "RotateTypeKey",
        lambda w: ("lab", "2", ALICE_LAB_KEY_2, "1"),
        frozenset({"owner"}),
        lambda w, n, r: (
            "type key lab of Org1MSP/carol does not exist"
            if r == "other_patient"
            else _role_needed("patient")(w, n, r)
        ),
    ),
    Case("GetTypeKeyEpoch", lambda w: (ALICE, "lab"), REGISTERED, lambda w, n, r: ""),
    Case(
        "RekeyGrant",
        lambda w: (w.grants["grantee"], "1"),
        frozenset({"owner"}),
        lambda w, n, r: (
            f"identity {n} may not re-key grant {w.grants['grantee']}"
            if r == "other_patient"
            else _role_needed("patient")(w, n, r)
        ),
    ),
    Case(
        "RegisterRecord",
        lambda w: w.record_args("r-new"),
        frozenset(
            {"owner", "grantee", "revoked_grantee", "expired_grantee", "other_hospital_clinician"}
        ),
        lambda w, n, r: f"identity {n} may not create records for {ALICE}",
    ),
    Case(
        "AmendRecord",
        lambda w: ("r-1", "bafyrecord0002", SHA, CAPSULE, "1"),
        frozenset({"owner"}),
        lambda w, n, r: f"identity {n} may not amend record r-1",
    ),
    Case(
        "WriteRecords",
        lambda w: (json.dumps([["RegisterRecord", *w.record_args("r-new")]]),),
        frozenset(
            {"owner", "grantee", "revoked_grantee", "expired_grantee", "other_hospital_clinician"}
        ),
        lambda w, n, r: f"write 0: identity {n} may not create records for {ALICE}",
    ),
    Case(
        "GetRecord",
        lambda w: ("r-1",),
        frozenset({"owner", "grantee", "auditor", "proxy"}),
        lambda w, n, r: f"identity {n} may not read record r-1",
    ),
    Case(
        "FindClaim",
        lambda w: (ALICE, "i-" + "cd" * 16),
        frozenset({"owner"}) | CLINICIANS,
        lambda w, n, r: f"identity {n} may not look up claims of {ALICE}",
    ),
    Case(
        "GetRecordHistory",
        lambda w: ("r-1",),
        frozenset({"owner", "grantee", "auditor", "proxy"}),
        lambda w, n, r: f"identity {n} may not read record r-1",
    ),
    Case(
        "ListRecords",
        lambda w: (ALICE,),
        frozenset({"owner", "auditor"}),
        lambda w, n, r: f"identity {n} may not list records of {ALICE}",
    ),
    Case(
        "ListRecordVersions",
        lambda w: ("",),
        frozenset({"org_admin", "auditor"}),
        _role_needed("admin", "auditor"),
    ),
    Case(
        "ListGrantPins",
        lambda w: ("",),
        frozenset({"org_admin", "auditor"}),
        _role_needed("admin", "auditor"),
    ),
    Case(
        "ListGrantedRecords",
        lambda w: (w.grants["grantee"],),
        frozenset({"grantee"}),
        lambda w, n, r: f"identity {n} is not the grantee of grant {w.grants['grantee']}",
    ),
    Case(
        "GrantAccess",
        lambda w: ("lab", "Org2MSP/zed", FAR, "0", "", "", PROXY),
        frozenset({"owner", "other_patient"}),
        lambda w, n, r: f"identity {n} is not a patient and may not grant",
    ),
    # With the id its grantor chose (and delivered the re-key under): the same rule.
    Case(
        "GrantAccessWithId",
        lambda w: ("lab", "Org2MSP/zed", FAR, "0", "", "", PROXY, "g-" + "7e" * 16),
        frozenset({"owner", "other_patient"}),
        lambda w, n, r: f"identity {n} is not a patient and may not grant",
        chaincode_function="GrantAccess",
    ),
    Case(
        "ForwardGrant",
        lambda w: ("lab", "Org2MSP/zed", FAR, "0", "", w.grants["grantee"], PROXY),
        frozenset({"grantee"}),
        lambda w, n, r: f"identity {n} is not the grantee of grant {w.grants['grantee']}",
        chaincode_function="GrantAccess",
    ),
    # A grant must name the proxy that will hold its re-key: refused for every registered
    # caller, before any role or parent check.
    Case(
        "GrantAccessNoProxy",
        lambda w: ("lab", "Org2MSP/zed", FAR, "0", "", "", ""),
        frozenset(),
        lambda w, n, r: "grant needs the proxy that will hold its re-key",
        chaincode_function="GrantAccess",
    ),
    Case(
        "ForwardGrantNoProxy",
        lambda w: ("lab", "Org2MSP/zed", FAR, "0", "", w.grants["grantee"], ""),
        frozenset(),
        lambda w, n, r: "grant needs the proxy that will hold its re-key",
        chaincode_function="GrantAccess",
    ),
    Case(
        "RevokeAccess",
        lambda w: (w.grants["grantee"],),
        frozenset({"owner"}),
        lambda w, n, r: f"identity {n} may not revoke grant {w.grants['grantee']}",
    ),
    Case(
        "GetGrant",
        lambda w: (w.grants["grantee"],),
        frozenset({"owner", "grantee", "auditor", "proxy"}),
        lambda w, n, r: f"identity {n} may not read grant {w.grants['grantee']}",
    ),
    Case(
        "ListGrants",
        lambda w: (ALICE, "owner"),
        frozenset({"owner", "auditor"}),
        lambda w, n, r: f"identity {n} may not list grants of {ALICE}",
    ),
    Case("RequestAccess", lambda w: ("r-1",), REGISTERED, lambda w, n, r: ""),
    Case(
        "CheckApproval",
        lambda w: (w.access_id,),
        frozenset({"proxy", "auditor"}),
        _role_needed("proxy", "auditor"),
    ),
    Case(
        "ReportReencryption",
        lambda w: (w.access_id, "ok"),
        frozenset({"proxy"}),
        _role_needed("proxy"),
    ),
    Case("PublishKGCKey", lambda w: (KIM_KEY,), frozenset({"kgc"}), _role_needed("kgc")),
    Case("GetKGCKey", lambda w: ("Org1MSP/kim",), REGISTERED, lambda w, n, r: ""),
    Case(
        "OpenDKGSession",
        lambda w: (NONCE3, "2", ROSTER, "60", REPLACE),
        frozenset({"org_admin"}),
        _role_needed("admin"),
    ),
    Case(
        "OpenReshareSession",
        lambda w: (NONCE_RESHARE, "2", ROSTER, "[1, 2]", ROSTER, "60"),
        frozenset({"org_admin"}),
        _role_needed("admin"),
    ),
    Case("GetDKGSession", lambda w: (NONCE2,), REGISTERED, lambda w, n, r: ""),
    Case(
        "PostDKGBundle",
        lambda w: (NONCE2, "deal", dkg_bundle("deal", NONCE2, 1), "1"),
        frozenset({"kgc"}),
        _role_needed("kgc"),
    ),
    Case(
        "CloseDKGPhase",
        lambda w: (NONCE2, "deal"),
        frozenset({"kgc", "org_admin"}),
        lambda w, n, r: (
            f"identity {n} may not close phases of dkg session {NONCE2}: "
            "it is neither in the roster nor an admin"
        ),
    ),
    Case(
        "AbortDKGSession",
        lambda w: (NONCE5, "one dealer posted"),
        frozenset({"kgc", "org_admin"}),
        lambda w, n, r: (
            f"identity {n} may not abort dkg session {NONCE5}: "
            "it is neither in the roster nor an admin"
        ),
    ),
    Case("GetDKGBundles", lambda w: (NONCE, "deal"), REGISTERED, lambda w, n, r: ""),
    Case(
        "PublishDKGResult",
        lambda w: (NONCE, MPK, DKG_POLY, DKG_QUAL, "1"),
        frozenset({"kgc"}),
        _role_needed("kgc"),
    ),
    Case("GetDKGResult", lambda w: ("",), REGISTERED, lambda w, n, r: ""),
    Case("StateDigest", lambda w: (), REGISTERED, lambda w, n, r: ""),
    Case(
        "GetAuditTrail",
        lambda w: ("patient", ALICE),
        frozenset({"owner", "auditor"}),
        lambda w, n, r: f"identity {n} may not read the audit trail of {ALICE}",
    ),
    Case(
        "GetAuditTrail",
        lambda w: ("record", "r-1"),
        frozenset({"owner", "auditor"}),
        lambda w, n, r: f"identity {n} may not read the audit trail of {ALICE}",
    ),
    Case(
        "GetAuditTrail",
        lambda w: ("patient", "~system"),
        frozenset({"org_admin", "auditor"}),
        lambda w, n, r: f"identity {n} may not read the audit trail of ~system",
    ),
    Case(
        "VerifyAuditTrail",
        lambda w: (ALICE,),
        frozenset({"owner", "auditor"}),
        lambda w, n, r: f"identity {n} may not read the audit trail of {ALICE}",
    ),
    # Guardians: a patient registers a member with role guardian (dave is a clinician).
    Case(
        "RegisterGuardian",
        lambda w: ("Org1MSP/dave", '["audit"]', "", FAR),
        frozenset(),
        lambda w, n, r: (
            "identity Org1MSP/dave has role clinician, not guardian"
            if r in ("owner", "other_patient")
            else _role_needed("patient")(w, n, r)
        ),
    ),
    Case(
        "RemoveGuardian",
        lambda w: ("Org1MSP/dave",),
        frozenset(),
        lambda w, n, r: (
            f"identity Org1MSP/dave is not a guardian of {n}"
            if r in ("owner", "other_patient")
            else _role_needed("patient")(w, n, r)
        ),
    ),
    Case(
        "GetGuardian",
        lambda w: (ALICE, "Org1MSP/dave"),
        frozenset(),
        lambda w, n, r: (
            f"identity Org1MSP/dave is not a guardian of {ALICE}"
            if r in ("owner", "grantee", "org_admin", "auditor")
            else f"identity {n} may not read the guardians of {ALICE}"
        ),
    ),
    # A minor's guardian: the registering hospital's admin proposes, other hospitals' approve.
    Case(
        "ProposeMinorGuardian",
        lambda w: (ALICE, "Org1MSP/dave", '["audit"]', "", FAR),
        frozenset(),
        lambda w, n, r: (
            "identity Org1MSP/dave has role clinician, not guardian"
            if r == "org_admin"
            else _role_needed("admin")(w, n, r)
        ),
    ),
    Case(
        "ApproveMinorGuardian",
        lambda w: (ALICE, "Org1MSP/dave"),
        frozenset(),
        lambda w, n, r: (
            f"no guardianship of Org1MSP/dave for {ALICE} was proposed"
            if r == "org_admin"
            else _role_needed("admin")(w, n, r)
        ),
    ),
    # A guardian's audit read is logged first (this world has no guardian).
    Case("LogAuditRead", lambda w: (ALICE,), frozenset(), _role_needed("guardian")),
    # Recovery: only admins propose and approve; a quorum of 2 needs a second hospital's CA on
    # chain, which this world lacks (tests/chaincode/test_rebinding.py has two).
    Case(
        "ProposeRebinding",
        _new_alice_cert,
        frozenset(),
        lambda w, n, r: (
            "quorum 2 needs more hospitals than the 1 with a registered ca"
            if r == "org_admin"
            else _role_needed("admin")(w, n, r)
        ),
    ),
    Case(
        "ApproveRebinding",
        lambda w: (ALICE, SHA),
        frozenset(),
        lambda w, n, r: (
            f"no rebinding of {ALICE} to certificate {SHA} was proposed"
            if r == "org_admin"
            else _role_needed("admin")(w, n, r)
        ),
    ),
    Case(
        "GetRebinding",
        lambda w: (ALICE, SHA),
        frozenset(),
        lambda w, n, r: (
            f"no rebinding of {ALICE} to certificate {SHA} was proposed"
            if r in ("org_admin", "owner")
            else f"identity {n} may not read rebindings of {ALICE}"
        ),
    ),
    # Emergency access (no policy and no request in this world: tests/chaincode/test_emergency.py
    # has both). Approvals are hospital admins'; requests are clinicians'.
    Case(
        "SetEmergencyPolicy",
        lambda w: (
            '["lab"]',
            "3600",
            "2",
            "true",
            json.dumps({"lab": type_key(ALICE_EMERGENCY, "lab")}),
            "",
        ),
        frozenset({"owner"}),
        lambda w, n, r: (
            f"type key lab is not bound to identity {n}~emergency-1"
            if r == "other_patient"
            else _role_needed("patient")(w, n, r)
        ),
    ),
    Case("GetEmergencyPolicy", lambda w: (ALICE,), REGISTERED, lambda w, n, r: ""),
    Case(
        "RequestEmergency",
        lambda w: (ALICE, "unconscious"),
        CLINICIANS,
        _role_needed("clinician"),
    ),
    Case(
        "ApproveEmergency",
        lambda w: ("e-none",),
        frozenset(),
        lambda w, n, r: (
            "emergency e-none does not exist"
            if r == "org_admin"
            else _role_needed("admin")(w, n, r)
        ),
    ),
    Case(
        "GetEmergency",
        lambda w: ("e-none",),
        frozenset(),
        lambda w, n, r: "emergency e-none does not exist",
    ),
    Case(
        "ListEmergencies",
        lambda w: (ALICE,),
        frozenset({"owner", "org_admin", "auditor"}),
        lambda w, n, r: f"identity {n} may not list emergencies of {ALICE}",
    ),
    Case(
        "ListEmergencyRecords",
        lambda w: ("e-none",),
        frozenset(),
        lambda w, n, r: "emergency e-none does not exist",
    ),
    Case(
        "ReviewEmergency",
        lambda w: ("e-none", ""),
        frozenset(),
        lambda w, n, r: (
            "emergency e-none does not exist"
            if r in ("owner", "other_patient")
            else _role_needed("patient", "guardian")(w, n, r)
        ),
    ),
    Case(
        "CheckEmergencyExtraction",
        lambda w: (ALICE_EMERGENCY, ALICE),
        frozenset({"kgc", "auditor"}),
        _role_needed("kgc", "auditor"),
    ),
]


def _expected_request(w: World, role: str, name: str) -> tuple[str, str]:
    if role == "owner":
        return "allow", "owner"
    if role == "grantee":
        return "allow", "grant"
    if role == "revoked_grantee":
        return "deny", f"grant {w.grants['revoked_grantee']} is revoked"
    if role == "expired_grantee":
        return "deny", f"grant {w.grants['expired_grantee']} expired at {w.expired_at}"
    return "deny", f"identity {name} has no grant for type lab of {ALICE}"


_PARAMS = [
    pytest.param(case, role, id=f"{case.function}-{i}-{role}")
    for i, case in enumerate(CASES)
    for role in ROLES
]


@pytest.mark.parametrize(("case", "role"), _PARAMS)
def test_access_matrix(world: World, case: Case, role: str) -> None:
    member = world.m[role]
    name = member.ibe_id
    function = case.chaincode_function or case.function
    proposal = member.contract.new_proposal(function, *case.args(world))
    if (
        role == "anonymous"
        and role not in case.allowed
        and case.function not in ("RegisterMember", "RegisterOrgCA", "RotateOrgCA")
    ):
        expected_error = f"identity {name} is not registered"
    elif role in case.allowed:
        expected_error = ""
    else:
        expected_error = case.denied(world, name, role)

    if expected_error:
        with pytest.raises(EndorseError) as info:
            proposal.endorse()
        assert info.value.message == expected_error
        assert info.value.transaction_id == proposal.transaction_id
        return

    endorsed = proposal.endorse().endorsed
    result = json.loads(endorsed.result)
    if case.function == "RequestAccess":
        assert (result["decision"], result["reason"]) == _expected_request(world, role, name)
        assert result["requester"] == name
    if FUNCTIONS[function].kind == "submit":
        # Every allowed state change leaves its audit entries in the transaction's one event.
        assert endorsed.event is not None
        entries = json.loads(endorsed.event[1])["entries"]
        assert entries and all(e["actor"] == name for e in entries)
        assert any(e["action"] in LOGGED_AS.get(function, (function,)) for e in entries)
    else:
        assert endorsed.writes == {}
        assert endorsed.event is None


def test_matrix_covers_every_transaction_function() -> None:
    covered = {c.chaincode_function or c.function for c in CASES}
    assert covered == set(FUNCTIONS)
