"""A Kubo store carries the consortium's marker: a node on a fresh repository is refused
(exit 3, nothing added), and store check/gc find and remove an orphan (unpin + repo gc)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cliproc import run_ehrshare
from ehrshare.cli import app
from ehrshare.demo import lab_observation
from ehrshare.network.kubo import KuboDaemon
from ehrshare.provisioning import Consortium
from ehrshare.storage import KuboClient

runner = CliRunner()


def _put(root: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    obs = str(root.parent / "obs.json")
    return run_ehrshare("record", "put", obs, "-p", str(root), "-w", "alice", fault=fault)


def _store(root: Path, *args: str, code: int) -> dict[str, object]:
    result = runner.invoke(app, ["store", *args, "-p", str(root), "--json"])
    assert result.exit_code == code, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.mark.ipfs
@pytest.mark.slow
def test_kubo_store_marker_and_gc(tmp_path: Path, kubo: KuboDaemon, e2e_kubo_binary: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, storage="kubo", kubo_url=kubo.api_url) as c:
        c.add_member("alice", "HospitalA", "patient")
        with c.session("alice") as alice:
            alice.enroll()
            alice.publish_type_keys(["lab"])
            alice.put_record(lab_observation())
    (tmp_path / "obs.json").write_text(json.dumps(lab_observation(5.0)), encoding="utf-8")
    assert _store(root, "check", code=0)["clean"] is True

    # A put killed between the store write and RegisterRecord: an unreferenced pin.
    assert _put(root, fault="put.after_store").returncode == -signal.SIGKILL
    report = _store(root, "check", code=5)
    orphans = report["orphans"]
    assert isinstance(orphans, list) and len(orphans) == 1
    assert _store(root, "gc", code=0)["removed"] == []  # within the grace period
    removed = _store(root, "gc", "--older-than", "0", code=0)["removed"]
    assert removed == [orphans[0]["cid"]]
    with KuboClient(kubo.api_url, timeout=10) as client:
        assert orphans[0]["cid"] not in client.pins()
    assert _store(root, "check", code=0)["clean"] is True
    assert _put(root).returncode == 0

    # The daemon restarted on a new, empty repository: refused, and nothing is added to it.
    fresh = KuboDaemon(tmp_path / "fresh-repo", binary=e2e_kubo_binary, name="fresh")
    fresh.start()
    try:
        profile = root / "profile.yaml"
        data = yaml.safe_load(profile.read_text(encoding="utf-8"))
        data["storage"]["url"] = fresh.api_url
        profile.write_text(yaml.safe_dump(data), encoding="utf-8")
        with KuboClient(fresh.api_url, timeout=10) as client:
            pins_before = client.pins()
        refused = _put(root)
        assert refused.returncode == 3, refused.stderr
        assert "holds no marker of consortium" in refused.stderr
        with KuboClient(fresh.api_url, timeout=10) as client:
            assert client.pins() == pins_before
        status = runner.invoke(app, ["network", "status", "-p", str(root), "--json"])
        assert status.exit_code == 3
        assert "holds no marker" in json.loads(status.stdout)["storage"]["problem"]
    finally:
        fresh.stop()
