"""Opening a consortium for an app is apart from creating one (issue 14, move 2).

An application that calls :func:`ehrshare.connect` gets a session on the profile's backends
without the admin object (:class:`~ehrshare.provisioning.Consortium`) or the code that makes
CAs, wallets and networks being loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ehrshare
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium
from ehrshare.runtime import Runtime, connect

# The modules a newcomer reads for each concern; each stays readable in one sitting.
MODULE_LINE_LIMIT = 800


def test_connect_opens_a_session_without_building_the_admin_object(
    consortium: Consortium, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    consortium.add_member("alice", "HospitalA", "patient")
    directory = consortium.directory
    consortium.close()

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("connect() built the admin Consortium")

    monkeypatch.setattr(Consortium, "__init__", refused)
    monkeypatch.setattr(Consortium, "open", refused)
    with connect(directory, "alice", clock=clock) as alice:
        assert alice.identity.ibe_id == "HospitalAMSP/alice"
        alice.enroll()
    assert ehrshare.connect is connect


def test_the_runtime_closes_what_it_opened_once(consortium: Consortium, clock: ManualClock) -> None:
    consortium.add_member("bob", "HospitalB", "clinician")
    directory = consortium.directory
    consortium.close()
    runtime = Runtime.open(directory, clock=clock)
    wallet = runtime.profile.wallet("bob")
    identity, signer = wallet.load_identity()
    closed: list[str] = []
    session = runtime.session(identity, signer, wallet, on_close=lambda: closed.append("bob"))
    session.close()
    assert closed == ["bob"]
    runtime.close()
    runtime.close()  # idempotent
    # The ledger's file lock was released: another opener gets it.
    Runtime.open(directory, clock=clock).close()


def test_an_app_importing_connect_loads_no_provisioning_code() -> None:
    # Which loaded ehrshare modules define the admin object or the Fabric network builder
    # (read from each module's own namespace: the package's lazy names must not fire).
    probe = (
        "import sys\n"
        "from ehrshare import connect\n"
        "connect.__name__\n"
        "print(','.join(sorted(name for name, m in list(sys.modules.items()) "
        "if name.startswith('ehrshare') and ({'Consortium', 'FabricNet'} & set(vars(m))))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("module", ["runtime", "provisioning", "profile", "wallet"])
def test_each_consortium_module_is_readable_in_one_sitting(module: str) -> None:
    source = Path(ehrshare.__file__).parent / f"{module}.py"
    lines = source.read_text(encoding="utf-8").count("\n")
    assert lines <= MODULE_LINE_LIMIT, f"{source.name} has {lines} lines"
