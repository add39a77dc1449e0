"""Wallet changes (encrypt, decrypt, passphrase) are all-or-nothing: kill -9 at every step
leaves the old or the new wallet, never a mix, and the next attempt succeeds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cliproc import run_ehrshare
from ehrshare.cli import app
from ehrshare.faults import FAULT_ENV
from ehrshare.provisioning import Consortium
from ehrshare.wallet import PASSPHRASE_ENV, SECRET_FILES, Wallet, seal_wallet_file

NEW_ENV = "EHRSHARE_WALLET_NEW_PASSPHRASE"
runner = CliRunner()

# Where a change dies, and which wallet the recovery rule must leave: the old one until the
# new one is staged complete and the old one moved aside, the new one from then on.
STEPS = [
    ("wallet.mid_build", "old"),
    ("wallet.after_build", "old"),
    ("wallet.after_stage", "old"),
    ("wallet.after_retire", "new"),
    ("wallet.after_swap", "new"),
]
# operation -> (passphrase the wallet starts with, passphrase it ends with)
OPS = {"encrypt": (None, "pw-1"), "decrypt": ("pw-1", None), "passphrase": ("pw-1", "pw-2")}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wal") / "c"
    with Consortium.init(root) as c:
        c.add_member("bob", "HospitalA", "patient")
        with c.session(Wallet(root / "wallets" / "bob", use_env=False)) as bob:
            bob.enroll()  # bob's wallet now holds all three secret files
    return root


def _secrets(wallet: Wallet) -> dict[str, bytes]:
    _, signer = wallet.load_identity()
    _, tls = wallet.load_tls()
    sk = wallet.load_secret_key()
    assert sk is not None
    return {
        "key.pem": signer.to_secret_bytes(),
        "tls-key.pem": tls.to_secret_bytes(),
        "ibe.key": sk.to_secret_bytes(),
    }


def _cli(root: Path, op: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_ehrshare("wallet", op, "-p", str(root), "-w", "bob", env=env)


def _env(op: str) -> dict[str, str]:
    before, after = OPS[op]
    env = {}
    if op == "passphrase":
        env = {PASSPHRASE_ENV: "pw-1", NEW_ENV: "pw-2"}
    elif op == "encrypt":
        env = {PASSPHRASE_ENV: str(after)}
    else:
        env = {PASSPHRASE_ENV: str(before)}
    return env


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize(("step", "leaves"), STEPS)
def test_kill_at_each_step_leaves_the_old_or_the_new_wallet(
    template: Path, tmp_path: Path, op: str, step: str, leaves: str
) -> None:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    directory = root / "wallets" / "bob"
    before, after = OPS[op]
    original = _secrets(Wallet(directory, use_env=False))
    if before is not None:
        Wallet(directory, use_env=False).encrypt(before)

    died = _cli(root, op, {**_env(op), FAULT_ENV: step})
    assert died.returncode == -signal.SIGKILL, died.stderr

    # Whatever the crash left, the next reader sees one whole wallet: the old or the new.
    expected = before if leaves == "old" else after
    wallet = Wallet(directory, passphrase=expected, use_env=False)
    assert _secrets(wallet) == original  # recovered on load; the keys themselves never change
    assert wallet.seal_state == ("plain" if expected is None else "encrypted")
    leftovers = sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(".bob."))
    assert leftovers == []

    if leaves == "old":  # the change did not happen: doing it again works
        again = _cli(root, op, _env(op))
        assert again.returncode == 0, again.stderr
    final = Wallet(directory, passphrase=after, use_env=False)
    assert _secrets(final) == original
    assert final.seal_state == ("plain" if after is None else "encrypted")


def test_half_encrypted_wallet_of_an_older_version_is_finished(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the per-file encrypt of before left when killed: key.pem sealed, the rest plain."""
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    root = tmp_path / "c"
    shutil.copytree(template, root)
    directory = root / "wallets" / "bob"
    original = _secrets(Wallet(directory, use_env=False))
    key = directory / "key.pem"
    key.write_bytes(seal_wallet_file(key.read_bytes(), "pw-1", "key.pem"))
    assert Wallet(directory, use_env=False).seal_state == "mixed"

    wrong = runner.invoke(
        app, ["wallet", "encrypt", "-p", str(root), "-w", "bob"], env={PASSPHRASE_ENV: "other"}
    )
    assert wrong.exit_code == 3 and "wrong wallet passphrase" in wrong.output
    assert Wallet(directory, use_env=False).seal_state == "mixed"  # unchanged

    done = runner.invoke(
        app, ["wallet", "encrypt", "-p", str(root), "-w", "bob"], env={PASSPHRASE_ENV: "pw-1"}
    )
    assert done.exit_code == 0, done.output
    assert "half-encrypted" in done.output
    wallet = Wallet(directory, passphrase="pw-1", use_env=False)
    assert wallet.seal_state == "encrypted"
    assert _secrets(wallet) == original
    for name in SECRET_FILES:
        assert (directory / name).stat().st_mode & 0o777 == 0o600


