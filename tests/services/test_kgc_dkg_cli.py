"""``ehrshare kgc dkg open|status|abort`` on an in-process consortium: what the admin sees, and
the refusals (wrong role, a roster that contradicts the profile, an abort while the session can
still finish, a wait that nobody answers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.provisioning import Consortium

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dkgcli") / "c"
    with Consortium.init(root) as c:
        c.add_member("pat", "HospitalA", "patient")
    yield root


def _run(root: Path, *args: str, wallet: str = "admin") -> tuple[int, str, str]:
    result = RUNNER.invoke(app, ["kgc", "dkg", *args, "--profile", str(root), "--wallet", wallet])
    return result.exit_code, result.stdout, result.output


def test_status_shows_the_initial_session_as_final(consortium_dir: Path) -> None:
    code, out, _ = _run(consortium_dir, "status", "--json")
    assert code == 0
    state = json.loads(out)
    assert state["phase"] == "done"
    assert state["result"]["final"] is True
    assert state["result"]["agree"] >= state["threshold"] == 2
    code, _, text = _run(consortium_dir, "status", state["nonce"])
    assert code == 0
    assert state["nonce"] in text
    assert "HospitalCMSP/kgc3" in text


def test_open_refuses_a_roster_that_contradicts_the_profile(consortium_dir: Path) -> None:
    code, _, text = _run(
        consortium_dir,
        "open",
        "--threshold",
        "2",
        "--roster",
        "HospitalBMSP/kgc2,HospitalAMSP/kgc1",
    )
    assert code == 2
    assert "kgc HospitalAMSP/kgc1 is node 1 in the profile but position 2 in the roster" in text


def test_only_an_admin_opens_a_session(consortium_dir: Path) -> None:
    code, _, text = _run(consortium_dir, "open", "--threshold", "2", wallet="pat")
    assert code == 1
    assert "identity HospitalAMSP/pat is not registered" in text
    code, _, text = _run(consortium_dir, "open", "--threshold", "2", wallet="kgc1")
    assert code == 1
    assert "identity HospitalAMSP/kgc1 has role kgc; this needs role admin" in text


def test_open_prints_the_nonce_and_abort_is_refused_while_it_can_finish(
    consortium_dir: Path,
) -> None:
    code, out, text = _run(consortium_dir, "open", "--threshold", "3", "--json")
    assert code == 0, text
    state = json.loads(out)
    assert (state["phase"], state["threshold"]) == ("deal", 3)
    assert state["roster"] == ["HospitalAMSP/kgc1", "HospitalBMSP/kgc2", "HospitalCMSP/kgc3"]
    nonce = state["nonce"]
    code, _, text = _run(consortium_dir, "abort", nonce, "--reason", "changed my mind")
    assert code == 1
    assert f"dkg session {nonce} can still finish: its deal phase is open (close it first)" in text
    code, _, text = _run(consortium_dir, "status", nonce)
    assert code == 0
    assert "deal phase: 0 of 3 nodes posted" in text


def test_a_wait_nobody_answers_exits_4(consortium_dir: Path) -> None:
    code, out, text = _run(
        consortium_dir, "open", "--threshold", "2", "--wait", "--wait-timeout", "0.5"
    )
    assert code == 4
    assert len(out.strip().splitlines()[0]) == 64  # the nonce, printed before waiting
    assert "runs KGC nodes in-process" in text  # nobody follows sessions here
    assert "is not final after 0 s: deal phase: 0 of 3 nodes posted" in text


def test_status_refuses_a_malformed_nonce(consortium_dir: Path) -> None:
    code, _, text = _run(consortium_dir, "status", "xyz")
    assert code == 1
    assert "session nonce must be 64 lower-case hex digits" in text
