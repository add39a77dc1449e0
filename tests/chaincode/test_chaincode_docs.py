"""docs/chaincode.md documents every function of the contract, with its arguments and its kind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ehrshare_chaincode import FUNCTIONS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "chaincode.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_contract_function_is_documented_with_its_arguments(name: str) -> None:
    params = FUNCTIONS[name].args
    documented = re.findall(rf"`{name}\(([^)`]*)\)", DOC)
    assert documented, f"docs/chaincode.md does not document {name}(…)"
    counts = {len(args.split(",")) if args.strip() else 0 for args in documented}
    assert counts == {len(params)}, f"{name} takes {params}; docs/chaincode.md says {documented}"


@pytest.mark.parametrize(("kind", "label"), [("submit", "Submit"), ("evaluate", "Evaluate")])
def test_the_docs_list_each_function_under_its_kind(kind: str, label: str) -> None:
    listed = re.search(rf"^\* \*\*{label}\*\*: (.*?)\.$", DOC, re.MULTILINE | re.DOTALL)
    assert listed, f"docs/chaincode.md has no **{label}** list"
    names = re.findall(r"`([A-Za-z]+)`", listed.group(1))
    assert names == sorted(n for n, spec in FUNCTIONS.items() if spec.kind == kind)