def test_decrypt_and_passphrase_refuse_what_does_not_apply(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(NEW_ENV, raising=False)
    root = tmp_path / "c"
    shutil.copytree(template, root)
    args = ["-p", str(root), "-w", "bob"]
    plain = runner.invoke(app, ["wallet", "decrypt", *args], env={PASSPHRASE_ENV: "x"})
    assert plain.exit_code == 3 and "is not encrypted" in plain.output
    plain = runner.invoke(app, ["wallet", "passphrase", *args], env={PASSPHRASE_ENV: "x"})
    assert plain.exit_code == 3 and "is not encrypted" in plain.output
    Wallet(root / "wallets" / "bob", use_env=False).encrypt("pw-1")
    wrong = runner.invoke(
        app, ["wallet", "passphrase", *args], env={PASSPHRASE_ENV: "nope", NEW_ENV: "pw-2"}
    )
    assert wrong.exit_code == 3 and "wrong wallet passphrase" in wrong.output
    assert "Traceback" not in wrong.output
    no_tty = runner.invoke(app, ["wallet", "decrypt", *args])
    assert no_tty.exit_code == 2 and f"set {PASSPHRASE_ENV}" in no_tty.output
    Wallet(root / "wallets" / "bob", passphrase="pw-1", use_env=False).load_identity()


def _tls_pair_matches(directory: Path) -> bytes:
    """The wallet's TLS certificate belongs to its TLS key; returns the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert_pem = (directory / "tls-cert.pem").read_bytes()
    _, tls = Wallet(directory, use_env=False).load_tls()
    cert_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = cert_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki == tls.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert_pem


@pytest.mark.parametrize(("step", "leaves"), STEPS)
def test_reissue_tls_killed_at_each_step_keeps_a_matching_pair(
    template: Path, tmp_path: Path, step: str, leaves: str
) -> None:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    directory = root / "wallets" / "bob"
    before = _tls_pair_matches(directory)
    env = {k: v for k, v in os.environ.items() if k not in (PASSPHRASE_ENV, FAULT_ENV)}
    argv = [sys.executable, "-m", "ehrshare", "consortium", "reissue-tls", "bob", "-p", str(root)]
    died = subprocess.run(
        argv, env={**env, FAULT_ENV: step}, capture_output=True, timeout=120, check=False
    )
    assert died.returncode == -signal.SIGKILL
    Wallet(directory, use_env=False).load_identity()  # recovers
    after = _tls_pair_matches(directory)
    assert (after == before) == (leaves == "old")
    assert subprocess.run(argv, env=env, capture_output=True, timeout=120).returncode == 0
    assert _tls_pair_matches(directory) != after


def test_add_member_killed_before_the_wallet_is_whole_leaves_none(
    template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    shutil.copytree(template, root)
    env = {k: v for k, v in os.environ.items() if k not in (PASSPHRASE_ENV, FAULT_ENV)}
    argv = [sys.executable, "-m", "ehrshare", "consortium", "add-member", "carol"]
    argv += ["--hospital", "HospitalB", "--role", "clinician", "-p", str(root)]
    died = subprocess.run(
        argv, env={**env, FAULT_ENV: "wallet.after_build"}, capture_output=True, timeout=120
    )
    assert died.returncode == -signal.SIGKILL
    assert not (root / "wallets" / "carol").exists()  # no half-made wallet
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    Wallet(root / "wallets" / "carol", use_env=False).load_identity()
    assert not (root / "wallets" / ".carol.tmp").exists()
