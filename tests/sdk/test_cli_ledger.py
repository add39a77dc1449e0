"""``ehrshare ledger verify|head`` and ``audit verify --against``: exit codes, first bad block,
and a kill -9 while a head file is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.output


def run_json(*args: str, code: int = 0) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ledgercli") / "c"
    run_json("consortium", "init", str(directory))
    return directory


@pytest.fixture
def consortium(pristine: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the consortium each test may tamper with (no process holds it open)."""
    copy = tmp_path / "c"
    shutil.copytree(pristine, copy)
    yield copy


def _db(consortium: Path) -> sqlite3.Connection:
    return sqlite3.connect(consortium / "ledger" / "ledger.sqlite", isolation_level=None)


def test_verify_and_witnessed_head(consortium: Path, tmp_path: Path) -> None:
    p = str(consortium)
    report = run_json("ledger", "verify", "-p", p)
    assert report["valid"] is True and report["height"] == report["blocks"]
    head = tmp_path / "admin-head.json"
    out = run_json("ledger", "head", "--out", str(head), "-p", p, "-w", "admin")
    assert out["height"] == report["height"] and out["witness"] == "HospitalAMSP/admin"
    checked = run_json("ledger", "verify", "--against", str(head), "-p", p)
    assert checked["witnesses"] == [
        {
            "witness": "HospitalAMSP/admin",
            "height": report["height"],
            "head": report["head"],
            "file": str(head),
        }
    ]
    assert "✓ holds the head HospitalAMSP/admin witnessed" in run(
        "ledger", "verify", "--against", str(head), "-p", p
    )
    # The tail deleted (block, its transactions, history; state as before) is caught.
    height = int(report["height"])  # type: ignore[call-overload]
    sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
    try:
        import forge
    finally:
        sys.path.pop(0)
    db = _db(consortium)
    forge.truncate(db, height - 1)
    db.close()
    assert run_json("ledger", "verify", "-p", p)["valid"] is True  # alone it cannot tell
    bad = run_json("ledger", "verify", "--against", str(head), "-p", p, code=5)
    assert bad["first_bad_block"] == height - 1
    assert "were removed" in str(bad["reason"])
    text = run("ledger", "verify", "--against", str(head), "-p", p, code=5)
    assert f"✗ ledger does NOT verify at block {height - 1}" in text
    audit = run_json("audit", "verify", "--against", str(head), "-p", p, "-w", "admin", code=5)
    assert audit["valid"] is False
    assert audit["checks"]["ledger"]["first_bad_block"] == height - 1  # type: ignore[index]
    text = run("audit", "verify", "--against", str(head), "-p", p, "-w", "admin", code=5)
    assert "does NOT verify" in text and "ledger integrity:" in text and "#0" not in text


def test_an_edited_state_row_fails_verify_and_the_next_write(consortium: Path) -> None:
    p = str(consortium)
    db = _db(consortium)
    key, value = next(
        (bytes(k), bytes(v))
        for k, v in db.execute("SELECT key, value FROM state ORDER BY key")
        if b"ehr.loghead" in bytes(k) and b"~system" in bytes(k)
    )
    db.execute(
        "UPDATE state SET value = ? WHERE key = ?",
        (value.replace(b'"seq":', b'"seq":9'), key),
    )
    db.close()
    bad = run_json("ledger", "verify", "-p", p, code=5)
    assert str(bad["reason"]).startswith("world state does not match the key history replayed")
    assert isinstance(bad["first_bad_block"], int)
    # A write that reads the edited row is refused as an integrity failure, not a refusal:
    # registering a clinician appends to the ~system log, whose head row was edited.
    run(
        "consortium", "add-member", "zoe", "--hospital", "HospitalA", "--role", "clinician", "-p", p
    )
    height = run_json("ledger", "verify", "-p", p, code=5)["height"]
    result = runner.invoke(app, ["enroll", "-p", p, "-w", "zoe"])
    assert result.exit_code == 5, result.output
    assert "does not hold what block" in result.output
    assert "Traceback" not in result.output
    assert run_json("ledger", "verify", "-p", p, code=5)["height"] == height  # nothing written
    # And no head is signed over a ledger that does not verify.
    result = runner.invoke(
        app, ["ledger", "head", "--out", str(consortium / "h.json"), "-p", p, "-w", "admin"]
    )
    assert result.exit_code == 5 and not (consortium / "h.json").exists()


def test_bad_head_files_are_input_errors(consortium: Path, tmp_path: Path) -> None:
    p = str(consortium)
    junk = tmp_path / "junk.json"
    junk.write_text("{}", encoding="utf-8")
    for name in (str(junk), str(tmp_path / "missing.json")):
        result = runner.invoke(app, ["ledger", "verify", "--against", name, "-p", p])
        assert result.exit_code == 6, result.output
        assert "Traceback" not in result.output
    assert (
        "is not a signed ledger head"
        in runner.invoke(app, ["ledger", "verify", "--against", str(junk), "-p", p]).output
    )
    # A head file whose content was edited after signing does not verify.
    good = tmp_path / "good.json"
    run_json("ledger", "head", "--out", str(good), "-p", p, "-w", "admin")
    data = json.loads(good.read_text(encoding="utf-8"))
    data["height"] -= 1
    good.write_text(json.dumps(data), encoding="utf-8")
    bad = run_json("ledger", "verify", "--against", str(good), "-p", p, code=5)
    assert str(bad["reason"]).endswith("cannot be trusted: its signature does not verify")


def test_kill_9_while_writing_a_head_leaves_the_old_file(consortium: Path, tmp_path: Path) -> None:
    p = str(consortium)
    head = tmp_path / "head.json"
    run_json("ledger", "head", "--out", str(head), "-p", p, "-w", "admin")
    before = head.read_bytes()
    env = {**os.environ, "EHRSHARE_FAULT_AT": "ledger.head.before_write", "COLUMNS": "200"}
    env.pop("EHRSHARE_PROFILE", None)
    cmd = [sys.executable, "-m", "ehrshare", "ledger", "head", "--out", str(head), "-p", p]
    done = subprocess.run([*cmd, "-w", "admin"], env=env, capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL
    assert head.read_bytes() == before  # nothing half-written
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".head.json")] == []
    env.pop("EHRSHARE_FAULT_AT")
    done = subprocess.run([*cmd, "-w", "admin"], env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert run_json("ledger", "verify", "--against", str(head), "-p", p)["valid"] is True


def test_a_missing_ordering_key_is_a_volume_problem(consortium: Path) -> None:
    p = str(consortium)
    run(
        "consortium", "add-member", "yan", "--hospital", "HospitalB", "--role", "clinician", "-p", p
    )
    (consortium / "ledger" / "orderer-key.pem").unlink()
    height = run_json("ledger", "verify", "-p", p)["height"]  # still verifiable
    result = runner.invoke(app, ["enroll", "-p", p, "-w", "yan"])
    assert result.exit_code == 3, result.output
    assert "ordering key" in result.output and "is missing" in result.output
    assert "Traceback" not in result.output
    assert run_json("ledger", "verify", "-p", p)["height"] == height


def test_a_missing_ledger_directory_is_a_volume_problem(consortium: Path, tmp_path: Path) -> None:
    p = str(consortium)
    shutil.rmtree(consortium / "ledger")
    for argv in (
        ["ledger", "verify", "-p", p],
        ["ledger", "head", "--out", str(tmp_path / "h.json"), "-p", p, "-w", "admin"],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 3, result.output
        assert "does not exist" in result.output and "Traceback" not in result.output
    assert not (consortium / "ledger").exists()  # nothing made in its place
    assert not (tmp_path / "h.json").exists()
