"""OpenReshareSession and the rules a resharing adds: old members deal, new members respond and
publish, share indices stay, the result must keep the master key; and a new DKG is refused once
records exist under the current key."""

from __future__ import annotations

import json

import pytest
from chaincode_world import (
    DKG_POLY,
    KAI,
    KIM,
    MPK,
    NONCE,
    NONCE3,
    OTHER_MPK,
    REPLACE,
    ROSTER,
    World,
    dkg_bundle,
    fails_without_change,
    three_kgc_nodes,
)
from hypothesis import given
from hypothesis import strategies as st

from ehrshare_chaincode.contract.checks import json_ints
from ehrshare_chaincode.stub import ChaincodeError

RESHARE = "b1" * 32

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(value=_JSON)
def test_indices_parse_to_integers_or_a_clear_error(value: object) -> None:
    text = json.dumps(value)
    ok = isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    )
    if ok:
        assert json_ints(text, "indices") == value
    else:
        with pytest.raises(ChaincodeError, match="indices must be a json list of integers"):
            json_ints(text, "indices")


def test_a_new_dkg_is_refused_once_records_exist_unless_replacing_on_purpose(
    fresh_world: World,
) -> None:
    w = fresh_world
    admin = w.m["org_admin"]
    assert fails_without_change(w, admin, "OpenDKGSession", NONCE3, "2", ROSTER, "60") == (
        f"a new dkg would replace the master key of dkg session {NONCE}, under which records "
        "are stored; reshare the key to a new committee instead (OpenReshareSession, "
        "'ehrshare kgc reshare'), or open it deliberately with 'ehrshare kgc dkg open "
        "--new-master-key' (records keep the key of their epoch)"
    )
    assert fails_without_change(w, admin, "OpenDKGSession", NONCE3, "2", ROSTER, "60", "yes") == (
        "replace_master_key must be empty or 'replace-master-key', got 'yes'"
    )
    assert admin.submit("OpenDKGSession", NONCE3, "2", ROSTER, "60", REPLACE)["phase"] == "deal"


def test_open_reshare_checks_indices_dealers_and_threshold(fresh_world: World) -> None:
    w = fresh_world
    admin = w.m["org_admin"]
    _, _, kit, _ = three_kgc_nodes(w)
    new = json.dumps([KIM, KAI, kit.ibe_id])
    cases = [
        (
            (RESHARE, "2", new, "[2, 1, 3]", ROSTER, "60"),
            f"kgc {KIM} holds share 1 of the current key; it keeps that index, not 2",
        ),
        (
            (RESHARE, "2", new, "[1, 2, 2]", ROSTER, "60"),
            "share indices must be distinct integers from 1 to 65535",
        ),
        (
            (RESHARE, "2", json.dumps([KIM, kit.ibe_id]), "[1, 2]", ROSTER, "60"),
            f"share index 2 belongs to kgc {KAI} of the current committee; give kgc "
            f"{kit.ibe_id} another index",
        ),
        ((RESHARE, "2", new, "[1, 2]", ROSTER, "60"), "indices has 2 entries; the roster has 3"),
        (
            (RESHARE, "2", new, "[1, 2, 3]", json.dumps([KIM, kit.ibe_id]), "60"),
            f"dealer {kit.ibe_id} is not in the committee of dkg session {NONCE}",
        ),
        (
            (RESHARE, "2", new, "[1, 2, 3]", json.dumps([KIM]), "60"),
            "1 dealers cannot reshare a key with threshold 2",
        ),
        ((RESHARE, "4", new, "[1, 2, 3]", ROSTER, "60"), "threshold 4 is out of range [2, 3]"),
        (
            (RESHARE, "2", new, '["1", 2, 3]', ROSTER, "60"),
            "indices must be a json list of integers",
        ),
    ]
    for args, message in cases:
        assert fails_without_change(w, admin, "OpenReshareSession", *args) == message
    assert fails_without_change(w, kit, "OpenReshareSession", *cases[0][0]).endswith(
        "this needs role admin"
    )
    session = admin.submit("OpenReshareSession", RESHARE, "3", new, "[1, 2, 3]", ROSTER, "60")
    assert session["kind"] == "reshare"
    assert session["previous"] == NONCE
    assert session["previous_threshold"] == 2
    assert session["mpk"] == MPK
    assert session["dealer_indices"] == [1, 2]


