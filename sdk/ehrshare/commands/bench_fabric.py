"""``ehrshare bench fabric``: the contract against a trivial chaincode on one real Fabric network.

Only parses options and prints (progress on stderr); the measuring is :mod:`ehrshare.bench.fabric`.
"""

from __future__ import annotations

import typer
from rich.table import Table

from ehrshare.benchutil import print_result
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["register"]


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of tx/s") from None


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench fabric``."""
    del app

    @bench_app.command("fabric")
    def bench_fabric(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        orderer: str = typer.Option(
            "raft", "--orderer", help="raft (1 orderer), raft3 (3) or bft (4, Fabric 3.x)."
        ),
        rates: str = typer.Option("10,20", "--rates", help="Offered rates, tx/s, comma-separated."),
        duration: float = typer.Option(5.0, "--duration", help="Seconds per round."),
        clients: int = typer.Option(
            8, "--clients", help="Client threads at saturation (also patients and clinicians)."
        ),
        ccaas_processes: int = typer.Option(
            1,
            "--ccaas-processes",
            help="Processes serving the trivial chaincode behind one port (SO_REUSEPORT).",
        ),
        only: str = typer.Option(
            "",
            "--only",
            help="Operations to run, comma-separated (default: the three; also "
            "'RequestAccess hinted').",
        ),
        hot: bool = typer.Option(True, "--hot/--no-hot", help="Also run one-hot-patient rounds."),
        caliper: bool = typer.Option(
            False, "--caliper", help="Then run the same rounds with Caliper (make caliper)."
        ),
    ) -> None:
        """Fabric: trivial write vs RegisterRecord vs RequestAccess; tx/s, p50/p95/p99, ratio."""
        from ehrshare.bench.caliper import CaliperUnavailable
        from ehrshare.bench.fabric import OPERATIONS, FabricBenchSpec, run_benchmark
        from ehrshare.ledger.errors import LedgerError
        from ehrshare.network.fabric import FabricNetError
        from ehrshare_consensus.live import LiveUnavailable

        err = err_console()
        operations = tuple(o.strip() for o in only.split(",") if o.strip()) or OPERATIONS
        spec = FabricBenchSpec(
            orderer=orderer,
            rates=_rates(rates),
            duration_s=duration,
            clients=clients,
            ccaas_processes=ccaas_processes,
            operations=operations,
            populations=("many", "hot") if hot else ("many",),
            caliper=caliper,
        )
        try:
            spec.check()
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        try:
            result = run_benchmark(spec, progress=lambda msg: err.print(f"bench fabric: {msg}"))
        except (LiveUnavailable, CaliperUnavailable) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_CONFIG) from None
        except (FabricNetError, LedgerError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_UNAVAILABLE) from None
        if json_only:
            print_result(result, json_only=True)
            return
        table = Table(title=f"Fabric {result['network']['fabric']}, {orderer}")
        for col in ("operation", "patients", "load", "valid tx/s", "p50", "p95", "p99", "other"):
            table.add_column(col, justify="right")
        for r in result["rounds"]:
            other = {k: v for k, v in r["outcomes"].items() if k != "VALID"}
            table.add_row(
                r["operation"],
                r["population"],
                "saturation" if r["offered_tps"] is None else f"{r['offered_tps']:g} tx/s",
                f"{r['throughput_tps']:.1f}",
                *(
                    f"{r[k]:.0f}" if r[k] is not None else "-"
                    for k in ("p50_ms", "p95_ms", "p99_ms")
                ),
                ", ".join(f"{k} {v}" for k, v in other.items()),
            )
        print_result(result, json_only=False, tables=[table])
