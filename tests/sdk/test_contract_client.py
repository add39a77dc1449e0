"""The typed contract client matches the chaincode: every function it calls exists in the
chaincode's function table with the argument count it sends, and is submitted or evaluated as
that table declares."""

from __future__ import annotations

import base64
import inspect
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.contract import Access, AuditCheck, EhrContract, Grant, StoredRecord
from ehrshare.contract.client import COVERED, grant_access_args
from ehrshare.contract.dkg import DkgBoardClient
from ehrshare_chaincode import FUNCTIONS


def _chaincode_functions() -> dict[str, tuple[int, int]]:
    """name → (required, total) argument counts of every function in the chaincode's table."""
    return {name: (len(spec.required), len(spec.args)) for name, spec in FUNCTIONS.items()}


class _Recorder:
    """A Contract that records each call and answers what the parser of that function needs."""

    chaincode_name = "ehrshare"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str | bytes, ...]]] = []

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        self.calls.append(("submit", name, args))
        return _ANSWERS[name]

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        self.calls.append(("evaluate", name, args))
        return _ANSWERS[name]


_GRANT = (
    b'{"grant_id":"g-1","owner":"O/p","grantor":"O/p","grantee":"O/c","type":"t-1",'
    b'"expiry":9,"max_hops":0,"hop":0,"parent_grant_id":"","state":"active","proxy":"O/x"}'
)
_RECORD = (
    b'{"record_id":"r-1","owner":"O/p","type":"t-1","cid":"c","sha256":"s","capsule":"AA==",'
    b'"version":1,"creator":"O/p","created_at":1}'
)
_IDENT = b'{"ibe_id":"O/p","msp_id":"O","role":"patient"}'
_CA = b'{"msp_id":"O","ca_pem":"pem","sha256":"h"}'
_ACCESS = (
    b'{"access_id":"a-1","record_id":"r-1","record_version":1,"owner":"O/p","type":"t-1",'
    b'"requester":"O/c","decision":"allow","reason":"grant","grant_id":"g-1","chain":[]}'
)
_EPOCH = b'{"owner":"O/p","type":"t-1","type_epoch":1,"key":"k","epoch":""}'
_REBINDING = (
    b'{"ibe_id":"O/p","cert_sha256":"h","status":"open","quorum":2,'
    b'"approvals":[{"admin":"O/a","msp_id":"O","at":1}],"expires_at":9}'
)
_GUARDIAN = (
    b'{"patient":"O/p","guardian":"O/g","actions":["audit"],"types":[],"expiry":9,"state":"active"}'
)
_EMERGENCY_POLICY = (
    b'{"patient":"O/p","identity":"O/p~emergency-1","generation":1,"types":["t-1"],'
    b'"duration_s":60,"approvals":2,"distinct_hospitals":true,"default":false}'
)
_EMERGENCY = (
    b'{"request_id":"e-1","patient":"O/p","requester":"O/c","reason":"r","status":"pending",'
    b'"policy":{"identity":"O/p~emergency-1","types":["t-1"],"approvals":2},"approvals":[],'
    b'"requested_at":1,"expires_at":0,"review":null}'
)
_ANSWERS: dict[str, bytes] = {
    "RegisterIdentity": _IDENT,
    "RegisterMember": _IDENT,
    "GetIdentity": _IDENT,
    "RegisterOrgCA": _CA,
    "RotateOrgCA": _CA,
    "GetOrgCA": _CA,
    "PublishTypeKey": b'{"ibe_id":"O/p","type":"t-1","key":"k"}',
    "GetTypeKey": b'{"ibe_id":"O/p","type":"t-1","key":"k"}',
    "GetTypeKeyEpoch": _EPOCH,
    "RotateTypeKey": _EPOCH,
    "RekeyGrant": _GRANT,
    "RegisterRecord": _RECORD,
    "AmendRecord": _RECORD,
    "WriteRecords": b"[" + _RECORD + b"]",
    "GetRecord": _RECORD,
    "GetRecordHistory": b"[" + _RECORD + b"]",
    "ListRecords": b'{"records":[' + _RECORD + b'],"bookmark":""}',
    "ListGrantedRecords": b'{"records":[],"bookmark":""}',
    "ListRecordVersions": b'{"versions":[{"record_id":"r","version":1,"cid":"c","sha256":"s"}],'
    b'"bookmark":""}',
    "FindClaim": b'{"record_id":"","record":null}',
    "ListGrantPins": b'{"grants":[{"grant_id":"g-1","grantee_msp":"O","expiry":9,'
    b'"records":[{"record_id":"r","version":2,"cid":"c"}]}],"bookmark":""}',
    "GrantAccess": _GRANT,
    "RevokeAccess": _GRANT,
    "GetGrant": _GRANT,
    "ListGrants": b'{"grants":[' + _GRANT + b'],"bookmark":""}',
    "RequestAccess": _ACCESS,
    "CheckApproval": _ACCESS,
    "ReportReencryption": b"{}",
    "GetAuditTrail": b'{"entries":[],"bookmark":""}',
    "VerifyAuditTrail": b'{"chain":"O/p","valid":true,"length":0,"first_bad_seq":0,"reason":""}',
    "StateDigest": b'{"sha256":"h","keys":0}',
    "ProposeRebinding": _REBINDING,
    "ApproveRebinding": _REBINDING,
    "GetRebinding": _REBINDING,
    "RegisterGuardian": _GUARDIAN,
    "RemoveGuardian": _GUARDIAN,
    "GetGuardian": _GUARDIAN,
    "ProposeMinorGuardian": _GUARDIAN,
    "ApproveMinorGuardian": _GUARDIAN,
    "LogAuditRead": b'{"read_id":"ar-1","patient":"O/p","guardian":"O/g","upto_seq":3}',
    "SetEmergencyPolicy": _EMERGENCY_POLICY,
    "GetEmergencyPolicy": _EMERGENCY_POLICY,
    "RequestEmergency": _EMERGENCY,
    "ApproveEmergency": _EMERGENCY,
    "GetEmergency": _EMERGENCY,
    "ReviewEmergency": _EMERGENCY,
    "ListEmergencies": b'{"emergencies":[],"bookmark":""}',
    "ListEmergencyRecords": b'{"records":[],"bookmark":""}',
    "CheckEmergencyExtraction": b'{"requester":"O/c","cert_sha256":"h","owner":false}',
}

