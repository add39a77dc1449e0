"""A host added to a layout linked through the link relay while it runs (a hospital that joins
hosts with a delay, on a kernel without netem): the relay opens a port for it and every other
port goes on as it was — its learned addresses, queued frames and the TCP connections through
it. Round trips are measured as in test_link_relay.py (TCP echo, one byte each way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_link_relay import _ECHO, _fastest, _probe

from ehrshare.errors import EXIT_UNAVAILABLE
from ehrshare.network.linkrelay import Port, RelayError, add_relay_ports
from ehrshare.network.netns import HostLayout, our_links, our_namespaces
from ehrshare.network.supervisor import Child, start_child

pytestmark = pytest.mark.netns

Snapshot = Callable[[], tuple[list[str], list[str]]]

# Inside one host: connects to an echo server, one echo, prints "ready", then waits for a line
# on stdin and does N more echoes on the same connection, printing their round trips (ms).
_HELD = (
    "import json, socket, sys, time\n"
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
    "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "c.sendall(b'x')\n"
    "assert c.recv(1) == b'x'\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "rtts = []\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    t = time.perf_counter()\n"
    "    c.sendall(b'y')\n"
    "    assert c.recv(1) == b'y'\n"
    "    rtts.append((time.perf_counter() - t) * 1000)\n"
    "print(json.dumps({'rtts': rtts}), flush=True)\n"
)


@pytest.fixture
def relayed(
    machine_before: tuple[list[str], list[str]], state_dir: Path
) -> Iterator[Callable[..., HostLayout]]:
    """Make relayed layouts; at the end each is torn down as its state file now records it
    (hosts added by other processes included), so the machine is as before."""
    made: list[HostLayout] = []

    def make(labels: list[str], **kwargs: object) -> HostLayout:
        layout = HostLayout.create(labels, state_dir=state_dir, links="relay", **kwargs)  # type: ignore[arg-type]
        made.append(layout)
        return layout

    yield make
    for layout in made:
        if layout.state_file.exists():
            HostLayout.load(layout.state_file).teardown()
        layout.teardown()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Callable[[HostLayout, str, int], Child]]:
    """The echo server inside a host on its address (stopped by pid at the end)."""
    children: list[Child] = []

    def start(layout: HostLayout, label: str, port: int) -> Child:
        argv = [sys.executable, "-c", _ECHO, layout.address(label), str(port)]
        log = tmp_path / f"echo-{label}-{port}.log"
        child = start_child(f"echo-{label}", argv, log, netns=layout.host(label).netns)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop(grace=5)


def _within_delay(result: dict[str, object], delay_ms: float) -> None:
    # Host to host crosses two delayed ports; the bounds test_link_relay uses, on the least
    # round trip (every one is at least the delay; the least is what a loaded machine moves
    # least).
    assert 2 * delay_ms <= _fastest(result) <= 2 * delay_ms + 15.0, result


def test_a_host_added_to_a_running_relay_talks_and_the_old_connections_go_on(
    relayed: Callable[..., HostLayout],
    echo: Callable[[HostLayout, str, int], Child],
    machine_net: Snapshot,
) -> None:
    layout = relayed(["A", "B"], delay_ms=10)
    relay = layout.relay
    assert relay is not None and relay.alive()
    echo(layout, "A", 7140)  # serves one connection at a time: B's, held across the add
    echo(layout, "A", 7144)
    a = layout.address("A")
    held = subprocess.Popen(
        layout.argv("B", [sys.executable, "-c", _HELD, a, "7140", "20"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "ready"
        c = layout.add_host("C")
        assert c.address == str(layout.subnet.network_address + 12)
        assert c.netns in our_namespaces()
        assert layout.relay is relay and relay.alive()  # the same relay, not a new one
        stats = layout.relay_stats()
        assert stats is not None and stats["pid"] == relay.pid
        assert set(stats["ports"]) == {layout.bridge, *(h.inside for h in layout.hosts.values())}
        assert stats["port_errors"] == {} and stats["delay_ms"] == 10.0
        # The new host talks to an old one at the delay, both ways.
        _within_delay(_probe(layout, "C", a, 7144, 20), 10.0)
        echo(layout, "C", 7141)
        _within_delay(_probe(layout, "A", c.address, 7141, 20), 10.0)
        # B's connection to A, opened before the add, still carries data at the delay.
        assert held.stdin is not None
        out, _ = held.communicate("go\n", timeout=60)
        _within_delay(json.loads(out), 10.0)
        assert held.returncode == 0
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    # Again: nothing new is made.
    made = [list(m) for m in layout.made]
    assert layout.add_host("C") == c and layout.made == made and layout.relay is relay
    assert HostLayout.load(layout.state_file).hosts == layout.hosts
    before_stats = layout.relay_stats()
    assert before_stats is not None and before_stats["dropped"] == 0
    layout.teardown()
    assert not relay.alive()
    assert not [n for n in our_namespaces() + our_links() if n.startswith(f"ehr{layout.tag}")]


_ADD = (
    "import sys\n"
    "from pathlib import Path\n"
    "from ehrshare.network.netns import HostLayout\n"
    "HostLayout.load(Path(sys.argv[1])).add_host('C')\n"
)


@pytest.mark.parametrize(
    ("fault", "then"),
    [
        ("netns.add_host.after_record", "add"),
        ("netns.create.after_namespaces", "add"),
        ("linkrelay.add_ports.after_config", "add"),
        ("netns.add_host.after_ports", "add"),
        ("netns.add_host.after_ports", "teardown"),
        ("netns.create.after_namespaces", "teardown"),
    ],
    ids=lambda v: str(v),
)
def test_an_add_killed_at_each_step_is_completed_by_the_next_or_removed_by_teardown(
    relayed: Callable[..., HostLayout],
    echo: Callable[[HostLayout, str, int], Child],
    machine_before: tuple[list[str], list[str]],
    machine_net: Snapshot,
    fault: str,
    then: str,
) -> None:
    # Kept, with a detached relay, as a consortium's hosts are: another process adds the host.
    layout = relayed(["A", "B"], delay_ms=5, detached_relay=True)
    layout.keep()
    relay = layout.relay
    assert relay is not None
    killed = subprocess.run(
        [sys.executable, "-c", _ADD, str(layout.state_file)],
        env={**os.environ, "EHRSHARE_FAULT_AT": fault},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    current = HostLayout.load(layout.state_file)
    assert "C" in current.hosts  # on record before anything was made
    assert relay.alive()  # the relay outlives the killed run
    if then == "teardown":
        current.teardown()
        assert not relay.alive()
        assert machine_net() == machine_before
        return
    c = current.add_host("C")
    assert current.relay is not None and current.relay.pid == relay.pid
    echo(current, "A", 7142)
    result = _probe(current, "C", current.address("A"), 7142, 10)
    assert 10.0 <= _fastest(result) <= 10.0 + 15.0, result
    assert current.add_host("C") == c
    current.teardown()
    assert not relay.alive()
    assert machine_net() == machine_before


def test_a_host_added_while_the_relay_is_gone_starts_it_again_with_every_host(
    relayed: Callable[..., HostLayout], echo: Callable[[HostLayout, str, int], Child]
) -> None:
    layout = relayed(["A", "B"], delay_ms=5)
    old = layout.relay
    assert old is not None
    old.stop(kill=True, grace=5)  # its TAP devices go with it
    deadline = time.monotonic() + 10
    while any(n.startswith(f"ehr{layout.tag}") for n in our_links()):
        assert time.monotonic() < deadline, "the relay's TAP devices outlived it"
        time.sleep(0.05)
    layout.add_host("C")
    assert layout.relay is not None and layout.relay.alive() and layout.relay.pid != old.pid
    stats = layout.relay_stats()
    assert stats is not None and stats["delay_ms"] == 5.0  # the delay it was last given
    echo(layout, "B", 7143)
    result = _probe(layout, "C", layout.address("B"), 7143, 10)
    assert 10.0 <= _fastest(result) <= 10.0 + 15.0, result
    assert _probe(layout, "A", layout.address("B"), 7143, 3)["rtts"]


def test_a_port_the_relay_cannot_open_is_a_clear_error_and_the_others_go_on(
    relayed: Callable[..., HostLayout], echo: Callable[[HostLayout, str, int], Child]
) -> None:
    layout = relayed(["A", "B"], delay_ms=5)
    relay = layout.relay
    assert relay is not None
    base = layout._relay_config(5.0)
    ghost = Port(f"ehr{layout.tag}n9", f"ehr{layout.tag}-no-such-namespace", True)
    wrong = replace(base, ports=(*base.ports, ghost))
    started = time.monotonic()
    with pytest.raises(RelayError, match=r"could not open .*no-such-namespace") as error:
        add_relay_ports(relay, wrong, layout._relay_config_path())
    assert time.monotonic() - started < 10  # told by the relay, not a timeout
    assert str(relay.log) in str(error.value) and error.value.exit_code == EXIT_UNAVAILABLE
    assert relay.alive()
    echo(layout, "B", 7145)
    result = _probe(layout, "A", layout.address("B"), 7145, 10)
    assert 10.0 <= _fastest(result) <= 10.0 + 15.0, result
