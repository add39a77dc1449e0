"""``free_loopback_ports``: the ports services are given at init are free, distinct and below
the kernel's ephemeral range, so no outgoing connection on the machine can be given one before
the service binds it (a proxy failed to bind its port in CI when they came from ``bind(0)``)."""

from __future__ import annotations

import socket

from ehrshare.network import procinfo
from ehrshare.network.procinfo import free_loopback_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low, _high = procinfo._ephemeral_range()
    ports = free_loopback_ports(40)
    assert len(set(ports)) == 40
    assert all(1024 <= p < low for p in ports), (low, ports)
    held = []
    try:
        for p in ports:  # each can be bound now
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", p))
    finally:
        for s in held:
            s.close()


def test_a_port_in_use_is_never_given() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    taken = int(listener.getsockname()[1])
    try:
        # The taken port is the only candidate: tried and skipped, the kernel's choice instead.
        got = procinfo._choose(taken, taken + 1, 1)
        assert len(got) == 1 and got != [taken]
    finally:
        listener.close()


def test_a_port_handed_out_is_not_handed_out_again_by_the_same_process() -> None:
    # Two services chosen for in turn, neither started yet: the second call must not give the
    # first one's port, free as it still is. A range of 20 ports makes a repeat likely at once.
    low, _high = procinfo._ephemeral_range()
    first = procinfo._choose(low - 20, low, 10)
    second = procinfo._choose(low - 20, low, 10)
    assert len(set(first)) == 10 and len(set(second)) == 10
    assert not set(first) & set(second), (first, second)
