"""``ehrshare bench fhir``: the FHIR server against the SDK for create and read (the work is in
:mod:`ehrshare.bench.fhir`)."""

from __future__ import annotations

import typer
from rich.table import Table

from ehrshare.benchutil import print_result, progress_console

__all__ = ["register"]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench fhir``."""
    del app

    @bench_app.command("fhir")
    def bench_fhir(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        repeat: int = typer.Option(20, min=1, help="Timed calls per operation and path."),
        warmup: int = typer.Option(2, min=0, help="Untimed warm-up calls per operation."),
    ) -> None:
        """p50/p95 and requests/s of create and read (owner, grantee) through the FHIR server
        (client in its own process; also httpx in-process), through its gateway without HTTP,
        and through the SDK, interleaved in one run on the embedded backend."""
        from ehrshare.bench.fhir import run_fhir_bench

        err = progress_console(json_only)
        result = run_fhir_bench(
            repeat=repeat, warmup=warmup, progress=lambda m: err.log(f"bench fhir: {m}")
        )
        table = Table(title="ehrshare bench fhir (embedded ledger, ms)")
        columns = (
            "operation",
            "SDK p50",
            "FHIR p50",
            "httpx in-proc p50",
            "no-HTTP p50",
            "HTTP alone p50",
            "SDK p95",
            "FHIR p95",
        )
        for column in (*columns, "p50 ratio"):
            table.add_column(column, justify="left" if column == "operation" else "right")
        for op, r in result["results"].items():
            table.add_row(
                op,
                f"{r['sdk']['p50_ms']:.1f}",
                f"{r['fhir']['p50_ms']:.1f}",
                f"{r['fhir_inprocess_httpx']['p50_ms']:.1f}",
                f"{r['gateway']['p50_ms']:.1f}",
                f"{r['http_roundtrip']['p50_ms']:.1f}",
                f"{r['sdk']['p95_ms']:.1f}",
                f"{r['fhir']['p95_ms']:.1f}",
                f"{r['p50_ratio']:.2f}",
            )
        print_result(result, json_only=json_only, tables=[table])
