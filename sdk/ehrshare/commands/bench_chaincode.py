"""``ehrshare bench chaincode``: the chaincode server's CPU and latency per endorsement.

Only parses options and prints; the measuring is :mod:`ehrshare.bench.chaincode`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ehrshare.bench.chaincode import PEERS, run_benchmark
from ehrshare.benchutil import print_result
from ehrshare.console import err_console
from ehrshare.errors import EXIT_USAGE

__all__ = ["register"]

_BASELINE = typer.Option(
    None,
    "--baseline",
    help="A directory holding another ehrshare_chaincode package (e.g. an earlier "
    "commit's chaincode/) to measure beside the current one in the same run.",
)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench chaincode``."""
    del app

    @bench_app.command("chaincode")
    def bench_chaincode(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        n: int = typer.Option(200, "--n", help="Transactions per operation and round."),
        repeat: int = typer.Option(3, "--repeat", help="Rounds per operation (medians over them)."),
        warmup: int = typer.Option(20, "--warmup", help="Untimed transactions per operation."),
        baseline: Path | None = _BASELINE,
        workers: int = typer.Option(16, "--workers", help="Transactions the server runs at once."),
        peer: str = typer.Option(
            "2.x",
            "--peer",
            help="The peer played: 2.x, or 3.1 (offers write batches and multiple-key reads).",
        ),
    ) -> None:
        """Chaincode server alone over gRPC: endorsements/s, server CPU ms each, p50/p99."""
        err = err_console()
        for name, value, least in (
            ("--n", n, 1),
            ("--repeat", repeat, 1),
            ("--workers", workers, 1),
        ):
            if value < least:
                err.print(f"[red]{name} must be at least {least}")
                raise typer.Exit(EXIT_USAGE)
        if peer not in PEERS:
            err.print(f"[red]--peer must be one of {', '.join(PEERS)}")
            raise typer.Exit(EXIT_USAGE)
        if warmup < 0:
            err.print("[red]--warmup must not be negative")
            raise typer.Exit(EXIT_USAGE)
        if baseline is not None and not (baseline / "ehrshare_chaincode" / "__init__.py").is_file():
            err.print(f"[red]--baseline {baseline} holds no ehrshare_chaincode package")
            raise typer.Exit(EXIT_USAGE)
        with err.status("benchmarking the chaincode server") as status:
            result = run_benchmark(
                n=n,
                repeat=repeat,
                warmup=warmup,
                baseline=baseline,
                workers=workers,
                peer=peer,
                progress=lambda msg: status.update(msg),
            )
        if json_only:
            print_result(result, json_only=True)
            return
        table = Table(
            title=f"chaincode server over gRPC (one transaction at a time, a {peer} peer)"
        )
        for col in (
            "server",
            "operation",
            "endorsements/s",
            "state requests",
            "server CPU ms",
            "client CPU ms",
            "p50 ms",
            "p99 ms",
        ):
            table.add_column(col, justify="right")
        for label, ops in result["servers"].items():
            for op, s in ops.items():
                table.add_row(
                    label,
                    op,
                    f"{s['endorsements_per_s']['median']:.0f}",
                    f"{s['state_requests_per_call_total']:g}",
                    f"{s['server_cpu_ms_per_endorsement']['median']:.2f}",
                    f"{s['client_cpu_ms_per_call']['median']:.2f}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                )
        print_result(result, json_only=False, tables=[table])
