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

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.provisioning import Consortium

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


def test_an_altered_sealed_share_of_a_killed_run_does_not_block_the_next_reshare(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, hospitals=HOSPITALS, committee=3) as c:
        c.add_member("pat", "HospitalA", "patient")
        with c.session("pat") as pat:
            pat.enroll()
            pat.publish_type_keys()
            record = pat.put_record(lab_observation()).record_id
        first = c.dkg_result()["nonce"]
    killed = _cli(root, "kgc", "reshare", "--threshold", "3", fault="reshare.sealed")
    assert killed.returncode == -9, killed.stderr
    (stray,) = _sealed(root)[1] - {first}
    path = root / "kgc" / "node1" / f"dkg-{stray}.sealed"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    again = _cli(root, "kgc", "reshare", "--json")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    nonce = json.loads(again.stdout)["nonce"]
    # The altered share of the dead session is gone with it; nobody answered under it.
    assert _sealed(root)[1] == {nonce} and _current(root)[1] == nonce
    with Consortium.open(root / "profile.yaml") as c, c.session("pat") as pat:
        assert pat.read_record(record).status == "final"  # type: ignore[attr-defined]


def test_an_altered_final_share_waiting_for_adoption_is_refused_without_harm(
    tmp_path: Path,
) -> None:
    """Killed right after the result became final, exactly τ new members hold new shares (node
    1 sealed but not yet current, node 2 current). Node 1's file is then altered by hand: the
    key is now held by fewer than τ nodes, which no protocol can repair. What must hold: the
    altered share is never used, the next resharing fails cleanly (exit 4, the chain's cause,
    no traceback) and changes nothing, and every record still reads (members' identity keys do
    not need the KGC)."""
    root = tmp_path / "c"
    with Consortium.init(root, hospitals=HOSPITALS, committee=3) as c:
        c.add_member("pat", "HospitalA", "patient")
        with c.session("pat") as pat:
            pat.enroll()
            pat.publish_type_keys()
            record = pat.put_record(lab_observation()).record_id
    killed = _cli(root, "kgc", "reshare", "--threshold", "2", fault="reshare.promoted")
    assert killed.returncode == -9, killed.stderr
    with Consortium.open(root / "profile.yaml") as c:
        final = c.dkg_result()
    assert final["nonce"] in _sealed(root)[1] and _current(root)[1] != final["nonce"]
    path = root / "kgc" / "node1" / f"dkg-{final['nonce']}.sealed"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    again = _cli(root, "kgc", "reshare", "--phase-timeout", "2", "--json")
    assert again.returncode == 4, again.stderr
    assert "Traceback" not in again.stderr
    assert "does not open with this node key" in again.stderr  # logged, not raised
    state = json.loads(again.stdout)
    assert state["phase"] == "failed"
    assert state["failure"]["cause"] == "only 1 of 3 dealers posted a deal; threshold is 2"
    assert _current(root)[1] != final["nonce"]  # the altered share never became current
    with Consortium.open(root / "profile.yaml") as c:
        assert c.dkg_result() == final
        with c.session("pat") as pat:
            assert pat.read_record(record).status == "final"  # type: ignore[attr-defined]
