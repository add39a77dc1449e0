"""What a process's state and log say, by pid and by file: whether it runs, when it started
(pids are reused), how it ended, why (a log's panic or fatal line), and free loopback ports for
the next one. :mod:`ehrshare.network.supervisor` starts and stops processes with these; this
module only reads ``/proc`` and log files and opens sockets it closes at once.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Final

__all__ = ["describe_exit", "free_loopback_ports", "log_tail", "pid_alive", "start_ticks"]

_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
_DEATH: Final = re.compile(r"^panic: |\bPANI\b|\bFATA\b|\bFatal", re.MULTILINE)


# --- processes by pid ------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this id still runs (a zombie, exited but not reaped, counts as
    gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name is in parentheses and may contain spaces; the state follows it.
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def start_ticks(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot), None if it is gone: with the
    pid, what tells a process from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(stat.rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def describe_exit(returncode: int) -> str:
    """A process's exit status as people read it: ``exit code 1``, ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


_EPHEMERAL: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST: Final = 10000  # below: ports people give their own servers (8080, 9443, ...)


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (and ``bind(0)``): Linux's
    ``ip_local_port_range``, 32768–60999 unless changed."""
    try:
        low, high = (int(v) for v in _EPHEMERAL.read_text(encoding="ascii").split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free now, chosen at random **below
    the kernel's ephemeral range**: a port taken from that range (``bind(0)``) can be given to
    any outgoing connection on the machine — a client of a peer, say — in the seconds between
    choosing it and a service binding it, which failed a service's start in CI ("Failed to bind
    to address 127.0.0.1:56965"). Below the range only a program that binds the very port takes
    it. Falls back to the kernel's choice if the range leaves too few ports below it."""
    low, high = _ephemeral_range()
    floor = _LOWEST if low - _LOWEST >= 1000 else 1024
    if low - floor < 100 * count:
        floor, low = high + 1, 65536  # a range set very low: use the ports above it
    return _choose(floor, low, count)


_HANDED_FOR: Final = 600.0  # seconds a port handed out is not handed out again by this process
_handed: dict[int, float] = {}  # port -> when this process handed it out
_handed_lock = threading.Lock()


def _choose(floor: int, ceiling: int, count: int) -> list[int]:
    """``count`` distinct ports in [floor, ceiling) that bind on 127.0.0.1 now, at random; the
    kernel's choice for those not found in 200 tries each. A port this process handed out in
    the last ten minutes is not chosen again: it may be free only because the service it was
    chosen for has not bound it yet (one process often chooses ports for several services
    before starting any)."""
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    with _handed_lock:
        now = time.monotonic()
        for port in [p for p, t in _handed.items() if now - t > _HANDED_FOR]:
            del _handed[port]
        try:
            for _attempt in range(200 * count):
                if len(socks) == count:
                    break
                port = rng.randrange(floor, ceiling)
                if port in _handed:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:  # in use (also by one chosen here: still bound), or TIME_WAIT
                    s.close()
                    continue
                socks.append(s)
            while len(socks) < count:  # hardly ever: the kernel's choice, as before
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            ports = [int(s.getsockname()[1]) for s in socks]
            _handed.update((p, now) for p in ports)
            return ports
        finally:
            for s in socks:
                s.close()


def log_tail(log: Path, offset: int = 0, lines: int = 8, sep: str = " | ") -> str:
    """What a process's log (from ``offset``: this run) says about its end, prefixed with the
    log's path: the first panic or fatal line if there is one (a Go panic is followed by pages
    of goroutine stacks), else its last ``lines`` lines joined by ``sep``."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {log})"
    # Fabric colours its level names even into a file.
    all_lines = _ANSI.sub("", text).strip().splitlines()
    for n, line in enumerate(all_lines):
        if _DEATH.search(line):
            after = len(all_lines) - n - 1
            return f"{log}: {line.strip()}" + (f" (then {after} more lines)" if after else "")
    return f"{log}: " + (sep.join(all_lines[-lines:]) or "(empty)")
