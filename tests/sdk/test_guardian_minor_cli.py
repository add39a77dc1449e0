"""'ehrshare guardian propose-for-minor|approve' and a guardian's logged audit reads: kill -9 at
each step leaves nothing half-made usable and the next run completes; bad input is refused with
its exit code, no traceback and no change; the guardian acts only from the second other
hospital's approval, and each of its audit reads is on the patient's log with both identities."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cli_world import consortium_template, state_digest

from cliproc import run_ehrshare
from ehrshare.provisioning import Consortium

ALICE, GWEN = "HospitalAMSP/alice", "HospitalAMSP/gwen"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice (a minor: enrolled, one record, a grant to baker), her guardian-to-be gwen, and
    admins of hospitals B and C."""
    root = tmp_path_factory.mktemp("minor") / "c"
    members = (
        ("alice", "HospitalA", "patient"),
        ("gwen", "HospitalA", "guardian"),
        ("baker", "HospitalB", "clinician"),
        ("admin-b", "HospitalB", "admin"),
        ("admin-c", "HospitalC", "admin"),
    )
    consortium_template(root, members, record_of="alice", register_admins=True)
    with Consortium.open(root) as c, c.session("alice") as alice:
        alice.grant("HospitalBMSP/baker", "lab", expires=dt.timedelta(days=30))
    return root


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    return root


