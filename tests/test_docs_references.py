"""Every document the code and the docs cite is a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ("sdk", "chaincode", "consensus-plugin", "docs", "tests")
STEERING_DESIGN = "DESIGN" + ".md"  # spelt apart so that this file does not cite it


def _texts() -> list[tuple[Path, str]]:
    out = []
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.suffix in (".py", ".md") and path.is_file():
                out.append((path, path.read_text(encoding="utf-8")))
    return out


def test_nothing_cites_the_steering_design_document() -> None:
    citing = [str(p.relative_to(ROOT)) for p, text in _texts() if STEERING_DESIGN in text]
    assert citing == []


def test_every_cited_docs_file_exists() -> None:
    missing = set()
    for path, text in _texts():
        for name in re.findall(r"docs/([\w.-]+\.md)", text):
            if not (ROOT / "docs" / name).is_file():
                missing.add(f"{path.relative_to(ROOT)}: docs/{name}")
        if path.parent == ROOT / "docs":
            for target in re.findall(r"\]\(([\w.-]+\.md)(?:#[^)]*)?\)", text):
                if not (ROOT / "docs" / target).is_file():
                    missing.add(f"{path.relative_to(ROOT)}: {target}")
    assert sorted(missing) == []
