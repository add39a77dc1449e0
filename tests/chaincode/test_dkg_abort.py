"""AbortDKGSession: a session that the chain shows cannot finish is marked failed, with the chain's
cause and the caller's reason; a failed session refuses bundles, closes, views and results, and a
session that can still finish (or already did) cannot be aborted. Refusals change nothing."""

from __future__ import annotations

import json

import pytest
from chaincode_world import (
    KAI,
    KIM,
    MPK,
    NONCE,
    NONCE5,
    OTHER_MPK,
    POLY3,
    REPLACE,
    ROSTER,
    World,
    dkg_bundle,
    fails_without_change,
    post_all,
    three_kgc_nodes,
)

from ehrshare.ledger import EndorseError, GatewayError

NONCE6 = "b6" * 32
POLY2 = json.dumps([MPK] * 2)


def test_too_few_dealers_fail_the_session_and_it_refuses_everything_after(
    fresh_world: World,
) -> None:
    w = fresh_world
    kim, kai, admin = w.m["kgc"], w.kgc2, w.m["org_admin"]
    # NONCE5: the deal phase timed out with kim's deal only (τ=2).
    failed = admin.submit("AbortDKGSession", NONCE5, "kai never dealt")
    cause = "only 1 of 2 dealers posted a deal; threshold is 2"
    assert failed["phase"] == "failed"
    assert failed["failure"]["cause"] == cause
    assert failed["failure"]["reason"] == "kai never dealt"
    assert failed["failure"]["by"] == admin.ibe_id
    assert failed["failure"]["phase"] == "response"
    state = kim.evaluate("GetDKGSession", NONCE5)
    assert (state["phase"], state["failure"]["cause"], state["posted"]) == ("failed", cause, [])
    why = f"dkg session {NONCE5} failed: {cause} (aborted by {admin.ibe_id}: kai never dealt)"
    response = dkg_bundle("response", NONCE5, 2)
    assert fails_without_change(w, kai, "PostDKGBundle", NONCE5, "response", response, "1") == why
    assert fails_without_change(w, kim, "CloseDKGPhase", NONCE5, "response") == why
    assert fails_without_change(w, kim, "AbortDKGSession", NONCE5, "again") == why
    qual = json.dumps([KIM, KAI])
    assert fails_without_change(w, kim, "PublishDKGResult", NONCE5, MPK, POLY2, qual, "1") == why
    with pytest.raises(GatewayError) as info:
        kim.evaluate("GetDKGResult", NONCE5)
    assert info.value.message == why
    # The closed deal phase stays readable (evidence); the latest final result is untouched.
    assert [b["poster"] for b in kim.evaluate("GetDKGBundles", NONCE5, "deal")] == [KIM]
    assert kim.evaluate("GetDKGResult", "")["nonce"] == NONCE


def test_abort_is_one_event_with_the_cause(fresh_world: World) -> None:
    w = fresh_world
    proposal = w.m["kgc"].contract.new_proposal("AbortDKGSession", NONCE5, "one dealer")
    endorsed = proposal.endorse().endorsed
    assert endorsed.event is not None
    name, payload = endorsed.event
    entries = json.loads(payload)["entries"]
    assert name == "AbortDKGSession"
    assert [(e["action"], e["outcome"]) for e in entries] == [("AbortDKGSession", "failed")]
    assert entries[0]["detail"] == {
        "nonce": NONCE5,
        "cause": "only 1 of 2 dealers posted a deal; threshold is 2",
        "reason": "one dealer",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("xyz", "r"), "session nonce must be 64 lower-case hex digits"),
        ((NONCE5, ""), "abort reason must be 1-200 printable characters on one line"),
        ((NONCE5, "two\nlines"), "abort reason must be 1-200 printable characters on one line"),
        ((NONCE5, "x" * 201), "abort reason must be 1-200 printable characters on one line"),
        (("c7" * 32, "r"), f"dkg session {'c7' * 32} does not exist"),
        ((NONCE, "r"), f"dkg session {NONCE} has a final result; it cannot be aborted"),
    ],
)
def test_abort_refuses_bad_arguments_without_change(
    world: World, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(EndorseError) as info:
        world.m["kgc"].contract.new_proposal("AbortDKGSession", *args).endorse()
    assert info.value.message == message


def test_a_session_that_can_still_finish_is_not_aborted(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, admin = w.m["kgc"], w.kgc2, w.m["org_admin"]
    admin.submit("OpenDKGSession", NONCE6, "2", ROSTER, "60", REPLACE)
    assert fails_without_change(w, admin, "AbortDKGSession", NONCE6, "impatient") == (
        f"dkg session {NONCE6} can still finish: its deal phase is open (close it first)"
    )
    post_all(NONCE6, "deal", (kim, kai))
    kim.submit("CloseDKGPhase", NONCE6, "deal")
    assert fails_without_change(w, kim, "AbortDKGSession", NONCE6, "impatient") == (
        f"dkg session {NONCE6} can still finish: its response phase is open and 2 dealers "
        "posted a deal (threshold 2)"
    )
    post_all(NONCE6, "response", (kim, kai))
    kim.submit("CloseDKGPhase", NONCE6, "response")
    done = kim.submit("CloseDKGPhase", NONCE6, "justification")  # no complaints: closes at once
    deadline = done["phase_opened_at"] + 60
    assert fails_without_change(w, kai, "AbortDKGSession", NONCE6, "impatient") == (
        f"dkg session {NONCE6} can still finish: 0 of 2 views agree and its result timeout "
        f"ends at {deadline}"
    )
    w.clock.advance(60)
    failed = kai.submit("AbortDKGSession", NONCE6, "no views")
    assert failed["failure"]["cause"] == (
        f"every phase closed and the result timeout passed at {deadline} with 0 of 2 agreeing views"
    )


def test_views_that_can_no_longer_agree_fail_the_session(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    w.m["org_admin"].submit("OpenDKGSession", NONCE6, "3", roster, "60", REPLACE)
    qual = json.dumps([KIM, KAI, kit.ibe_id])
    for phase in ("deal", "response"):
        post_all(NONCE6, phase, (kim, kai, kit))
        kim.submit("CloseDKGPhase", NONCE6, phase)
    kim.submit("PublishDKGResult", NONCE6, MPK, POLY3, qual, "1")
    # One view, two silent nodes: τ=3 can still be reached.
    assert fails_without_change(w, kit, "AbortDKGSession", NONCE6, "split").startswith(
        f"dkg session {NONCE6} can still finish: its justification phase is open"
    )
    kai.submit("PublishDKGResult", NONCE6, OTHER_MPK, POLY3, qual, "1")
    assert kit.evaluate("GetDKGSession", NONCE6)["result"] == {
        "final": False,
        "views": 2,
        "agree": 1,
    }
    failed = kit.submit("AbortDKGSession", NONCE6, "split")
    assert failed["failure"]["cause"] == (
        "2 different result views, at most 1 agree and 1 roster nodes have not published; "
        "threshold is 3"
    )
