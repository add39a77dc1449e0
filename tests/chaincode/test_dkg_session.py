"""The KGC roster and DKG phases on chain: published keys, sessions opened by an admin, sender
binding, phases closed by a committed transaction, and results final only when τ nodes agree.

Bundles here carry a real header (version, kind, nonce, sender) and an opaque body: the contract
reads only the header. Real DKG bundles go through the same functions in tests/services.
"""

from __future__ import annotations

import base64
import json

import pytest
from chaincode_world import (
    KAI,
    KAI_KEY,
    KIM,
    KIM_KEY,
    MPK,
    NONCE,
    NONCE2,
    NONCE5,
    OTHER_MPK,
    POLY3,
    REPLACE,
    ROSTER,
    World,
    dkg_bundle,
    endorse_error,
    fails_without_change,
    post_all,
    three_kgc_nodes,
)
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.ledger.sandbox import Member
from ehrshare_chaincode.contract.dkg_sessions import check_bundle_header
from ehrshare_chaincode.stub import ChaincodeError

NONCE4 = "12" * 32


def _through_response(w: World, nonce: str, nodes: tuple[Member, ...]) -> None:
    for phase in ("deal", "response"):
        post_all(nonce, phase, nodes)
        nodes[0].submit("CloseDKGPhase", nonce, phase)


# --- keys ----------------------------------------------------------------------------------


def test_kgc_key_is_published_once_and_replaced_only_when_no_session_collects(
    fresh_world: World,
) -> None:
    w = fresh_world
    kim, admin = w.m["kgc"], w.m["org_admin"]
    assert kim.evaluate("GetKGCKey", KIM)["public_key"] == KIM_KEY
    again = kim.submit("PublishKGCKey", KIM_KEY)
    assert again["public_key"] == KIM_KEY
    new_key = base64.b64encode(b"\x01" + b"\x07" * 65).decode()
    # NONCE5 (one dealer of τ=2) still collects responses; once failed it holds no key.
    assert fails_without_change(w, kim, "PublishKGCKey", new_key) == (
        f"kgc {KIM} cannot replace its public key: dkg session {NONCE5} is still collecting "
        "bundles with it"
    )
    kim.submit("AbortDKGSession", NONCE5, "one dealer")
    # NONCE2 is still in its deal phase and its snapshot holds kim's key.
    assert fails_without_change(w, kim, "PublishKGCKey", new_key) == (
        f"kgc {KIM} cannot replace its public key: dkg session {NONCE2} is still collecting "
        "bundles with it"
    )
    for phase in ("deal", "response", "justification"):
        admin.submit("CloseDKGPhase", NONCE2, phase)  # each times out: the clock moved on
        w.clock.advance(61)
    assert kim.evaluate("GetDKGSession", NONCE2)["phase"] == "done"
    replaced = kim.submit("PublishKGCKey", new_key)
    assert replaced["public_key"] == new_key
    # The sessions keep the snapshot they were opened with.
    assert kim.evaluate("GetDKGResult", NONCE)["keys"] == [KIM_KEY, KAI_KEY]
    assert endorse_error(kim, "GetKGCKey", "Org1MSP/nobody") == (
        "kgc Org1MSP/nobody has not published a public key"
    )
    assert fails_without_change(w, kim, "PublishKGCKey", "***") == (
        "kgc public key is not valid base64"
    )


# --- opening a session ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("xyz", "2", ROSTER, "60"), "session nonce must be 64 lower-case hex digits"),
        ((NONCE, "2", ROSTER, "60"), f"dkg session {NONCE} already exists"),
        ((NONCE4, "3", ROSTER, "60"), "threshold 3 is out of range [2, 2]"),
        ((NONCE4, "1", ROSTER, "60"), "threshold 1 is out of range [2, 2]"),
        ((NONCE4, "two", ROSTER, "60"), "threshold 'two' is not an integer"),
        ((NONCE4, "2", json.dumps([KIM]), "60"), "roster has 1 members; a dkg needs 2 to 64"),
        ((NONCE4, "2", json.dumps([KIM, KIM]), "60"), f"kgc {KIM} appears twice in the roster"),
        (
            (NONCE4, "2", json.dumps([KIM, "Org1MSP/alice"]), "60", REPLACE),
            "kgc Org1MSP/alice has not published a public key",
        ),
        (
            (NONCE4, "2", json.dumps([KIM, "kai"]), "60"),
            "roster member 'kai' is not of the form <msp id>/<enrollment id>",
        ),
        ((NONCE4, "2", "{}", "60"), "roster must be a json list of strings"),
        ((NONCE4, "2", ROSTER, "0"), "phase timeout 0 is out of range [1, 604800]"),
    ],
)
def test_open_session_refuses_bad_arguments_without_change(
    world: World, args: tuple[str, ...], message: str
) -> None:
    assert fails_without_change(world, world.m["org_admin"], "OpenDKGSession", *args) == message


