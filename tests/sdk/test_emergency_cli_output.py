"""What 'ehrshare emergency request|approve|show|review --ack' print, pinned word for word
(human and --json) with a stand-in session, so a change of their shared body cannot change
their output. The real path through a consortium is tests/sdk/test_emergency_cli.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.commands import emergency

RID = "e-" + "ab" * 16


@dataclass
class _Request:
    request_id: str = RID
    patient: str = "HospitalAMSP/alice"
    requester: str = "HospitalBMSP/adams"
    reason: str = "unconscious"
    status: str = "pending"
    approvals_needed: int = 2
    approved_by: tuple[str, ...] = ()
    expires_at: int = 0
    review: str = "pending"


@dataclass
class _Session:
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def _log(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def register(self) -> None:
        self._log("register")

    def emergency_request(self, patient: str, reason: str) -> _Request:
        self._log("emergency_request", patient, reason)
        return _Request(patient=patient, reason=reason)

    def approve_emergency(self, rid: str) -> _Request:
        self._log("approve_emergency", rid)
        return _Request(
            request_id=rid,
            status="approved",
            approved_by=("HospitalAMSP/admin", "HospitalCMSP/admin"),
            expires_at=1767323045,
        )

    def emergency(self, rid: str) -> _Request:
        self._log("emergency", rid)
        return _Request(request_id=rid, approved_by=("HospitalAMSP/admin",))

    def review_emergency(self, rid: str, note: str) -> _Request:
        self._log("review_emergency", rid, note)
        return _Request(
            request_id=rid,
            status="approved",
            approved_by=("HospitalAMSP/admin", "HospitalCMSP/admin"),
            expires_at=1767323045,
            review="acknowledged",
        )


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> _Session:
    fake = _Session()

    @contextlib.contextmanager
    def open_session(profile: str, wallet: str) -> Iterator[_Session]:
        assert (profile, wallet) == ("", "w")
        yield fake

    monkeypatch.setattr(emergency, "open_session", open_session)
    return fake


CASES = [
    (
        ("request", "HospitalAMSP/alice", "--reason", "unconscious"),
        [("emergency_request", ("HospitalAMSP/alice", "unconscious"))],
        RID + "\n",
        "✓ requested; it needs 2 hospital admins' approvals ('ehrshare emergency approve "
        + RID
        + "')\n",
    ),
    (
        ("approve", RID),
        [("register", ()), ("approve_emergency", (RID,))],
        f"{RID}: HospitalBMSP/adams for HospitalAMSP/alice: in force until "
        "2026-01-02 03:04:05 UTC (2 of 2 approvals; review pending)\n",
        "",
    ),
    (
        ("show", RID),
        [("emergency", (RID,))],
        f"{RID}: HospitalBMSP/adams for HospitalAMSP/alice: pending (1 of 2 approvals)\n",
        "",
    ),
    (
        ("review", "--ack", RID, "--note", "seen"),
        [("review_emergency", (RID, "seen"))],
        f"{RID}: HospitalBMSP/adams for HospitalAMSP/alice: in force until "
        "2026-01-02 03:04:05 UTC (2 of 2 approvals; review acknowledged)\n",
        "",
    ),
]


@pytest.mark.parametrize(("args", "calls", "stdout", "stderr"), CASES)
def test_emergency_request_commands_print_the_request(
    session: _Session,
    args: tuple[str, ...],
    calls: list[tuple[str, tuple[Any, ...]]],
    stdout: str,
    stderr: str,
) -> None:
    result = CliRunner().invoke(app, ["emergency", *args, "-w", "w"], terminal_width=40)
    assert result.exit_code == 0, result.output
    assert session.calls == calls
    assert result.stdout == stdout
    assert result.stderr == stderr


@pytest.mark.parametrize(("args", "calls", "stdout", "stderr"), CASES)
def test_emergency_request_commands_print_the_request_as_json(
    session: _Session,
    args: tuple[str, ...],
    calls: list[tuple[str, tuple[Any, ...]]],
    stdout: str,
    stderr: str,
) -> None:
    del stdout, stderr
    result = CliRunner().invoke(app, ["emergency", *args, "-w", "w", "--json"])
    assert result.exit_code == 0, result.output
    assert session.calls == calls
    shown = json.loads(result.stdout)
    assert shown["request_id"] == RID
    assert set(shown) == {
        "request_id",
        "patient",
        "requester",
        "reason",
        "status",
        "approvals_needed",
        "approved_by",
        "expires_at",
        "review",
    }
    assert result.stderr == ""
