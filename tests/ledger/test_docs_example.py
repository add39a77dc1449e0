"""The example in docs/chaincode.md runs as written (with a temporary directory)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "chaincode.md"


def test_docs_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    code = blocks[0].replace('"/var/lib/ehrshare/ledger"', repr(str(tmp_path / "ledger")))
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    ledger = namespace["ledger"]
    assert ledger.height() == 3  # genesis, the organisation's config block, the registration
    ledger.close()