def test_only_an_admin_opens_a_session_and_keys_are_snapshotted(fresh_world: World) -> None:
    w = fresh_world
    kim, admin = w.m["kgc"], w.m["org_admin"]
    assert fails_without_change(w, kim, "OpenDKGSession", NONCE4, "2", ROSTER, "60") == (
        f"identity {KIM} has role kgc; this needs role admin"
    )
    session = admin.submit("OpenDKGSession", NONCE4, "2", json.dumps([KAI, KIM]), "30", REPLACE)
    assert session["roster"] == [KAI, KIM]
    assert session["keys"] == [KAI_KEY, KIM_KEY]
    assert (session["threshold"], session["phase"], session["phase_timeout_s"]) == (2, "deal", 30)
    assert kim.evaluate("GetDKGSession", NONCE4)["posted"] == []


def test_two_nodes_with_one_key_cannot_share_a_session(fresh_world: World) -> None:
    w = fresh_world
    copycat = w.sandbox.member("Org2MSP", "copycat", "kgc")
    copycat.submit("PublishKGCKey", KIM_KEY)
    roster = json.dumps([KIM, copycat.ibe_id])
    assert fails_without_change(
        w, w.m["org_admin"], "OpenDKGSession", NONCE4, "2", roster, "9", REPLACE
    ) == (f"kgc {KIM} and kgc {copycat.ibe_id} published the same public key")


# --- posting -------------------------------------------------------------------------------


