"""The session's shape: it sees the services only through their protocols, reaches the
chaincode only through the typed contract client, and no module of it is a book."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parents[2] / "sdk" / "ehrshare"

# Where a function is still named by a string: the DKG board's calls (their typed client is
# ehrshare.contract.dkg), and the sandbox's call-by-name helpers that chaincode tests drive.
_NAMED_CALLS_ALLOWED = {"session/core.py", "ledger/sandbox.py", "contract/client.py"}
_CLIENT_USERS = (
    "session",
    "services/proxy",
    "storemaint.py",
    "commands/bench_ledger.py",
    "bench/live_fabric.py",
    "ledger/sandbox.py",
)


def _modules(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        path = SDK / part
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def test_the_session_imports_no_service_implementation() -> None:
    code = (
        "import sys, ehrshare.session\n"
        "print(sorted(m for m in sys.modules if m.startswith('ehrshare.services.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['ehrshare.services.protocols']"


@pytest.mark.parametrize("path", _modules(*_CLIENT_USERS), ids=lambda p: str(p.relative_to(SDK)))
def test_chaincode_functions_are_called_through_the_typed_client(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    named = re.findall(r"\.(?:submit|evaluate)_transaction\(", text)
    if str(path.relative_to(SDK)) not in _NAMED_CALLS_ALLOWED:
        assert named == []


@pytest.mark.parametrize(
    "path",
    _modules("session", "services/proxy", "contract"),
    ids=lambda p: str(p.relative_to(SDK)),
)
def test_no_module_of_the_client_is_over_800_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 800
