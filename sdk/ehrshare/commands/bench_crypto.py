"""``ehrshare bench crypto``: MH-TIPRE, AES-256-GCM, extraction and umbral-pre timings as JSON.

This module only parses options and prints; the measuring is in :mod:`ehrshare.bench.crypto`.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from ehrshare.bench.crypto import run_crypto_bench
from ehrshare.benchutil import print_result, progress_console

__all__ = ["register"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _tables(result: dict[str, Any]) -> list[Table]:
    ops = Table(title="ehrshare bench crypto (ms)")
    ops.add_column("operation")
    ops.add_column("median", justify="right")
    ops.add_column("p95", justify="right")
    for name, row in result["operations"].items():
        ops.add_row(name, _fmt(row and row["median_ms"]), _fmt(row and row["p95_ms"]))
    targets = Table(title="targets (ratios measured in this run)")
    targets.add_column("ratio")
    targets.add_column("value", justify="right")
    targets.add_column("target")
    targets.add_column("met")
    for name, t in result["targets"].items():
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "n/a"}[t["met"]]
        targets.add_row(name, _fmt(t["value"]), t["target"], met)
    aes = result["aes_gcm"]
    other = Table(title="throughput and peer anchor")
    other.add_column("what")
    other.add_column("value", justify="right")
    other.add_row("AES-256-GCM chunked encrypt MB/s", _fmt(aes["ours_encrypt_mb_s"], 0))
    other.add_row("AES-256-GCM chunked decrypt MB/s", _fmt(aes["ours_decrypt_mb_s"], 0))
    other.add_row("openssl speed 16384-byte MB/s", _fmt(aes["openssl_16384_mb_s"], 0))
    if result["umbral"] is not None:
        for name, ratio in result["umbral"]["ratios_ours_over_umbral"].items():
            other.add_row(f"ours/umbral {name}", _fmt(ratio, 2))
    return [ops, targets, other]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench crypto``."""

    @bench_app.command("crypto")
    def bench_crypto(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        repeat: int = typer.Option(50, min=1, help="Timed repetitions per operation."),
        warmup: int = typer.Option(5, min=0, help="Untimed warm-up calls per operation."),
        aes_mib: int = typer.Option(64, min=1, help="MiB encrypted for the AES throughput."),
        openssl_seconds: int = typer.Option(
            2, min=1, help="Seconds for `openssl speed -evp aes-256-gcm`."
        ),
    ) -> None:
        """Time pairing, MH-TIPRE operations, multi-hop decryption, extraction, AES-GCM."""
        console = progress_console(json_only)
        result = run_crypto_bench(
            repeat=repeat,
            warmup=warmup,
            aes_mib=aes_mib,
            openssl_seconds=openssl_seconds,
            progress=lambda msg: console.log(f"bench crypto: {msg}"),
        )
        print_result(result, json_only=json_only, tables=() if json_only else _tables(result))
