"""A node running a session on its own marks it failed on chain when it cannot finish, and keeps
answering extractions under the previous final result; the follower replays old sessions
without taking part again.

The world's ledger clock is manual: the node's waits move it forward (its ``sleep``), so phase
timeouts pass without sleeping.
"""

from __future__ import annotations

import json

import pytest
from services_world import NONCE, World

from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.ledger.sandbox import CHANNEL
from ehrshare.services.kgc import (
    DkgFollower,
    DKGSessionFailed,
    InProcessKgcClient,
    KgcNode,
    open_dkg_session,
)


def _run_alone(world: World, node: KgcNode, nonce: bytes) -> None:
    """Node runs the session; every wait moves the ledger clock one second."""
    node.run_dkg(
        nonce,
        poll=0,
        sleep=lambda _s: world.clock.advance(1),
        now=lambda: world.clock.seconds,
        give_up=600,
    )


def _extracts_under_the_first_session(world: World) -> None:
    alice = world.m["alice"].ibe_id
    clients = [InProcessKgcClient(n, requester=alice) for n in world.nodes[:2]]
    outcome = world.extract(clients, "alice")  # signed with alice's ledger key, world's clock
    assert outcome.invalid == () and outcome.unavailable == {}
    outcome.secret_key.check(world.mpk)


def test_too_few_dealers_mark_the_session_failed(world: World) -> None:
    n1, n2, _ = world.nodes
    nonce = new_session_nonce()
    roster = [world.m[f"kgc{i}"].ibe_id for i in (1, 2, 3)]
    open_dkg_session(
        world.m["admin"].contract, nonce=nonce, roster=roster, threshold=3, phase_timeout_s=30
    )
    n2.dkg_session(n2.dkg_config(nonce)).post_deal()  # node 3 never deals
    with pytest.raises(DKGSessionFailed) as info:
        _run_alone(world, n1, nonce)
    cause = "only 2 of 3 dealers posted a deal; threshold is 3"
    assert cause in str(info.value)
    state = world.m["alice"].evaluate("GetDKGSession", nonce.hex())
    assert state["phase"] == "failed"
    assert state["failure"]["cause"] == cause
    assert state["failure"]["by"] == roster[0]
    assert state["failure"]["reason"] == "kgc node 1: 2 dealers posted, threshold 3"
    assert n1.current_session == NONCE and not n1.holds_share(nonce)
    _extracts_under_the_first_session(world)


def test_no_agreeing_views_by_the_result_timeout_mark_the_session_failed(world: World) -> None:
    n1, n2, _ = world.nodes
    nonce = new_session_nonce()
    roster = [world.m[f"kgc{i}"].ibe_id for i in (1, 2)]
    open_dkg_session(
        world.m["admin"].contract, nonce=nonce, roster=roster, threshold=2, phase_timeout_s=30
    )
    # Node 2 deals, then goes silent: no response (no complaint) and no view.
    n2.dkg_session(n2.dkg_config(nonce)).post_deal()
    with pytest.raises(DKGSessionFailed) as info:
        _run_alone(world, n1, nonce)
    assert "the result timeout passed" in str(info.value)
    state = world.m["alice"].evaluate("GetDKGSession", nonce.hex())
    assert state["phase"] == "failed"
    assert state["failure"]["cause"].endswith("with 1 of 2 agreeing views")
    assert state["result"] == {"final": False, "views": 1, "agree": 1}
    # Node 1 finished its side and sealed the new share, but never answers under it.
    assert n1.holds_share(nonce)
    assert n1.current_session == NONCE
    assert n1.adopt_final(nonce) is False
    _extracts_under_the_first_session(world)


def test_the_follower_replays_finished_and_failed_sessions_without_joining(
    world: World,
) -> None:
    node = world.nodes[2]
    member = world.m["kgc3"]
    follower = DkgFollower(node, member.gateway.get_network(CHANNEL), ibe_id=member.ibe_id)
    assert follower.checkpoint() == (None, None)
    events = member.gateway.get_network(CHANNEL).get_chaincode_events(
        "ehrshare", start_block=0, idle_timeout=0.5
    )
    seen = []
    with events:
        for event in events:
            follower.handle_event(event)
            seen.append(event)
    opened = [e for e in seen if e.event_name == "OpenDKGSession"]
    assert opened  # the first session, and the failed one naming node 3 if it ran first
    assert follower.outcomes == {} and follower._sessions == {}
    assert node.current_session == NONCE
    last = seen[-1]
    assert follower.checkpoint() == (last.block_number, last.transaction_id)
    stored = json.loads(follower.checkpoint_path.read_text())
    assert stored == {"block": last.block_number, "tx": last.transaction_id}
