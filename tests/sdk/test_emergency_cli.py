"""'ehrshare emergency …': the whole break-glass path through the CLI (policy, request,
approvals, read, review), kill -9 at each step boundary of the write paths (nothing half-made
usable, the next run completes), and bad input refused with its exit code, no traceback and no
change."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cli_world import consortium_template, state_digest

from cliproc import run_ehrshare

ALICE = "HospitalAMSP/alice"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice (enrolled, one lab record), Adams (clinician of A, enrolled), admins of B and C."""
    root = tmp_path_factory.mktemp("emergency") / "c"
    members = (
        ("alice", "HospitalA", "patient"),
        ("adams", "HospitalA", "clinician"),
        ("admin-b", "HospitalB", "admin"),
        ("admin-c", "HospitalC", "admin"),
    )
    consortium_template(root, members, record_of="alice", register_admins=True)
    return root


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    return root


def ehrshare(world: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_ehrshare(*args, "-p", str(world), fault=fault, timeout=180)


def ok(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def policy_set(world: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ("emergency", "policy", "set", "--type", "lab", "--hours", "1", "-w", "alice")
    return ehrshare(world, *args, "--json", fault=fault)


def pregrants(world: Path) -> list[dict[str, object]]:
    listed = ok(ehrshare(world, "grant", "list", "-w", "alice", "--json"))
    assert isinstance(listed, dict)
    return [g for g in listed["grants"] if str(g["grantee"]).endswith("~emergency-1")]


def record_id(world: Path) -> str:
    records = ok(ehrshare(world, "record", "list", "-w", "alice", "--json"))
    assert isinstance(records, list)
    return str(records[0]["record_id"])


@pytest.mark.parametrize(
    "fault",
    [
        "emergency_policy.after_extract",
        "grant.after_deliver",
        "emergency_policy.after_commit",
        "grant.after_commit",
        "emergency_policy.after_grant",
    ],
)
def test_kill_at_each_step_of_policy_set_and_the_next_run_completes(
    world: Path, fault: str
) -> None:
    killed = policy_set(world, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Nothing half-made is usable: at most one active pre-grant, and the rerun completes.
    assert len(pregrants(world)) <= 1
    policy = ok(policy_set(world))
    assert isinstance(policy, dict) and policy["types"] == ["lab"]
    assert [g["state"] for g in pregrants(world)] == ["active"]
    shown = ok(ehrshare(world, "emergency", "policy", "show", ALICE, "-w", "adams", "--json"))
    assert isinstance(shown, dict) and shown["default"] is False


@pytest.mark.parametrize(
    "fault",
    [
        "emergency_policy.after_extract",
        "emergency_policy.after_commit",
        "emergency_policy.after_revoke",
    ],
)
def test_kill_at_each_step_of_rotation_and_a_rerun_finishes_it(world: Path, fault: str) -> None:
    ok(policy_set(world))
    killed = ehrshare(world, "emergency", "policy", "rotate", "-w", "alice", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shown = ok(ehrshare(world, "emergency", "policy", "show", "-w", "alice", "--json"))
    assert isinstance(shown, dict)
    if shown["identity"] == f"{ALICE}~emergency-1":
        # Killed before the new policy committed: nothing changed; rotate again.
        assert [g["state"] for g in pregrants(world)] == ["active"]
        ok(ehrshare(world, "emergency", "policy", "rotate", "-w", "alice", "--json"))
    else:
        # The policy moved; setting it again finishes the grants.
        ok(policy_set(world))
    listed = ok(ehrshare(world, "grant", "list", "-w", "alice", "--json"))
    assert isinstance(listed, dict)
    states = sorted((str(g["grantee"])[-1], str(g["state"])) for g in listed["grants"])
    assert states == [("1", "revoked"), ("2", "active")]


@pytest.mark.parametrize(
    ("step", "fault"),
    [
        ("request", "emergency_request.after_submit"),
        ("approve", "emergency_approve.before_submit"),
        ("approve", "emergency_approve.after_submit"),
        ("review", "emergency_review.after_submit"),
    ],
)
def test_kill_at_each_step_of_the_emergency_and_the_next_run_completes(
    world: Path, step: str, fault: str
) -> None:
    ok(policy_set(world))
    rid_record = record_id(world)
    request_args = ("emergency", "request", ALICE, "--reason", "unconscious", "-w", "adams")
    if step == "request":
        killed = ehrshare(world, *request_args, "--json", fault=fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # The request committed before the kill: the patient's review list is still empty.
        assert ok(ehrshare(world, "emergency", "review", "-w", "alice", "--json")) == []
    request = ok(ehrshare(world, *request_args, "--json"))
    assert isinstance(request, dict)
    rid = str(request["request_id"])
    for admin in ("admin-b", "admin-c"):
        if step == "approve" and admin == "admin-c":
            killed = ehrshare(world, "emergency", "approve", rid, "-w", admin, fault=fault)
            assert killed.returncode == -signal.SIGKILL, killed.stderr
        ok(ehrshare(world, "emergency", "approve", rid, "-w", admin, "--json"))
    # Approving again is safe and changes nothing.
    again = ok(ehrshare(world, "emergency", "approve", rid, "-w", "admin-b", "--json"))
    assert isinstance(again, dict) and again["approved_by"] == [
        "HospitalBMSP/admin-b",
        "HospitalCMSP/admin-c",
    ]
    read = ehrshare(world, "emergency", "read", rid, rid_record, "-w", "adams")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["resourceType"] == "Observation"
    pending = ok(ehrshare(world, "emergency", "review", "-w", "alice", "--json"))
    assert isinstance(pending, list) and [p["request_id"] for p in pending] == [rid]
    ack = ("emergency", "review", "--ack", rid, "-w", "alice", "--json")
    if step == "review":
        killed = ehrshare(world, *ack, fault=fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = ok(ehrshare(world, *ack))
    assert isinstance(done, dict) and done["review"] == "acknowledged"
    assert ok(ehrshare(world, "emergency", "review", "-w", "alice", "--json")) == []


def test_short_by_one_approval_read_is_denied_with_exit_1_and_logged(world: Path) -> None:
    ok(policy_set(world))
    request = ok(
        ehrshare(
            world, "emergency", "request", ALICE, "--reason", "stroke", "-w", "adams", "--json"
        )
    )
    assert isinstance(request, dict)
    rid = str(request["request_id"])
    ok(ehrshare(world, "emergency", "approve", rid, "-w", "admin-b", "--json"))
    denied = ehrshare(world, "emergency", "read", rid, record_id(world), "-w", "adams")
    assert denied.returncode == 1, denied.stderr
    assert f"emergency {rid} has 1 of the 2 approvals it needs (logged as a-" in denied.stderr
    assert "Traceback" not in denied.stderr
    own = ehrshare(world, "emergency", "approve", rid, "-w", "admin")
    assert own.returncode == 1
    assert "hospital HospitalAMSP is the requester's" in own.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("policy", "set", "--type", "lab", "--hours", "0", "-w", "alice"), 2, "--hours 0 is"),
        (("policy", "set", "--type", "lab", "--approvals", "0", "-w", "alice"), 2, "--approvals"),
        (("policy", "set", "--type", "x-ray", "-w", "alice"), 6, "record type 'x-ray'"),
        (
            ("policy", "set", "--type", "lab", "-w", "adams"),
            1,
            "GetEmergencyPolicy was rejected: identity HospitalAMSP/adams is not a patient",
        ),
        (("request", ALICE, "--reason", "", "-w", "adams"), 2, "--reason: give 1 to 500"),
        (
            ("request", ALICE, "--reason", "x", "-w", "alice"),
            1,
            f"identity {ALICE} has role patient; this needs role clinician",
        ),
        (
            ("request", "HospitalAMSP/adams", "--reason", "x", "-w", "adams"),
            1,
            "identity HospitalAMSP/adams is not a patient",
        ),
        (("approve", "e-1", "-w", "admin-b"), 2, "'e-1' is not an emergency request id"),
        (("approve", "e-" + "0" * 32, "-w", "admin-b"), 1, "does not exist"),
        (("review", "--note", "x", "-w", "alice"), 2, "--note goes with --ack"),
        (("policy", "rotate", "-w", "alice"), 1, f"{ALICE} has no emergency policy to rotate"),
        (("request", ALICE, "--reason", "x"), 2, "this command acts as someone"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    world: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    before = state_digest(world)
    result = ehrshare(world, "emergency", *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert state_digest(world) == before
