"""``ehrshare bench e2e``: SDK-level latency on the embedded backend or on Fabric, end to end.

Each operation runs through the whole stack a hospital app uses — FHIR validation, AES-256-GCM,
MH-TIPRE, the content store with read-back verification, signed proposals to the ledger running
the real chaincode (the embedded ledger, or with ``--backend fabric`` a Fabric 2.3 network built
for the run: one peer per hospital, a Raft orderer, MAJORITY endorsement), the KGC nodes and
the hospitals' re-encryption proxies (in-process, or with ``--services processes`` as
``ehrshare kgc serve`` / ``proxy serve`` processes over gRPC and mutual TLS):
``put_record`` with ~10 KB and ~10 MB FHIR payloads, ``grant`` (re-key made, sealed and stored at
the grantee's hospital proxy), ``read_record`` at the first hop (one re-encryption) and at the
third hop (a chain of three grants whose re-keys sit at hospitals B, C and A's proxies: three
proxy visits, three re-encryptions, three reports on chain). Reports p50/p95 in milliseconds
with machine metadata.

This module only measures; it must not change how the SDK behaves.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ehrshare.benchutil import machine_metadata, percentile, time_calls
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_CONFIG, EXIT_USAGE
from ehrshare.network.fabric.spec import ORDERER_MSP
from ehrshare.network.netns import HostLayout, NetnsUnavailable, delay_links
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import BackendUnavailable
from ehrshare.provisioning import Consortium, FabricOptions

__all__ = ["binary_resource", "register", "run_e2e_bench"]


def binary_resource(size: int) -> dict[str, Any]:
    """A FHIR Binary whose JSON is about ``size`` bytes (random content, base64)."""
    raw = os.urandom(max(1, (size - 80) * 3 // 4))
    return {
        "resourceType": "Binary",
        "contentType": "application/octet-stream",
        "data": base64.b64encode(raw).decode("ascii"),
    }


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p95_ms": round(percentile(samples, 95), 3),
        "n": len(samples),
    }


def _relay_cost(
    before: dict[str, Any] | None, after: dict[str, Any] | None, seconds: float
) -> dict[str, Any] | None:
    """What the link relay spent while one delay's operations were timed (None: no relay)."""
    if before is None or after is None:
        return None
    cpu = float(after["cpu_s"]) - float(before["cpu_s"])
    frames = sum(p["frames_in"] for p in after["ports"].values()) - sum(
        p["frames_in"] for p in before["ports"].values()
    )
    return {
        "cpu_s": round(cpu, 3),
        "wall_s": round(seconds, 3),
        "cpu_share": round(cpu / seconds, 3) if seconds > 0 else None,
        "frames": frames,
        "dropped": int(after["dropped"]) - int(before["dropped"]),
    }


