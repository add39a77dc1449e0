"""``ehrshare bench dkg``: wall time of a full DKG and of threshold key extraction.

All n nodes run in one process over the in-memory board, one after the other, so the DKG total
is the sum of every node's work (a deployment runs nodes in parallel; ``slowest_node_ms`` is
the per-node critical path without network and phase deadlines). This module only measures; it
must not change protocol behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ehrshare.benchutil import machine_metadata, print_result, progress_console, summarize
from ehrshare.hazmat.board import InMemoryBoard, run_dkg
from ehrshare.hazmat.dkg import (
    DealBundle,
    DKGConfig,
    DKGNode,
    DKGResult,
    JustificationBundle,
    ResponseBundle,
    new_session_nonce,
)
from ehrshare.hazmat.extract import (
    ExtractionRequest,
    extract_partial_key,
    open_partial_key,
    recover_identity_key,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey

__all__ = ["register"]


class _TimedNode(DKGNode):
    """A DKGNode that adds up the time spent in its own protocol steps."""

    spent_s: float = 0.0

    def deals(self) -> DealBundle:
        t0 = time.perf_counter()
        try:
            return super().deals()
        finally:
            self.spent_s += time.perf_counter() - t0

    def process_deals(self, bundles: Iterable[DealBundle | bytes]) -> ResponseBundle:
        t0 = time.perf_counter()
        try:
            return super().process_deals(bundles)
        finally:
            self.spent_s += time.perf_counter() - t0

    def process_responses(
        self, bundles: Iterable[ResponseBundle | bytes]
    ) -> JustificationBundle | None:
        t0 = time.perf_counter()
        try:
            return super().process_responses(bundles)
        finally:
            self.spent_s += time.perf_counter() - t0


def _one_dkg(keys: list[KGCNodeKey]) -> tuple[float, float, tuple[int, int], dict[int, DKGResult]]:
    config = DKGConfig(tuple(k.public_key for k in keys), new_session_nonce())
    nodes = [_TimedNode(config, k) for k in keys]
    board = InMemoryBoard()
    t0 = time.perf_counter()
    run = run_dkg(nodes, board)
    total_ms = (time.perf_counter() - t0) * 1000.0
    if run.failures or not run.mpk_agreed:
        raise RuntimeError(f"benchmark DKG did not complete: {run.failures}")
    sizes = (
        len(board.read(config.nonce, DealBundle.kind)[0]),
        len(board.read(config.nonce, ResponseBundle.kind)[0]),
    )
    slowest_ms = max(n.spent_s for n in nodes) * 1000.0
    return total_ms, slowest_ms, sizes, run.results


def _bench_size(n: int, repeat: int, warmup: int, console: Console) -> tuple[dict[str, Any], ...]:
    keys = [KGCNodeKey.generate() for _ in range(n)]
    threshold = n // 2 + 1
    totals: list[float] = []
    slowest: list[float] = []
    sizes = (0, 0)
    results: dict[int, DKGResult] = {}
    for i in range(warmup + repeat):
        console.log(f"dkg n={n}: run {i + 1}/{warmup + repeat}")
        total_ms, slowest_ms, sizes, results = _one_dkg(keys)
        if i >= warmup:
            totals.append(total_ms)
            slowest.append(slowest_ms)

    public = results[1].public
    roster = [k.public_key for k in keys]
    node_ms: list[float] = []
    user_ms: list[float] = []
    for i in range(warmup + repeat):
        request, reply = ExtractionRequest.create(f"bench:user-{n}-{i}")
        answers = []
        for j in range(1, threshold + 1):
            t0 = time.perf_counter()
            answers.append(extract_partial_key(results[j].share, keys[j - 1], request))
            node_ms.append((time.perf_counter() - t0) * 1000.0)
        t0 = time.perf_counter()
        partials = [
            open_partial_key(
                a.to_bytes(),
                request=request,
                reply_key=reply,
                roster=roster,
            )
            for a in answers
        ]
        recovered = recover_identity_key(partials, public)
        elapsed = (time.perf_counter() - t0) * 1000.0
        if recovered.invalid:
            raise RuntimeError(f"benchmark extraction rejected nodes {recovered.invalid}")
        if i >= warmup:
            user_ms.append(elapsed)
    dkg_row = {
        "n": n,
        "threshold": threshold,
        "total_ms": summarize(totals),
        "slowest_node_ms": summarize(slowest),
        "deal_bundle_bytes": sizes[0],
        "response_bundle_bytes": sizes[1],
    }
    extraction_row = {
        "n": n,
        "threshold": threshold,
        "node_extract_ms": summarize(node_ms[warmup * threshold :]),
        "user_open_verify_combine_ms": summarize(user_ms),
        "what": f"user opens {threshold} sealed answers, batch-verifies, combines, checks sk_id",
    }
    return dkg_row, extraction_row


def _table(rows: list[dict[str, Any]], title: str, columns: list[tuple[str, str]]) -> Table:
    table = Table(title=title)
    table.add_column("n", justify="right")
    table.add_column("τ", justify="right")
    for header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        cells = [str(row["n"]), str(row["threshold"])]
        for _, key in columns:
            stats = row[key]
            cells.append(f"{stats['median_ms']:.1f} / {stats['p95_ms']:.1f}")
        table.add_row(*cells)
    return table


def _parse_sizes(sizes: str) -> list[int]:
    try:
        values = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--sizes must be comma-separated integers, got {sizes!r}"
        ) from None
    if not values or any(v < 2 or v > 64 for v in values):
        raise typer.BadParameter(f"--sizes must be between 2 and 64, got {sizes!r}")
    return values


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare bench dkg``."""

    @bench_app.command("dkg")
    def bench_dkg(
        json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        sizes: str = typer.Option("4,7,16", help="Comma-separated node counts n (τ = n//2+1)."),
        repeat: int = typer.Option(7, min=1, help="Timed repetitions per size."),
        warmup: int = typer.Option(1, min=0, help="Untimed warm-up runs per size."),
    ) -> None:
        """Time a full Joint-Feldman DKG and threshold extraction (median/p95, ms)."""
        ns = _parse_sizes(sizes)
        console = progress_console(json_only)
        dkg_rows: list[dict[str, Any]] = []
        extraction_rows: list[dict[str, Any]] = []
        for n in ns:
            dkg_row, extraction_row = _bench_size(n, repeat, warmup, console)
            dkg_rows.append(dkg_row)
            extraction_rows.append(extraction_row)
        result = {
            "benchmark": "dkg",
            "machine": machine_metadata(),
            "params": {"sizes": ns, "repeat": repeat, "warmup": warmup, "board": "in-memory"},
            "notes": (
                "total_ms: all n nodes run serially in one process; slowest_node_ms: one "
                "node's own protocol work (the parallel critical path without network)"
            ),
            "dkg": dkg_rows,
            "extraction": extraction_rows,
            "ratio_total_16_over_4": _ratio(dkg_rows, 16, 4),
        }
        tables = [
            _table(
                dkg_rows,
                "DKG (median / p95 ms)",
                [("all nodes", "total_ms"), ("slowest node", "slowest_node_ms")],
            ),
            _table(
                extraction_rows,
                "Extraction (median / p95 ms)",
                [
                    ("node: d_j", "node_extract_ms"),
                    ("user: verify+combine", "user_open_verify_combine_ms"),
                ],
            ),
        ]
        print_result(result, json_only=json_only, tables=tables)


def _ratio(rows: list[dict[str, Any]], big: int, small: int) -> float | None:
    by_n = {r["n"]: r["total_ms"]["median_ms"] for r in rows}
    if big in by_n and small in by_n and by_n[small] > 0:
        return float(by_n[big] / by_n[small])
    return None
