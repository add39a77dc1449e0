"""A small consortium made through the CLI, and a digest of everything it stores.

Used by the CLI error tests: ``make_world`` builds it once per module; ``state_digest`` hashes
the ledger's database file, the content store and the wallets, so a test can assert that a
refused command changed nothing. ``consortium_template`` builds a consortium of given members
directly (the module templates of the CLI fault tests, which copy it per case).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner, Result

from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.wallet import Wallet

runner = CliRunner()

MEMBERS = (
    ("alice", "HospitalA", "patient"),
    ("baker", "HospitalB", "clinician"),
)


def invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """Run the CLI in-process; fail the test on a Python exception escaping the command."""
    result = runner.invoke(app, list(args), env=env, input=stdin)
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (
        f"{args}: {type(exc).__name__} escaped: {exc}\n{result.output}"
    )
    assert "Traceback" not in result.output, result.output
    assert "unexpected error" not in result.output, result.output
    return result


def make_world(base: Path) -> dict[str, str]:
    """A consortium at ``base/c`` with an enrolled patient (alice, one lab record) and an
    enrolled clinician (baker, granted nothing)."""
    directory = base / "c"
    assert invoke("consortium", "init", str(directory)).exit_code == 0
    profile = str(directory)
    for name, hospital, role in MEMBERS:
        add = ("consortium", "add-member", name, "--hospital", hospital, "--role", role)
        assert invoke(*add, "-p", profile).exit_code == 0
        assert invoke("enroll", "-p", profile, "-w", name).exit_code == 0
    lab = base / "lab.json"
    lab.write_text(json.dumps(lab_observation()), encoding="utf-8")
    put = invoke("record", "put", str(lab), "-p", profile, "-w", "alice")
    assert put.exit_code == 0, put.output
    record_id = put.stdout.strip().splitlines()[-1]
    return {"profile": profile, "record": record_id, "lab": str(lab), "base": str(base)}


def state_digest(consortium_dir: str | Path) -> str:
    """SHA-256 over the ledger database, the content store and the wallets (names and bytes).

    The SQLite shared-memory index (``-shm``) is left out: readers rewrite it without changing
    anything stored.
    """
    root = Path(consortium_dir)
    h = hashlib.sha256()
    for area in ("ledger", "store", "wallets"):
        for path in sorted((root / area).rglob("*")):
            if not path.is_file() or path.name.endswith("-shm"):
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def consortium_template(
    root: Path,
    members: Sequence[tuple[str, str, str]],
    *,
    record_of: str = "",
    register_admins: bool = False,
) -> str:
    """A consortium at ``root`` on the embedded ledger with ``members`` (name, hospital, role):
    every non-admin enrolled with its type keys published; ``record_of``'s one lab record,
    whose id is returned ("" without one); with ``register_admins`` every admin (the init's
    own ``admin`` too) registered on chain. Wallets are opened without the passphrase
    variable, so the environment of the run does not matter. Tests copy it per case."""
    record_id = ""
    with Consortium.init(root) as c:
        for name, hospital, role in members:
            c.add_member(name, hospital, role)
        for name, _, role in members:
            if role == "admin":
                continue
            with c.session(Wallet(root / "wallets" / name, use_env=False)) as s:
                s.enroll()
                s.publish_type_keys()
                if name == record_of:
                    record_id = s.put_record(lab_observation()).record_id
        if register_admins:
            admins = [ADMIN_WALLET] + [name for name, _, role in members if role == "admin"]
            for name in admins:
                with c.session(Wallet(root / "wallets" / name, use_env=False)) as s:
                    s.register()
    return record_id
