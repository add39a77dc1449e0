"""The key centre's structure (issue 14): one module per concern, every chaincode call in
``ehrshare.contract.dkg``, one protocol driver, participations that use the node's public
methods, and a Session that sees the KGC only through its protocol."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

import ehrshare
from ehrshare.contract.dkg import DkgBoardClient
from ehrshare.hazmat.dkg import BundleKind, PublicPolynomial, new_session_nonce
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import G1
from ehrshare.services.kgc import DkgParticipation, ReshareParticipation
from ehrshare_chaincode import FUNCTIONS

SDK = Path(ehrshare.__file__).parent


def _sources(module: str) -> list[Path]:
    """The file of ``module``, or every file of it if it is a package."""
    path = Path(importlib.import_module(module).__file__ or "")
    return sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]


def _calls(path: Path) -> list[tuple[str, int]]:
    """(called attribute name, line) for every ``x.name(...)`` call in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.func.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]


@pytest.mark.parametrize(
    ("package", "limit"), [("ehrshare.services.kgc", 600), ("ehrshare.hazmat.dkg", 700)]
)
def test_each_module_of_the_key_centre_stays_readable(package: str, limit: int) -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in _sources(package)}
    assert len(sizes) > 1, f"{package} is still one module"
    assert {name: n for name, n in sizes.items() if n > limit} == {}


def test_no_chaincode_call_is_named_by_string_in_the_key_centre() -> None:
    found = [
        f"{path.name}:{line} {name}"
        for module in ("ehrshare.services.kgc", "ehrshare.key_extraction")
        for path in _sources(module)
        for name, line in _calls(path)
        if name in ("submit_transaction", "evaluate_transaction")
    ]
    assert found == []


def test_only_the_driver_sequences_the_phases() -> None:
    phases = {"post_deal", "post_response", "post_justification"}
    found = [
        f"{path.relative_to(SDK)}:{line} {name}"
        for path in sorted(SDK.rglob("*.py"))
        for name, line in _calls(path)
        if name in phases and path != SDK / "hazmat" / "board.py"
    ]
    assert found == []


@pytest.mark.parametrize("participation", [DkgParticipation, ReshareParticipation])
def test_participations_use_only_the_nodes_public_methods(participation: type) -> None:
    tree = ast.parse(inspect.getsource(participation).lstrip())
    private = [
        f"node.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "node")
            or (isinstance(node.value, ast.Name) and node.value.id == "node")
        )
    ]
    assert private == []


def test_session_sees_the_key_centre_only_through_its_protocol() -> None:
    imported = [
        node.module
        for path in sorted((SDK / "session").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ]
    assert [m for m in imported if m.startswith("ehrshare.services.kgc")] == []
    assert "ehrshare.key_extraction" in imported


# --- DkgBoardClient against the chaincode's own function table ----------------------------------


class RecordingContract:
    """A contract handle that records each call and answers just enough JSON."""

    ANSWERS: ClassVar[dict[str, Any]] = {
        "PublishKGCKey": {"ibe_id": "kgc-a"},
        "PublishDKGResult": {"outcome": "pending", "agree": 1, "threshold": 2},
        "GetDKGBundles": [],
    }

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[str | bytes, ...]]] = []

    @property
    def chaincode_name(self) -> str:
        return "ehrshare"

    def _answer(self, mode: str, name: str, args: tuple[str | bytes, ...]) -> bytes:
        self.calls.append((mode, name, args))
        return json.dumps(self.ANSWERS.get(name, {})).encode()

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        return self._answer("submit", name, args)

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        return self._answer("evaluate", name, args)


def _call_every_method(client: DkgBoardClient) -> set[str]:
    nonce = new_session_nonce()
    public = PublicPolynomial((G1.generator(), G1.generator()))
    calls = {
        "publish_key": lambda: client.publish_key(KGCNodeKey.generate().public_key),
        "identity": lambda: client.identity("alice"),
        "open_session": lambda: client.open_session(
            nonce=nonce, roster=["a", "b"], threshold=2, new_master_key=True
        ),
        "open_reshare": lambda: client.open_reshare(
            nonce=nonce, roster=["a", "b"], indices=[1, 2], dealers=["a"], threshold=2
        ),
        "session_state": lambda: client.session_state(nonce),
        "post_bundle": lambda: client.post_bundle(nonce, BundleKind.DEAL, b"bundle"),
        "bundles": lambda: client.bundles(nonce, BundleKind.RESPONSE),
        "close_phase": lambda: client.close_phase(nonce, BundleKind.JUSTIFICATION),
        "abort": lambda: client.abort(nonce, "why"),
        "publish_result": lambda: client.publish_result(nonce, public, ["a", "b"]),
        "result": lambda: (client.result(), client.result(nonce)),
        "is_final": lambda: client.is_final(nonce),
    }
    for call in calls.values():
        call()
    return set(calls)


def test_each_dkg_client_method_calls_a_contract_function_the_way_the_chaincode_expects() -> None:
    recorder = RecordingContract()
    client = DkgBoardClient(recorder)
    exercised = _call_every_method(client)
    public = {
        name
        for name, _ in inspect.getmembers(DkgBoardClient, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == exercised, "a DkgBoardClient method is missing from this test"
    for mode, name, args in recorder.calls:
        assert name in FUNCTIONS, f"{name} is not a function of the contract"
        spec = FUNCTIONS[name]
        assert len(spec.required) <= len(args) <= len(spec.args), (
            f"{name} called with {len(args)} arguments"
        )
        expected = spec.kind
        assert mode == expected, f"{name} is {mode}ted, the chaincode reads it as {expected}"
