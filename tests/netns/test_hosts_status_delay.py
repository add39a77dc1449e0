"""A CLI consortium's hosts (hosts.json, as 'consortium init --hosts netns' records them):
'network status' shows each hospital's namespace, address and link (up, cut, absent), and
'network delay --ms' / 'network up --delay-ms' set the delay between the hosts of an existing
consortium — live when the layout's links can carry it, recorded for the next 'up' otherwise,
refused with nothing changed when the hosts are up on a bridge this kernel cannot delay. The
relay that carries the delay outlives the command that started it and goes with the hosts.

The consortium here is an embedded one given a recorded layout (the hosts code reads only
hosts.json and the layout's state file); tests/netns/test_consortium_hosts_cli.py runs the
same commands on a Fabric consortium on its hosts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostcheck import run_cli
from test_link_relay import _ECHO, _fastest, _median, _probe

from ehrshare.network.consortium_hosts import (
    HOSTS_FILE,
    ensure_hosts,
    load_hosts,
    record_hosts,
    remove_hosts,
)
from ehrshare.network.linkrelay import netem_available
from ehrshare.network.netns import HostLayout
from ehrshare.network.supervisor import Child, pid_alive, start_child
from ehrshare.provisioning import Consortium

pytestmark = pytest.mark.netns

LABELS = ["HospitalAMSP", "HospitalBMSP", "OrdererMSP"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=300)


@pytest.fixture
def hosted(
    tmp_path: Path, machine_before: object, state_dir: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    """An embedded consortium whose hosts.json records a kept bridge layout; whatever
    happens its hosts are removed (and the machine's namespaces and links are as before)."""
    root = tmp_path / "c"
    Consortium.init(root).close()
    layout = HostLayout.create(LABELS, state_dir=state_dir)
    record_hosts(root, layout)
    try:
        yield root, {"EHRSHARE_NETNS_STATE": str(state_dir)}
    finally:
        remove_hosts(root)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Callable[[HostLayout, str, int], Child]]:
    """An echo server inside a host on its address (stopped by pid at the end)."""
    children: list[Child] = []

    def start(layout: HostLayout, label: str, port: int) -> Child:
        argv = [sys.executable, "-c", _ECHO, layout.address(label), str(port)]
        log = tmp_path / f"echo-{label}.log"
        children.append(start_child(f"echo-{label}", argv, log, netns=layout.host(label).netns))
        return children[-1]

    yield start
    for child in children:
        child.stop(grace=5)


def _status(root: Path, env: dict[str, str]) -> dict[str, object]:
    done = _cli("network", "status", "-p", str(root), "--json", env=env)
    assert done.returncode == 0, done.stderr
    hosts = json.loads(done.stdout)["hosts"]
    assert isinstance(hosts, dict)
    return hosts


def test_status_shows_each_host_and_its_link(hosted: tuple[Path, dict[str, str]]) -> None:
    root, env = hosted
    record = load_hosts(root)
    assert record is not None
    hosts = _status(root, env)
    assert hosts["up"] is True and hosts["links"] == "bridge" and hosts["delay_ms"] == 0
    assert hosts["hosts"] == {
        label: {"netns": h["netns"], "address": h["address"], "link": "up"}
        for label, h in record.hosts.items()
    }
    layout = HostLayout.load(record.state_file)
    layout.cut("HospitalBMSP")
    cut = _status(root, env)["hosts"]
    assert isinstance(cut, dict)
    assert cut["HospitalBMSP"]["link"] == "cut" and cut["HospitalAMSP"]["link"] == "up"
    text = _cli("network", "status", "-p", str(root), env=env)
    line = f"HospitalBMSP: {record.hosts['HospitalBMSP']['address']} in "
    assert line in text.stderr and "link cut" in text.stderr, text.stderr
    layout.heal("HospitalBMSP")
    remove_hosts(root)
    gone = _status(root, env)
    assert gone["up"] is False
    assert {h["link"] for h in gone["hosts"].values()} == {"absent"}  # type: ignore[union-attr]


def test_delay_between_the_hosts_of_a_cli_consortium(
    hosted: tuple[Path, dict[str, str]], echo: Callable[[HostLayout, str, int], Child]
) -> None:
    root, env = hosted
    record = load_hosts(root)
    assert record is not None
    before = (root / HOSTS_FILE).read_text(encoding="utf-8")
    if not netem_available():
        # Up on a bridge, and no netem to delay it: refused, nothing changed.
        refused = _cli("network", "delay", "--ms", "10", "-p", str(root), env=env)
        assert refused.returncode == 3, refused.stderr
        assert "network down" in refused.stderr and "Traceback" not in refused.stderr
        assert (root / HOSTS_FILE).read_text(encoding="utf-8") == before
        remove_hosts(root)  # what 'network down' does to the hosts
        recorded = _cli("network", "delay", "--ms", "10", "-p", str(root), "--json", env=env)
        assert recorded.returncode == 0, recorded.stderr
        assert json.loads(recorded.stdout) == {"delay_ms": 10.0, "links": "relay", "applied": False}
        # What 'network up' does first: the hosts made again, now on the relay, with the delay.
        ensure_hosts(root)
    else:
        live = _cli("network", "delay", "--ms", "10", "-p", str(root), "--json", env=env)
        assert live.returncode == 0, live.stderr
    hosts = _status(root, env)
    assert hosts["delay_ms"] == 10.0 and hosts["up"] is True
    layout = HostLayout.load(record.state_file)
    assert [h.address for h in layout.hosts.values()] == [
        h["address"] for h in record.hosts.values()
    ]
    b = layout.address("HospitalBMSP")
    echo(layout, "HospitalBMSP", 7120)
    # A -> B -> A: two delayed ways, 20 ms (plus scheduling on a loaded machine: the upper
    # bounds hold the least round trip, which that moves least).
    assert 20.0 <= _fastest(_probe(layout, "HospitalAMSP", b, 7120, 20)) <= 35.0
    relay = layout.relay
    if layout.links == "relay":
        # The relay outlived the commands that started it (each CLI run exited).
        assert relay is not None and relay.alive()
    # Killed after recording a new delay, before applying it: the next run applies it.
    killed = _cli(
        "network", "delay", "--ms", "30", "-p", str(root),
        env={**env, "EHRSHARE_FAULT_AT": "hosts.after_record"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert load_hosts(root).delay_ms == 30.0  # type: ignore[union-attr]
    assert _fastest(_probe(layout, "HospitalAMSP", b, 7120, 10)) <= 35.0  # still 10 ms
    again = _cli("network", "delay", "--ms", "30", "-p", str(root), env=env)
    assert again.returncode == 0, again.stderr
    assert _median(_probe(layout, "HospitalAMSP", b, 7120, 10)) >= 60.0
    changed = _cli("network", "delay", "--ms", "0", "-p", str(root), "--json", env=env)
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["applied"] is True
    assert _fastest(_probe(layout, "HospitalAMSP", b, 7120, 20)) < 5.0
    assert load_hosts(root).delay_ms == 0.0  # type: ignore[union-attr]
    bad = _cli("network", "delay", "--ms", "-5", "-p", str(root), env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    remove_hosts(root)
    if relay is not None:
        assert not pid_alive(relay.pid)


def test_delay_on_a_consortium_without_hosts_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    Consortium.init(root).close()
    done = _cli("network", "delay", "--ms", "10", "-p", str(root), env={})
    assert done.returncode == 3, done.stderr
    assert "no hosts of its own" in done.stderr and "Traceback" not in done.stderr
    assert not (root / HOSTS_FILE).exists()
