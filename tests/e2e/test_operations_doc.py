"""docs/operations.md stays true: its setup commands run, and the serve command lines it shows
use the same options, in the same order, as ``ehrshare consortium service-commands`` prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)


def _commands(block: str) -> list[str]:
    """``$ `` lines and printed ``ehrshare`` lines, backslash continuations joined."""
    out: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("$ "):
            out.append(line[2:].strip())
        elif line.startswith("ehrshare "):
            out.append(line.strip())
    return out


def _flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def test_operations_setup_and_service_commands_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    runner = CliRunner()
    env = {"EHRSHARE_PROFILE": str(tmp_path / "ops")}
    for command in _commands(blocks[0]):
        if command.startswith("export "):
            continue
        result = runner.invoke(app, shlex.split(command)[1:], env=env)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    real = runner.invoke(app, ["consortium", "service-commands"], env=env)
    assert real.exit_code == 0, real.output
    real_lines = [shlex.split(line) for line in real.stdout.strip().splitlines()]
    shown = [line for line in _commands(blocks[2]) if line.startswith("ehrshare ")]
    shown_kgc = shlex.split(shown[1])
    assert shown_kgc[:4] == real_lines[0][:4] == ["ehrshare", "kgc", "serve", "--index"]
    assert _flags(shown_kgc) == _flags(real_lines[0])
    # The ports the doc chose are the ones the profile got (proxies first, then KGC nodes).
    assert "127.0.0.1:7063" in real_lines[0] and "127.0.0.1:7062" in real_lines[-1]
    assert real_lines[-1][real_lines[-1].index("--name") + 1] == "proxy-hospitalc"
    shown_proxy = shlex.split(shown[-1].replace("…", ""))
    flags = _flags(shown_proxy)  # the doc abbreviates the tail with "…"
    assert len(flags) >= 4 and flags == _flags(real_lines[-1])[: len(flags)]
