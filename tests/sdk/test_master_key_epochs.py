"""A new master key never orphans a record (issue 12).

A fresh DKG on a consortium with records is refused unless asked for on purpose; with it, every
record carries the epoch of the master key it was sealed under (stamped by the chaincode),
wallets keep the identity key of every epoch, and reads pick the key of the record's epoch.
A grant covers the records of its own epoch: one made before the new key keeps serving the old
records, one made after serves the new ones, and reading an old record under a new grant only
is refused with the reason (docs/operations.md §3a).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.ledger.errors import LedgerError
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.services.kgc import open_dkg_session, run_local_dkg
from ehrshare.session import AccessDenied, RequestRejected

DAY = dt.timedelta(days=1)
HOSPITALS = ("HospitalA", "HospitalB", "HospitalC")
ROSTER = [f"{h}MSP/kgc{i}" for i, h in enumerate(HOSPITALS, start=1)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def consortium(tmp_path: Path, clock: ManualClock) -> Iterator[Consortium]:
    c = Consortium.init(tmp_path / "c", hospitals=HOSPITALS, threshold=2, clock=clock)
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("adams", "HospitalA", "clinician"),
        ("baker", "HospitalB", "clinician"),
        ("cole", "HospitalC", "clinician"),
    ):
        c.add_member(name, hospital, role)
    yield c
    c.close()


def _enrol(c: Consortium, *names: str) -> None:
    for name in names:
        with c.session(name) as s:
            s.enroll()
            s.publish_type_keys()


def _ibe(c: Consortium, name: str) -> str:
    with c.session(name) as s:
        return s.ibe_id


def _put(c: Consortium) -> str:
    with c.session("adams") as adams:
        return adams.put_record(lab_observation(), patient=_ibe(c, "alice")).record_id


def _reads(c: Consortium, name: str, record_id: str) -> bool:
    with c.session(name) as s:
        return bool(s.read_record(record_id).status == "final")  # type: ignore[attr-defined]


def _new_master_key(c: Consortium, clock: ManualClock) -> None:
    def sleep(seconds: float) -> None:
        clock.advance(1)

    with c.session(ADMIN_WALLET) as admin:
        run_local_dkg(
            c.kgc_nodes,
            nonce=new_session_nonce(),
            admin=admin.contract,
            threshold=2,
            phase_timeout_s=5,
            poll=0.0,
            sleep=sleep,
            now=lambda: clock.seconds,
            new_master_key=True,
        )


def test_without_the_flag_a_new_master_key_is_refused_naming_reshare_and_the_flag(
    consortium: Consortium,
) -> None:
    _enrol(consortium, "alice", "adams")
    old = _put(consortium)
    before = consortium.dkg_result()
    with consortium.session(ADMIN_WALLET) as admin, pytest.raises(LedgerError) as info:
        open_dkg_session(admin.contract, nonce=new_session_nonce(), roster=ROSTER, threshold=2)
    assert "'ehrshare kgc reshare'" in info.value.message
    assert "'ehrshare kgc dkg open --new-master-key'" in info.value.message
    assert consortium.dkg_result() == before
    assert _reads(consortium, "alice", old)


def test_old_and_new_records_read_for_owner_and_grantees_after_a_new_master_key(
    consortium: Consortium, clock: ManualClock, tmp_path: Path
) -> None:
    c = consortium
    _enrol(c, "alice", "adams", "baker", "cole")
    old = [_put(c) for _ in range(2)]
    with c.session("alice") as alice:
        old_epoch = alice.epoch
        before_grant = alice.grant(_ibe(c, "baker"), "lab", expires=DAY)
    with c.session("adams") as adams:
        assert adams._call("GetRecord", old[0])["epoch"] == old_epoch
    wallet_dir = c.profile.wallet("alice").directory
    backup = tmp_path / "alice-backup"
    shutil.copytree(wallet_dir, backup)
    assert sorted(p.name for p in backup.glob("ibe*.key")) == [
        "ibe-" + old_epoch + ".key",
        "ibe.key",
    ]

    _new_master_key(c, clock)
    with c.session("alice") as alice:
        new_epoch = alice.epoch
    assert new_epoch != old_epoch
    # Before she enrols again, alice still reads her old records with the key of their epoch,
    # and nobody can seal a new record to her old type key.
    assert _reads(c, "alice", old[0])
    with pytest.raises(RequestRejected, match=r"is of an earlier master key .*must enrol again"):
        _put(c)

    _enrol(c, "alice", "adams", "baker")
    # A grant to someone whose type key is still of the old master key would hand them a
    # capsule none of their keys of the new epoch opens: refused until they enrol again.
    with c.session("alice") as alice, pytest.raises(RequestRejected, match="must enrol again"):
        alice.grant(_ibe(c, "cole"), "lab", expires=DAY)
    _enrol(c, "cole")
    new = _put(c)
    with c.session("adams") as adams:
        assert adams._call("GetRecord", new)["epoch"] == new_epoch
    assert sorted(p.name for p in wallet_dir.glob("ibe*.key")) == sorted(
        ["ibe.key", f"ibe-{old_epoch}.key", f"ibe-{new_epoch}.key"]
    )
    # The owner reads both.
    for ref in (*old, new):
        assert _reads(c, "alice", ref)
    # The grant made before the new key keeps serving the old records, not the new one.
    for ref in old:
        assert _reads(c, "baker", ref)
    with pytest.raises(AccessDenied, match=f"grant {before_grant.grant_id} was made under"):
        _reads(c, "baker", new)
    # A grant made after the new key serves the new records; with both grants baker reads all.
    with c.session("alice") as alice:
        alice.grant(_ibe(c, "baker"), "lab", expires=DAY)
        alice.grant(_ibe(c, "cole"), "lab", expires=DAY)
    for ref in (*old, new):
        assert _reads(c, "baker", ref)
    # A grant of the new epoch alone does not cover old records: refused, with the reason.
    assert _reads(c, "cole", new)
    with pytest.raises(AccessDenied, match="a grant covers only records of its own master key"):
        _reads(c, "cole", old[0])

    # A wallet backup from before the new key still reads the old records (with and without
    # the epoch files newer wallets keep).
    shutil.rmtree(wallet_dir)
    shutil.copytree(backup, wallet_dir)
    assert _reads(c, "alice", old[1])
    (wallet_dir / f"ibe-{old_epoch}.key").unlink()
    assert _reads(c, "alice", old[1])
    # Enrolling that legacy wallet keeps its old key (epoch unknown to it) beside the new one.
    _enrol(c, "alice")
    names = sorted(p.name for p in wallet_dir.glob("ibe*.key"))
    assert len(names) == 3 and f"ibe-{new_epoch}.key" in names
    assert any(n.startswith("ibe-earlier-") for n in names)
    for ref in (*old, new):
        assert _reads(c, "alice", ref)


def test_enrolling_again_under_the_same_key_adds_no_file(consortium: Consortium) -> None:
    _enrol(consortium, "alice")
    wallet_dir = consortium.profile.wallet("alice").directory
    before = {p.name: p.read_bytes() for p in wallet_dir.glob("ibe*.key")}
    _enrol(consortium, "alice")
    assert {p.name: p.read_bytes() for p in wallet_dir.glob("ibe*.key")} == before


def test_cli_refuses_a_new_master_key_with_records_exit_1_and_opens_it_with_the_flag(
    consortium: Consortium,
) -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app

    _enrol(consortium, "alice", "adams")
    _put(consortium)
    before = consortium.dkg_result()
    root = str(consortium.directory)
    args = ["kgc", "dkg", "open", "--threshold", "2", "-p", root, "-w", "admin"]
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert refused.exit_code == 1, refused.output
    assert "Traceback" not in refused.output
    assert "'ehrshare kgc reshare'" in refused.output
    assert "--new-master-key" in refused.output
    assert consortium.dkg_result() == before
    opened = CliRunner().invoke(app, [*args, "--new-master-key", "--json"])
    assert opened.exit_code == 0, opened.output
    assert '"phase": "deal"' in opened.stdout


@pytest.fixture(scope="module")
def after_new_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A consortium (real clock) with one record of alice's under the first master key, then a
    new master key alice has not enrolled under yet: (directory, record id, old epoch)."""
    root = tmp_path_factory.mktemp("epoch-faults") / "c"
    with Consortium.init(root, hospitals=HOSPITALS, threshold=2) as c:
        c.add_member("alice", "HospitalA", "patient")
        _enrol(c, "alice")
        with c.session("alice") as alice:
            record = alice.put_record(lab_observation()).record_id
            old_epoch = alice.epoch
        with c.session(ADMIN_WALLET) as admin:
            run_local_dkg(
                c.kgc_nodes,
                nonce=new_session_nonce(),
                admin=admin.contract,
                threshold=2,
                poll=0.05,
                new_master_key=True,
            )
    return root, record, old_epoch


