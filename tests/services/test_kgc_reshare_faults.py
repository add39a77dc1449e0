"""kill -9 of ``ehrshare kgc reshare`` (in-process KGC nodes) at each step boundary of the
resharing's write path: after a node sealed its new share, after a node made the final share
current, after a leaving node dropped its current share. Nothing is lost (every record still
reads, the chain's key is the old or the new one, never a third), nothing half-made answers, and
the next ``kgc reshare`` succeeds and leaves exactly one share per committee member."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.consortium import Consortium
from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV

HOSPITALS = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")


def _cli(root: Path, *args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args, "--profile", str(root), "--wallet", "admin"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _sealed(root: Path) -> dict[int, set[str]]:
    return {
        i: {p.name[4:-7] for p in (root / "kgc" / f"node{i}").glob("dkg-*.sealed")}
        for i in range(1, 5)
    }


def _current(root: Path) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for i in range(1, 5):
        pointer = root / "kgc" / f"node{i}" / "current-session"
        out[i] = pointer.read_text().strip() if pointer.exists() else None
    return out


@pytest.mark.parametrize("step", ["reshare.sealed", "reshare.promoted", "reshare.retired"])
def test_kill_at_each_step_loses_nothing_and_the_next_reshare_succeeds(
    tmp_path: Path, step: str
) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, hospitals=HOSPITALS, committee=3) as c:
        c.add_member("pat", "HospitalA", "patient")
        with c.session("pat") as pat:
            pat.enroll()
            pat.publish_type_keys()
            record = pat.put_record(lab_observation()).record_id
        first = c.dkg_result()
    killed = _cli(root, "kgc", "reshare", "--remove", "2", "--add", "4", fault=step)
    assert killed.returncode == -9, killed.stderr

    with Consortium.open(root / "profile.yaml") as c:
        latest = c.dkg_result()
        assert latest["mpk"] == first["mpk"]
        # Before the result is final nothing moved; after it, the chain holds the new key.
        assert latest["nonce"] == first["nonce"] if step == "reshare.sealed" else True
        current = _current(root)
        for i, nonce in current.items():
            # Every current share is a share of a final session (never a half-made one).
            assert nonce in (None, first["nonce"], latest["nonce"]), (i, nonce)
        with c.session("pat") as pat:
            assert pat.read_record(record).status == "final"  # type: ignore[attr-defined]

    again = _cli(root, "kgc", "reshare", "--json")
    assert again.returncode == 0, again.stderr
    state = json.loads(again.stdout)
    assert state["result"]["final"] is True
    members = dict(zip(state["indices"], state["roster"], strict=True))
    with Consortium.open(root / "profile.yaml") as c:
        assert c.dkg_result()["mpk"] == first["mpk"]
        with c.session("pat") as pat:
            assert pat.read_record(record).status == "final"  # type: ignore[attr-defined]
            pat.enroll()
    # Exactly the new share at each member; nothing at a node outside the committee.
    sealed, current = _sealed(root), _current(root)
    for i in range(1, 5):
        if i in members:
            assert current[i] == state["nonce"] and sealed[i] == {state["nonce"]}, (i, sealed)
        else:
            assert current[i] is None and sealed[i] == set(), (i, sealed)