# Each public method with arguments, both with and without the optional ones where it has any.
_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("register_identity", (), {}),
    ("register_member", ("pem", "patient"), {}),
    ("register_org_ca", ("pem",), {}),
    ("rotate_org_ca", ("pem", "h"), {}),
    ("get_org_ca", ("O",), {}),
    ("get_identity", ("O/p",), {}),
    ("publish_type_key", ("t-1", "k", "1"), {}),
    ("get_type_key", ("O/p", "t-1"), {}),
    ("get_type_key_epoch", ("O/p", "t-1"), {}),
    ("rotate_type_key", ("t-1", 1, "k", "1"), {}),
    ("rekey_grant", ("g-1", 1), {}),
    (
        "register_record",
        (),
        dict(
            record_id="r",
            owner="O/p",
            label="t",
            cid="c",
            sha256="s",
            capsule=b"",
            format_version="1",
        ),
    ),
    ("amend_record", (), dict(record_id="r", cid="c", sha256="s", capsule=b"", format_version="1")),
    (
        "write_records",
        ([("RegisterRecord", "r", "O/p", "t", "c", "s", "AA==", "1", "0")],),
        {},
    ),
    (
        "amend_record",
        (),
        dict(record_id="r", cid="c", sha256="s", capsule=b"", format_version="1", type_epoch=2),
    ),
    (
        "amend_record",
        (),
        dict(
            record_id="r", cid="c", sha256="s", capsule=b"", format_version="1", expected_version=3
        ),
    ),
    (
        "register_record",
        (),
        dict(
            record_id="r",
            owner="O/p",
            label="t",
            cid="c",
            sha256="s",
            capsule=b"",
            format_version="1",
            type_epoch=0,
        ),
    ),
    ("get_record", ("r-1",), {}),
    ("get_record", ("r-1", 2), {}),
    ("get_record_history", ("r-1",), {}),
    ("list_records", ("O/p",), {}),
    ("list_records", ("O/p",), {"page_size": 5, "bookmark": "b"}),
    ("list_record_versions", (), {}),
    ("find_claim", ("O/p", "i-1"), {}),
    ("list_grant_pins", (), {}),
    ("list_grant_pins", (), {"page_size": 5, "bookmark": "b"}),
    ("list_granted_records", ("g-1",), {}),
    ("list_grants", ("O/p", "owner"), {}),
    (
        "grant_access",
        (),
        dict(
            label="t",
            grantee="O/c",
            expiry=9,
            max_hops=0,
            allowed_next=(),
            parent_grant_id="",
            proxy="O/x",
        ),
    ),
    (
        "grant_access",
        (),
        dict(
            label="t",
            grantee="O/c",
            expiry=9,
            max_hops=1,
            allowed_next=("O/d",),
            parent_grant_id="g-0",
            proxy="O/x",
            grant_id="g-2",
        ),
    ),
    ("revoke_access", ("g-1",), {}),
    ("get_grant", ("g-1",), {}),
    ("request_access", ("r-1",), {}),
    ("request_access", ("r-1", "g-1"), {}),
    ("check_approval", ("a-1",), {}),
    ("report_reencryption", ("a-1", "ok"), {}),
    ("report_reencryption", ("a-1", "ok", "d"), {"applied": 1, "capsule_sha256": "h"}),
    ("get_audit_trail", ("patient", "O/p"), {}),
    ("verify_audit_trail", ("O/p",), {}),
    ("state_digest", (), {}),
    ("propose_rebinding", ("O/p", "pem"), {}),
    ("propose_rebinding", ("O/p", "pem", 3), {}),
    ("approve_rebinding", ("O/p", "h"), {}),
    ("get_rebinding", ("O/p", "h"), {}),
    ("register_guardian", ("O/g",), dict(actions=["audit"], labels=[], expiry=9)),
    ("register_guardian", ("O/g",), dict(actions=["grant"], labels=["t-1"], expiry=9)),
    ("remove_guardian", ("O/g",), {}),
    ("get_guardian", ("O/p", "O/g"), {}),
    ("propose_minor_guardian", ("O/p", "O/g"), dict(actions=["audit"], labels=[], expiry=9)),
    ("propose_minor_guardian", ("O/p", "O/g"), dict(actions=["grant"], labels=["t"], expiry=9)),
    ("approve_minor_guardian", ("O/p", "O/g"), {}),
    ("log_audit_read", ("O/p",), {}),
    ("get_audit_trail", ("record", "r-1"), dict(page_size=5, bookmark="b", read_id="ar-1")),
    ("verify_audit_trail", ("O/p", "ar-1"), {}),
    (
        "set_emergency_policy",
        (),
        dict(labels=["t-1"], duration_s=60, approvals=2, distinct_hospitals=True, type_keys={}),
    ),
    (
        "set_emergency_policy",
        (),
        dict(
            labels=["t-1"],
            duration_s=60,
            approvals=1,
            distinct_hospitals=False,
            type_keys={"t-1": "k"},
            generation=2,
        ),
    ),
    ("get_emergency_policy", ("O/p",), {}),
    ("request_emergency", ("O/p", "r"), {}),
    ("approve_emergency", ("e-1",), {}),
    ("get_emergency", ("e-1",), {}),
    ("list_emergencies", ("O/p",), {}),
    ("list_emergencies", ("O/p",), dict(page_size=5, bookmark="b")),
    ("list_emergency_records", ("e-1",), {}),
    ("list_emergency_records", ("e-1",), dict(page_size=5, bookmark="b")),
    ("review_emergency", ("e-1",), {}),
    ("review_emergency", ("e-1", "seen"), {}),
    ("check_emergency_extraction", ("O/p~emergency-1", "O/c"), {}),
]


