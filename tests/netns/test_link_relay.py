"""Delayed links without netem: hosts on TAP devices switched by ehrshare.network.linkrelay.

The round trips are measured with a TCP echo (TCP_NODELAY, one byte each way): between two
hosts each direction crosses one delayed port, so a round trip is twice the one-way delay;
from the root namespace only the way into the host is delayed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ehrshare.network.netns import HostLayout, NetnsError, our_links, our_namespaces
from ehrshare.network.supervisor import Child, pid_alive, start_child

pytestmark = pytest.mark.netns

Layout = Callable[..., HostLayout]
Snapshot = Callable[[], tuple[list[str], list[str]]]

_ECHO = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "    while data := c.recv(1 << 16):\n"
    "        c.sendall(data)\n"
    "    c.close()\n"
)

# Prints the round trips (ms) of N one-byte echoes, then checks a bulk transfer comes back whole.
_PROBE = (
    "import hashlib, json, socket, sys, time\n"
    "host, port, n, bulk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n"
    "deadline = time.monotonic() + 10\n"
    "while True:\n"
    "    try:\n"
    "        c = socket.create_connection((host, port), timeout=5)\n"
    "        break\n"
    "    except OSError:\n"
    "        if time.monotonic() > deadline:\n"
    "            raise\n"
    "        time.sleep(0.05)\n"
    "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "rtts = []\n"
    "for _ in range(n):\n"
    "    t = time.perf_counter()\n"
    "    c.sendall(b'x')\n"
    "    assert c.recv(1) == b'x'\n"
    "    rtts.append((time.perf_counter() - t) * 1000)\n"
    "ok, seconds = True, 0.0\n"
    "if bulk:\n"
    "    import threading\n"
    "    data = bytes(range(256)) * (bulk // 256)\n"
    "    t = time.perf_counter()\n"
    "    threading.Thread(target=c.sendall, args=(data,)).start()\n"
    "    got = bytearray()\n"
    "    while len(got) < len(data):\n"
    "        got += c.recv(1 << 16)\n"
    "    seconds = time.perf_counter() - t\n"
    "    ok = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()\n"
    "print(json.dumps({'rtts': rtts, 'bulk_ok': ok, 'bulk_s': seconds}))\n"
)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Callable[[HostLayout, str, int], Child]]:
    """Start the echo server inside a host on its address (stopped by pid at the end)."""
    children: list[Child] = []

    def start(layout: HostLayout, label: str, port: int) -> Child:
        argv = [sys.executable, "-c", _ECHO, layout.address(label), str(port)]
        child = start_child(
            f"echo-{label}", argv, tmp_path / f"echo-{label}.log", netns=layout.host(label).netns
        )
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop(grace=5)


def _probe(
    layout: HostLayout | None, label: str | None, address: str, port: int, n: int, bulk: int = 0
) -> dict[str, object]:
    argv = [sys.executable, "-c", _PROBE, address, str(port), str(n), str(bulk)]
    if layout is not None and label is not None:
        argv = layout.argv(label, argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def _median(result: dict[str, object]) -> float:
    rtts = result["rtts"]
    assert isinstance(rtts, list)
    return float(statistics.median(rtts))


def _fastest(result: dict[str, object]) -> float:
    """The least round trip: what the link costs. Upper bounds are checked on it, not on the
    median, which a loaded machine's scheduling moves by tens of milliseconds."""
    rtts = result["rtts"]
    assert isinstance(rtts, list)
    return float(min(rtts))


