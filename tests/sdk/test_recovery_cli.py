"""'ehrshare consortium recover-member': kill -9 at each step leaves the old binding in force and
the next run completes; bad input is refused with its exit code and changes nothing; after the
rebinding the old wallet is refused by every command and the new one enrols and reads."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cli_world import state_digest

from cliproc import run_ehrshare
from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium
from ehrshare.wallet import Wallet

ALICE = "HospitalAMSP/alice"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice (enrolled, one record) and a second hospital's admin."""
    root = tmp_path_factory.mktemp("recovery") / "c"
    with Consortium.init(root) as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("admin-b", "HospitalB", "admin")
        with c.session(Wallet(root / "wallets" / "alice", use_env=False)) as alice:
            alice.enroll()
            alice.publish_type_keys()
            alice.put_record(lab_observation())
        with c.session("admin") as admin:
            admin.register()
    return root


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    return root


def recover(world: Path, admin: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ("consortium", "recover-member", ALICE, "--new-wallet", "alice-new", "-w", admin)
    return run_ehrshare(*args, "-p", str(world), "--json", fault=fault)


def records(world: Path, wallet: str) -> subprocess.CompletedProcess[str]:
    return run_ehrshare("record", "list", "-p", str(world), "-w", wallet, "--json")


@pytest.mark.parametrize(
    "fault", ["wallet.after_build", "recover.before_submit", "recover.after_submit"]
)
def test_kill_at_each_step_keeps_the_old_binding_and_the_next_run_completes(
    world: Path, fault: str
) -> None:
    killed = recover(world, "admin", fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The old binding is in force: the old wallet lists its record.
    assert records(world, "alice").returncode == 0
    first = recover(world, "admin")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["approved_by"] == ["HospitalAMSP"]
    assert records(world, "alice").returncode == 0
    # The second hospital's admin was killed too, before its approval committed.
    assert recover(world, "admin-b", "recover.before_submit").returncode == -signal.SIGKILL
    assert records(world, "alice").returncode == 0
    done = recover(world, "admin-b")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "done"
    # Running it again after it took effect reports it and changes nothing.
    again = recover(world, "admin")
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "done"

    old = records(world, "alice")
    assert old.returncode == 1, old.stderr
    assert f"of identity {ALICE} was revoked at" in old.stderr
    assert "Traceback" not in old.stderr
    enrol = run_ehrshare("enroll", "-p", str(world), "-w", "alice-new")
    assert enrol.returncode == 0, enrol.stderr
    new = records(world, "alice-new")
    assert new.returncode == 0 and len(json.loads(new.stdout)) == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("HospitalAMSP/zed", "--new-wallet", "zed-new", "-w", "admin"),
            1,
            "identity HospitalAMSP/zed is not registered",
        ),
        ((ALICE, "--new-wallet", "admin", "-w", "admin"), 3, "holds HospitalAMSP/admin, not"),
        (
            (ALICE, "--new-wallet", "x", "-w", "alice"),
            1,
            f"identity {ALICE} has role patient; recovery is approved by hospital admins",
        ),
        (
            (ALICE, "--new-wallet", "x", "-w", "admin", "--quorum", "1"),
            2,
            "greater than or equal to 2",
        ),
        ((ALICE, "--new-wallet", "x"), 2, "this command acts as someone"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    world: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    before = state_digest(world)
    result = run_ehrshare("consortium", "recover-member", *args, "-p", str(world))
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert state_digest(world) == before
