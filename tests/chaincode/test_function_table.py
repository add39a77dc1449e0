"""The function table is the contract's one list of functions, and its kinds are true.

``ehrshare_chaincode.FUNCTIONS`` is what clients build calls from: every function the dispatcher
runs is in it with its argument names, nothing else is dispatchable, and a function it calls
``evaluate`` writes nothing and emits no event for any caller, allowed or refused — observed on
the real embedded ledger's simulation stub, not on the contract's word.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from chaincode_world import ALICE_LAB_KEY, World, build_world
from test_access_matrix import CASES, ROLES, Case

from ehrshare.ledger import EndorseError
from ehrshare.ledger.sandbox import Member, Sandbox
from ehrshare_chaincode import CONTRACT_NAME, FUNCTIONS, EHRContract, invoke
from ehrshare_chaincode.contract.functions import KINDS, evaluate, function_table, submit
from ehrshare_chaincode.stub import ChaincodeError, ChaincodeStub

EVALUATED = sorted(name for name, spec in FUNCTIONS.items() if spec.kind == "evaluate")
EVALUATE_CASES = [c for c in CASES if not c.chaincode_function and c.function in EVALUATED]


def _verbs(contract_type: type) -> set[str]:
    return {
        name
        for name in dir(contract_type)
        if name[:1].isupper() and callable(getattr(contract_type, name))
    }


def test_the_table_lists_exactly_the_contracts_transaction_functions() -> None:
    assert set(FUNCTIONS) == _verbs(EHRContract)
    for name, spec in FUNCTIONS.items():
        params = list(inspect.signature(getattr(EHRContract, name)).parameters.values())[2:]
        assert spec.name == name
        assert spec.kind in KINDS
        assert spec.args == tuple(p.name for p in params)
        assert spec.optional == tuple(p.name for p in params if p.default == "")
        assert spec.args[len(spec.required) :] == spec.optional


def test_the_kinds_match_what_the_contract_is_known_to_do() -> None:
    # Pinned so that flipping a kind is a visible change (clients submit or evaluate by it).
    assert EVALUATED == [
        "CheckApproval",
        "CheckEmergencyExtraction",
        "FindClaim",
        "GetAuditTrail",
        "GetDKGBundles",
        "GetDKGResult",
        "GetDKGSession",
        "GetEmergency",
        "GetEmergencyPolicy",
        "GetGrant",
        "GetGuardian",
        "GetIdentity",
        "GetKGCKey",
        "GetOrgCA",
        "GetRebinding",
        "GetRecord",
        "GetRecordHistory",
        "GetTypeKey",
        "GetTypeKeyEpoch",
        "ListEmergencies",
        "ListEmergencyRecords",
        "ListGrantPins",
        "ListGrantedRecords",
        "ListGrants",
        "ListRecordVersions",
        "ListRecords",
        "StateDigest",
        "VerifyAuditTrail",
    ]
    assert len(FUNCTIONS) - len(EVALUATED) == 32


class _NoLedger:
    """A stub that fails the test if the dispatcher gets as far as running a function."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the dispatcher touched the ledger ({name})")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_invoke_dispatches_every_function_of_the_table_with_its_arity(name: str) -> None:
    spec = FUNCTIONS[name]
    too_many = [b""] * (len(spec.args) + 1)
    stub: Any = _NoLedger()
    with pytest.raises(ChaincodeError) as info:
        invoke(stub, name, too_many)
    expected = (
        str(len(spec.args)) if not spec.optional else f"{len(spec.required)} to {len(spec.args)}"
    )
    assert info.value.message == f"{name} takes {expected} arguments, got {len(too_many)}"


@pytest.mark.parametrize(
    "name",
    sorted(
        {n for n in dir(EHRContract) if not n.startswith("__")} - set(FUNCTIONS)
        | {"registered", "log", "getJson", "Nothing"}
    ),
)
def test_invoke_refuses_everything_outside_the_table(name: str) -> None:
    stub: Any = _NoLedger()
    with pytest.raises(ChaincodeError) as info:
        invoke(stub, name, [])
    assert info.value.message == f"function {name} does not exist"


