"""``ehrshare kgc reshare`` on an in-process consortium with records (issue 12): a new DKG is
refused and points to reshare; a resharing that removes a node, adds one that was not in the
first committee and raises τ keeps ``record get`` working; bad requests exit 2 or 1 with no
change on chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("reshcli") / "c"
    hospitals = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")
    with Consortium.init(root, hospitals=hospitals, committee=3) as c:
        c.add_member("pat", "HospitalA", "patient")
        c.add_member("doc", "HospitalA", "clinician")
        for name in ("pat", "doc"):
            with c.session(name) as s:
                s.enroll()
                s.publish_type_keys()
        with c.session("doc") as doc, c.session("pat") as pat:
            ref = doc.put_record(lab_observation(), patient=pat.ibe_id)
    yield root, ref.record_id


def _run(root: Path, *args: str, wallet: str = "admin") -> tuple[int, str, str]:
    result = RUNNER.invoke(app, [*args, "--profile", str(root), "--wallet", wallet])
    return result.exit_code, result.stdout, result.output


def _latest(root: Path) -> str:
    code, out, text = _run(root, "kgc", "dkg", "status", "--json")
    assert code == 0, text
    return str(json.loads(out)["nonce"])


def test_a_new_dkg_is_refused_and_points_to_reshare(consortium_dir: tuple[Path, str]) -> None:
    root, record = consortium_dir
    before = _latest(root)
    code, _, text = _run(root, "kgc", "dkg", "open", "--threshold", "2", "--wait")
    assert code == 1
    assert "reshare the key to a new committee instead" in text
    assert "'ehrshare kgc reshare'" in text
    assert "Traceback" not in text
    assert _latest(root) == before
    code, _, text = _run(root, "record", "get", record, wallet="pat")
    assert code == 0, text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--remove", "9"), 2, "--remove 9: no such KGC node in the profile; known: 1 ("),
        (("--add", "HospitalAMSP/kgc1"), 2, "--add HospitalAMSP/kgc1: already in the current"),
        (("--remove", "HospitalDMSP/kgc4"), 2, "--remove HospitalDMSP/kgc4: not in the current"),
        (("--threshold", "4"), 2, "threshold 4 must be between 2 and the 3 nodes of the new"),
        (("--threshold", "1"), 2, "threshold 1 must be between 2 and the 3 nodes of the new"),
        (
            ("--remove", "1", "--remove", "2"),
            2,
            "the new committee would have 1 node; it needs at least 2",
        ),
    ],
)
def test_bad_requests_change_nothing(
    consortium_dir: tuple[Path, str], args: tuple[str, ...], code: int, message: str
) -> None:
    root, _ = consortium_dir
    before = _latest(root)
    got, _, text = _run(root, "kgc", "reshare", *args)
    assert got == code, text
    assert message in text
    assert "Traceback" not in text
    assert _latest(root) == before


def test_only_an_admin_reshares(consortium_dir: tuple[Path, str]) -> None:
    root, _ = consortium_dir
    code, _, text = _run(root, "kgc", "reshare", "--add", "4", wallet="pat")
    assert code == 1
    assert "this needs role admin" in text


def test_reshare_keeps_records_readable_and_enrolment_working(
    consortium_dir: tuple[Path, str],
) -> None:
    root, record = consortium_dir
    with Consortium.open(root / "profile.yaml") as c:
        mpk = c.dkg_result()["mpk"]
    before = _latest(root)
    code, out, text = _run(
        root, "kgc", "reshare", "--remove", "2", "--add", "HospitalDMSP/kgc4", "-t", "3", "--json"
    )
    assert code == 0, text
    state = json.loads(out)
    assert state["kind"] == "reshare" and state["result"]["final"] is True
    assert state["previous"] == before
    assert state["roster"] == ["HospitalAMSP/kgc1", "HospitalCMSP/kgc3", "HospitalDMSP/kgc4"]
    assert state["indices"] == [1, 3, 4]
    assert _latest(root) == state["nonce"]
    assert state["mpk"] == mpk
    with Consortium.open(root / "profile.yaml") as c:
        assert c.dkg_result()["mpk"] == mpk
    # Status lists the new committee and the leaving dealer (it posted a deal).
    code, _, text = _run(root, "kgc", "dkg", "status", state["nonce"])
    assert code == 0, text
    assert "HospitalBMSP/kgc2" in text and "HospitalDMSP/kgc4" in text
    assert "deal closed" in text and "3 posted" in text
    # The record written before reads with the wallet's old identity key.
    code, out, text = _run(root, "record", "get", record, wallet="pat")
    assert code == 0, text
    assert json.loads(out)["status"] == "final"
    # A member enrols under the new committee (τ=3 of nodes 1, 3, 4).
    with Consortium.open(root / "profile.yaml") as c:
        c.add_member("late", "HospitalD", "clinician")
    code, _, text = _run(root, "enroll", wallet="late")
    assert code == 0, text
