"""``ehrshare demo``: the end-to-end story on a fresh local consortium, told step by step.

Only rendering lives here; the story itself is :func:`ehrshare.demo.run_demo`.
"""

from __future__ import annotations

import json

import typer
from rich.panel import Panel

from ehrshare.console import err_console, out_console
from ehrshare.demo import DemoStep, run_demo
from ehrshare.demo_hosts import HOST_MODES
from ehrshare.errors import EXIT_CONFIG, EXIT_REFUSED, EXIT_USAGE
from ehrshare.network.netns import NetnsUnavailable
from ehrshare.profile import BackendUnavailable

__all__ = ["register"]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare demo``."""
    del bench_app

    @app.command("demo")
    def demo(
        backend: str = typer.Option(
            "embedded",
            "--backend",
            help="Ledger backend: embedded (default; no servers) or fabric (a real Fabric 2.3 "
            "network built for the demo on 127.0.0.1 and stopped afterwards; needs 'make tools').",
        ),
        storage: str = typer.Option(
            "embedded", "--storage", help="Content store: embedded (default) or kubo."
        ),
        kubo_url: str = typer.Option(
            "http://127.0.0.1:5001", "--kubo-url", help="Kubo RPC API URL (with --storage kubo)."
        ),
        services: str = typer.Option(
            "in-process",
            "--services",
            help="KGC nodes and proxy: in-process (default) or processes (real 'ehrshare kgc "
            "serve' / 'ehrshare proxy serve' processes on 127.0.0.1 over mutual TLS; one KGC "
            "node is killed and the proxy restarted mid-story).",
        ),
        hosts: str = typer.Option(
            "local",
            "--hosts",
            help="local (default: every node on 127.0.0.1) or netns (with --backend fabric, as "
            "root: each hospital on a Linux network namespace of its own with its own address, "
            "a private IPFS swarm and service processes; adds an IPFS node stopped and a "
            "hospital cut off mid-story).",
        ),
        keep: str = typer.Option(
            "", "--keep", help="Run in this directory and keep it (default: a temporary one)."
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print only a JSON summary (steps, timings, checks)."
        ),
    ) -> None:
        """Run the whole story on a fresh 3-hospital consortium: DKG, enrolment, three FHIR
        records, a 2-hop grant, a referral, type isolation, revocation, audit and tamper
        detection. Exit code 0 when every claim held, 1 when one did not, 3 when the backend
        is not available."""
        err = err_console()
        out = out_console()
        if backend not in ("embedded", "fabric"):
            err.print(f"[red]error:[/red] backend {backend!r} is not embedded or fabric")
            raise typer.Exit(EXIT_USAGE)
        if storage not in ("embedded", "kubo"):
            err.print(f"[red]error:[/red] storage {storage!r} is not embedded or kubo")
            raise typer.Exit(EXIT_USAGE)
        if services not in ("in-process", "processes"):
            err.print(f"[red]error:[/red] services {services!r} is not in-process or processes")
            raise typer.Exit(EXIT_USAGE)
        if hosts not in HOST_MODES or (hosts == "netns" and backend != "fabric"):
            err.print(f"[red]error:[/red] --hosts {hosts!r}: local, or netns with --backend fabric")
            raise typer.Exit(EXIT_USAGE)
        if hosts == "netns":  # every node a process on its hospital's host
            storage, services = "swarm", "processes"

        def show(step: DemoStep) -> None:
            if as_json:
                err.print(f"step {step.number}: {step.title} ({step.ms:.0f} ms)")
                return
            mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
            out.print(
                f"\n{mark} [bold]{step.number}. {step.title}[/bold] [dim]({step.ms:.0f} ms)[/dim]"
            )
            for line in step.lines:
                out.print(f"   {line}", highlight=False)

        ledger_text = (
            "Fabric (real peers and orderer)"
            if backend == "fabric"
            else "embedded (same chaincode as Fabric)"
        )
        if not as_json:
            out.print(
                Panel.fit(
                    "ehrshare demo — patient-controlled EHR sharing across three hospitals\n"
                    f"ledger: {ledger_text} · storage: {storage} · "
                    f"services: {services}",
                    border_style="cyan",
                )
            )
        try:
            result = run_demo(
                keep or None,
                storage=storage,
                kubo_url=kubo_url,
                on_step=show,
                keep=bool(keep),
                services=services,
                ledger=backend,
                hosts=hosts,
            )
        except (BackendUnavailable, NetnsUnavailable) as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        except Exception as exc:
            err.print(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
            if storage == "kubo":
                err.print("is the Kubo daemon running? ('make tools' installs it)")
            raise typer.Exit(EXIT_REFUSED) from None
        if as_json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            failed = [k for k, v in result.checks.items() if not v]
            steps = f"{len(result.steps)} steps"
            summary = (
                f"{steps}, all {len(result.checks)} checks held"
                if not failed
                else f"{steps}, FAILED {len(failed)} of {len(result.checks)} checks: "
                + ", ".join(failed)
            )
            out.print(
                Panel.fit(
                    f"{summary} · total {result.total_ms / 1000:.2f} s",
                    border_style="green" if result.ok else "red",
                )
            )
        if not result.ok:
            raise typer.Exit(EXIT_REFUSED)  # a claim did not hold, or a step failed
