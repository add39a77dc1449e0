"""The demo story as an end-to-end test, on the embedded backend and with real Kubo storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import DemoStep, run_demo
from ehrshare.network.kubo import KuboDaemon

STORY_CHECKS = {
    "dkg_all_qualified",
    "members_enrolled",
    "records_typed",
    "grant_revoked",
    "grant_at_b_proxy",
    "forward_at_c_proxy",
    "hop1_read_lab",
    "hop2_read_lab",
    "imaging_denied",
    "denied_after_revoke",
    "forward_denied_after_revoke",
    "audit_valid",
    "no_plaintext_at_rest",
    "tamper_detected",
    "careful_edit_detected",
    "truncation_detected",
}


def test_demo_story_holds_on_the_embedded_backend() -> None:
    seen: list[DemoStep] = []
    result = run_demo(on_step=seen.append)
    assert set(result.checks) == STORY_CHECKS
    failed = {k for k, v in result.checks.items() if not v}
    assert not failed
    assert [s.number for s in seen] == list(range(1, 15))
    assert all(s.ok for s in seen)
    actions = [e["action"] for e in result.audit]
    # Hop 1 read: B's proxy; hop 2 read: B's proxy, then C's proxy.
    assert actions.count("ReportReencryption") == 3
    reports = [e["detail"] for e in result.audit if e["action"] == "ReportReencryption"]
    assert [(r["proxy"], r["applied"]) for r in reports] == [
        ("HospitalBMSP/proxy", 1),
        ("HospitalBMSP/proxy", 1),
        ("HospitalCMSP/proxy", 2),
    ]
    assert actions.count("RevokeAccess") == 1
    assert [e["outcome"] for e in result.audit if e["action"] == "AccessDecision"] == [
        "allow",
        "allow",
        "deny",
        "deny",
        "deny",
    ]


def test_demo_cli_json_summary() -> None:
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert set(summary["checks"]) == STORY_CHECKS
    assert len(summary["steps"]) == 14
    assert summary["backend"] == {
        "ledger": "embedded",
        "storage": "embedded",
        "services": "in-process",
    }


def test_demo_summary_counts_steps_and_checks() -> None:
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # Every step checks what it claims: as many checks as named, and each step has one.
    assert f"14 steps, all {len(STORY_CHECKS)} checks held" in result.stdout
    assert len(STORY_CHECKS) >= 13


def test_demo_on_fabric_without_the_binaries_says_make_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(tmp_path / "no-fabric"))
    result = CliRunner().invoke(app, ["demo", "--backend", "fabric"])
    assert result.exit_code == 3
    assert "make tools" in result.output


@pytest.mark.ipfs
@pytest.mark.slow
def test_demo_story_holds_with_kubo_storage(kubo: KuboDaemon) -> None:
    result = run_demo(storage="kubo", kubo_url=kubo.api_url)
    assert result.ok, result.to_dict()
    assert set(result.checks) == STORY_CHECKS
