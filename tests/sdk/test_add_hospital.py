"""'ehrshare hospital init' + 'consortium add-hospital' on the embedded ledger: a hospital made
in its own directory joins a running consortium under an update signed by a majority of the
member hospitals' admins, its KGC node enters the committee by resharing, and its clinician
reads a record granted afterwards. Fewer signatures, or a tampered join request, are refused with
their exit codes and change nothing; kill -9 at each step leaves nothing half-made and the next
run completes; no private key of the new hospital is in any file outside its directory."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_world import consortium_template, state_digest

from cliproc import run_ehrshare
from ehrshare.hospital import JoinRequest, init_hospital
from ehrshare.provisioning import Consortium

DR_DEE = "HospitalDMSP/drdee"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium of three hospitals (alice: one lab record; admins of A and B) at ``c``."""
    base = tmp_path_factory.mktemp("join")
    members = (("alice", "HospitalA", "patient"), ("admin-b", "HospitalB", "admin"))
    record_id = consortium_template(base / "c", members, record_of="alice")
    (base / "record").write_text(record_id, encoding="utf-8")
    return base


@pytest.fixture
def world(template: Path, tmp_path: Path) -> Path:
    """A copy of the template plus a new hospital D at ``hd`` (its own directory)."""
    base = tmp_path / "w"
    shutil.copytree(template, base)
    init_hospital(base / "hd", "HospitalD")
    return base


def ehrshare(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_ehrshare(*args, fault=fault, timeout=180)


def add_hospital(
    base: Path, *sign_with: str, fault: str | None = None, request: Path | None = None
) -> subprocess.CompletedProcess[str]:
    signs = [x for w in sign_with for x in ("--sign-with", w)]
    req = str(request or base / "hd" / "join-request.json")
    args = ("consortium", "add-hospital", req, "--hospital-dir", str(base / "hd"))
    return ehrshare(*args, *signs, "-p", str(base / "c"), "--json", fault=fault)


def digest(base: Path) -> tuple[str, str]:
    """The consortium's ledger, store and wallets, and its profile."""
    return state_digest(base / "c"), (base / "c" / "profile.yaml").read_text(encoding="utf-8")


def clinician_reads_after_grant(base: Path) -> None:
    """Dr Dee of the new hospital enrols, alice grants her lab records, Dr Dee reads one."""
    profile = str(base / "c")
    dee = base / "hd" / "wallets" / "drdee"
    if not dee.exists():
        issued = ehrshare(
            "hospital", "add-member", str(base / "hd"), "drdee", "--role", "clinician"
        )
        assert issued.returncode == 0, issued.stderr
    enrolled = ehrshare("enroll", "-p", profile, "-w", str(dee))
    assert enrolled.returncode == 0, enrolled.stderr
    granted = ehrshare("grant", "give", DR_DEE, "lab", "--days", "1", "-p", profile, "-w", "alice")
    assert granted.returncode == 0, granted.stderr
    assert (
        "re-key at HospitalDMSP/proxy" in granted.stderr
    )  # the re-key went to the new hospital's proxy
    record = (base / "record").read_text(encoding="utf-8")
    read = ehrshare("record", "get", record, "-p", profile, "-w", str(dee), "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["valueQuantity"]["value"] == 13.2


def committee(base: Path) -> list[str]:
    with Consortium.open(base / "c" / "profile.yaml") as c:
        return [str(m) for m in c.dkg_result()["roster"]]


def test_a_new_hospital_joins_mid_life_and_its_clinician_reads_a_record_granted_afterwards(
    world: Path,
) -> None:
    with Consortium.open(world / "c" / "profile.yaml") as c:
        mpk = c.dkg_result()["mpk"]
    request = world / "hd" / "join-request.json"
    first = add_hospital(world)
    assert first.returncode == 1, first.stderr  # no signature yet: the update file is written
    update = request.with_suffix(".update.json")
    for admin in ("admin", "admin-b"):
        signed = ehrshare(
            "consortium", "sign-update", str(update), "-p", str(world / "c"), "-w", admin
        )
        assert signed.returncode == 0, signed.stderr
    started = time.perf_counter()
    joined = add_hospital(world)
    assert joined.returncode == 0, joined.stderr
    outcome = json.loads(joined.stdout)
    assert outcome["performed"] == ["config", "register", "profile", "reshare"]
    assert outcome["signers"] == ["HospitalAMSP", "HospitalBMSP"]
    assert "HospitalDMSP/kgc" in committee(world)
    with Consortium.open(world / "c" / "profile.yaml") as c:
        assert c.dkg_result()["mpk"] == mpk  # resharing keeps every key valid
    print(f"add-hospital (4 steps): {time.perf_counter() - started:.1f} s")
    clinician_reads_after_grant(world)
    again = add_hospital(world)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["performed"] == []


def test_fewer_than_a_majority_of_signatures_is_refused_and_changes_nothing(
    world: Path,
) -> None:
    before = digest(world)
    one = add_hospital(world, "admin")
    assert one.returncode == 1, one.stderr
    assert "1 of the 3 member hospitals' admins signed" in one.stderr
    assert "2 are needed" in one.stderr
    assert "Traceback" not in one.stderr
    assert digest(world) == before
    update = world / "hd" / "join-request.update.json"
    # A non-admin member cannot sign, nor the joining hospital itself.
    assert (
        ehrshare(
            "consortium", "sign-update", str(update), "-p", str(world / "c"), "-w", "alice"
        ).returncode
        == 1
    )
    own = ehrshare(
        "consortium", "sign-update", str(update), "-w", str(world / "hd" / "wallets" / "admin")
    )
    assert own.returncode == 1, own.stderr
    # A signature claiming HospitalB by a certificate HospitalB's CA did not issue is not counted.
    data = json.loads(update.read_text(encoding="utf-8"))
    forged = dict(data["signatures"][0])
    forged["msp_id"] = "HospitalBMSP"
    data["signatures"].append(forged)
    update.write_text(json.dumps(data), encoding="utf-8")
    still = add_hospital(world)
    assert still.returncode == 1, still.stderr
    assert "(HospitalAMSP)" in still.stderr
    assert digest(world) == before
    assert "HospitalDMSP/kgc" not in committee(world)


def _rehash(data: dict[str, object]) -> None:
    body = {k: v for k, v in data.items() if k != "sha256"}
    request = JoinRequest(**{k: v for k, v in body.items()})  # type: ignore[arg-type]
    data["sha256"] = request.sha256


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ("endpoint", 5),  # content changed, hash not: integrity failure
        ("foreign-ca", 5),  # another hospital's CA, hash recomputed: its certificates do not chain
        ("version", 6),  # not a request this code reads: invalid input
        ("not-json", 6),
    ],
)
def test_a_tampered_join_request_is_refused_with_its_exit_code_and_changes_nothing(
    world: Path, tamper: str, code: int
) -> None:
    path = world / "hd" / "join-request.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if tamper == "endpoint":
        data["endpoints"] = {"peer": "203.0.113.9:7051"}
    elif tamper == "foreign-ca":
        other = init_hospital(world / "other", "HospitalD")
        data["ca_certificate"] = other.request().ca_certificate
        _rehash(data)
    elif tamper == "version":
        data["version"] = 2
    tampered = world / "tampered.json"
    tampered.write_text("{not json" if tamper == "not-json" else json.dumps(data), encoding="utf-8")
    before = digest(world)
    refused = add_hospital(world, "admin", "admin-b", request=tampered)
    assert refused.returncode == code, refused.stderr
    assert "error:" in refused.stderr and "Traceback" not in refused.stderr
    assert digest(world) == before
    assert not tampered.with_suffix(".update.json").exists()