def test_every_public_method_is_exercised_here() -> None:
    methods = {
        n
        for n, m in inspect.getmembers(EhrContract, inspect.isfunction)
        if not n.startswith("_") and n != "call"
    }
    assert methods == {name for name, _, _ in _CALLS}


@pytest.mark.parametrize(("method", "args", "kwargs"), _CALLS, ids=lambda v: str(v)[:40])
def test_each_method_calls_a_chaincode_function_with_its_argument_count(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    recorder = _Recorder()
    getattr(EhrContract(recorder), method)(*args, **kwargs)
    assert len(recorder.calls) == 1
    kind, function, sent = recorder.calls[0]
    chaincode = _chaincode_functions()
    assert function in chaincode, f"{method} calls {function}, which the chaincode lacks"
    required, total = chaincode[function]
    assert required <= len(sent) <= total, f"{function} takes {required}..{total}, sent {sent}"
    assert all(isinstance(a, str) for a in sent)
    assert kind == FUNCTIONS[function].kind
    assert function in COVERED


def test_covered_is_exactly_what_the_methods_call() -> None:
    called: set[str] = set()
    for method, args, kwargs in _CALLS:
        recorder = _Recorder()
        getattr(EhrContract(recorder), method)(*args, **kwargs)
        called.update(function for _, function, _ in recorder.calls)
    assert called == set(COVERED)


def test_the_dkg_part_is_on_the_same_contract_handle() -> None:
    recorder = _Recorder()
    dkg = EhrContract(recorder).dkg
    assert isinstance(dkg, DkgBoardClient)
    assert dkg.contract is recorder


def test_dkg_functions_are_left_to_their_own_client() -> None:
    dkg = {f for f in _chaincode_functions() if "DKG" in f or "KGC" in f or "Reshare" in f}
    assert dkg and not dkg & COVERED
    covered = COVERED | dkg
    assert covered == set(_chaincode_functions())


def test_grant_access_arguments_are_the_chaincode_order() -> None:
    args = grant_access_args(
        label="t",
        grantee="O/c",
        expiry=9,
        max_hops=2,
        allowed_next=("O/z", "O/a"),
        parent_grant_id="g-0",
        proxy="O/x",
        grant_id="g-2",
    )
    names = list(FUNCTIONS["GrantAccess"].args)
    assert dict(zip(names, args, strict=True)) == {
        "record_type": "t",
        "grantee": "O/c",
        "expiry": "9",
        "max_hops": "2",
        "allowed_next": '["O/a", "O/z"]',
        "parent_grant_id": "g-0",
        "proxy": "O/x",
        "grant_id": "g-2",
    }


# --- parsers ---------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(
    chain=_text,
    valid=st.booleans(),
    length=st.integers(0, 10**6),
    bad=st.integers(0, 10**6),
    reason=_text,
    head=st.one_of(st.none(), _text),
)
def test_an_audit_check_gives_back_the_chaincode_answer_key_for_key(
    chain: str, valid: bool, length: int, bad: int, reason: str, head: str | None
) -> None:
    # What `ehrshare audit verify --json` prints under checks.chaincode: exactly the answer.
    answer: dict[str, Any] = {
        "chain": chain,
        "valid": valid,
        "length": length,
        "first_bad_seq": bad,
        "reason": reason,
    }
    if head is not None:
        answer["head"] = head
    assert list(AuditCheck.from_chain(answer).to_dict().items()) == list(answer.items())


