"""The link relay's switching rules, on socket pairs instead of TAP devices (no root needed):
learning, flooding, per-port delay in order, the bounded queue and its drop counter."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.network.linkrelay import Port, Relay, RelayConfig

A, B, C = (bytes([2, 0, 0, 0, 0, i]) for i in (1, 2, 3))
BROADCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes, payload: bytes = b"p") -> bytes:
    return dst + src + b"\x08\x00" + payload


@pytest.fixture
def ports(tmp_path: Path) -> Iterator[tuple[Relay, list[socket.socket]]]:
    """A relay over three SOCK_SEQPACKET pairs: ports 1 and 2 delayed 10 ms, port 0 not."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    for ours, _ in pairs:
        ours.setblocking(False)
    config = RelayConfig(
        (Port("root", None, False), Port("a", "ns-a", True), Port("b", "ns-b", True)),
        10.0,
        tmp_path / "stats.json",
        queue=3,
    )
    relay = Relay(config, [ours.fileno() for ours, _ in pairs])
    for _, theirs in pairs:
        theirs.setblocking(False)
    yield relay, [theirs for _, theirs in pairs]
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def received(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(100))
        except BlockingIOError:
            return got


def test_broadcast_floods_delayed_ports_only_after_the_delay(
    ports: tuple[Relay, list[socket.socket]],
) -> None:
    relay, ends = ports
    relay._forward(1, frame(BROADCAST, A), now=100.0)
    assert received(ends[0]) == [frame(BROADCAST, A)]  # the root port is not delayed
    assert received(ends[2]) == [] and received(ends[1]) == []  # never back to the sender
    assert relay._release(100.009) == pytest.approx(0.001)
    assert received(ends[2]) == []
    assert relay._release(100.010) is None
    assert received(ends[2]) == [frame(BROADCAST, A)]


def test_learned_address_gets_its_frames_only_and_in_order(
    ports: tuple[Relay, list[socket.socket]],
) -> None:
    relay, ends = ports
    relay._forward(2, frame(BROADCAST, B), now=0.0)  # B is learned on port 2
    relay._release(1.0)
    for end in ends:
        received(end)
    for i in range(3):
        relay._forward(1, frame(B, A, bytes([i])), now=1.0 + i / 1000)
    relay._release(1.1)
    assert received(ends[2]) == [frame(B, A, bytes([i])) for i in range(3)]
    assert received(ends[0]) == [] and received(ends[1]) == []
    relay._forward(0, frame(A, C), now=2.0)  # A was learned on port 1 from the frames above
    relay._release(2.0)
    assert received(ends[1]) == []
    relay._release(2.01)
    assert received(ends[1]) == [frame(A, C)]


def test_full_queue_drops_and_counts(ports: tuple[Relay, list[socket.socket]]) -> None:
    relay, ends = ports
    relay._forward(2, frame(BROADCAST, B), now=0.0)
    relay._release(1.0)
    received(ends[0])
    received(ends[1])
    for i in range(5):
        relay._forward(0, frame(B, C, bytes([i])), now=5.0)
    assert relay.dropped == [0, 0, 2]
    relay._release(6.0)
    assert received(ends[2]) == [frame(B, C, bytes([i])) for i in range(3)]
    relay.write_stats()
    stats = json.loads(relay.config.stats.read_text(encoding="utf-8"))
    assert stats["dropped"] == 2 and stats["ports"]["b"]["dropped"] == 2
    assert stats["ports"]["b"]["frames_out"] == 3 and stats["ports"]["root"]["frames_out"] == 1


def test_a_port_that_refuses_frames_counts_errors_and_the_others_still_get_theirs(
    ports: tuple[Relay, list[socket.socket]],
) -> None:
    relay, ends = ports
    ends[1].close()  # like a cut host's TAP: writes to it fail
    relay._forward(2, frame(BROADCAST, B), now=0.0)
    relay._release(1.0)
    assert relay.write_errors[1] == 1
    assert received(ends[0]) == [frame(BROADCAST, B)]
    relay._forward(2, b"short", now=1.0)  # a runt frame is ignored
    assert received(ends[0]) == []