def run_e2e_bench(
    *,
    repeat: int = 20,
    repeat_large: int = 3,
    warmup: int = 2,
    small_bytes: int = 10 * 1024,
    large_bytes: int = 10 * 1024 * 1024,
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
    services: str = "in-process",
    ledger: str = "embedded",
    fabric: FabricOptions | None = None,
    storage: str = "embedded",
    hosts: str = "local",
    delay_ms: float | Sequence[float] = 0.0,
) -> dict[str, Any]:
    """Run the benchmark in a fresh consortium; returns the JSON-able result. With
    ``ledger="fabric"`` the consortium's Fabric network is stopped (by pid) at the end.
    ``hosts="netns"`` (Fabric only) puts each hospital on a network namespace of its own, with a
    private IPFS swarm and the services as processes; ``delay_ms`` (one value or several) is
    the one-way delay on every host's link while timing: the operations are timed once per
    delay on the same consortium (``results`` holds the first delay's figures, ``by_delay``
    every delay's). The delay is ``tc netem``'s where the kernel has it, else the user-space
    link relay's (:mod:`ehrshare.network.linkrelay`); ``backend.hosts.delay_method`` says
    which. The hosts are removed at the end."""
    say = progress or (lambda _m: None)
    delays = (
        [float(delay_ms)] if isinstance(delay_ms, int | float) else [float(d) for d in delay_ms]
    )
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"delays must be >= 0 ms, got {delays}")
    layout = None
    method: str | None = None
    if hosts == "netns":
        labels = [f"Hospital{x}MSP" for x in "ABC"] + [ORDERER_MSP]
        if any(delays):
            links = delay_links()
            method = "netem" if links == "bridge" else "relay"
            how = "veth pairs, tc netem" if method == "netem" else "TAP devices, the link relay"
            say(f"hosts linked through {how}")
            layout = HostLayout.create(labels, links=links)
        else:
            layout = HostLayout.create(labels)
        storage, services = "swarm", "processes"
    processes = services == "processes"
    by_delay: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ehrshare-bench-", dir=directory) as tmp,
        layout if layout is not None else contextlib.nullcontext(),
    ):
        say("creating a 3-hospital consortium and running the DKG")
        c = Consortium.init(
            Path(tmp) / "c",
            services=services,
            storage=storage,
            ports=free_loopback_ports(6) if processes else None,
            ledger=ledger,
            progress=say,
            fabric=fabric or (FabricOptions() if ledger == "fabric" else None),
            hosts=layout.placements() if layout is not None else None,
        )
        endpoints = c.profile.fabric
        netns = layout.netns_by_address() if layout is not None else None
        procs = (
            ServiceProcesses(c.profile, Path(tmp) / "run", die_with_parent=True, netns=netns)
            if processes
            else None
        )
        try:
            if procs is not None:
                say("starting 3 KGC node processes and 3 proxy processes")
                procs.start()
            people = {
                "patient": ("HospitalA", "patient"),
                "author": ("HospitalA", "clinician"),
                "hop1": ("HospitalB", "clinician"),
                "hop2": ("HospitalC", "clinician"),
                "hop3": ("HospitalA", "clinician"),
            }
            s = {}
            for name, (hospital, role) in people.items():
                c.add_member(name, hospital, role)
                s[name] = c.session(name)
                s[name].enroll()
                s[name].publish_type_keys(["general"])
            patient, author = s["patient"], s["author"]
            small = binary_resource(small_bytes)
            large = binary_resource(large_bytes)

            def put_small() -> object:
                return author.put_record(small, patient=patient.ibe_id, type="general")

            def put_large() -> object:
                return author.put_record(large, patient=patient.ibe_id, type="general")

            month = _dt.timedelta(days=30)

            def grant() -> object:
                return patient.grant(s["hop1"].ibe_id, "general", expires=month, max_hops=2)

            grant()  # hop1 must hold a grant to forward it
            ref = put_small()
            s["hop1"].forward(ref, s["hop2"].ibe_id, max_hops=1)  # type: ignore[arg-type]
            s["hop2"].forward(ref, s["hop3"].ibe_id, max_hops=0)  # type: ignore[arg-type]

            def timed() -> dict[str, Any]:
                results: dict[str, Any] = {}
                say(f"put_record ~{small_bytes} B x {repeat}")
                results["put_record_10KB"] = _stats(time_calls(put_small, repeat, warmup))
                say(f"put_record ~{large_bytes} B x {repeat_large}")
                results["put_record_10MB"] = _stats(time_calls(put_large, repeat_large, 1))
                say(f"grant x {repeat}")
                results["grant"] = _stats(time_calls(grant, repeat, warmup))
                say(f"read_record first hop x {repeat}")
                results["read_record_hop1"] = _stats(
                    time_calls(lambda: s["hop1"].read_record(ref), repeat, warmup)  # type: ignore[arg-type]
                )
                say(f"read_record third hop x {repeat}")
                results["read_record_hop3"] = _stats(
                    time_calls(lambda: s["hop3"].read_record(ref), repeat, warmup)  # type: ignore[arg-type]
                )
                return results

            for d in delays:
                if layout is not None and (d or method is not None):
                    say(f"one-way delay {d:g} ms on every host's link ({method or 'none'})")
                    layout.delay(d)
                relay_before = layout.relay_stats() if layout is not None else None
                started = time.monotonic()
                row = timed()
                relay_after = layout.relay_stats() if layout is not None else None
                by_delay[f"{d:g}"] = {
                    "delay_ms": d,
                    "results": row,
                    "relay": _relay_cost(relay_before, relay_after, time.monotonic() - started),
                }
            for sess in s.values():
                sess.close()
        finally:
            if procs is not None:
                procs.stop_all()
            c.close()
    backend: dict[str, Any] = {"ledger": ledger, "storage": storage, "services": services}
    if layout is not None:
        backend["hosts"] = {
            **layout.as_dict(),
            "delay_ms": delays[0] if len(delays) == 1 else delays,
            "delay_method": method,
        }
    if endpoints is not None:
        options = fabric or FabricOptions()
        from ehrshare.network.fabric import fabric_version

        backend["fabric"] = {
            "version": ".".join(map(str, fabric_version())),
            "peers": len(endpoints.peers),
            "orderers": len(endpoints.orderers),
            "endorsers": endpoints.endorsers,
            "batch_timeout": options.batch_timeout,
            "max_message_count": options.max_message_count,
        }
    return {
        "benchmark": "e2e",
        "backend": backend,
        "params": {
            "repeat": repeat,
            "repeat_large": repeat_large,
            "warmup": warmup,
            "small_bytes": small_bytes,
            "large_bytes": large_bytes,
        },
        "results": by_delay[f"{delays[0]:g}"]["results"],
        **({"by_delay": by_delay} if len(delays) > 1 or layout is not None else {}),
        "machine": machine_metadata(),
    }


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench e2e``."""
    del app

    @bench_app.command("e2e")
    def bench_e2e(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        repeat: int = typer.Option(20, min=1, help="Timed repetitions (small operations)."),
        repeat_large: int = typer.Option(3, min=1, help="Timed repetitions of the 10 MB put."),
        warmup: int = typer.Option(2, min=0, help="Untimed warm-up calls per operation."),
        large_bytes: int = typer.Option(
            10 * 1024 * 1024, min=1024, help="Size of the large payload (bytes)."
        ),
        services: str = typer.Option(
            "in-process",
            "--services",
            help="in-process, or processes (KGC nodes and proxies as gRPC/TLS processes).",
        ),
        backend: str = typer.Option(
            "embedded",
            "--backend",
            help="Ledger: embedded, or fabric (a Fabric 2.3 network built for the run on "
            "127.0.0.1 and stopped afterwards; needs 'make tools').",
        ),
        batch_timeout: str = typer.Option(
            "20ms",
            "--batch-timeout",
            help="With --backend fabric: the orderer's BatchTimeout (e.g. 20ms, 100ms, 2s); a "
            "lone transaction waits this long for its block.",
        ),
        orderers: int = typer.Option(
            1, "--orderers", min=1, help="With --backend fabric: Raft orderers (1 or 3)."
        ),
        storage: str = typer.Option(
            "embedded",
            "--storage",
            help="embedded, or swarm (one Kubo node per hospital, a private IPFS swarm).",
        ),
        hosts: str = typer.Option(
            "local",
            "--hosts",
            help="local (every node on 127.0.0.1), or netns (with --backend fabric, as root: "
            "each hospital on a network namespace of its own; implies --storage swarm and "
            "--services processes).",
        ),
        delay_ms: str = typer.Option(
            "0",
            "--delay-ms",
            help="With --hosts netns: one-way delay(s) in ms on every host's link while timing, "
            "comma-separated (e.g. 10,50); the operations are timed at 0 ms and at each. tc "
            "netem where the kernel has it, else a user-space relay between the hosts (the "
            "JSON's backend.hosts.delay_method says which).",
        ),
    ) -> None:
        """p50/p95 of put_record (10 KB, 10 MB), grant and read_record (hop 1, hop 3) on the
        embedded backend or on Fabric, through the whole SDK."""
        err = err_console(quiet=json_only)
        if services not in ("in-process", "processes"):
            err_console().print(
                f"[red]error:[/red] --services {services!r} is not in-process or processes"
            )
            raise typer.Exit(EXIT_USAGE)
        if backend not in ("embedded", "fabric"):
            err_console().print(
                f"[red]error:[/red] --backend {backend!r} is not embedded or fabric"
            )
            raise typer.Exit(EXIT_USAGE)
        if storage not in ("embedded", "swarm"):
            err_console().print(f"[red]error:[/red] --storage {storage!r} is not embedded or swarm")
            raise typer.Exit(EXIT_USAGE)
        if hosts not in ("local", "netns") or (hosts == "netns" and backend != "fabric"):
            err_console().print(
                f"[red]error:[/red] --hosts {hosts!r}: local, or netns with --backend fabric"
            )
            raise typer.Exit(EXIT_USAGE)
        try:
            delays = [float(d) for d in delay_ms.split(",") if d.strip()]
        except ValueError:
            delays = [-1.0]
        if not delays or any(d < 0 or d != d or d > 10_000 for d in delays):
            err_console().print(
                f"[red]error:[/red] --delay-ms {delay_ms!r}: milliseconds from 0 to 10000, "
                "comma-separated"
            )
            raise typer.Exit(EXIT_USAGE)
        if any(delays):
            delays = [0.0, *dict.fromkeys(d for d in delays if d)]
        if any(delays) and hosts != "netns":
            err_console().print("[red]error:[/red] --delay-ms needs --hosts netns")
            raise typer.Exit(EXIT_USAGE)
        try:
            result = run_e2e_bench(
                repeat=repeat,
                repeat_large=repeat_large,
                warmup=warmup,
                large_bytes=large_bytes,
                progress=lambda m: err.log(f"bench e2e: {m}"),
                services=services,
                ledger=backend,
                fabric=(
                    FabricOptions(orderers=orderers, batch_timeout=batch_timeout)
                    if backend == "fabric"
                    else None
                ),
                storage=storage,
                hosts=hosts,
                delay_ms=delays,
            )
        except (BackendUnavailable, NetnsUnavailable) as exc:
            err_console().print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        if json_only:
            typer.echo(json.dumps(result, indent=2))
            return
        table = Table(title=f"ehrshare bench e2e ({backend} ledger, services {services}, ms)")
        table.add_column("operation")
        table.add_column("p50", justify="right")
        table.add_column("p95", justify="right")
        table.add_column("n", justify="right")
        rows = result.get("by_delay") or {"0": {"results": result["results"]}}
        if len(rows) > 1:
            table.add_column("delay ms", justify="right")
        for delay, row in rows.items():
            for name, r in row["results"].items():
                cells = [name, f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", str(r["n"])]
                table.add_row(*cells, *([delay] if len(rows) > 1 else []))
        out = out_console()
        out.print(table)
        out.print_json(json.dumps(result))
