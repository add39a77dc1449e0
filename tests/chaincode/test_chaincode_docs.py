"""docs/chaincode.md documents every function of the contract, with its arguments."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ehrshare_chaincode.contract import _FUNCTIONS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "chaincode.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
def test_every_contract_function_is_documented_with_its_arguments(name: str) -> None:
    method = _FUNCTIONS[name][0]
    params = list(inspect.signature(method).parameters)[1:]  # drop ctx
    documented = re.findall(rf"`{name}\(([^)`]*)\)", DOC)
    assert documented, f"docs/chaincode.md does not document {name}(…)"
    counts = {len(args.split(",")) if args.strip() else 0 for args in documented}
    assert counts == {len(params)}, f"{name} takes {params}; docs/chaincode.md says {documented}"
