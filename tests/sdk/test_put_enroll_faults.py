"""kill -9 at each step of 'record put' and 'enroll', and 'store check'/'store gc': nothing
committed is lost, nothing half-made is usable, the next attempt succeeds."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cliproc import run_ehrshare
from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect
from ehrshare.wallet import Wallet

runner = CliRunner()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice (enrolled, one record) and Bob (a patient not yet enrolled)."""
    root = tmp_path_factory.mktemp("faults") / "c"
    with Consortium.init(root) as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("bob", "HospitalB", "patient")
        with c.session(Wallet(root / "wallets" / "alice", use_env=False)) as alice:
            alice.enroll()
            alice.publish_type_keys()
            alice.put_record(lab_observation())
    (root.parent / "obs.json").write_text(json.dumps(lab_observation(7.0)), encoding="utf-8")
    return root


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    shutil.copy(template.parent / "obs.json", tmp_path / "obs.json")
    return root


def store_json(world: Path, *args: str, code: int) -> dict[str, object]:
    result = runner.invoke(app, ["store", *args, "-p", str(world), "--json"])
    assert result.exit_code == code, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def put(world: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    obs = str(world.parent / "obs.json")
    return run_ehrshare("record", "put", obs, "-p", str(world), "-w", "alice", fault=fault)


def readable_records(world: Path) -> int:
    with connect(world, Wallet(world / "wallets" / "alice", use_env=False)) as alice:
        refs = alice.list_records()
        for ref in refs:
            assert alice.read_record(ref).status == "final"  # type: ignore[attr-defined]
        return len(refs)


def test_put_killed_after_the_store_write_leaves_an_orphan_gc_removes(world: Path) -> None:
    assert store_json(world, "check", code=0)["clean"] is True
    died = put(world, fault="put.after_store")
    assert died.returncode == -signal.SIGKILL
    assert readable_records(world) == 1  # nothing registered: not a half-made record

    report = store_json(world, "check", code=5)
    orphans = report["orphans"]
    assert isinstance(orphans, list) and len(orphans) == 1
    assert report["missing"] == [] and report["altered"] == []
    orphan = orphans[0]["cid"]

    # The default grace period (1 h) covers a put in flight: a young orphan stays.
    assert store_json(world, "gc", code=0)["removed"] == []
    dry = store_json(world, "gc", "--older-than", "0", "--dry-run", code=0)
    assert dry["removed"] == [orphan]
    after_dry = store_json(world, "check", code=5)["orphans"]
    assert [o["cid"] for o in after_dry] == [orphan]  # type: ignore[attr-defined]  # kept
    assert store_json(world, "gc", "--older-than", "0", code=0)["removed"] == [orphan]

    assert store_json(world, "check", code=0)["clean"] is True
    assert readable_records(world) == 1  # gc kept every committed record's ciphertext
    assert put(world).returncode == 0  # the next attempt succeeds
    assert readable_records(world) == 2
    assert store_json(world, "check", code=0)["clean"] is True


def test_put_killed_after_registering_keeps_the_record(world: Path) -> None:
    died = put(world, fault="put.after_register")
    assert died.returncode == -signal.SIGKILL
    assert store_json(world, "check", code=0)["clean"] is True
    assert readable_records(world) == 2  # committed, and its ciphertext is there
    assert store_json(world, "gc", "--older-than", "0", code=0)["removed"] == []
    assert readable_records(world) == 2


def _only_blob(world: Path) -> Path:
    blobs = [p for p in (world / "store" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1
    return blobs[0]


def test_check_reports_altered_and_missing_ciphertexts(world: Path) -> None:
    blob = _only_blob(world)
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # a hand edit
    report = store_json(world, "check", code=5)
    altered = report["altered"]
    assert isinstance(altered, list) and len(altered) == 1
    assert altered[0]["cid"] == blob.name and "integrity check failed" in altered[0]["detail"]
    # Referenced, so gc never removes it, whatever its age.
    assert store_json(world, "gc", "--older-than", "0", code=0)["removed"] == []
    assert blob.exists()

    blob.unlink()
    report = store_json(world, "check", code=5)
    missing = report["missing"]
    assert isinstance(missing, list) and [m["cid"] for m in missing] == [blob.name]
    text = runner.invoke(app, ["store", "check", "-p", str(world)])
    assert text.exit_code == 5 and "missing: record r-" in text.output


def test_check_and_gc_need_an_admin_or_auditor_wallet(world: Path) -> None:
    assert put(world, fault="put.after_store").returncode == -signal.SIGKILL
    for verb in ("check", "gc"):
        refused = runner.invoke(app, ["store", verb, "-p", str(world), "-w", "alice"])
        assert refused.exit_code == 1, refused.output
        assert (
            "identity HospitalAMSP/alice has role patient; this needs role admin or auditor"
            in refused.output
        )
    assert len(store_json(world, "check", code=5)["orphans"]) == 1  # type: ignore[arg-type]


def test_gc_refuses_a_bad_duration_and_changes_nothing(world: Path) -> None:
    assert put(world, fault="put.after_store").returncode == -signal.SIGKILL
    bad = runner.invoke(app, ["store", "gc", "-p", str(world), "--older-than", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
    assert len(store_json(world, "check", code=5)["orphans"]) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "step", ["enroll.after_register", "enroll.after_extract", "enroll.after_save"]
)
def test_enroll_killed_at_each_step_then_enrolls(world: Path, step: str) -> None:
    bob = world / "wallets" / "bob"
    died = run_ehrshare("enroll", "-p", str(world), "-w", "bob", fault=step)
    assert died.returncode == -signal.SIGKILL
    wallet = Wallet(bob, use_env=False)
    wallet.load_identity()  # the wallet stays whole
    sk = wallet.load_secret_key()  # a key is there only once it was written whole
    assert (sk is not None) == (step == "enroll.after_save")
    again = run_ehrshare("enroll", "-p", str(world), "-w", "bob", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ibe_id"] == "HospitalBMSP/bob"
    obs = str(world.parent / "obs.json")
    assert run_ehrshare("record", "put", obs, "-p", str(world), "-w", "bob").returncode == 0
    assert store_json(world, "check", code=0)["clean"] is True


def test_gc_keeps_the_ciphertext_of_every_record_version(world: Path) -> None:
    """An amended record names a new ciphertext; the old version's stays readable, so gc
    must keep both."""
    from ehrshare.session.core import FORMAT_VERSION
    from ehrshare.storage import sha256_hex

    with connect(world, Wallet(world / "wallets" / "alice", use_env=False)) as alice:
        (ref,) = alice.list_records()
        old = alice._call("GetRecord", ref.record_id)
        sealed = b"a second version's ciphertext"
        cid = alice.store.put(sealed)
        alice._call(
            "AmendRecord", ref.record_id, cid, sha256_hex(sealed), old["capsule"], FORMAT_VERSION
        )
    report = store_json(world, "check", code=0)
    assert report["record_versions"] == 2 and report["ciphertexts"] == 2
    assert store_json(world, "gc", "--older-than", "0", code=0)["removed"] == []
    blobs = {p.name for p in (world / "store" / "blobs").rglob("*") if p.is_file()}
    assert blobs == {cid, old["cid"]}