def test_post_binds_sender_index_phase_and_session(fresh_world: World) -> None:
    w = fresh_world
    kim, kai = w.m["kgc"], w.kgc2
    # kim is at position 1 of NONCE2's roster; posting as sender 2 (kai's index) is refused.
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE2, 2), "1"
    ) == (
        f"dkg bundle names sender 2, but kgc {KIM} is at position 1 of the roster of dkg "
        f"session {NONCE2}"
    )
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE2, "deal", dkg_bundle("response", NONCE2, 1), "1"
    ) == ("dkg bundle has kind 2; a deal bundle has kind 1")
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE, 1), "1"
    ) == (f"dkg bundle is for session {NONCE}, not {NONCE2}")
    short = base64.b64encode(b"\x01\x01abc").decode()
    assert fails_without_change(w, kim, "PostDKGBundle", NONCE2, "deal", short, "1") == (
        "dkg bundle is 5 bytes; its header alone is 36"
    )
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE2, "response", dkg_bundle("response", NONCE2, 1), "1"
    ) == (f"response phase of dkg session {NONCE2} is not open yet; the open phase is deal")
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE4, "deal", dkg_bundle("deal", NONCE4, 1), "1"
    ) == (f"dkg session {NONCE4} does not exist")
    assert fails_without_change(
        w, kim, "PostDKGBundle", NONCE2, "gossip", dkg_bundle("deal", NONCE2, 1), "1"
    ) == ("phase 'gossip' is not one of deal, response, justification")
    outsider = w.sandbox.member("Org2MSP", "kip", "kgc")
    assert fails_without_change(
        w, outsider, "PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE2, 3), "1"
    ) == (f"kgc {outsider.ibe_id} is not in the roster of dkg session {NONCE2}")
    posted = kai.submit("PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE2, 2), "1")
    assert (posted["poster"], posted["sender"]) == (KAI, 2)
    assert fails_without_change(
        w, kai, "PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE2, 2, b"x" * 9), "1"
    ) == (f"kgc {KAI} already posted a deal bundle for session {NONCE2}")
    assert kim.evaluate("GetDKGSession", NONCE2)["posted"] == [KAI]


# --- closing -------------------------------------------------------------------------------


def test_phase_closes_when_all_posted_or_timed_out_and_late_bundles_are_refused(
    fresh_world: World,
) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    admin = w.m["org_admin"]
    admin.submit("OpenDKGSession", NONCE4, "2", roster, "60", REPLACE)
    for pos, node in enumerate((kim, kai), start=1):
        node.submit("PostDKGBundle", NONCE4, "deal", dkg_bundle("deal", NONCE4, pos), "1")
    opened = kim.evaluate("GetDKGSession", NONCE4)["phase_opened_at"]
    assert fails_without_change(w, kim, "CloseDKGPhase", NONCE4, "deal") == (
        f"deal phase of dkg session {NONCE4} cannot close yet: 2 of 3 roster nodes posted and "
        f"its timeout ends at {opened + 60}"
    )
    assert endorse_error(kim, "GetDKGBundles", NONCE4, "deal") == (
        f"deal phase of dkg session {NONCE4} is not closed; read its bundles after "
        "CloseDKGPhase commits"
    )
    stranger = w.m["grantee"]
    assert fails_without_change(w, stranger, "CloseDKGPhase", NONCE4, "deal") == (
        f"identity {stranger.ibe_id} may not close phases of dkg session {NONCE4}: "
        "it is neither in the roster nor an admin"
    )
    w.clock.advance(60)
    closed = kai.submit("CloseDKGPhase", NONCE4, "deal")
    assert closed["phase"] == "response"
    assert closed["closed"][-1]["posters"] == [KIM, KAI]
    assert closed["closed"][-1]["timed_out"] is True
    # kit was late: its deal is refused, and every reader sees the same two deals.
    assert fails_without_change(
        w, kit, "PostDKGBundle", NONCE4, "deal", dkg_bundle("deal", NONCE4, 3), "1"
    ) == (f"deal phase of dkg session {NONCE4} is closed")
    assert fails_without_change(w, kim, "CloseDKGPhase", NONCE4, "deal") == (
        f"deal phase of dkg session {NONCE4} is closed"
    )
    assert fails_without_change(w, kim, "CloseDKGPhase", NONCE4, "justification") == (
        f"justification phase of dkg session {NONCE4} is not open yet; the open phase is response"
    )
    for node in (kim, kai, kit):
        rows = node.evaluate("GetDKGBundles", NONCE4, "deal")
        assert [r["poster"] for r in rows] == [KIM, KAI]
    # All three post their responses: the phase closes before its timeout.
    for pos, node in enumerate((kim, kai, kit), start=1):
        node.submit("PostDKGBundle", NONCE4, "response", dkg_bundle("response", NONCE4, pos), "1")
    early = kit.submit("CloseDKGPhase", NONCE4, "response")
    assert (early["phase"], early["closed"][-1]["timed_out"]) == ("justification", False)


def test_a_post_and_a_close_of_its_phase_conflict(fresh_world: World) -> None:
    """Endorsed before the close committed, the late post is invalidated at commit (MVCC)."""
    w = fresh_world
    kim, kai = w.m["kgc"], w.kgc2
    late = kai.contract.new_proposal(
        "PostDKGBundle", NONCE2, "deal", dkg_bundle("deal", NONCE2, 2), "1"
    ).endorse()
    kim.submit("CloseDKGPhase", NONCE2, "deal")  # timed out long ago
    status = late.submit().get_status()
    assert (status.code, status.successful) == ("MVCC_READ_CONFLICT", False)
    w.clock.advance(1000)
    kim.submit("CloseDKGPhase", NONCE2, "response")
    assert kim.evaluate("GetDKGBundles", NONCE2, "deal") == []


# --- results -------------------------------------------------------------------------------


def test_result_is_final_only_when_tau_nodes_agree(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    w.m["org_admin"].submit("OpenDKGSession", NONCE4, "3", roster, "60", REPLACE)
    qual = json.dumps([KIM, KAI, kit.ibe_id])
    for pos, node in enumerate((kim, kai, kit), start=1):
        node.submit("PostDKGBundle", NONCE4, "deal", dkg_bundle("deal", NONCE4, pos), "1")
    kim.submit("CloseDKGPhase", NONCE4, "deal")
    assert fails_without_change(w, kim, "PublishDKGResult", NONCE4, MPK, POLY3, qual, "1") == (
        f"dkg session {NONCE4} is still collecting response bundles; publish the result after "
        "the response phase closes"
    )
    for pos, node in enumerate((kim, kai, kit), start=1):
        node.submit("PostDKGBundle", NONCE4, "response", dkg_bundle("response", NONCE4, pos), "1")
    kim.submit("CloseDKGPhase", NONCE4, "response")
    assert endorse_error(kim, "GetDKGResult", NONCE4) == (
        f"dkg session {NONCE4} result is not final yet: 0 of 3 agree"
    )
    first = kim.submit("PublishDKGResult", NONCE4, MPK, POLY3, qual, "1")
    assert (first["outcome"], first["agree"], first["threshold"]) == ("pending", 1, 3)
    # A different view (another mpk) is recorded and does not count.
    odd = kai.submit("PublishDKGResult", NONCE4, OTHER_MPK, POLY3, qual, "1")
    assert (odd["outcome"], odd["agree"], odd["disagree"]) == ("pending", 1, 1)
    assert endorse_error(kim, "GetDKGResult", NONCE4) == (
        f"dkg session {NONCE4} result is not final yet: 1 of 3 agree"
    )
    assert fails_without_change(w, kai, "PublishDKGResult", NONCE4, MPK, POLY3, qual, "1") == (
        f"kgc {KAI} already published a different result for dkg session {NONCE4}"
    )
    second = kit.submit("PublishDKGResult", NONCE4, MPK, POLY3, qual, "1")
    assert (second["outcome"], second["agree"], second["disagree"]) == ("pending", 2, 1)
    assert endorse_error(kim, "GetDKGResult", NONCE4) == (
        f"dkg session {NONCE4} result is not final yet: 2 of 3 agree"
    )
    # τ-1 agree, the latest final result is still the world's first session.
    assert kim.evaluate("GetDKGResult", "")["nonce"] == NONCE
    # kim repeating itself is not a second vote.
    again = kim.submit("PublishDKGResult", NONCE4, MPK, POLY3, qual, "1")
    assert (again["outcome"], again["agree"]) == ("pending", 2)
    assert endorse_error(kim, "GetDKGResult", NONCE4).endswith("2 of 3 agree")


def test_result_becomes_final_at_tau_with_roster_and_keys(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    w.m["org_admin"].submit("OpenDKGSession", NONCE4, "2", roster, "60", REPLACE)
    _through_response(w, NONCE4, (kim, kai, kit))
    poly = json.dumps([MPK] * 2)
    qual = json.dumps([kit.ibe_id, KIM, KAI])
    assert kim.submit("PublishDKGResult", NONCE4, MPK, poly, qual, "1")["outcome"] == "pending"
    final = kai.submit("PublishDKGResult", NONCE4, MPK, poly, qual, "1")
    assert (final["outcome"], final["agree"]) == ("final", 2)
    result = kit.evaluate("GetDKGResult", "")
    assert result["nonce"] == NONCE4
    assert result["roster"] == [KIM, KAI, kit.ibe_id]
    assert result["keys"][:2] == [KIM_KEY, KAI_KEY]
    assert result["agreed_by"] == sorted([KIM, KAI])
    assert result["qual"] == sorted([KIM, KAI, kit.ibe_id])
    # A late, different view after finality is recorded as a conflict; the result stands.
    late = kit.submit("PublishDKGResult", NONCE4, OTHER_MPK, poly, qual, "1")
    assert late["outcome"] == "conflict"
    assert kim.evaluate("GetDKGResult", NONCE4) == result
    assert w.m["owner"].evaluate("GetDKGResult", NONCE)["nonce"] == NONCE


@pytest.mark.parametrize(
    ("who", "args", "message"),
    [
        (
            "kgc",
            (NONCE, MPK, json.dumps([MPK]), json.dumps([KIM, KAI]), "1"),
            f"public polynomial has 1 coefficients; dkg session {NONCE} has threshold 2",
        ),
        (
            "kgc",
            (NONCE, MPK, json.dumps([MPK] * 2), json.dumps([KIM]), "1"),
            f"qual has 1 members; dkg session {NONCE} has threshold 2",
        ),
        (
            "kgc",
            (NONCE, MPK, json.dumps([MPK] * 2), json.dumps([KIM, "Org1MSP/x"]), "1"),
            f"qual member Org1MSP/x is not in the roster of dkg session {NONCE}",
        ),
        (
            "kgc",
            ("34" * 32, MPK, json.dumps([MPK] * 2), json.dumps([KIM, KAI]), "1"),
            f"dkg session {'34' * 32} does not exist",
        ),
        (
            "kgc",
            (NONCE, "***", json.dumps([MPK] * 2), json.dumps([KIM, KAI]), "1"),
            "mpk is not valid base64",
        ),
        (
            "kgc",
            (NONCE, MPK, "[]", json.dumps([KIM, KAI]), "1"),
            "public polynomial is empty",
        ),
        (
            "owner",
            (NONCE, MPK, json.dumps([MPK] * 2), json.dumps([KIM, KAI]), "1"),
            "identity Org1MSP/alice has role patient; this needs role kgc",
        ),
    ],
)
def test_publish_result_refuses_bad_arguments_without_change(
    world: World, who: str, args: tuple[str, ...], message: str
) -> None:
    assert fails_without_change(world, world.m[who], "PublishDKGResult", *args) == message


def test_a_node_outside_qual_does_not_publish(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    w.m["org_admin"].submit("OpenDKGSession", NONCE4, "2", roster, "60", REPLACE)
    _through_response(w, NONCE4, (kim, kai, kit))
    poly = json.dumps([MPK] * 2)
    assert fails_without_change(
        w, kit, "PublishDKGResult", NONCE4, MPK, poly, json.dumps([KIM, KAI]), "1"
    ) == (f"kgc {kit.ibe_id} is not in the qual it published; only qual members publish")


def test_get_result_names_what_is_missing(world: World) -> None:
    kim = world.m["kgc"]
    assert (
        endorse_error(kim, "GetDKGResult", "34" * 32) == f"dkg session {'34' * 32} does not exist"
    )
    assert endorse_error(kim, "GetDKGResult", NONCE2) == (
        f"dkg session {NONCE2} result is not final yet: 0 of 2 agree"
    )
    assert (
        endorse_error(kim, "GetDKGResult", "nope")
        == "session nonce must be 64 lower-case hex digits"
    )


# --- the header the contract reads ---------------------------------------------------------


@given(raw=st.binary(max_size=80), phase=st.sampled_from(["deal", "response", "justification"]))
def test_header_check_accepts_exactly_the_bound_headers(raw: bytes, phase: str) -> None:
    bound = (
        len(raw) >= 36
        and raw[1] == {"deal": 1, "response": 2, "justification": 3}[phase]
        and raw[2:34] == bytes.fromhex(NONCE)
        and int.from_bytes(raw[34:36], "big") == 2
    )
    try:
        check_bundle_header(raw, NONCE, phase, 2, KAI)
    except ChaincodeError:
        assert not bound
    else:
        assert bound


@given(sender=st.integers(1, 65535), body=st.binary(max_size=40))
def test_header_check_binds_the_sender_of_well_formed_headers(sender: int, body: bytes) -> None:
    raw = base64.b64decode(dkg_bundle("response", NONCE, sender, body))
    if sender == 7:
        check_bundle_header(raw, NONCE, "response", 7, KIM)
    else:
        with pytest.raises(ChaincodeError, match=f"names sender {sender}, but kgc"):
            check_bundle_header(raw, NONCE, "response", 7, KIM)


def _response(nonce: str, sender: int, statuses: bytes) -> str:
    body = len(statuses).to_bytes(2, "big") + statuses + b"\x00" * 64
    return dkg_bundle("response", nonce, sender, body)


def test_justification_phase_closes_once_every_accused_dealer_posted(fresh_world: World) -> None:
    w = fresh_world
    kim, kai, kit, roster = three_kgc_nodes(w)
    w.m["org_admin"].submit("OpenDKGSession", NONCE4, "2", roster, "60", REPLACE)
    for pos, node in enumerate((kim, kai, kit), start=1):
        node.submit("PostDKGBundle", NONCE4, "deal", dkg_bundle("deal", NONCE4, pos), "1")
    kim.submit("CloseDKGPhase", NONCE4, "deal")
    # kit complains about kai (1), marks kim absent (2); kim's own status is ignored.
    statuses = {1: b"\x00\x00\x00", 2: b"\x01\x00\x00", 3: b"\x02\x01\x00"}
    for pos, node in enumerate((kim, kai, kit), start=1):
        node.submit("PostDKGBundle", NONCE4, "response", _response(NONCE4, pos, statuses[pos]), "1")
    kim.submit("CloseDKGPhase", NONCE4, "response")
    opened = kim.evaluate("GetDKGSession", NONCE4)["phase_opened_at"]
    kai.submit(
        "PostDKGBundle", NONCE4, "justification", dkg_bundle("justification", NONCE4, 2), "1"
    )
    assert fails_without_change(w, kit, "CloseDKGPhase", NONCE4, "justification") == (
        f"justification phase of dkg session {NONCE4} cannot close yet: accused dealers {KIM} "
        f"have not posted and its timeout ends at {opened + 60}"
    )
    kim.submit(
        "PostDKGBundle", NONCE4, "justification", dkg_bundle("justification", NONCE4, 1), "1"
    )
    closed = kit.submit("CloseDKGPhase", NONCE4, "justification")
    assert closed["phase"] == "done"
    assert closed["closed"][-1]["posters"] == [KIM, KAI]
    assert closed["closed"][-1]["timed_out"] is False


def test_justification_phase_without_complaints_closes_at_once(fresh_world: World) -> None:
    w = fresh_world
    kim, kai = w.m["kgc"], w.kgc2
    w.m["org_admin"].submit("OpenDKGSession", NONCE4, "2", ROSTER, "60", REPLACE)
    _through_response(w, NONCE4, (kim, kai))  # opaque bodies: no status bytes, no complaints
    assert kai.submit("CloseDKGPhase", NONCE4, "justification")["phase"] == "done"