@pytest.mark.parametrize(
    "fault",
    [
        "add_hospital.after_config",
        "add_hospital.after_register",
        "add_hospital.after_profile",
        "reshare.promoted",
        "add_hospital.after_reshare",
    ],
)
def test_kill_at_each_step_leaves_nothing_half_made_and_the_next_run_completes(
    world: Path, fault: str
) -> None:
    killed = add_hospital(world, "admin", "admin-b", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The consortium keeps working for its members: alice lists and reads her record.
    listed = ehrshare("record", "list", "-p", str(world / "c"), "-w", "alice", "--json")
    assert listed.returncode == 0, listed.stderr
    record = (world / "record").read_text(encoding="utf-8")
    own = ehrshare("record", "get", record, "-p", str(world / "c"), "-w", "alice", "--json")
    assert own.returncode == 0, own.stderr
    finished = add_hospital(world)
    assert finished.returncode == 0, finished.stderr
    assert "HospitalDMSP/kgc" in committee(world)
    clinician_reads_after_grant(world)


def _secrets(hospital: Path) -> dict[str, list[bytes]]:
    """Every private key file of the hospital, with the byte strings that would betray a copy:
    its raw bytes, and for PEM each line of its base64 body (and that body decoded)."""
    found: dict[str, list[bytes]] = {}
    for path in hospital.rglob("*"):
        if not path.is_file() or path.suffix not in (".pem", ".key", ".sealed"):
            continue
        data = path.read_bytes()
        if path.suffix == ".pem" and b"PRIVATE KEY" not in data:
            continue  # a certificate
        needles = [data]
        if b"-----BEGIN" in data:
            body = [ln for ln in data.splitlines() if ln and not ln.startswith(b"-----")]
            needles += [ln for ln in body if len(ln) >= 40]
            needles.append(base64.b64decode(b"".join(body)))
        else:
            needles += [data.hex().encode(), base64.b64encode(data)]
        found[str(path.relative_to(hospital))] = needles
    return found


def test_no_private_key_of_the_new_hospital_is_in_any_file_outside_its_directory(
    world: Path,
) -> None:
    assert add_hospital(world, "admin", "admin-b").returncode == 0
    clinician_reads_after_grant(world)
    secrets_of = _secrets(world / "hd")
    names = set(secrets_of)
    assert {"ca/HospitalDMSP/ca-key.pem", "keys/kgc.key", "keys/proxy.key"} <= names
    assert "wallets/admin/key.pem" in names and "wallets/drdee/key.pem" in names
    outside = [p for p in world.rglob("*") if p.is_file() and world / "hd" not in p.parents]
    contents = {p: p.read_bytes() for p in outside}
    assert len(contents) > 50  # the consortium's ledger, store, wallets, profile, update file
    for name, needles in secrets_of.items():
        for path, data in contents.items():
            assert not any(n in data for n in needles), f"{name} of HospitalD found in {path}"
    # The scan finds a copy where there is one.
    inside = (world / "hd" / "keys" / "kgc.key").read_bytes()
    assert any(n in inside for n in secrets_of["keys/kgc.key"])


def test_the_operations_doc_join_example_runs(template: Path, tmp_path: Path) -> None:
    """docs/operations.md §3c: its commands run, in its order, with the exit codes it shows."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text("utf-8")
    section = doc.split("## 3c.", 1)[1].split("\n## ", 1)[0]
    commands = [
        line[2:].split("  #", 1)[0].strip()
        for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL)
        for line in block.splitlines()
        if line.startswith("$ ")
    ]
    assert len(commands) == 5
    base = tmp_path / "doc"
    shutil.copytree(template, base)
    codes = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "ehrshare"
        argv = [str(base / a) if a in ("c", "hd") or a.startswith("hd/") else a for a in argv]
        result = ehrshare(*argv[1:])
        assert "Traceback" not in result.stderr
        codes.append(result.returncode)
    assert codes == [0, 1, 0, 0, 0]
    assert "HospitalDMSP joined: config, register, profile, reshare" in result.stderr


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        ("base", 1),  # computed against another membership: stale
        ("signature", 1),  # one byte of a signature flipped: it no longer counts
        ("request-sha", 6),  # the request inside does not match the hash the admins signed
        ("truncated", 6),
    ],
)
def test_a_hand_edited_update_file_is_refused_and_a_fresh_one_then_completes(
    world: Path, edit: str, code: int
) -> None:
    update = world / "hd" / "join-request.update.json"
    assert add_hospital(world).returncode == 1  # computes the update file
    for admin in ("admin", "admin-b"):
        args = ("consortium", "sign-update", str(update), "-p", str(world / "c"), "-w", admin)
        assert ehrshare(*args).returncode == 0
    text = update.read_text(encoding="utf-8")
    data = json.loads(text)
    if edit == "base":
        data["base"].pop("HospitalCMSP")
    elif edit == "signature":
        raw = bytearray(base64.b64decode(data["signatures"][1]["signature"]))
        raw[10] ^= 1
        data["signatures"][1]["signature"] = base64.b64encode(bytes(raw)).decode()
    elif edit == "request-sha":
        data["request_sha256"] = "0" * 64
    edited = text[: len(text) // 2] if edit == "truncated" else json.dumps(data)
    update.write_text(edited, encoding="utf-8")
    before = digest(world)
    refused = add_hospital(world)
    assert refused.returncode == code, refused.stderr
    assert "error:" in refused.stderr and "Traceback" not in refused.stderr
    assert digest(world) == before
    update.unlink()
    done = add_hospital(world, "admin", "admin-b")
    assert done.returncode == 0, done.stderr
    assert "HospitalDMSP/kgc" in committee(world)


def test_hospital_init_killed_leaves_no_directory_and_the_next_run_completes(
    tmp_path: Path,
) -> None:
    target = tmp_path / "he"
    args = ("hospital", "init", str(target), "--name", "HospitalE")
    killed = ehrshare(*args, fault="hospital_init.before_rename")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()  # staged beside it, never half there
    done = ehrshare(*args, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["msp_id"] == "HospitalEMSP"
    assert JoinRequest.load(target / "join-request.json").msp_id == "HospitalEMSP"
    assert [p.name for p in tmp_path.iterdir()] == ["he"]  # the staging directory is gone
    again = ehrshare(*args)
    assert again.returncode == 3, again.stderr  # not empty: nothing overwritten
    assert "is not an empty directory" in again.stderr


def test_a_missing_or_mismatched_hospital_directory_is_refused_and_changes_nothing(
    world: Path,
) -> None:
    before = digest(world)
    request = world / "hd" / "join-request.json"
    args = ("consortium", "add-hospital", str(request), "--sign-with", "admin")
    missing = ehrshare(*args, "--hospital-dir", str(world / "nowhere"), "-p", str(world / "c"))
    assert missing.returncode == 3, missing.stderr
    assert "not a hospital directory" in missing.stderr
    init_hospital(world / "other", "HospitalD")  # the same name, other keys
    other = ehrshare(
        *args,
        "--sign-with",
        "admin-b",
        "--hospital-dir",
        str(world / "other"),
        "-p",
        str(world / "c"),
    )
    assert other.returncode == 6, other.stderr
    assert "exported" in other.stderr
    assert digest(world) == before
