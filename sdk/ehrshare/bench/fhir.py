"""``ehrshare bench fhir``: create and read through the FHIR server against the same operations
through the Python SDK, in one run on one consortium, calls interleaved so that both see the
same machine. The server adds HTTP, JSON and FHIR validation; the ratio of the medians is the
number to watch (issue 17's target: at most 1.2 at p50).

The FHIR path's client is its own process, as a hospital system is: a small driver speaking
HTTP/1.1 keep-alive with the standard library's ``http.client``
(:mod:`ehrshare.bench.fhir_driver`), started here, asked for one request at a time over a pipe,
timing each request itself, and stopped by its pid at the end; the target's ratio is from it.
An extra row, httpx in this process (the benchmark's former client), is kept so that what an
in-process client costs (its own machinery, the shared GIL) shows in the same run. A further
path, the gateway called without HTTP, separates what the FHIR mapping costs from what HTTP
costs, and ``GET metadata`` through each client (no SDK work) is the HTTP round trip alone; the
load average before and after is recorded, since on a shared machine the round trip is mostly
waiting for a core. Must not print: it returns the result.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ehrshare.benchutil import machine_metadata, percentile
from ehrshare.demo import lab_observation
from ehrshare.fhirapi import FhirServer, TokenBook
from ehrshare.fhirapi.auth import Credentials
from ehrshare.fhirapi.gateway import BASE, gateway_for
from ehrshare.network.supervisor import start_piped
from ehrshare.provisioning import Consortium

DRIVER = Path(__file__).with_name("fhir_driver.py")
STOP_TIMEOUT = 10.0  # seconds the driver has to exit after its input closes

__all__ = ["DRIVER", "TARGET_P50_RATIO", "DriverClient", "run_fhir_bench"]

TARGET_P50_RATIO = 1.2  # issue 17: the server adds at most 20 % at p50


# The paths of each operation, in the order they are called (rotating start).
PATHS = (
    "sdk",
    "fhir",
    "fhir_inprocess_httpx",
    "gateway",
    "http_roundtrip",
    "http_roundtrip_inprocess_httpx",
)


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 95), 3),
        "requests_per_s": round(1000.0 * len(samples) / sum(samples), 2),
        "n": float(len(samples)),
    }


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


class DriverClient:
    """The FHIR client in its own process (:mod:`ehrshare.bench.fhir_driver`).

    ``requests`` names each request (method, path on the server, headers, body); :meth:`call`
    asks the driver for one and returns its own timing in ms. :meth:`stop` closes the driver's
    input, waits for it to exit, and kills it by pid if it does not; :attr:`pid` and
    :attr:`exit_code` are reported in the result.
    """

    def __init__(
        self, host: str, port: int, requests: dict[str, dict[str, Any]], timeout: float = 120.0
    ) -> None:
        self._proc = start_piped([sys.executable, "-I", str(DRIVER)])
        self.pid = self._proc.pid
        self.exit_code: int | None = None
        self.killed = False
        setup = {"host": host, "port": port, "timeout": timeout, "requests": requests}
        try:
            self._send(json.dumps(setup))
            if self._receive().get("ready") is not True:
                raise RuntimeError("the FHIR bench driver did not say it was ready")
        except BaseException:
            self.stop()
            raise

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the FHIR bench driver (pid {self.pid}) exited early: {self._proc.wait()}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, name: str, expect: int) -> float:
        """Have the driver send request ``name``; its time in ms (it must answer ``expect``)."""
        self._send(name)
        answer = self._receive()
        if answer["status"] != expect:
            raise RuntimeError(f"{name} answered {answer['status']}, not {expect}")
        return float(answer["ms"])

    def stop(self) -> None:
        """End the driver: close its input, wait, kill -9 by pid after STOP_TIMEOUT."""
        if self.exit_code is not None:
            return
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            self.exit_code = self._proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True
            self.exit_code = self._proc.wait()


def run_fhir_bench(
    *,
    repeat: int = 20,
    warmup: int = 2,
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark in a fresh embedded consortium; returns the JSON-able result."""
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="ehrshare-bench-fhir-", dir=directory) as tmp:
        say("creating a consortium and running the DKG")
        c = Consortium.init(Path(tmp) / "c")
        try:
            ids = {}
            for name, hospital, role in (
                ("alice", "HospitalA", "patient"),
                ("baker", "HospitalB", "clinician"),
            ):
                c.add_member(name, hospital, role)
                with c.session(name) as s:
                    s.enroll()
                    s.publish_type_keys()
                    ids[name] = s.ibe_id
            book = TokenBook.load(Path(tmp) / "tokens.json")
            book, alice_token = book.issue("alice")
            book, baker_token = book.issue("baker")
            gateway = gateway_for(c.runtime, book)
            server = FhirServer(gateway, ("127.0.0.1", 0)).start()
            alice, baker = c.session("alice"), c.session("baker")
            headers = {"Content-Type": "application/fhir+json"}
            http_alice = httpx.Client(
                base_url=server.url,
                headers=headers | {"Authorization": f"Bearer {alice_token}"},
                timeout=120,
            )
            http_baker = httpx.Client(
                base_url=server.url,
                headers=headers | {"Authorization": f"Bearer {baker_token}"},
                timeout=120,
            )
            driver: DriverClient | None = None
            try:
                alice.grant(ids["baker"], "lab", expires=_dt.timedelta(days=30))
                obs = lab_observation()
                ref = alice.put_record(obs)

                def http_create() -> None:
                    r = http_alice.post("/Observation", json=obs)
                    if r.status_code != 201:
                        raise RuntimeError(f"create answered {r.status_code}: {r.text}")

                obs_bytes = json.dumps(obs).encode()

                def direct(token: str, method: str, path: str) -> Callable[[], None]:
                    """The gateway without HTTP: what the server adds beyond the SDK call."""
                    credentials = Credentials(f"Bearer {token}")
                    body = obs_bytes if method == "POST" else b""

                    def call() -> None:
                        answer = gateway.handle(method, path, {}, credentials, body, server.url)
                        if answer.status not in (200, 201):
                            raise RuntimeError(f"{method} {path} answered {answer.status}")

                    return call

                record_path = f"{BASE}/Observation/{ref.record_id}"

                def http_read(client: httpx.Client) -> Callable[[], None]:
                    def read() -> None:
                        r = client.get(f"/Observation/{ref.record_id}")
                        if r.status_code != 200:
                            raise RuntimeError(f"read answered {r.status_code}: {r.text}")

                    return read

                def roundtrip() -> None:
                    r = http_alice.get("/metadata")
                    if r.status_code != 200:
                        raise RuntimeError(f"metadata answered {r.status_code}")

                def as_(token: str) -> dict[str, str]:
                    return headers | {"Authorization": f"Bearer {token}"}

                url = urlsplit(server.url)
                assert url.hostname is not None and url.port is not None
                driver = DriverClient(
                    url.hostname,
                    url.port,
                    {
                        "create": {
                            "method": "POST",
                            "path": f"{BASE}/Observation",
                            "headers": as_(alice_token),
                            "body": obs_bytes.decode("utf-8"),
                        },
                        "read_owner": {
                            "method": "GET",
                            "path": record_path,
                            "headers": as_(alice_token),
                        },
                        "read_grantee": {
                            "method": "GET",
                            "path": record_path,
                            "headers": as_(baker_token),
                        },
                        "metadata": {
                            "method": "GET",
                            "path": f"{BASE}/metadata",
                            "headers": as_(alice_token),
                        },
                    },
                )
                out_of_process = driver  # narrowed for the closures below

                def measured(name: str, expect: int) -> Callable[[], float]:
                    """A driver request: the driver's own timing, not the pipe's."""
                    return lambda: out_of_process.call(name, expect)

                def timed(fn: Callable[[], object]) -> Callable[[], float]:
                    return lambda: _timed(fn)

                # Per operation, the paths in this order (also the order of PATHS).
                Timed = Callable[[], float]
                pairs: dict[str, tuple[Timed, ...]] = {
                    "create": (
                        timed(lambda: alice.put_record(obs)),
                        measured("create", 201),
                        timed(http_create),
                        timed(direct(alice_token, "POST", f"{BASE}/Observation")),
                    ),
                    "read_owner": (
                        timed(lambda: alice.read_record(ref)),
                        measured("read_owner", 200),
                        timed(http_read(http_alice)),
                        timed(direct(alice_token, "GET", record_path)),
                    ),
                    "read_grantee": (
                        timed(lambda: baker.read_record(ref)),
                        measured("read_grantee", 200),
                        timed(http_read(http_baker)),
                        timed(direct(baker_token, "GET", record_path)),
                    ),
                }
                results: dict[str, Any] = {}
                load_before = os.getloadavg()[0]
                for op, four in pairs.items():
                    calls = (*four, measured("metadata", 200), timed(roundtrip))
                    n = len(calls)
                    say(
                        f"{op}: SDK, FHIR server (client process, in-process httpx), "
                        f"gateway alone, HTTP alone; {repeat} each, interleaved"
                    )
                    for _ in range(warmup):
                        for call in calls:
                            call()
                    samples: list[list[float]] = [[] for _ in calls]
                    for i in range(repeat):
                        # Rotate which goes first: the first call of a round warms caches
                        # (SQLite pages, the record's blocks) for the others.
                        for k in range(n):
                            j = (i + k) % n
                            samples[j].append(calls[j]())
                    row = dict(zip(PATHS, (_stats(x) for x in samples), strict=True))
                    sdk_p50 = row["sdk"]["p50_ms"]
                    ratio = round(row["fhir"]["p50_ms"] / sdk_p50, 3)
                    results[op] = row | {
                        "p50_ratio": ratio,
                        "inprocess_httpx_p50_ratio": round(
                            row["fhir_inprocess_httpx"]["p50_ms"] / sdk_p50, 3
                        ),
                        "gateway_p50_ratio": round(row["gateway"]["p50_ms"] / sdk_p50, 3),
                        "met": ratio <= TARGET_P50_RATIO,
                    }
                load_after = os.getloadavg()[0]
            finally:
                if driver is not None:
                    driver.stop()
                    driver_info = {
                        "pid": driver.pid,
                        "exit_code": driver.exit_code,
                        "killed": driver.killed,
                    }
                http_alice.close()
                http_baker.close()
                alice.close()
                baker.close()
                server.stop()
        finally:
            c.close()
    return {
        "benchmark": "fhir",
        "backend": {"ledger": "embedded", "storage": "embedded", "services": "in-process"},
        "params": {
            "repeat": repeat,
            "warmup": warmup,
            "target_p50_ratio": TARGET_P50_RATIO,
            "order": "rotating",
            "clients": {
                "fhir": "http.client (HTTP/1.1 keep-alive) in a separate process",
                "fhir_inprocess_httpx": "httpx (keep-alive) in the benchmark's process",
            },
            "driver": driver_info,
            "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
        },
        "results": results,
        "machine": machine_metadata(),
    }
