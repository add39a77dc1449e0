"""``ehrshare bench e2e --backend fabric --hosts netns [--delay-ms 10,50]``: the end-to-end figures
with each hospital on a host of its own, at 0 ms and at each added one-way link delay (``tc
netem`` where the kernel has it, else the user-space link relay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "netns"], "--hosts 'netns': local, or netns with --backend fabric"),
        (["--backend", "fabric", "--delay-ms", "10"], "--delay-ms needs --hosts netns"),
        (["--backend", "fabric", "--storage", "cloud"], "--storage 'cloud'"),
        (
            ["--backend", "fabric", "--hosts", "netns", "--delay-ms", "10,ten"],
            "--delay-ms '10,ten': milliseconds from 0 to 10000",
        ),
        (["--backend", "fabric", "--hosts", "netns", "--delay-ms", "-5"], "milliseconds from 0"),
    ],
    ids=["hosts-need-fabric", "delay-needs-hosts", "bad-storage", "bad-delay", "negative"],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, machine_before: object
) -> None:
    done = _bench(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.fabric
@pytest.mark.ipfs
@pytest.mark.slow
def test_delayed_bench_times_each_delay_next_to_0_ms_and_removes_everything(
    machine_before: object, state_dir: object
) -> None:
    result = run_e2e_bench(
        repeat=3,
        repeat_large=1,
        warmup=1,
        large_bytes=64 * 1024,
        ledger="fabric",
        hosts="netns",
        delay_ms=[0, 10, 50],
    )
    hosts = result["backend"]["hosts"]
    assert hosts["delay_ms"] == [0, 10, 50]
    netem = HostLayout.create(["probe"], state_dir=state_dir)  # type: ignore[arg-type]
    try:
        netem.delay(1)
        expected = "netem"
    except NetnsUnavailable:
        expected = "relay"
    finally:
        netem.teardown()
    assert hosts["delay_method"] == expected
    rows = result["by_delay"]
    assert list(rows) == ["0", "10", "50"]
    assert result["results"] == rows["0"]["results"]
    for name in ("grant", "read_record_hop1", "put_record_10KB"):
        fast, slow = rows["0"]["results"][name]["p50_ms"], rows["50"]["results"][name]["p50_ms"]
        # Every one of these crosses at least one delayed round trip (client -> its hospital's
        # peer or node: the way in is delayed 50 ms) and usually several.
        assert slow >= fast + 50, (name, fast, slow)
        assert rows["10"]["results"][name]["p50_ms"] >= fast + 10, name
    if expected == "relay":
        for row in rows.values():
            assert row["relay"]["dropped"] == 0 and row["relay"]["frames"] > 0
    json.dumps(result)


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
    assert backend["hosts"]["delay_ms"] == 0 and backend["hosts"]["delay_method"] is None
    assert list(result["by_delay"]) == ["0"] and result["by_delay"]["0"]["relay"] is None
    json.dumps(result)