def test_config_round_trips_and_rejects_what_it_cannot_serve(tmp_path: Path) -> None:
    config = RelayConfig(
        (Port("x", None, False), Port("y", "ns", True)), 2.5, tmp_path / "s.json", queue=7
    )
    assert RelayConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    with pytest.raises(ValueError, match="out of range"):
        RelayConfig.from_dict({**config.as_dict(), "delay_ms": -1})
    with pytest.raises(ValueError, match="out of range"):
        RelayConfig.from_dict({**config.as_dict(), "ports": config.as_dict()["ports"][:1]})
    with pytest.raises(ValueError, match="not a link relay config"):
        RelayConfig.from_dict({"ports": [{"name": "x"}]})


def test_a_reload_adds_the_new_port_and_keeps_the_others_their_addresses_and_queues(
    ports: tuple[Relay, list[socket.socket]],
) -> None:
    relay, ends = ports
    relay._forward(2, frame(BROADCAST, B), now=0.0)  # B learned on port 2
    relay._release(1.0)
    for end in ends:
        received(end)
    relay._forward(0, frame(B, C, b"queued"), now=2.0)  # in flight to B when the port is added
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    opened: list[Port] = []

    def open_port(port: Port) -> int:
        opened.append(port)
        return ours.fileno()

    try:
        # The new config names the new port but not "a": "a" is kept all the same.
        fresh = RelayConfig(
            (Port("root", None, False), Port("b", "ns-b", True), Port("d", "ns-d", True)),
            20.0,
            relay.config.stats,
        )
        assert relay.reconfigure(fresh, open_port) == ["d"]
        assert opened == [Port("d", "ns-d", True)]
        assert [p.name for p in relay.config.ports] == ["root", "a", "b", "d"]
        assert relay.delay == pytest.approx(0.020)
        assert relay.macs[B] == 2  # learned addresses kept
        relay._release(2.010)  # the frame queued before the reload still comes out, on time
        assert received(ends[2]) == [frame(B, C, b"queued")]
        assert received(theirs) == []  # it was for B only
        relay._forward(3, frame(BROADCAST, bytes([2, 0, 0, 0, 0, 4])), now=3.0)
        assert received(ends[0]) == [frame(BROADCAST, bytes([2, 0, 0, 0, 0, 4]))]
        relay._release(3.020)
        assert received(ends[1]) and received(ends[2])  # flooded to the old delayed ports
        relay._forward(0, frame(bytes([2, 0, 0, 0, 0, 4]), C), now=4.0)  # learned on port 3
        relay._release(4.020)
        assert received(theirs) == [frame(bytes([2, 0, 0, 0, 0, 4]), C)]
        assert relay.reconfigure(fresh, open_port) == []  # again: nothing more is opened
        assert len(opened) == 1
        relay.write_stats()
        stats = json.loads(relay.config.stats.read_text(encoding="utf-8"))
        assert set(stats["ports"]) == {"root", "a", "b", "d"} and stats["port_errors"] == {}
        assert stats["ports"]["d"]["frames_out"] == 1
        with pytest.raises(ValueError, match="already has a port d"):
            relay.add_port(Port("d", "ns-d", True), ours.fileno())
    finally:
        ours.close()
        theirs.close()


def test_a_port_that_cannot_be_opened_is_reported_and_tried_again(
    ports: tuple[Relay, list[socket.socket]],
) -> None:
    relay, _ends = ports
    fresh = RelayConfig((*relay.config.ports, Port("e", "ns-gone", True)), 10.0, relay.config.stats)

    def refuse(port: Port) -> int:
        raise FileNotFoundError(2, f"no namespace {port.netns}")

    assert relay.reconfigure(fresh, refuse) == []
    assert [p.name for p in relay.config.ports] == ["root", "a", "b"]
    relay.write_stats()
    stats = json.loads(relay.config.stats.read_text(encoding="utf-8"))
    assert "e" not in stats["ports"] and "no namespace ns-gone" in stats["port_errors"]["e"]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        assert relay.reconfigure(fresh, lambda _p: ours.fileno()) == ["e"]
        assert relay.port_errors == {}
    finally:
        ours.close()
        theirs.close()