@pytest.mark.parametrize(
    "step",
    [
        "enroll.after_extract",
        "wallet.after_build",
        "wallet.after_stage",
        "wallet.after_retire",
        "wallet.after_swap",
        "enroll.after_save",
    ],
)
def test_enrol_under_a_new_key_killed_at_each_step_keeps_the_old_key(
    after_new_key: tuple[Path, str, str], tmp_path: Path, step: str
) -> None:
    """kill -9 of 'ehrshare enroll' at each step of keeping the new identity key next to the
    old one: the wallet is whole, the old record still reads, and the next enroll succeeds."""
    import os
    import signal
    import subprocess
    import sys

    from ehrshare.faults import FAULT_ENV
    from ehrshare.wallet import PASSPHRASE_ENV, Wallet

    template, record, old_epoch = after_new_key
    root = tmp_path / "c"
    shutil.copytree(template, root)
    wallet_dir = root / "wallets" / "alice"
    old_key = (wallet_dir / f"ibe-{old_epoch}.key").read_bytes()

    def enroll(fault: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, PASSPHRASE_ENV)}
        env.update({"COLUMNS": "200", "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": ""})
        if fault:
            env[FAULT_ENV] = fault
        return subprocess.run(
            [sys.executable, "-m", "ehrshare", "enroll", "-p", str(root), "-w", "alice"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    died = enroll(step)
    assert died.returncode == -signal.SIGKILL, died.stderr
    Wallet(wallet_dir, use_env=False).load_identity()  # finishes or undoes the swap
    assert (wallet_dir / f"ibe-{old_epoch}.key").read_bytes() == old_key
    with Consortium.open(root) as c:
        assert _reads(c, "alice", record)
    again = enroll()
    assert again.returncode == 0, again.stderr
    with Consortium.open(root) as c:
        with c.session("alice") as alice:
            new_epoch = alice.epoch
        assert _reads(c, "alice", record)
    assert sorted(p.name for p in wallet_dir.glob("ibe*.key")) == sorted(
        ["ibe.key", f"ibe-{old_epoch}.key", f"ibe-{new_epoch}.key"]
    )


@pytest.mark.parametrize(
    ("damage", "code", "text"),
    [
        ("delete", 3, "holds no identity key of it; read it with a wallet backup"),
        ("truncate", 3, "(altered?); restore the wallet from its backup"),
    ],
)
def test_a_missing_or_damaged_old_key_is_a_clear_error_and_new_records_still_read(
    after_new_key: tuple[Path, str, str], tmp_path: Path, damage: str, code: int, text: str
) -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app

    template, record, old_epoch = after_new_key
    root = tmp_path / "c"
    shutil.copytree(template, root)
    with Consortium.open(root) as c:
        _enrol(c, "alice")
        with c.session("alice") as alice:
            new = alice.put_record(lab_observation()).record_id
    old_file = root / "wallets" / "alice" / f"ibe-{old_epoch}.key"
    if damage == "delete":
        old_file.unlink()
    else:
        old_file.write_bytes(old_file.read_bytes()[:-7])
    args = ["record", "get", record, "-p", str(root), "-w", "alice"]
    got = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert got.exit_code == code, got.output
    assert text in got.output.replace("\n", " ")
    assert "Traceback" not in got.output
    got = CliRunner().invoke(app, ["record", "get", new, "-p", str(root), "-w", "alice"])
    assert got.exit_code == 0, got.output


def test_a_rotated_type_moves_to_a_next_epoch_under_a_new_master_key(
    consortium: Consortium, clock: ManualClock
) -> None:
    # A type rotated under the old master key: its epoch key was proven under the old mpk.
    c = consortium
    _enrol(c, "alice", "adams")
    with c.session("alice") as alice:
        assert alice.rotate_type_key("lab").type_epoch == 1
    _new_master_key(c, clock)
    with pytest.raises(RequestRejected, match=r"is of an earlier master key .*must enrol again"):
        _put(c)
    _enrol(c, "alice", "adams")  # publishes the base key and moves lab to epoch 2
    with c.session("alice") as alice:
        state = alice.chain.get_type_key_epoch(alice.ibe_id, alice.labels.opaque("lab"))
        assert (state.type_epoch, state.epoch) == (2, alice.epoch)
    new = _put(c)
    assert _reads(c, "alice", new)