def test_old_members_deal_new_members_respond_and_the_result_keeps_mpk(
    fresh_world: World,
) -> None:
    w = fresh_world
    admin = w.m["org_admin"]
    kim, kai, kit, _ = three_kgc_nodes(w)
    # kai leaves, kit joins with share index 3; kim and kai deal.
    new = json.dumps([KIM, kit.ibe_id])
    admin.submit("OpenReshareSession", RESHARE, "2", new, "[1, 3]", ROSTER, "60")
    assert fails_without_change(
        w, kit, "PostDKGBundle", RESHARE, "deal", dkg_bundle("deal", RESHARE, 1), "1"
    ) == (
        f"kgc {kit.ibe_id} is not in the dealers of reshare session {RESHARE}; deal bundles come "
        "from the dealers"
    )
    kim.submit("PostDKGBundle", RESHARE, "deal", dkg_bundle("deal", RESHARE, 1), "1")
    kai.submit("PostDKGBundle", RESHARE, "deal", dkg_bundle("deal", RESHARE, 2), "1")
    assert kit.submit("CloseDKGPhase", RESHARE, "deal")["phase"] == "response"
    assert fails_without_change(
        w, kai, "PostDKGBundle", RESHARE, "response", dkg_bundle("response", RESHARE, 2), "1"
    ) == (
        f"kgc {KAI} is not in the new committee of reshare session {RESHARE}; response bundles "
        "come from the new committee"
    )
    kim.submit("PostDKGBundle", RESHARE, "response", dkg_bundle("response", RESHARE, 1), "1")
    kit.submit("PostDKGBundle", RESHARE, "response", dkg_bundle("response", RESHARE, 2), "1")
    assert kai.submit("CloseDKGPhase", RESHARE, "response")["phase"] == "justification"
    qual = json.dumps([KIM, KAI])
    assert fails_without_change(
        w, kim, "PublishDKGResult", RESHARE, OTHER_MPK, DKG_POLY, qual, "1"
    ) == (
        f"reshare session {RESHARE} must keep the master key; the published mpk differs from "
        f"the mpk of dkg session {NONCE}"
    )
    assert fails_without_change(w, kai, "PublishDKGResult", RESHARE, MPK, DKG_POLY, qual, "1") == (
        f"kgc {KAI} is not in the roster of dkg session {RESHARE}"
    )
    assert fails_without_change(
        w, kim, "PublishDKGResult", RESHARE, MPK, DKG_POLY, json.dumps([KIM, kit.ibe_id]), "1"
    ) == (f"qual member {kit.ibe_id} is not a dealer of reshare session {RESHARE}")
    # The publishers are the new members; QUAL names the old dealers.
    assert kim.submit("PublishDKGResult", RESHARE, MPK, DKG_POLY, qual, "1")["outcome"] == (
        "pending"
    )
    assert kit.submit("PublishDKGResult", RESHARE, MPK, DKG_POLY, qual, "1")["outcome"] == ("final")
    result = kai.evaluate("GetDKGResult", "")
    assert result["nonce"] == RESHARE
    assert result["mpk"] == MPK
    assert result["roster"] == [KIM, kit.ibe_id]
    assert result["indices"] == [1, 3]
    assert result["previous"] == NONCE


def test_a_reshare_overtaken_by_a_new_key_cannot_become_final(fresh_world: World) -> None:
    w = fresh_world
    admin = w.m["org_admin"]
    kim, kai = w.m["kgc"], w.kgc2
    admin.submit("OpenReshareSession", RESHARE, "2", ROSTER, "[1, 2]", ROSTER, "60")
    other = "b2" * 32
    admin.submit("OpenDKGSession", other, "2", ROSTER, "60", REPLACE)
    for nonce in (RESHARE, other):
        for phase in ("deal", "response"):
            kim.submit("PostDKGBundle", nonce, phase, dkg_bundle(phase, nonce, 1), "1")
            kai.submit("PostDKGBundle", nonce, phase, dkg_bundle(phase, nonce, 2), "1")
            kim.submit("CloseDKGPhase", nonce, phase)
    qual = json.dumps([KIM, KAI])
    for node in (kim, kai):
        node.submit("PublishDKGResult", other, OTHER_MPK, DKG_POLY, qual, "1")
    kim.submit("PublishDKGResult", RESHARE, MPK, DKG_POLY, qual, "1")
    assert fails_without_change(w, kai, "PublishDKGResult", RESHARE, MPK, DKG_POLY, qual, "1") == (
        f"reshare session {RESHARE} reshares the key of dkg session {NONCE}, but dkg session "
        f"{other} became final since; open a new resharing"
    )