@given(
    ids=st.lists(_text, min_size=6, max_size=6),
    numbers=st.lists(st.integers(0, 2**40), min_size=3, max_size=3),
    proxy=st.one_of(st.none(), _text),
)
def test_a_grant_from_chain_keeps_every_field(
    ids: list[str], numbers: list[int], proxy: str | None
) -> None:
    data: dict[str, Any] = dict(
        zip(
            ("grant_id", "owner", "grantor", "grantee", "type", "parent_grant_id"), ids, strict=True
        )
    )
    data |= {"expiry": numbers[0], "max_hops": numbers[1], "hop": numbers[2], "state": "active"}
    if proxy is not None:
        data["proxy"] = proxy
    grant = Grant.from_chain(data)
    assert (grant.grant_id, grant.owner, grant.grantor, grant.grantee) == tuple(ids[:4])
    assert (grant.label, grant.type, grant.parent_grant_id) == (ids[4], None, ids[5])
    assert (grant.expiry, grant.max_hops, grant.hop) == tuple(numbers)
    assert grant.proxy == (proxy or "")


@given(capsule=st.binary(max_size=300), epoch=st.one_of(st.none(), _text))
def test_a_stored_record_decodes_its_capsule_and_keeps_its_epoch(
    capsule: bytes, epoch: str | None
) -> None:
    data = json.loads(_RECORD) | {"capsule": base64.b64encode(capsule).decode()}
    if epoch is not None:
        data["epoch"] = epoch
    stored = StoredRecord.from_chain(data)
    assert (stored.capsule, stored.epoch) == (capsule, epoch)
    assert stored.ref.record_id == "r-1" and stored.ref.version == 1


def test_an_allowed_access_carries_its_chain_reports_and_record() -> None:
    data = json.loads(_ACCESS) | {
        "chain": [{"grant_id": "g-1", "proxy": "O/x"}, {"grant_id": "g-2", "proxy": "O/y"}],
        "reports": [{"applied": 1, "proxy": "O/x", "capsule_sha256": "h"}],
        "record": json.loads(_RECORD),
        "capsule_sha256": "c",
    }
    access = Access.from_chain(data)
    assert access.allowed and access.grant_id == "g-1" and access.capsule_sha256 == "c"
    assert [(h.grant_id, h.proxy) for h in access.chain] == [("g-1", "O/x"), ("g-2", "O/y")]
    assert [(r.applied, r.proxy) for r in access.reports] == [(1, "O/x")]
    assert access.record is not None and access.record.capsule == b"\x00"
    denied = Access.from_chain(json.loads(_ACCESS) | {"decision": "deny", "chain": []})
    assert not denied.allowed and denied.record is None and denied.capsule_sha256 is None
