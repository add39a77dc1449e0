"""Hyperledger Caliper 0.6 driving ``bench fabric``'s rounds on the same network: an outside load
generator to confirm the figures (``ehrshare bench fabric --caliper``).

Caliper and its Fabric SDK binding (fabric-network 2.2, the one for peers without the Gateway
service) are pinned in ``bench/caliper/package.json`` and ``package-lock.json`` and installed by
``make caliper`` (``npm ci``); the workload modules are ``bench/caliper/workloads/*.js``. This
module writes Caliper's network configuration — the identities bench fabric enrolled, each
organisation's *generated* connection profile (``fabric/connection-<MSP>.json``) with service
discovery on, mutual TLS — and a benchmark configuration with the same rounds (``fixed-rate`` for
the offered rates, ``fixed-load`` with as many outstanding transactions as bench fabric has
client threads for saturation), runs ``caliper launch manager`` through the supervisor and
parses the summary table it prints. Caliper reports throughput, average and maximum latency, not
percentiles. The configuration files hold private keys: they live in the run's temporary
directory (mode 0600) and go with it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ehrshare.bench.chaincode import process_cpu_seconds
from ehrshare.network.supervisor import start_child, stop_process
from ehrshare.services.vault import atomic_write

__all__ = [
    "CALIPER_VERSION",
    "CaliperIdentity",
    "CaliperUnavailable",
    "caliper_dir",
    "parse_summary",
    "run_caliper",
]

CALIPER_VERSION: Final = "0.6.0"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WORKLOADS = {
    "trivial write": "workloads/put.js",
    "RegisterRecord": "workloads/register-record.js",
    "RequestAccess": "workloads/request-access.js",
}


class CaliperUnavailable(RuntimeError):
    """Caliper is not installed (``make caliper``) or did not run; the message says which."""


@dataclass(frozen=True)
class CaliperIdentity:
    """An identity Caliper submits as: its alias, MSP, certificate and key (PEM) and, for a
    patient, its identity-based id (the owner of its records)."""

    alias: str
    msp: str
    cert_pem: bytes
    key_pem: bytes
    ibe_id: str


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent pids in ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def caliper_dir() -> Path:
    """Where Caliper is installed: ``EHRSHARE_CALIPER_DIR``, else the repository's
    ``bench/caliper``; CaliperUnavailable (naming ``make caliper``) when its CLI is missing."""
    env = os.environ.get("EHRSHARE_CALIPER_DIR")
    where = Path(env) if env else Path(__file__).resolve().parents[3] / "bench" / "caliper"
    cli = where / "node_modules" / ".bin" / "caliper"
    if not cli.exists() or not (where / "node_modules" / "fabric-network").is_dir():
        raise CaliperUnavailable(
            f"Caliper {CALIPER_VERSION} is not installed in {where}: run `make caliper` "
            "(npm ci of bench/caliper/package-lock.json) or set EHRSHARE_CALIPER_DIR"
        )
    return where


def _network_config(
    channel: str,
    contracts: Sequence[str],
    identities: Sequence[CaliperIdentity],
    profiles: dict[str, Path],
) -> dict[str, Any]:
    orgs = []
    for msp, profile in profiles.items():
        certs = [
            {
                "name": i.alias,
                "clientPrivateKey": {"pem": i.key_pem.decode()},
                "clientSignedCert": {"pem": i.cert_pem.decode()},
            }
            for i in identities
            if i.msp == msp
        ]
        if certs:
            orgs.append(
                {
                    "mspid": msp,
                    "identities": {"certificates": certs},
                    "connectionProfile": {"path": str(profile), "discover": True},
                }
            )
    return {
        "name": "ehrshare",
        "version": "2.0.0",
        "caliper": {"blockchain": "fabric", "sutOptions": {"mutualTls": True}},
        "channels": [{"channelName": channel, "contracts": [{"id": c} for c in contracts]}],
        "organizations": orgs,
    }


def _rounds(
    operations: Sequence[str],
    populations: Sequence[str],
    rates: Sequence[float],
    duration_s: float,
    load: int,
    arguments: dict[str, Any],
) -> list[dict[str, Any]]:
    out = []
    for op in operations:
        for population in populations:
            controls: list[tuple[str, dict[str, Any]]] = [
                (f"{r:g}tps", {"type": "fixed-rate", "opts": {"tps": r}}) for r in rates
            ]
            controls.append(
                ("saturation", {"type": "fixed-load", "opts": {"transactionLoad": load}})
            )
            for label, control in controls:
                name = f"{op.replace(' ', '-')}_{population}_{label}"
                out.append(
                    {
                        "label": name,
                        "txDuration": duration_s,
                        "rateControl": control,
                        "workload": {
                            "module": _WORKLOADS[op],
                            "arguments": {
                                **arguments,
                                "hot": population == "hot",
                                "tag": f"{name}-{int(time.time())}",
                            },
                        },
                    }
                )
    return out


_HEADER = ("Name", "Succ", "Fail", "Send Rate (TPS)", "Max Latency (s)", "Min Latency (s)")


def parse_summary(text: str) -> dict[str, dict[str, float | None]]:
    """The rows of the result tables Caliper printed (the last one of each round wins), by
    round label: ``succ``, ``fail``, ``send_rate_tps``, ``max_latency_s``, ``min_latency_s``,
    ``avg_latency_s``, ``throughput_tps``; a cell Caliper left without a number (``-``, a round
    with no successful transaction) is None."""
    keys = (
        "succ",
        "fail",
        "send_rate_tps",
        "max_latency_s",
        "min_latency_s",
        "avg_latency_s",
        "throughput_tps",
    )
    rows: dict[str, dict[str, float | None]] = {}
    header_seen = False
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if tuple(cells[: len(_HEADER)]) == _HEADER:
            header_seen = True
            continue
        if not header_seen or len(cells) != 8 or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = dict(zip(keys, (_number(c) for c in cells[1:]), strict=True))
    return rows


def _successful_tps(row: dict[str, float | None]) -> float | None:
    """Caliper's "Throughput" counts every finished transaction, failed ones too: the share of
    it that succeeded (its time base is the round's, so this is successes per second)."""
    succ, fail, tps = row.get("succ"), row.get("fail"), row.get("throughput_tps")
    if succ is None or fail is None or tps is None:
        return None
    return tps * succ / (succ + fail) if succ + fail > 0 else 0.0


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def run_caliper(
    *,
    workdir: Path,
    channel: str,
    contract: str,
    kv_contract: str,
    patients: Sequence[CaliperIdentity],
    clinicians: Sequence[CaliperIdentity],
    records: Sequence[str],
    profiles: dict[str, Path],
    operations: Sequence[str],
    populations: Sequence[str],
    rates: Sequence[float],
    duration_s: float,
    load: int,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run Caliper's rounds against the running network; the parsed figures and its config."""
    say = progress or (lambda _msg: None)
    where = caliper_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    network = _network_config(channel, [contract, kv_contract], [*patients, *clinicians], profiles)
    arguments = {
        "contract": contract,
        "kvContract": kv_contract,
        "patients": [{"alias": p.alias, "msp": p.msp, "ibeId": p.ibe_id} for p in patients],
        "clinicians": [{"alias": c.alias, "msp": c.msp} for c in clinicians],
        "records": list(records),
    }
    rounds = _rounds(operations, populations, rates, duration_s, load, arguments)
    bench = {
        "test": {"name": "ehrshare-bench-fabric", "workers": {"number": workers}, "rounds": rounds}
    }
    net_path = workdir / "caliper-network.json"
    bench_path = workdir / "caliper-bench.json"
    atomic_write(net_path, json.dumps(network, indent=2).encode(), mode=0o600)
    atomic_write(bench_path, json.dumps(bench, indent=2).encode(), mode=0o600)
    argv = [
        str(where / "node_modules" / ".bin" / "caliper"),
        "launch",
        "manager",
        "--caliper-workspace",
        str(where),
        "--caliper-networkconfig",
        str(net_path),
        "--caliper-benchconfig",
        str(bench_path),
        "--caliper-flow-only-test",
        "--caliper-fabric-gateway-localhost",
        "false",
        # Wait for every peer's commit, as bench fabric's client waits for its endorsers':
        # with msp_any the next transaction on a patient could be endorsed by a peer that had
        # not yet committed the last one, and fail as a conflict only Caliper would see.
        "--caliper-fabric-gateway-eventstrategy",
        "network_all",
        "--caliper-report-path",
        str(workdir / "caliper-report.html"),
    ]
    log = workdir / "caliper.log"
    say(f"Caliper {CALIPER_VERSION}: {len(rounds)} rounds, {workers} workers")
    child = start_child("caliper", argv, log, cwd=where, die_with_parent=True)
    assert child.popen is not None
    limit = timeout if timeout is not None else 120 + len(rounds) * (duration_s + 30)
    deadline = time.monotonic() + limit
    # Caliper's manager and its worker processes: their CPU, read from /proc while they run
    # (the last reading of each; a worker's last half second may be missed).
    cpu_by_pid: dict[int, float] = {}
    while True:
        for pid in _descendants(child.pid):
            try:
                cpu_by_pid[pid] = process_cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue
        try:
            code = child.popen.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                stop_process(child, grace=5, kill=True)
                raise CaliperUnavailable(
                    f"Caliper did not finish in {limit:.0f} s: {child.tail()}"
                ) from None
    cpu_s = sum(cpu_by_pid.values())
    text = log.read_text(encoding="utf-8", errors="replace")
    rows = parse_summary(text)
    missing = [r["label"] for r in rounds if r["label"] not in rows]
    if code != 0 or missing:
        raise CaliperUnavailable(
            f"Caliper exited {code} and reported {len(rows)} of {len(rounds)} rounds: "
            f"{child.tail(lines=12)}"
        )
    succeeded = sum(int(rows[r["label"]]["succ"] or 0) for r in rounds)
    return {
        "version": CALIPER_VERSION,
        "sdk": "fabric-network 2.2.20 (Caliper's fabric:2.2 binding)",
        "workers": workers,
        "discovery": True,
        "mutual_tls": True,
        "event_strategy": "network_all",
        "client_cpu_ms_per_successful_tx": cpu_s * 1000.0 / max(1, succeeded),
        "rounds": [
            {
                "label": r["label"],
                "rate_control": r["rateControl"],
                "duration_s": duration_s,
                **rows[r["label"]],
                "successful_tps": _successful_tps(rows[r["label"]]),
            }
            for r in rounds
        ],
    }
