"""Forged extraction requests (a stolen TLS key without the ledger key) neither spend the
member's rate budget nor flood the node's log."""

from __future__ import annotations

import logging

import pytest
from services_world import World

from ehrshare.hazmat.extract import PartialKeyResponse
from ehrshare.services.kgc import (
    BadSignature,
    KgcError,
    KgcNode,
    RateLimited,
    UnregisteredCertificate,
)


def _node(world: World, rate: int) -> KgcNode:
    return KgcNode(
        index=2,
        node_key=world.node_keys[1],
        state_dir=world.nodes[1].state_dir,
        contract=world.nodes[1].contract,
        rate_limit_per_minute=rate,
        clock=world.kgc_clock,
        wall_clock=world.clock,
    )


def _forged(world: World, kind: str) -> bytes:
    bob = world.m["bob"]
    if kind == "foreign-key":  # alice's certificate, someone else's signature
        return world.request("alice", 2, signer=bob.signer)[0]
    return world.request("alice", 2, certificate=bob.identity, signer=bob.signer)[0]


def test_forged_requests_do_not_spend_the_members_budget(world: World) -> None:
    node = _node(world, rate=3)
    alice = world.m["alice"].ibe_id
    for i in range(10):
        kind = "foreign-key" if i % 2 else "foreign-cert"
        expected: type[KgcError] = (
            BadSignature if kind == "foreign-key" else UnregisteredCertificate
        )
        with pytest.raises(expected):
            node.extract(_forged(world, kind), requester=alice)
    # Alice's own three extractions this minute are all still there.
    for _ in range(3):
        PartialKeyResponse.from_bytes(node.extract(world.request("alice", 2)[0], requester=alice))
    with pytest.raises(RateLimited, match="exceeded 3 extractions"):
        node.extract(world.request("alice", 2)[0], requester=alice)


def test_a_flood_of_refusals_is_logged_within_a_budget_and_counted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    node = _node(world, rate=3)
    alice = world.m["alice"].ibe_id
    with caplog.at_level(logging.INFO, logger="ehrshare.services.kgc"):
        for _ in range(20):
            with pytest.raises(BadSignature):
                node.extract(_forged(world, "foreign-key"), requester=alice)
        refused = [r.getMessage() for r in caplog.records if "outcome=refused" in r.getMessage()]
        assert len(refused) == 3
        assert all("bad signature" in line for line in refused)
        caplog.clear()
        world.kgc_clock.now += 60.0  # the log budget refills
        with pytest.raises(BadSignature):
            node.extract(_forged(world, "foreign-key"), requester=alice)
    lines = [r.getMessage() for r in caplog.records if "outcome=refused" in r.getMessage()]
    assert lines == [lines[0]] and "(17 earlier refusals not logged)" in lines[0]
