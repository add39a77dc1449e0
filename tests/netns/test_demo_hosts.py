"""``ehrshare demo --backend fabric --hosts netns``: the story across three hospital hosts.

Each hospital's peer, Kubo node, KGC node and proxy run in its own network namespace bound to
its own address; the story adds a read with the origin hospital's IPFS node stopped and
hospital C cut off mid-run and back. Nothing of the hosts is left afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.demo import run_demo

pytestmark = [pytest.mark.netns, pytest.mark.fabric, pytest.mark.ipfs, pytest.mark.slow]

HOST_CHECKS = {
    "read_with_origin_ipfs_stopped",
    "others_commit_while_cut",
    "cut_reader_clear_error",
    "cut_host_caught_up",
    "cut_reader_reads_after_heal",
    "service_processes_stopped",
    "fabric_processes_stopped",
}


def test_the_story_holds_across_three_hospital_hosts(
    tmp_path: Path, machine_before: tuple[list[str], list[str]]
) -> None:
    root = tmp_path / "c"
    result = run_demo(root, ledger="fabric", hosts="netns", keep=True)
    failed = {k for k, v in result.checks.items() if not v}
    assert not failed and set(result.checks) >= HOST_CHECKS, result.to_dict()
    assert result.to_dict()["backend"] == {
        "ledger": "fabric",
        "storage": "swarm",
        "services": "processes",
    }
    lines = [line for step in result.steps for line in step.lines]
    assert any("record read with its origin hospital's IPFS node stopped" in x for x in lines)
    assert any("hospital C cut off and back: its peer caught up" in x for x in lines)
    # No node of the consortium is on loopback: not in the profile clients use, not in the
    # swarm's or the Fabric network's records.
    profile = (root / "profile.yaml").read_text(encoding="utf-8")
    assert "127.0.0.1" not in profile and "localhost" not in profile
    assert "10.231." in profile
    for record in (root / "ipfs" / "swarm.json", root / "fabric" / "network.json"):
        assert "127.0.0.1" not in record.read_text(encoding="utf-8"), record
    nodes = json.loads((root / "ipfs" / "swarm.json").read_text(encoding="utf-8"))["nodes"]
    assert len({n["host"] for n in nodes}) == 3 and all(n["netns"] for n in nodes)


@pytest.mark.parametrize(
    "args",
    [["--hosts", "netns"], ["--backend", "fabric", "--hosts", "elsewhere"]],
    ids=["netns-needs-fabric", "unknown-mode"],
)
def test_bad_hosts_option_is_a_usage_error(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ehrshare", "demo", *args, "--keep", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "--hosts" in done.stderr
    assert not (tmp_path / "c").exists()
