"""``ehrshare bench fhir`` runs and reports, per operation, the SDK, the server over HTTP from a
client in its own process (the target's ratio), the server from httpx in the benchmark's
process, and the gateway without HTTP; the driver process is gone when it returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.bench.fhir import DRIVER, PATHS, TARGET_P50_RATIO, DriverClient, run_fhir_bench


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # The pid exists again only if reused by an unrelated process: not our driver.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return str(DRIVER).encode() not in cmdline


def test_the_bench_reports_every_path_and_stops_its_driver(tmp_path: Path) -> None:
    result = run_fhir_bench(repeat=3, warmup=0, directory=tmp_path)
    json.dumps(result)  # JSON-able as printed
    assert set(result["results"]) == {"create", "read_owner", "read_grantee"}
    for op in result["results"].values():
        for path in PATHS:
            assert op[path]["n"] == 3 and op[path]["p50_ms"] > 0
        assert op["p50_ratio"] == round(op["fhir"]["p50_ms"] / op["sdk"]["p50_ms"], 3)
        assert op["inprocess_httpx_p50_ratio"] == round(
            op["fhir_inprocess_httpx"]["p50_ms"] / op["sdk"]["p50_ms"], 3
        )
        assert op["gateway_p50_ratio"] > 0
        assert op["met"] == (op["p50_ratio"] <= TARGET_P50_RATIO)
    params = result["params"]
    assert params["order"] == "rotating"
    assert set(params["clients"]) == {"fhir", "fhir_inprocess_httpx"}
    assert len(params["loadavg_1min"]) == 2
    driver = params["driver"]
    assert driver["pid"] != os.getpid()
    assert driver["exit_code"] == 0 and driver["killed"] is False  # ended when its input closed
    assert _gone(driver["pid"])
    assert list(tmp_path.iterdir()) == []  # the consortium was temporary


def test_a_driver_that_does_not_exit_is_killed_by_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    """If closing its input does not end the driver, stop() kills it by pid (SIGKILL)."""
    import ehrshare.bench.fhir as bench

    # A stand-in that says it is ready, then ignores end of input.
    stubborn = (
        "import sys, time; sys.stdin.readline(); print('{\"ready\": true}', flush=True); "
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    )
    real_popen = subprocess.Popen

    def popen(args: list[str], **kw: object) -> subprocess.Popen[str]:
        assert args[-1] == str(DRIVER)
        return real_popen([sys.executable, "-c", stubborn], **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    monkeypatch.setattr(bench, "STOP_TIMEOUT", 0.5)
    client = DriverClient("127.0.0.1", 9, {})
    client.stop()
    assert client.killed and client.exit_code == -9
    assert _gone(client.pid)


def test_the_driver_reports_a_refused_request_as_an_error() -> None:
    """Nothing listening: the driver exits non-zero and the benchmark says so, no hang."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the driver connects
    with pytest.raises(RuntimeError, match="exited early"):
        DriverClient("127.0.0.1", port, {}, timeout=5)
