"""A delayed Ethernet segment in user space, for kernels without ``tc netem``.

One relay process holds a TAP device per port — each host namespace's link, and one in the root
namespace carrying the layout's gateway address — and switches frames between them like a
learning bridge: it learns source MAC addresses, sends a frame for a known address to that
port only and floods broadcast, multicast and unknown destinations. A frame for a port marked
``delayed`` is released ``delay_ms`` after it was read, in arrival order (one FIFO per port:
the delay is constant, so order is kept); frames for other ports (the root namespace's) go out
at once. This gives what ``tc netem delay`` on each host's veth gave: host to host one way
``delay_ms``, a round trip ``2 * delay_ms``. Each port's queue is bounded (``queue`` frames);
a frame that finds it full is dropped and counted.

The TAP devices are not persistent: they vanish when the relay exits (or is killed), so a
stopped relay leaves nothing behind. A TAP is made inside a namespace by a short-lived thread
that enters it (``setns``, through ctypes: Python 3.11 has no ``os.setns``) before it opens
``/dev/net/tun`` — the device belongs to the namespace of the thread that opened it.

Run as ``python -m ehrshare.network.linkrelay CONFIG``; :class:`~ehrshare.network.netns.HostLayout`
starts and stops it (through :mod:`ehrshare.network.supervisor`, by pid). SIGHUP re-reads the
config: its ``delay_ms``, and ports it does not have yet, whose TAP devices it opens as at start
(a host added to the layout: :func:`add_relay_ports`). A port the config no longer names is
kept — the relay never closes a port while it runs, so every existing port keeps its learned
addresses and the frames it has queued. Counters, with the ports open (``ports``), those
that could not be opened (``port_errors``) and the reloads done (``reloads``), are written to
the config's ``stats`` file once a second, after each reload, on SIGUSR1 and at exit. This
module must not touch a device it did not create.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from ehrshare.errors import Unavailable
from ehrshare.faults import fault_point
from ehrshare.network.supervisor import Child, start_child
from ehrshare.services.vault import atomic_write

__all__ = [
    "DEFAULT_QUEUE",
    "Port",
    "Relay",
    "RelayConfig",
    "RelayError",
    "add_relay_ports",
    "main",
    "netem_available",
    "read_stats",
    "relay_stats",
    "set_relay_delay",
    "start_relay",
]

_log = logging.getLogger(__name__)

DEFAULT_QUEUE: Final = 8192
"""Frames a port may hold waiting for their release time before new ones are dropped."""

_TUNSETIFF: Final = 0x400454CA
_IFF_TAP: Final = 0x0002
_IFF_NO_PI: Final = 0x1000
_CLONE_NEWNET: Final = 0x40000000
_MAX_FRAME: Final = 65536
_BATCH: Final = 64  # frames read from one port before looking at the others


def netem_available() -> bool:
    """Whether this kernel has the netem queueing discipline (tried on ``lo`` of a throwaway
    network namespace: nothing of this machine is changed)."""
    # unshare makes a network namespace for tc alone; it is gone when tc exits.
    argv = ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=15, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class Port:
    """One TAP device of the relay: its name, the namespace it lives in (None: the root one),
    and whether frames sent to it are delayed."""

    name: str
    netns: str | None
    delayed: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "netns": self.netns, "delayed": self.delayed}


@dataclass(frozen=True)
class RelayConfig:
    """What a relay serves: its ports, the one-way delay, queue bound and files it writes."""

    ports: tuple[Port, ...]
    delay_ms: float
    stats: Path
    queue: int = DEFAULT_QUEUE

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the config file)."""
        return {
            "ports": [p.as_dict() for p in self.ports],
            "delay_ms": self.delay_ms,
            "stats": str(self.stats),
            "queue": self.queue,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelayConfig:
        """The config a JSON file holds (ValueError saying what is wrong)."""
        try:
            ports = tuple(
                Port(
                    str(p["name"]),
                    None if p["netns"] is None else str(p["netns"]),
                    bool(p["delayed"]),
                )
                for p in data["ports"]
            )
            delay = float(data["delay_ms"])
            queue = int(data.get("queue", DEFAULT_QUEUE))
            stats = Path(str(data["stats"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a link relay config: {exc!r}") from None
        if delay < 0 or queue < 1 or len(ports) < 2:
            raise ValueError(f"delay {delay} ms, queue {queue}, {len(ports)} ports: out of range")
        return cls(ports, delay, stats, queue)


def read_stats(path: Path) -> dict[str, Any] | None:
    """The counters a relay last wrote (None if it has written none yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RelayError(Unavailable, RuntimeError):
    """The relay did not start or did not take a new delay (exit 4)."""


def _write_config(config: RelayConfig, path: Path) -> None:
    atomic_write(path, json.dumps(config.as_dict(), indent=2).encode(), mode=0o644)


def start_relay(
    config: RelayConfig,
    path: Path,
    log: Path,
    *,
    on_started: Callable[[Child], None] | None = None,
    detached: bool = False,
) -> Child:
    """Write ``config`` to ``path`` and start a relay serving it (through the supervisor; it
    dies with this thread, or with ``detached`` outlives it in a session of its own, stopped
    by pid); returns once every TAP device exists. ``on_started`` is given the child as soon
    as its pid is known (to put it on record before waiting)."""
    _write_config(config, path)
    config.stats.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "ehrshare.network.linkrelay", str(path)]
    child = start_child("linkrelay", argv, log, die_with_parent=not detached, new_session=detached)
    if on_started is not None:
        on_started(child)
    deadline = time.monotonic() + 30
    while not config.stats.exists():  # written once the TAP devices are open
        if not child.alive():
            raise RelayError(f"the link relay did not start: {child.tail()}")
        if time.monotonic() > deadline:
            child.stop(grace=5)
            raise RelayError(f"the link relay did not start in 30 s: {child.tail()}")
        time.sleep(0.02)
    return child


def set_relay_delay(child: Child, config: RelayConfig, path: Path) -> None:
    """Make a running relay use ``config.delay_ms`` (rewrites its config, SIGHUP) and wait until
    it says so in its stats."""
    _write_config(config, path)
    os.kill(child.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        current = read_stats(config.stats)
        if current is not None and abs(float(current["delay_ms"]) - config.delay_ms) < 1e-6:
            return
        time.sleep(0.05)
    raise RelayError(f"the link relay did not take the {config.delay_ms:g} ms delay")


_PORT_WAIT_S: Final = 15.0


def add_relay_ports(child: Child, config: RelayConfig, path: Path) -> None:
    """Make a running relay open the ports of ``config`` it does not have yet (rewrites its
    config, SIGHUP) and wait, at most 15 s, until its stats list every one as open; a port it
    could not open, or no answer in time, is a :class:`RelayError` naming the relay's log."""
    _write_config(config, path)
    fault_point("linkrelay.add_ports.after_config")
    reloads = int((read_stats(config.stats) or {}).get("reloads", 0))
    os.kill(child.pid, signal.SIGHUP)
    wanted = {p.name for p in config.ports}
    deadline = time.monotonic() + _PORT_WAIT_S
    while True:
        current = read_stats(config.stats) or {}
        missing = wanted - set(current.get("ports", {}))
        if not missing:
            return
        failed = {n: e for n, e in dict(current.get("port_errors", {})).items() if n in missing}
        if failed and int(current.get("reloads", 0)) > reloads:  # this reload's, not older
            raise RelayError(f"the link relay could not open {failed} (see {child.log})")
        if not child.alive():
            raise RelayError(f"the link relay is gone (see {child.log}): {child.tail()}")
        if time.monotonic() > deadline:
            raise RelayError(
                f"the link relay did not open {sorted(missing)} in {_PORT_WAIT_S:g} s "
                f"(see {child.log}): {child.tail()}"
            )
        time.sleep(0.02)


def relay_stats(child: Child | None, stats: Path) -> dict[str, Any] | None:
    """A relay's counters as of now (SIGUSR1 asks it to write them); the last written if it is
    gone, None if it never wrote any."""
    before = read_stats(stats)
    if child is None or not child.alive() or before is None:
        return before
    os.kill(child.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        now = read_stats(stats)
        if now is not None and now.get("seq") != before.get("seq"):
            return now
        time.sleep(0.02)
    return read_stats(stats)


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH", name.encode("ascii"), _IFF_TAP | _IFF_NO_PI)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_tap_in(name: str, netns: str | None) -> int:
    """A TAP device named ``name`` made in namespace ``netns`` (its fd), by a thread that
    enters the namespace first; this process's other threads stay where they are."""
    if netns is None:
        return _open_tap(name)
    result: list[int] = []
    error: list[BaseException] = []

    def enter_and_open() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            nsfd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(nsfd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(nsfd)
            result.append(_open_tap(name))
        except BaseException as exc:
            error.append(exc)

    # The thread ends in the namespace it entered; it is never reused.
    thread = threading.Thread(target=enter_and_open, name=f"tap-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class Relay:
    """The switch loop over open TAP fds (see the module docstring)."""

    def __init__(self, config: RelayConfig, fds: list[int]) -> None:
        self.config = config
        self.fds = fds
        self.delay = config.delay_ms / 1000.0
        self.macs: dict[bytes, int] = {}
        self.queues: list[collections.deque[tuple[float, bytes]]] = [
            collections.deque() for _ in fds
        ]
        self.frames_in = [0] * len(fds)
        self.frames_out = [0] * len(fds)
        self.dropped = [0] * len(fds)
        self.write_errors = [0] * len(fds)
        self.port_errors: dict[str, str] = {}
        self.started = time.monotonic()
        self.stop = False
        self.reload_wanted = False
        self.reloads = 0
        self.reload: Callable[[], None] | None = None  # what a SIGHUP runs, in the loop
        self.poller: select.epoll | None = None
        self.writes = 0

    def add_port(self, port: Port, fd: int) -> int:
        """Switch one more port (appended: every existing port keeps its number, learned
        addresses and queue); returns its number."""
        if any(p.name == port.name for p in self.config.ports):
            raise ValueError(f"the relay already has a port {port.name}")
        self.config = replace(self.config, ports=(*self.config.ports, port))
        self.fds.append(fd)
        self.queues.append(collections.deque())
        for counters in (self.frames_in, self.frames_out, self.dropped, self.write_errors):
            counters.append(0)
        if self.poller is not None:
            self.poller.register(fd, select.EPOLLIN)
        return len(self.fds) - 1

    def reconfigure(self, fresh: RelayConfig, open_port: Callable[[Port], int]) -> list[str]:
        """Take ``fresh``'s delay and open (``open_port``) each of its ports this relay does not
        have; ports it no longer names are kept. A port that cannot be opened is noted in
        ``port_errors`` (tried again on the next reload). Returns the ports added."""
        self.delay = fresh.delay_ms / 1000.0
        have = {p.name for p in self.config.ports}
        added = []
        for port in fresh.ports:
            if port.name in have:
                continue
            try:
                fd = open_port(port)
            except OSError as exc:
                self.port_errors[port.name] = str(exc)
                _log.warning("cannot open port %s in %s: %s", port.name, port.netns, exc)
                continue
            self.port_errors.pop(port.name, None)
            self.add_port(port, fd)
            added.append(port.name)
        kept = have - {p.name for p in fresh.ports}
        if kept:
            _log.warning("the config no longer names %s: kept (no port is dropped)", kept)
        return added

    def _send(self, port: int, frame: bytes) -> None:
        try:
            os.write(self.fds[port], frame)
            self.frames_out[port] += 1
        except OSError:  # a port whose link is down (a cut host) refuses frames: they are lost
            self.write_errors[port] += 1

    def _forward(self, src: int, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            return
        dst, mac = frame[0:6], frame[6:12]
        if not mac[0] & 1:
            self.macs[mac] = src
        if dst[0] & 1:
            outs = [p for p in range(len(self.fds)) if p != src]
        else:
            known = self.macs.get(dst)
            if known == src:
                return
            outs = [known] if known is not None else [p for p in range(len(self.fds)) if p != src]
        for out in outs:
            if self.config.ports[out].delayed and self.delay > 0:
                queue = self.queues[out]
                if len(queue) >= self.config.queue:
                    self.dropped[out] += 1
                else:
                    queue.append((now + self.delay, frame))
            else:
                self._send(out, frame)

    def _release(self, now: float) -> float | None:
        """Send every frame due; the time until the next one (None: nothing waits)."""
        nxt: float | None = None
        for port, queue in enumerate(self.queues):
            while queue and queue[0][0] <= now:
                self._send(port, queue.popleft()[1])
            if queue:
                wait = queue[0][0] - now
                nxt = wait if nxt is None else min(nxt, wait)
        return nxt

    def stats(self) -> dict[str, Any]:
        """The counters, per port (JSON form)."""
        return {
            "pid": os.getpid(),
            "seq": self.writes,
            "delay_ms": self.delay * 1000.0,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "cpu_s": round(sum(os.times()[:2]), 3),
            "ports": {
                p.name: {
                    "frames_in": self.frames_in[i],
                    "frames_out": self.frames_out[i],
                    "dropped": self.dropped[i],
                    "write_errors": self.write_errors[i],
                    "queued": len(self.queues[i]),
                }
                for i, p in enumerate(self.config.ports)
            },
            "dropped": sum(self.dropped),
            "port_errors": dict(self.port_errors),
            "reloads": self.reloads,
        }

    def write_stats(self) -> None:
        """Write :meth:`stats` to the config's stats file (atomically: readers see whole files)."""
        self.writes += 1
        tmp = self.config.stats.with_name(self.config.stats.name + ".tmp")
        tmp.write_text(json.dumps(self.stats(), indent=1), encoding="utf-8")
        os.replace(tmp, self.config.stats)

    def run(self) -> None:
        """Switch frames until :attr:`stop` is set (by SIGTERM/SIGINT)."""
        poller = self.poller = select.epoll()
        for fd in self.fds:
            poller.register(fd, select.EPOLLIN)
        wakeup = _wakeup_fd(poller)  # a signal wakes the poll: a reload is not left waiting
        next_stats = time.monotonic() + 1.0
        wait: float | None = None
        try:
            while not self.stop:
                timeout = 1.0 if wait is None else min(wait, 1.0)
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    events = []
                now = time.monotonic()
                by_fd = {fd: i for i, fd in enumerate(self.fds)}
                for fd, _ in events:
                    if fd == wakeup:
                        _drain(fd)
                        continue
                    port = by_fd[fd]
                    for _ in range(_BATCH):
                        try:
                            frame = os.read(fd, _MAX_FRAME)
                        except BlockingIOError:
                            break
                        except OSError:
                            break
                        self.frames_in[port] += 1
                        self._forward(port, frame, now)
                wait = self._release(time.monotonic())
                if self.reload_wanted:
                    self.reload_wanted = False
                    if self.reload is not None:
                        self.reload()
                    self.reloads += 1
                    self.write_stats()
                if now >= next_stats:
                    self.write_stats()
                    next_stats = now + 1.0
        finally:
            if wakeup is not None:
                signal.set_wakeup_fd(-1)
            poller.close()
            self.poller = None
            self.write_stats()


def _wakeup_fd(poller: select.epoll) -> int | None:
    """A pipe a signal writes a byte to (``signal.set_wakeup_fd``), registered with ``poller``:
    its read end (None when not in the main thread, as in unit tests)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    poller.register(read, select.EPOLLIN)
    return read


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m ehrshare.network.linkrelay CONFIG``."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s linkrelay %(message)s")
    if len(args) != 1:
        print("usage: python -m ehrshare.network.linkrelay CONFIG", file=sys.stderr)
        return 2
    path = Path(args[0])
    config = RelayConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    fds = [_open_tap_in(p.name, p.netns) for p in config.ports]
    relay = Relay(config, fds)

    def on_stop(_sig: int, _frame: object) -> None:
        relay.stop = True

    def reload() -> None:
        try:
            fresh = RelayConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            _log.warning("SIGHUP: keeping %g ms and the ports: %s", relay.delay * 1000, exc)
            return
        added = relay.reconfigure(fresh, lambda p: _open_tap_in(p.name, p.netns))
        _log.info("delay now %g ms; ports added: %s", fresh.delay_ms, ", ".join(added) or "none")

    def on_hup(_sig: int, _frame: object) -> None:
        relay.reload_wanted = True  # done by the loop, between frames (it wakes for it)

    relay.reload = reload

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, lambda _s, _f: relay.write_stats())
    relay.write_stats()  # the stats file is the readiness signal: every TAP exists now
    _log.info(
        "switching %d ports (%s), %g ms one way to delayed ports",
        len(fds),
        ", ".join(p.name for p in config.ports),
        config.delay_ms,
    )
    relay.run()
    for fd in relay.fds:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
