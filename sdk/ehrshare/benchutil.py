"""Shared helpers for benchmark commands: timing, percentiles, machine metadata, output.

Benchmarks report medians and percentiles of repeated runs after a warm-up,
and every JSON result carries the machine it was measured on, so ratios are
only ever compared within one run on one machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType

from ehrshare.console import err_console, out_console

__all__ = [
    "machine_metadata",
    "percentile",
    "print_result",
    "progress_console",
    "summarize",
    "time_calls",
]


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of samples by linear interpolation."""
    if not samples:
        raise ValueError("percentile of an empty sample set")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    data = sorted(samples)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return data[lo] + (data[hi] - data[lo]) * frac


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median, p95 and p99 (milliseconds) and the sample count."""
    return {
        "median_ms": statistics.median(samples_ms),
        "p95_ms": percentile(samples_ms, 95),
        "p99_ms": percentile(samples_ms, 99),
        "n": float(len(samples_ms)),
    }


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    """Run fn warmup times untimed, then repeat times; return durations in ms."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH is intended
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_metadata() -> dict[str, Any]:
    """Where and when a benchmark ran: host, CPU, cores, memory, Python, commit."""
    mem_gib: float | None = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "git_commit": _git_commit(),
    }


def progress_console(json_only: bool) -> Console:
    """Where a benchmark command reports progress: stderr, silent under ``--json``."""
    return err_console(quiet=json_only)


def print_result(
    result: Mapping[str, Any], *, json_only: bool, tables: Iterable[RenderableType] = ()
) -> None:
    """Print a benchmark's result the way every ``ehrshare bench`` command does.

    With ``--json`` only the JSON goes to stdout (so it can be piped); otherwise the rich
    ``tables`` (anything rich can print) come first, then the same JSON, highlighted.
    """
    text = json.dumps(result, indent=2)
    if json_only:
        sys.stdout.write(text + "\n")
        return
    out = out_console()
    for table in tables:
        out.print(table)
    out.print_json(text)