def test_relayed_round_trip_between_hosts_is_twice_the_delay_and_nothing_is_lost(
    make_layout: Layout, echo: Callable[[HostLayout, str, int], Child], machine_net: Snapshot
) -> None:
    layout = make_layout(["A", "B", "C"], links="relay", delay_ms=10)
    assert layout.relay is not None and layout.relay.alive()
    b = layout.address("B")
    echo(layout, "B", 7110)
    # A -> B -> A crosses two delayed ports: 20 ms, plus scheduling on a loaded 2-core box.
    between = _probe(layout, "A", b, 7110, 40)
    assert 20.0 <= _fastest(between) <= 20.0 + 15.0, between
    # From the root namespace only the way in is delayed.
    from_root = _probe(None, None, b, 7110, 20)
    assert 10.0 <= _fastest(from_root) <= 10.0 + 15.0, from_root
    # The delay changes live (the relay re-reads it on SIGHUP), and 0 takes it away.
    layout.delay(50)
    assert 100.0 <= _fastest(_probe(layout, "C", b, 7110, 10)) <= 100.0 + 20.0
    layout.delay(0)
    assert _fastest(_probe(layout, "A", b, 7110, 20)) < 5.0
    # A bulk transfer at 10 ms comes back whole; at this rate the bounded queues drop nothing.
    layout.delay(10)
    bulk = _probe(layout, "A", b, 7110, 1, bulk=4 << 20)
    assert bulk["bulk_ok"] is True
    stats = layout.relay_stats()
    assert stats is not None and stats["delay_ms"] == 10.0
    assert stats["ports"][layout.host("B").inside]["frames_out"] > 1000
    assert stats["dropped"] == 0
    relay = layout.relay
    layout.teardown()
    assert not relay.alive()
    assert not [n for n in our_namespaces() + our_links() if n.startswith(f"ehr{layout.tag}")]
    assert not list(layout.state_file.parent.glob(f"{layout.tag}*"))


def test_cut_relayed_host_is_unreachable_until_healed(
    make_layout: Layout, echo: Callable[[HostLayout, str, int], Child]
) -> None:
    layout = make_layout(["A", "B"], links="relay", delay_ms=1)
    echo(layout, "B", 7111)
    b = layout.address("B")
    assert _median(_probe(layout, "A", b, 7111, 5)) >= 2.0
    layout.cut("B")
    assert layout.is_cut("B")
    connect = "import socket, sys\nsocket.create_connection((sys.argv[1], 7111), timeout=2)\n"
    argv = layout.argv("A", [sys.executable, "-c", connect, b])
    assert subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode != 0
    layout.heal("B")
    assert not layout.is_cut("B")
    assert _median(_probe(layout, "A", b, 7111, 5)) >= 2.0


_CRASH = (
    "import sys\n"
    "from pathlib import Path\n"
    "from ehrshare.network.netns import HostLayout\n"
    "HostLayout.create(['A', 'B'], state_dir=Path(sys.argv[1]), tag=sys.argv[2],"
    " links='relay', delay_ms=5)\n"
)


@pytest.mark.parametrize(
    ("fault", "tag"),
    [
        ("netns.create.after_namespaces", "fb20"),
        ("netns.create.after_relay", "fb21"),
        ("netns.create.after_host", "fb22"),
        (None, "fb23"),
    ],
    ids=str,
)
def test_a_crashed_relayed_runs_leftovers_and_relay_are_removed_by_the_next(
    make_layout: Layout, state_dir: Path, machine_net: Snapshot, fault: str | None, tag: str
) -> None:
    before = machine_net()
    env = {**os.environ}
    if fault is not None:
        env["EHRSHARE_FAULT_AT"] = fault
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, str(state_dir), tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == (-9 if fault else 0), done.stderr
    assert [n for n in our_namespaces() if n.startswith(f"ehr{tag}")], "nothing was made"
    # The relay dies with its owner (parent-death signal): its TAP devices go with it.
    deadline = time.monotonic() + 10
    while [n for n in our_links() if n.startswith(f"ehr{tag}")] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [n for n in our_links() if n.startswith(f"ehr{tag}")]
    layout = make_layout(["X"], links="relay")
    assert not [n for n in our_namespaces() + our_links() if n.startswith(f"ehr{tag}")]
    assert not (state_dir / f"{tag}.json").exists()
    layout.teardown()
    assert machine_net() == before


def test_bad_relay_options_are_refused_before_anything_is_made(
    make_layout: Layout, machine_net: Snapshot
) -> None:
    before = machine_net()
    with pytest.raises(ValueError, match="only with links='relay'"):
        make_layout(["A"], delay_ms=10)
    with pytest.raises(ValueError, match="bridge or relay"):
        make_layout(["A"], links="hub")
    assert machine_net() == before


def test_relay_process_gone_is_a_clear_error_on_delay(make_layout: Layout) -> None:
    layout = make_layout(["A"], links="relay")
    assert layout.relay is not None
    layout.relay.stop(kill=True, grace=5)
    assert not pid_alive(layout.relay.pid) or not layout.relay.alive()
    with pytest.raises(NetnsError, match="relay is not running"):
        layout.delay(10)