def ehrshare(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_ehrshare(*args, fault=fault)


def propose(world: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ("guardian", "propose-for-minor", ALICE, GWEN, "--days", "30", "-w", "admin")
    return ehrshare(*args, "-p", str(world), "--json", fault=fault)


def approve(world: Path, admin: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ("guardian", "approve", ALICE, GWEN, "-w", admin, "-p", str(world), "--json")
    return ehrshare(*args, fault=fault)


def guardian_reads(world: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ("audit", "show", "--patient", ALICE, "-w", "gwen", "-p", str(world), "--json")
    return ehrshare(*args, fault=fault)


def not_acting(world: Path) -> None:
    """The guardian acts for nobody yet: its audit read is refused and changes nothing."""
    # A read first: the first open after a kill -9 may checkpoint the ledger's journal.
    shown = ehrshare("guardian", "show", ALICE, GWEN, "-w", "admin", "-p", str(world), "--json")
    assert (shown.returncode == 0 and json.loads(shown.stdout)["state"] == "proposed") or (
        shown.returncode == 1 and "is not a guardian of" in shown.stderr
    ), shown.stderr
    before = state_digest(world)
    refused = guardian_reads(world)
    assert refused.returncode == 1, refused.stderr
    assert f"identity {GWEN} is not a guardian of {ALICE}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert state_digest(world) == before


@pytest.mark.parametrize(
    "fault",
    [
        "minor_guardian.before_propose",
        "minor_guardian.after_propose",
        "minor_guardian.before_approve",
        "minor_guardian.after_approve",
    ],
)
def test_kill_at_each_step_leaves_it_not_acting_and_the_next_run_completes(
    world: Path, fault: str
) -> None:
    first = propose(world, fault if "propose" in fault else None)
    if "propose" in fault:
        assert first.returncode == -signal.SIGKILL, first.stderr
        not_acting(world)
        first = propose(world)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["state"] == "proposed"
    again = propose(world)  # a retry of a committed proposal returns it
    assert again.returncode == 0 and json.loads(again.stdout)["approved_by"] == []
    b = approve(world, "admin-b", fault if "approve" in fault else None)
    if "approve" in fault:
        assert b.returncode == -signal.SIGKILL, b.stderr
        not_acting(world)
        b = approve(world, "admin-b")
    assert b.returncode == 0, b.stderr
    assert json.loads(b.stdout)["approved_by"] == ["HospitalBMSP"]
    not_acting(world)
    c = approve(world, "admin-c", fault if "approve" in fault else None)
    if "approve" in fault:
        assert c.returncode == -signal.SIGKILL, c.stderr
        c = approve(world, "admin-c")
    assert c.returncode == 0, c.stderr
    done = json.loads(c.stdout)
    assert (done["state"], done["approved_by"]) == ("active", ["HospitalBMSP", "HospitalCMSP"])
    read = guardian_reads(world)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["entries"][-1]["action"] == "AuditRead"


def test_a_minors_guardian_revokes_and_each_audit_read_is_logged(world: Path) -> None:
    p = str(world)
    assert propose(world).returncode == 0
    assert approve(world, "admin-b").returncode == 0
    assert approve(world, "admin-c").returncode == 0
    grants = ehrshare("grant", "list", "-w", "alice", "-p", p, "--json")
    grant_id = json.loads(grants.stdout)["grants"][0]["grant_id"]
    revoked = ehrshare("revoke", grant_id, "-w", "gwen", "-p", p)
    assert revoked.returncode == 0, revoked.stderr
    first = json.loads(guardian_reads(world).stdout)["entries"]
    second = json.loads(guardian_reads(world).stdout)["entries"]
    reads = [e for e in second if e["action"] == "AuditRead"]
    assert len(reads) == 2
    assert all((e["actor"], e["detail"]["on_behalf_of"]) == (GWEN, ALICE) for e in reads)
    assert second[: len(first)] == first  # the second read shows the first, then itself
    # The patient sees the reads in her own log, which she reads without logging.
    own = ehrshare("audit", "show", "-w", "alice", "-p", p, "--json")
    assert [e["action"] for e in json.loads(own.stdout)["entries"]][-1] == "AuditRead"
    verified = ehrshare("audit", "verify", "--patient", ALICE, "-w", "gwen", "-p", p)
    assert verified.returncode == 0, verified.stderr
    own = json.loads(ehrshare("audit", "show", "-w", "alice", "-p", p, "--json").stdout)
    assert [e["action"] for e in own["entries"]].count("AuditRead") == 3


@pytest.mark.parametrize("fault", ["guardian.before_audit_read", "guardian.after_audit_read"])
def test_kill_around_a_guardian_read_never_shows_an_unlogged_read(world: Path, fault: str) -> None:
    assert propose(world).returncode == 0
    assert approve(world, "admin-b").returncode == 0
    assert approve(world, "admin-c").returncode == 0
    killed = guardian_reads(world, fault)
    assert killed.returncode == -signal.SIGKILL and killed.stdout == ""
    own = json.loads(ehrshare("audit", "show", "-w", "alice", "-p", str(world), "--json").stdout)
    logged = [e["action"] for e in own["entries"]].count("AuditRead")
    assert logged == (1 if fault == "guardian.after_audit_read" else 0)
    read = guardian_reads(world)
    assert read.returncode == 0, read.stderr
    assert [e["action"] for e in json.loads(read.stdout)["entries"]].count("AuditRead") == (
        logged + 1
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("propose-for-minor", ALICE, GWEN, "--days", "30", "-w", "admin-b"),
            1,
            f"identity HospitalBMSP/admin-b is not an admin of HospitalAMSP, which registered "
            f"{ALICE}",
        ),
        (
            ("propose-for-minor", ALICE, GWEN, "--days", "30", "-w", "baker"),
            1,
            "has role clinician; this needs role admin",
        ),
        (
            ("propose-for-minor", ALICE, "HospitalBMSP/baker", "--days", "30", "-w", "admin"),
            1,
            "identity HospitalBMSP/baker has role clinician, not guardian",
        ),
        (
            ("propose-for-minor", ALICE, GWEN, "--days", "-1", "-w", "admin"),
            2,
            "--days -1 is out of range",
        ),
        (
            ("propose-for-minor", ALICE, GWEN, "--days", "3", "--actions", "read", "-w", "admin"),
            2,
            "--actions 'read'",
        ),
        (
            ("approve", ALICE, GWEN, "-w", "admin-b"),
            1,
            f"no guardianship of {GWEN} for {ALICE} was proposed",
        ),
        (("approve", ALICE, GWEN, "-w", "baker"), 1, "has role clinician; this needs role admin"),
        (("approve", ALICE, GWEN), 2, "this command acts as someone"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    world: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    before = state_digest(world)
    result = ehrshare("guardian", *args, "-p", str(world))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert state_digest(world) == before


def test_a_guardian_reads_a_records_log_under_a_logged_read_of_its_patient(world: Path) -> None:
    p = str(world)
    assert propose(world).returncode == 0
    assert approve(world, "admin-b").returncode == 0
    assert approve(world, "admin-c").returncode == 0
    listed = ehrshare("record", "list", "-w", "alice", "-p", p, "--json")
    record = json.loads(listed.stdout)[0]["record_id"]
    before = state_digest(world)
    unnamed = ehrshare("audit", "show", "--record", record, "-w", "gwen", "-p", p)
    assert unnamed.returncode == 1 and "as a guardian, name the patient" in unnamed.stderr
    assert "Traceback" not in unnamed.stderr
    assert state_digest(world) == before
    named = ehrshare(
        "audit", "show", "--patient", ALICE, "--record", record, "-w", "gwen", "-p", p, "--json"
    )
    assert named.returncode == 0, named.stderr
    entries = json.loads(named.stdout)["entries"]
    assert entries and all(e["record_id"] == record for e in entries)
    own = json.loads(ehrshare("audit", "show", "-w", "alice", "-p", p, "--json").stdout)
    assert own["entries"][-1]["action"] == "AuditRead"
