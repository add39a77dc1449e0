"""docs/tour.md runs: its Python blocks in order in one namespace, its shell blocks via the CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app

TOUR = Path(__file__).resolve().parents[2] / "docs" / "tour.md"
BLOCK = re.compile(r"```(python|console)\n(.*?)```", re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(TOUR.read_text(encoding="utf-8")) if k == kind]


def test_tour_has_examples() -> None:
    assert len(blocks("python")) >= 5
    assert len(blocks("console")) >= 2


def test_tour_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": "tour"}
    for i, code in enumerate(blocks("python"), start=1):
        exec(compile(code, f"docs/tour.md python block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "enrolled with KGC nodes" in out
    assert "Haemoglobin 13.2" in out
    assert "denied: grant" in out and "is revoked" in out


def test_tour_shell_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EHRSHARE_PROFILE", raising=False)
    monkeypatch.delenv("EHRSHARE_WALLET", raising=False)
    # The lab.json the tour gives, as written there.
    (lab,) = re.findall(r"```json\n(.*?)```", TOUR.read_text(encoding="utf-8"), re.DOTALL)
    assert json.loads(lab)["resourceType"] == "Observation"
    (tmp_path / "lab.json").write_text(lab, encoding="utf-8")
    runner = CliRunner()
    env: dict[str, str] = {}
    variables: dict[str, str] = {}
    ran = 0
    for block in blocks("console"):
        for line in block.splitlines():
            if not line.startswith("$ "):
                continue
            command = line[2:].strip()
            if command.startswith("export "):
                name, value = command[len("export ") :].split("=", 1)
                env[name] = value
                continue
            target = None
            match = re.fullmatch(r"(\w+)=\$\((.*)\)", command)
            if match:
                target, command = match.group(1), match.group(2)
            for name, value in variables.items():
                command = command.replace(f"${name}", value)
            argv = shlex.split(command)
            assert argv[0] == "ehrshare", line
            result = runner.invoke(app, argv[1:], env=env)
            assert result.exit_code == 0, f"{line}\n{result.output}"
            if target is not None:
                variables[target] = result.stdout.strip().splitlines()[-1]
            ran += 1
    assert ran >= 10
    assert variables["RECORD"].startswith("r-") and variables["GRANT"].startswith("g-")


def test_readme_tour_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (TOUR.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## 5-minute tour") :]
    shell = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert shell is not None and python is not None
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env: dict[str, str] = {}
    for line in shell.group(1).splitlines():
        command = line.split("#", 1)[0].strip()
        if not command or command.startswith("make "):
            continue
        if command.startswith("export "):
            name, value = command[len("export ") :].split("=", 1)
            env[name] = value
            continue
        argv = shlex.split(command)
        assert argv[0].endswith("ehrshare"), line
        result = runner.invoke(app, argv[1:], env=env)
        assert result.exit_code == 0, f"{line}\n{result.output}"
    exec(compile(python.group(1), "README.md tour", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip().endswith("13.2")
