"""``ehrshare bench ledger``: throughput and latency of the embedded ledger running the contract.

For each population of existing records (1, 10 000 and 100 000; ``--quick``: 1, 1 000, 10 000) it
times RegisterRecord, GrantAccess and RequestAccess submitted one at a time end to end: proposal
signed (ECDSA P-256), signature and certificate chain verified, contract simulated, MVCC-validated
and committed with its block, history and event in one SQLite transaction. The population is seeded
through the same path — signed proposals endorsed by the contract — only cut into blocks of many
transactions (one per patient, so none conflicts) to make seeding affordable. This module only
measures; it must not change ledger behaviour.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ehrshare.benchutil import machine_metadata, print_result, summarize
from ehrshare.console import err_console
from ehrshare.contract.client import EhrContract, grant_access_args, register_record_args
from ehrshare.errors import EXIT_USAGE
from ehrshare.ledger.sandbox import Member, Sandbox

__all__ = ["register", "run_ledger_benchmark"]

logger = logging.getLogger(__name__)

FULL_POPULATIONS = (1, 10_000, 100_000)
QUICK_POPULATIONS = (1, 1_000, 10_000)
TARGET_P95_MS = 5.0
TARGET_RECORDS = 100_000
RECORDS_PER_PATIENT = 100
_CAPSULE = bytes(range(256))  # a capsule-sized opaque blob
_SHA = "5" * 64
_FAR = 4102444800  # 2100-01-01


def _record_kwargs(record_id: str, owner: str) -> dict[str, Any]:
    """RegisterRecord of a benchmark record (a syntactically valid pointer to nothing)."""
    return {
        "record_id": record_id,
        "owner": owner,
        "label": "lab",
        "cid": "bafybench0000001",
        "sha256": _SHA,
        "capsule": _CAPSULE,
        "format_version": "1",
    }


def _grant_kwargs(label: str, grantee: str, max_hops: int, proxy: str) -> dict[str, Any]:
    """GrantAccess of a benchmark grant (no referral list, no parent, the chaincode's id)."""
    return {
        "label": label,
        "grantee": grantee,
        "expiry": _FAR,
        "max_hops": max_hops,
        "allowed_next": (),
        "parent_grant_id": "",
        "proxy": proxy,
    }


class _Population:
    """Patients, one clinician and the records seeded so far."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.clinician = sandbox.member("Org2MSP", "bench-clinician", "clinician")
        # GrantAccess names the proxy that holds the re-key; no re-key is made here, the
        # proxy only has to be a registered identity of role proxy.
        self.proxy = sandbox.member("Org2MSP", "bench-proxy", "proxy").ibe_id
        self.patients: list[Member] = []
        self.records: list[tuple[str, int]] = []  # (record id, patient index)
        self.granted: set[int] = set()
        self.counter = 0

    def _patients_for(self, n_records: int) -> None:
        wanted = max(1, -(-n_records // RECORDS_PER_PATIENT))
        new = [
            self.sb.member("Org1MSP", f"bench-p{i}", "patient", register=False)
            for i in range(len(self.patients), wanted)
        ]
        for start in range(0, len(new), 200):
            chunk = new[start : start + 200]
            txs = [m.contract.new_proposal("RegisterIdentity").endorse().endorsed for m in chunk]
            self._commit(txs)
        self.patients += new

    def _commit(self, txs: list[Any]) -> None:
        for status in self.sb.ledger.commit(txs):
            if not status.successful:
                raise RuntimeError(f"seeding transaction {status.tx_id} was {status.code}")

    def next_record_id(self) -> str:
        self.counter += 1
        return f"rec-{self.counter:07d}"

    def seed(self, n_records: int) -> None:
        """Bring the population up to n_records through signed, endorsed transactions."""
        self._patients_for(n_records)
        while len(self.records) < n_records:
            # One block: at most one record per patient (each writes its patient's log head).
            block: list[Any] = []
            owners: list[tuple[str, int]] = []
            for p in range(len(self.patients)):
                if len(self.records) + len(block) >= n_records:
                    break
                rid = self.next_record_id()
                proposal = self.clinician.contract.new_proposal(
                    "RegisterRecord",
                    *register_record_args(**_record_kwargs(rid, self.patients[p].ibe_id)),
                )
                block.append(proposal.endorse().endorsed)
                owners.append((rid, p))
            self._commit(block)
            self.records += owners
        # Every patient has granted the clinician, so RequestAccess exercises the grant path.
        pending = [p for p in range(len(self.patients)) if p not in self.granted]
        for start in range(0, len(pending), 200):
            chunk = pending[start : start + 200]
            txs = [
                self.patients[p]
                .contract.new_proposal(
                    "GrantAccess",
                    *grant_access_args(
                        **_grant_kwargs("lab", self.clinician.ibe_id, 1, self.proxy)
                    ),
                )
                .endorse()
                .endorsed
                for p in chunk
            ]
            self._commit(txs)
            self.granted.update(chunk)


def _time(fn: Callable[[], object], samples: int, warmup: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        fn()
    out: list[float] = []
    t_start = time.perf_counter()
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out, time.perf_counter() - t_start


def run_ledger_benchmark(
    *,
    populations: tuple[int, ...],
    samples: int,
    quick: bool,
    synchronous: str = "NORMAL",
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result."""
    say = progress or (lambda _msg: None)
    workdir = Path(tempfile.mkdtemp(prefix="ehrshare-bench-ledger-", dir=directory))
    rng = random.Random(20260101)  # noqa: S311 - picks records to request, not a secret
    results: list[dict[str, Any]] = []
    try:
        sb = Sandbox.open(workdir, synchronous=synchronous)
        try:
            pop = _Population(sb)
            for n in sorted(populations):
                say(f"seeding {n} records")
                t0 = time.perf_counter()
                before = len(pop.records)
                pop.seed(n)
                seed_s = time.perf_counter() - t0
                seeded = len(pop.records) - before
                contract = pop.clinician.ehr

                def register_record(c: EhrContract = contract) -> None:
                    p = rng.randrange(len(pop.patients))
                    c.register_record(
                        **_record_kwargs(pop.next_record_id(), pop.patients[p].ibe_id)
                    )

                def grant_access() -> None:
                    p = pop.patients[rng.randrange(len(pop.patients))]
                    p.ehr.grant_access(
                        **_grant_kwargs("imaging", pop.clinician.ibe_id, 0, pop.proxy)
                    )

                def request_access(c: EhrContract = contract) -> None:
                    rid, _ = pop.records[rng.randrange(len(pop.records))]
                    out = c.request_access(rid)
                    if not out.allowed:
                        raise RuntimeError(f"benchmark access to {rid} was denied: {out.reason}")

                ops: dict[str, Any] = {}
                for name, fn in (
                    ("RegisterRecord", register_record),
                    ("GrantAccess", grant_access),
                    ("RequestAccess", request_access),
                ):
                    say(f"{name} at {n} records")
                    lat, total = _time(fn, samples, warmup=min(10, samples))
                    stats = summarize(lat)
                    ops[name] = {
                        "tx_per_s": samples / total,
                        "p50_ms": stats["median_ms"],
                        "p95_ms": stats["p95_ms"],
                        "p99_ms": stats["p99_ms"],
                        "samples": samples,
                    }
                results.append(
                    {
                        "existing_records": n,
                        "patients": len(pop.patients),
                        "seed_seconds": seed_s,
                        "seed_tx_per_s": seeded / seed_s if seed_s > 0 and seeded else None,
                        "operations": ops,
                    }
                )
            say("verifying the whole ledger (signatures and replay)")
            t0 = time.perf_counter()
            integrity = sb.ledger.verify()
            integrity["seconds"] = time.perf_counter() - t0
        finally:
            sb.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    largest = max(results, key=lambda r: int(r["existing_records"]))
    p95 = float(largest["operations"]["RequestAccess"]["p95_ms"])
    return {
        "benchmark": "ledger",
        "backend": "embedded",
        "quick": quick,
        "populations": sorted(populations),
        "samples_per_operation": samples,
        "sqlite": {"journal_mode": "WAL", "synchronous": synchronous},
        "method": (
            "one client, transactions submitted one at a time end to end (sign, verify, "
            "simulate, validate, commit one block); population seeded through the contract in "
            "blocks of one record per patient"
        ),
        "results": results,
        "ledger_verified": integrity,
        "target": {
            "operation": "RequestAccess",
            "p95_ms_max": TARGET_P95_MS,
            "defined_at_records": TARGET_RECORDS,
            "measured_at_records": largest["existing_records"],
            "measured_p95_ms": p95,
            "met": p95 < TARGET_P95_MS,
            "note": (
                ""
                if largest["existing_records"] >= TARGET_RECORDS
                else "quick or reduced run: measured below the population the target is defined at"
            ),
        },
        "machine": machine_metadata(),
    }


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench ledger``."""

    @bench_app.command("ledger")
    def bench_ledger(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        quick: bool = typer.Option(
            False, "--quick", help="Populations 1 / 1 000 / 10 000 (under a minute)."
        ),
        populations: str = typer.Option(
            "", "--populations", help="Comma-separated record counts (overrides the defaults)."
        ),
        samples: int = typer.Option(0, "--samples", help="Timed transactions per operation."),
        synchronous: str = typer.Option(
            "NORMAL", "--synchronous", help="SQLite synchronous: NORMAL or FULL (fsync per commit)."
        ),
        directory: str = typer.Option(
            "", "--dir", help="Where to create the temporary ledger (default: system temp)."
        ),
    ) -> None:
        """Embedded-ledger tx/s and p50/p95 of RegisterRecord, GrantAccess and RequestAccess."""
        err = err_console()
        if populations:
            try:
                pops = tuple(int(x) for x in populations.split(","))
            except ValueError:
                err.print(f"[red]--populations {populations!r} is not a list of integers")
                raise typer.Exit(EXIT_USAGE) from None
            if any(p < 1 for p in pops):
                err.print("[red]every population must be at least 1 record")
                raise typer.Exit(EXIT_USAGE)
        else:
            pops = QUICK_POPULATIONS if quick else FULL_POPULATIONS
        n = samples or (100 if quick else 300)
        if n < 1:
            err.print("[red]--samples must be at least 1")
            raise typer.Exit(EXIT_USAGE)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            err.print(f"[red]--synchronous {synchronous!r} is not NORMAL or FULL")
            raise typer.Exit(EXIT_USAGE)
        with err.status("benchmarking the embedded ledger") as status:
            result = run_ledger_benchmark(
                populations=pops,
                samples=n,
                quick=quick,
                synchronous=synchronous.upper(),
                directory=Path(directory) if directory else None,
                progress=lambda msg: status.update(msg),
            )
        if json_only:
            print_result(result, json_only=True)
            return
        table = Table(title="embedded ledger (one client, one tx per block)")
        for col in ("records", "operation", "tx/s", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(col, justify="right")
        for r in result["results"]:
            for op, s in r["operations"].items():
                table.add_row(
                    f"{r['existing_records']:,}",
                    op,
                    f"{s['tx_per_s']:.0f}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p95_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                )
        t = result["target"]
        verdict = (
            f"RequestAccess p95 {t['measured_p95_ms']:.2f} ms at {t['measured_at_records']:,} "
            f"records (target < {t['p95_ms_max']} ms at {t['defined_at_records']:,}): "
            + ("met" if t["met"] else "NOT met")
        )
        print_result(result, json_only=False, tables=[table, verdict])
