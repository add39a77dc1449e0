"""Hosts in network namespaces (ehrshare.network.netns): made, used, cut off, removed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ehrshare.errors import EXIT_CONFIG
from ehrshare.network import netns
from ehrshare.network.netns import HostLayout, NetnsUnavailable, our_links, our_namespaces
from ehrshare.network.supervisor import Child

pytestmark = pytest.mark.netns

Layout = Callable[..., HostLayout]
Serve = Callable[[HostLayout, str, int], Child]
Snapshot = Callable[[], tuple[list[str], list[str]]]


def _answers(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(2) == b"hi"
    except OSError:
        return False


def _wait_answers(address: str, port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(address, port, 0.5):
            return True
        time.sleep(0.05)
    return False


def _answers_from(layout: HostLayout, label: str, address: str, port: int) -> bool:
    """Whether a client inside host ``label`` reaches ``address:port``."""
    probe = (
        "import socket, sys\n"
        "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
        "c.settimeout(2)\n"
        "sys.exit(0 if c.recv(2) == b'hi' else 1)\n"
    )
    argv = layout.argv(label, [sys.executable, "-c", probe, address, str(port)])
    return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0


def test_layout_gives_each_host_its_namespace_and_address_and_leaves_nothing(
    make_layout: Layout, serve: Serve, machine_net: Snapshot
) -> None:
    before = machine_net()
    layout = make_layout(["HospitalAMSP", "HospitalBMSP", "orderers"])
    addresses = [layout.address(h) for h in layout.hosts]
    assert len(set(addresses)) == 3 and all(a.startswith("10.231.") for a in addresses)
    assert {h.netns for h in layout.hosts.values()} <= set(our_namespaces())
    assert {layout.bridge, *(h.outside for h in layout.hosts.values())} <= set(our_links())
    # No host binds anything in the root namespace: its address exists only inside its own.
    inside = subprocess.run(
        ["ip", "-n", layout.host("HospitalAMSP").netns, "-o", "-4", "addr"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert layout.address("HospitalAMSP") in inside and "127.0.0.1" in inside  # lo is up
    serve(layout, "HospitalBMSP", 7000)
    assert _wait_answers(layout.address("HospitalBMSP"), 7000), "root namespace -> host B"
    assert _answers_from(layout, "HospitalAMSP", layout.address("HospitalBMSP"), 7000)
    # The server listens on B's address inside B, not on this namespace's loopback.
    assert not _answers("127.0.0.1", 7000, 0.5)

    layout.teardown()
    assert machine_net() == before
    assert not layout.state_file.exists()
    layout.teardown()  # idempotent


def test_create_again_with_the_same_tag_completes_the_layout(make_layout: Layout) -> None:
    layout = make_layout(["A", "B"])
    # Someone removed one host's namespace by hand: the next create puts it back.
    subprocess.run(["ip", "netns", "del", layout.host("B").netns], check=True)
    again = make_layout(["A", "B"], tag=layout.tag)
    assert again.hosts == layout.hosts
    assert layout.host("B").netns in our_namespaces()
    assert not again.is_cut("B")


def test_cut_host_is_unreachable_until_healed_and_others_still_talk(
    make_layout: Layout, serve: Serve
) -> None:
    layout = make_layout(["A", "B", "C"])
    for label in ("A", "C"):
        serve(layout, label, 7001)
    a, c = layout.address("A"), layout.address("C")
    assert _wait_answers(a, 7001) and _wait_answers(c, 7001)
    layout.cut("C")
    assert layout.is_cut("C")
    assert not _answers(c, 7001, 1.0), "C is cut off but still answers"
    assert _answers(a, 7001), "cutting C cut A off too"
    assert _answers_from(layout, "B", a, 7001), "cutting C cut B from A"
    assert not _answers_from(layout, "B", c, 7001)
    layout.heal("C")
    assert not layout.is_cut("C")
    assert _wait_answers(c, 7001), "C did not come back"


def test_teardown_kills_what_still_runs_inside_and_removes_everything(
    make_layout: Layout, serve: Serve
) -> None:
    layout = make_layout(["A"])
    child = serve(layout, "A", 7002)
    assert _wait_answers(layout.address("A"), 7002)
    layout.teardown()
    deadline = time.monotonic() + 5
    while child.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not child.alive()
    assert layout.host("A").netns not in our_namespaces()


_CRASH = (
    "import sys\n"
    "from pathlib import Path\n"
    "from ehrshare.network.netns import HostLayout\n"
    "layout = HostLayout.create(['A', 'B'], state_dir=Path(sys.argv[1]), tag=sys.argv[2])\n"
    "print('made')\n"
    "if sys.argv[3] == 'teardown':\n"
    "    layout.teardown()\n"
)

_TAGS = {
    "netns.create.after_bridge": "fa18",
    "netns.create.after_host": "fa19",
    "netns.teardown.after_link": "fa1a",
    None: "fa17",
}


@pytest.mark.parametrize("fault", list(_TAGS), ids=str)
def test_a_crashed_runs_leftovers_are_removed_by_the_next(
    make_layout: Layout, state_dir: Path, fault: str | None, machine_net: Snapshot
) -> None:
    before = machine_net()
    tag = _TAGS[fault]
    step = "teardown" if fault and fault.startswith("netns.teardown") else "create"
    env = {**os.environ}
    if fault is not None:
        env["EHRSHARE_FAULT_AT"] = fault
    # The crashed run: killed (SIGKILL) at a step boundary, or exiting without tearing down.
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, str(state_dir), tag, step],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == (-9 if fault else 0), done.stderr
    left = [n for n in our_namespaces() + our_links() if n.startswith(f"ehr{tag}")]
    assert left, "the crashed run made nothing (the fault point is not reached)"
    assert (state_dir / f"{tag}.json").exists()
    # The next run sweeps them before making its own.
    layout = make_layout(["X"])
    assert layout.tag != tag
    assert not [n for n in our_namespaces() + our_links() if n.startswith(f"ehr{tag}")]
    assert not (state_dir / f"{tag}.json").exists()
    layout.teardown()
    assert machine_net() == before


def test_a_live_owners_layout_is_not_swept(make_layout: Layout, state_dir: Path) -> None:
    layout = make_layout(["A"])
    assert netns.sweep_stale(state_dir) == []
    assert layout.host("A").netns in our_namespaces()


def test_delay_adds_latency_or_says_the_kernel_cannot(make_layout: Layout, serve: Serve) -> None:
    layout = make_layout(["A"])
    serve(layout, "A", 7003)
    address = layout.address("A")
    assert _wait_answers(address, 7003)
    try:
        layout.delay(50)
    except NetnsUnavailable as exc:
        # This machine's kernel has no sch_netem: a clear configuration error, nothing changed.
        assert exc.exit_code == EXIT_CONFIG and "netem" in str(exc) and exc.hint
        assert _answers(address, 7003)
        return
    started = time.monotonic()
    assert _answers(address, 7003, 5.0)
    assert time.monotonic() - started >= 0.1  # SYN/ACK and data each cross a delayed link
    layout.delay(0)


def test_bad_labels_and_missing_root_are_clear_errors(
    make_layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="distinct"):
        make_layout(["A", "A"])
    with pytest.raises(ValueError, match="letters, digits"):
        make_layout(["a b"])
    with pytest.raises(ValueError, match="no host 'Z'"):
        make_layout(["A"]).address("Z")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsUnavailable, match="need root") as info:
        make_layout(["B"])
    assert info.value.exit_code == EXIT_CONFIG


def test_state_file_naming_foreign_links_is_refused(state_dir: Path, machine_net: Snapshot) -> None:
    state_dir.mkdir(parents=True)
    path = state_dir / "abcd.json"
    path.write_text(
        '{"version": 1, "tag": "abcd", "subnet": "10.231.9.0/24", "hosts": [],'
        ' "owner": {"pid": 1, "ticks": 0}, "made": [["link", "eth0"]]}',
        encoding="utf-8",
    )
    with pytest.raises(netns.NetnsError, match="not one of its own"):
        HostLayout.load(path)
    assert netns.sweep_stale(state_dir) == []  # skipped with a warning, not obeyed
    assert "eth0" in machine_net()[1]
