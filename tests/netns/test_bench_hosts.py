"""``ehrshare bench e2e --backend fabric --hosts netns [--delay-ms N]``: the end-to-end figures
with each hospital on a host of its own, and link delay where the kernel has ``sch_netem``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ehrshare.commands.bench_e2e import run_e2e_bench
from ehrshare.network.netns import HostLayout, NetnsUnavailable

pytestmark = [pytest.mark.netns]

OPERATIONS = {
    "put_record_10KB",
    "put_record_10MB",
    "grant",
    "read_record_hop1",
    "read_record_hop3",
}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", "bench", "e2e", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def _netem(state_dir: object) -> bool:
    with HostLayout.create(["probe"], state_dir=state_dir) as layout:  # type: ignore[arg-type]
        try:
            layout.delay(1)
        except NetnsUnavailable:
            return False
    return True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "netns"], "--hosts 'netns': local, or netns with --backend fabric"),
        (["--backend", "fabric", "--delay-ms", "10"], "--delay-ms needs --hosts netns"),
        (["--backend", "fabric", "--storage", "cloud"], "--storage 'cloud'"),
    ],
    ids=["hosts-need-fabric", "delay-needs-hosts", "bad-storage"],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, machine_before: object
) -> None:
    done = _bench(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.fabric
@pytest.mark.slow
def test_delay_needs_netem_and_says_so_before_building_anything(
    machine_before: object, state_dir: object
) -> None:
    if _netem(state_dir):
        pytest.skip("this kernel has sch_netem: the delayed run is measured, not refused")
    started = time.monotonic()
    done = _bench("--backend", "fabric", "--hosts", "netns", "--delay-ms", "10")
    assert done.returncode == 3, done.stderr
    assert "no netem queueing discipline" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # refused before a network was built


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_bench_runs_across_hosts_and_removes_them(machine_before: object) -> None:
    result = run_e2e_bench(
        repeat=2, repeat_large=1, warmup=0, large_bytes=64 * 1024, ledger="fabric", hosts="netns"
    )
    assert set(result["results"]) == OPERATIONS
    assert all(r["p50_ms"] > 0 for r in result["results"].values())
    backend = result["backend"]
    assert (backend["storage"], backend["services"]) == ("swarm", "processes")
    assert sorted(backend["hosts"]["hosts"]) == [
        "HospitalAMSP", "HospitalBMSP", "HospitalCMSP", "OrdererMSP"
    ]  # fmt: skip
    assert backend["hosts"]["delay_ms"] == 0
    json.dumps(result)
