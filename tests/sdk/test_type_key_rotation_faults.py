"""kill -9 of a real ``ehrshare revoke`` at every step of the type-key rotation it begins.

A patient's revocation moves the type to a new type-key epoch on chain; the same process then
publishes the new epoch's key (``rotate.after_key``) and, for each remaining grant, delivers the
new re-key pending at its proxy (``rotate.after_deliver``), commits RekeyGrant
(``rotate.after_rekey``) and delivers again. After each kill: nothing half-made is usable (a
remaining grantee is refused clearly, never as an outage, until its grant covers the epoch; a
pending re-key is never applied); the revoked grantee reads nothing; the patient's next record
of the type finishes a rotation killed before its key, and revoking again finishes any step,
and then new records are sealed to the new epoch and the remaining grantee reads old and new
ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_grant_faults import PB, World, _assert_reads, world

from ehrshare.demo import lab_observation
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.slow
__all__ = ["world"]  # the fixture, shared with test_grant_faults

STEPS = [
    "revoke.after_commit",
    "revoke.after_proxies",
    "rotate.after_key",
    "rotate.after_deliver",
    "rotate.after_rekey",
]


def _put(w: World, tmp: Path, value: float) -> tuple[int, str]:
    """``ehrshare record put`` of a lab result for alice: (exit code, record id or stderr)."""
    path = tmp / f"lab-{value}.json"
    path.write_text(json.dumps(lab_observation(value)))
    done = w.cli("record", "put", str(path), "--json", wallet="alice")
    if done.returncode != 0:
        return done.returncode, done.stderr
    return 0, str(json.loads(done.stdout)["record_id"])


def _epochs(w: World, label_of: str) -> tuple[int, str, tuple[int, ...]]:
    """alice's lab type-key epoch, whether it has a key, and the remaining grant's epochs."""
    with Consortium.open(w.root) as c, c.session("alice") as alice:
        state = alice.chain.get_type_key_epoch(alice.ibe_id, alice.labels.opaque("lab"))
        return state.type_epoch, state.key, alice.get_grant(label_of).type_epochs


@pytest.mark.parametrize("step", STEPS)
def test_revoke_killed_at_each_rotation_step(world: World, tmp_path: Path, step: str) -> None:
    w = world
    keep = w.ok("grant", "HospitalBMSP/baker", "lab", "--days", "1", wallet="alice")["grant_id"]
    gone = w.ok("grant", "HospitalBMSP/dunn", "lab", "--days", "1", wallet="alice")["grant_id"]
    _assert_reads(w, "dunn")
    w.killed(step, "revoke", gone, wallet="alice")

    epoch, key, covered = _epochs(w, keep)
    assert epoch == 1 and w.grants("alice", "given")[gone]["status"] == "revoked"
    denied = w.read("dunn")
    assert denied.returncode == 1 and f"grant {gone} is revoked" in denied.stderr
    _assert_reads(w, "baker")  # the old record: epoch 0, covered as before

    code, out = _put(w, tmp_path, 1.0)
    if step.startswith("revoke."):
        # The new epoch had no key: alice's next record finishes the rotation (she holds the
        # keys), is sealed to epoch 1, and only the remaining grantee reads it.
        assert key == "" and code == 0, out
        epoch, key, covered = _epochs(w, keep)
        assert (epoch, covered) == (1, (0, 1)) and key != ""
        assert w.cli("record", "get", out, wallet="baker").returncode == 0
        denied = w.cli("record", "get", out, wallet="dunn")
        assert denied.returncode == 1 and f"grant {gone} is revoked" in denied.stderr
    else:
        assert key != "" and code == 0, out
        done = w.cli("record", "get", out, wallet="baker")
        if step == "rotate.after_rekey":
            assert covered == (0, 1)
            assert done.returncode == 0, done.stderr
        else:
            # Not covered yet: a clear denial naming the repair, not an outage (exit 4).
            assert covered == (0,)
            assert done.returncode == 1, done.stderr
            assert "holds no re-key for type-key epoch 1" in done.stderr
            assert "Traceback" not in done.stderr
        if step == "rotate.after_deliver":
            assert f"{keep}#1" in w.pending(PB)  # delivered, never applied

    # The next attempt finishes the rotation.
    assert w.ok("revoke", gone, wallet="alice")["state"] == "revoked"
    epoch, key, covered = _epochs(w, keep)
    assert (epoch, covered) == (1, (0, 1)) and key != ""
    code, new_id = _put(w, tmp_path, 2.0)
    assert code == 0, new_id
    for record_id in (w.record_id, new_id):
        done = w.cli("record", "get", record_id, wallet="baker")
        assert done.returncode == 0, done.stderr
        assert w.cli("record", "get", record_id, wallet="dunn").returncode == 1


@pytest.mark.parametrize("step", ["rotate.after_key", "rotate.after_deliver", "rotate.after_rekey"])
def test_a_put_finishing_the_rotation_killed_at_each_step(
    world: World, tmp_path: Path, step: str
) -> None:
    """The revocation dies after its commit; the put that finishes its rotation dies too, at
    each step of it: nothing is registered by the dead put, the next put succeeds, the revoked
    grantee reads nothing new, and revoking again re-keys the remaining grant."""
    w = world
    keep = w.ok("grant", "HospitalBMSP/baker", "lab", "--days", "1", wallet="alice")["grant_id"]
    gone = w.ok("grant", "HospitalBMSP/dunn", "lab", "--days", "1", wallet="alice")["grant_id"]
    w.killed("revoke.after_commit", "revoke", gone, wallet="alice")
    before = len(w.ok("record", "list", wallet="alice"))
    path = tmp_path / "lab-3.json"
    path.write_text(json.dumps(lab_observation(3.0)))
    w.killed(step, "record", "put", str(path), wallet="alice")
    assert len(w.ok("record", "list", wallet="alice")) == before

    code, new_id = _put(w, tmp_path, 4.0)
    assert code == 0, new_id
    assert len(w.ok("record", "list", wallet="alice")) == before + 1
    epoch, key, _ = _epochs(w, keep)
    assert (epoch, key != "") == (1, True)
    denied = w.cli("record", "get", new_id, wallet="dunn")
    assert denied.returncode == 1 and f"grant {gone} is revoked" in denied.stderr
    assert w.ok("revoke", gone, wallet="alice")["state"] == "revoked"
    assert _epochs(w, keep)[2] == (0, 1)
    assert w.cli("record", "get", new_id, wallet="baker").returncode == 0
