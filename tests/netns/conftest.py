"""Fixtures for the host-layout tests: layouts in network namespaces, always torn down.

Tests marked ``netns`` make real namespaces, veth pairs and a bridge, so they need root and
iproute2. CI runs as root on this machine: a missing capability fails the test (``ip`` says
why) rather than skipping it. Every layout a test makes is removed by a finalizer, also when
the test fails, and each test checks the machine's namespaces and links are as before.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ehrshare.network.netns import HostLayout
from ehrshare.network.supervisor import Child, start_child

# A one-line TCP server: answers every connection with "hi" (stands in for a hospital's node).
_SERVER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'hi')\n"
    "    c.close()\n"
)


def _machine_net() -> tuple[list[str], list[str]]:
    """Every network namespace and every root-namespace link name on this machine."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    names = sorted(line.split()[0] for line in netns.stdout.splitlines() if line.strip())
    link_names = sorted(line.split(": ")[1].split("@")[0] for line in links.stdout.splitlines())
    return names, link_names


@pytest.fixture
def machine_net() -> Callable[[], tuple[list[str], list[str]]]:
    """What :func:`_machine_net` reads: every namespace and root-namespace link name."""
    return _machine_net


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Where this test's layouts record what they made (not the machine-wide default)."""
    return tmp_path / "netns-state"


@pytest.fixture
def machine_before() -> Iterator[tuple[list[str], list[str]]]:
    """The machine's namespaces and links before the test; after it, asserts they are the same
    (runs after the layouts' finalizers: requested first)."""
    before = _machine_net()
    yield before
    assert _machine_net() == before, "the test left namespaces or links behind"


@pytest.fixture
def make_layout(
    machine_before: tuple[list[str], list[str]], state_dir: Path
) -> Iterator[Callable[..., HostLayout]]:
    """Make layouts in ``state_dir``; every one is torn down at the end, whatever happened."""
    made: list[HostLayout] = []

    def make(labels: list[str], **kwargs: object) -> HostLayout:
        layout = HostLayout.create(labels, state_dir=state_dir, **kwargs)  # type: ignore[arg-type]
        made.append(layout)
        return layout

    yield make
    for layout in made:
        layout.teardown()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[HostLayout, str, int], Child]]:
    """Start the tiny TCP server inside a host, on its address, through the supervisor."""
    children: list[Child] = []

    def start(layout: HostLayout, label: str, port: int) -> Child:
        argv = [sys.executable, "-c", _SERVER, layout.address(label), str(port)]
        log = tmp_path / f"server-{label}.log"
        child = start_child(f"server-{label}", argv, log, netns=layout.host(label).netns)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop(grace=5)