def test_a_verb_without_a_kind_or_a_kind_without_a_verb_is_refused() -> None:
    class Undeclared:
        def GetThing(self, ctx: object, thing_id: str) -> None: ...

    class Misnamed:
        @evaluate
        def get_thing(self, ctx: object, thing_id: str) -> None: ...

    class NotAString:
        @submit
        def PutThing(self, ctx: object, count: str = "1") -> None: ...

    with pytest.raises(TypeError, match=r"Undeclared\.GetThing is named as a verb but"):
        function_table(Undeclared)
    with pytest.raises(TypeError, match=r"Misnamed\.get_thing is declared evaluate but"):
        function_table(Misnamed)
    with pytest.raises(TypeError, match=r"NotAString\.PutThing: argument count"):
        function_table(NotAString)


# --- evaluate functions write nothing ------------------------------------------------------------


class _Recorder:
    """The embedded ledger's simulation stub, with every write-like call noted."""

    def __init__(self, stub: ChaincodeStub, calls: list[str]) -> None:
        self._stub = stub
        self._calls = calls

    def put_state(self, key: str, value: bytes) -> None:
        self._calls.append(f"put_state {key!r}")
        self._stub.put_state(key, value)

    def del_state(self, key: str) -> None:
        self._calls.append(f"del_state {key!r}")
        self._stub.del_state(key)

    def set_event(self, name: str, payload: bytes) -> None:
        self._calls.append(f"set_event {name}")
        self._stub.set_event(name, payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)


class _Recording:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def invoke(self, stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
        recorder: Any = _Recorder(stub, self.calls)
        return invoke(recorder, function, args)

    def install(self, sandbox: Sandbox) -> None:
        sandbox.ledger.install_chaincode(CONTRACT_NAME, self.invoke)


@pytest.fixture(scope="module")
def recorded_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, _Recording]]:
    w = build_world(tmp_path_factory.mktemp("recorded"))
    recording = _Recording()
    recording.install(w.sandbox)
    yield w, recording
    w.sandbox.close()


def _endorse(member: Member, function: str, args: Sequence[str]) -> bool:
    """Simulate a proposal (nothing is committed); whether the contract accepted it."""
    try:
        member.contract.new_proposal(function, *args).endorse()
    except EndorseError:
        return False
    return True


def test_every_evaluate_function_has_a_case_to_run() -> None:
    assert sorted({c.function for c in EVALUATE_CASES}) == EVALUATED


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=lambda c: f"{c.function}")
def test_an_evaluate_function_writes_nothing_for_any_caller(
    recorded_world: tuple[World, _Recording], case: Case
) -> None:
    w, recording = recorded_world
    accepted = []
    for role in ROLES:
        recording.calls.clear()
        if _endorse(w.m[role], case.function, case.args(w)):
            accepted.append(role)
        assert recording.calls == [], f"{case.function} as {role}"
    # The happy path ran too, for every caller the access matrix allows.
    assert set(accepted) == case.allowed


def test_a_submit_function_is_seen_writing(recorded_world: tuple[World, _Recording]) -> None:
    # The recorder sees writes at all: a function of the other kind, simulated only.
    w, recording = recorded_world
    recording.calls.clear()
    assert _endorse(w.m["owner"], "PublishTypeKey", ("lab", ALICE_LAB_KEY, "1"))
    assert any(c.startswith("put_state") for c in recording.calls)
    assert recording.calls[-1] == "set_event PublishTypeKey"


@pytest.mark.parametrize("name", EVALUATED)
def test_an_evaluate_function_writes_nothing_on_a_fresh_ledger(tmp_path: Path, name: str) -> None:
    # Nothing registered but the caller: every function fails or answers, and writes nothing.
    sandbox = Sandbox.open(tmp_path)
    try:
        recording = _Recording()
        recording.install(sandbox)
        member = sandbox.member("Org1MSP", "alice", "patient")
        args = [""] * len(FUNCTIONS[name].required)
        recording.calls.clear()
        _endorse(member, name, args)
        assert recording.calls == []
    finally:
        sandbox.close()
