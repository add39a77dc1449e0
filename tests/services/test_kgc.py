"""KGC node in-process: DKG through the chaincode board, extraction τ of n, failures named."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from services_world import NONCE, World

from ehrshare.hazmat.dkg import KeyShare
from ehrshare.hazmat.extract import PartialKeyResponse, SignedExtractionRequest
from ehrshare.hazmat.pairing import Scalar
from ehrshare.hazmat.tipre import MasterPublicKey
from ehrshare.key_extraction import ExtractionFailed
from ehrshare.services.kgc import (
    BadRequest,
    IdentityNotRegistered,
    InProcessKgcClient,
    KgcNode,
    KgcUnavailable,
    NotAuthorised,
    RateLimited,
    public_polynomial_from_chain,
)


class DownClient:
    """A KGC node that cannot be reached."""

    def __init__(self, index: int) -> None:
        self.index = index

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        raise KgcUnavailable(f"KGC node {self.index} is unreachable")


class CorruptingClient:
    """A KGC node answering with a validly sealed and signed, but wrong, partial key."""

    def __init__(self, node: KgcNode, requester: str) -> None:
        self.index = node.index
        self._node = node
        self._requester = requester

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        from ehrshare.hazmat.extract import extract_partial_key

        request = SignedExtractionRequest.from_bytes(request_bytes)
        wrong = KeyShare(self.index, Scalar.from_int(12345))
        return extract_partial_key(wrong, self._node._key, request).to_bytes()


def test_dkg_result_is_on_chain_and_matches_every_node(world: World) -> None:
    row = world.m["alice"].evaluate("GetDKGResult", "")
    assert row["nonce"] == NONCE.hex()
    assert public_polynomial_from_chain(row).to_bytes() == world.dkg.public.to_bytes()
    assert row["qual"] == sorted(world.m[f"kgc{i}"].ibe_id for i in (1, 2, 3))
    for node in world.nodes:
        assert node.public_polynomial is not None
        assert node.public_polynomial.to_bytes() == world.dkg.public.to_bytes()
    bundles = world.m["alice"].evaluate("GetDKGBundles", NONCE.hex(), "deal")
    assert len(bundles) == 3


def test_share_survives_a_restart_from_the_sealed_state(world: World) -> None:
    node = world.nodes[0]
    again = KgcNode(
        index=1, node_key=world.node_keys[0], state_dir=node.state_dir, contract=node.contract
    )
    assert again.public_polynomial is not None
    assert again.public_polynomial.to_bytes() == world.dkg.public.to_bytes()


def test_state_opens_only_with_the_node_key(world: World) -> None:
    from ehrshare.hazmat.kgc_keys import KGCNodeKey
    from ehrshare.services.kgc import KgcError

    with pytest.raises(KgcError, match="does not open with this node key"):
        KgcNode(
            index=1,
            node_key=KGCNodeKey.generate(),
            state_dir=world.nodes[0].state_dir,
            contract=world.nodes[0].contract,
        )


def test_extraction_from_tau_of_n_gives_the_identity_key(world: World) -> None:
    alice = world.m["alice"]
    for pair in ((0, 1), (1, 2), (0, 2)):
        clients = [InProcessKgcClient(world.nodes[i], requester=alice.ibe_id) for i in pair]
        outcome = world.extract(clients, "alice")
        outcome.secret_key.check(world.mpk)
        assert outcome.invalid == ()
        assert outcome.unavailable == {}


def test_node_down_still_extracts_with_tau_and_fails_clearly_below(world: World) -> None:
    bob = world.m["bob"]
    clients = [
        DownClient(1),
        InProcessKgcClient(world.nodes[1], requester=bob.ibe_id),
        InProcessKgcClient(world.nodes[2], requester=bob.ibe_id),
    ]
    outcome = world.extract(clients, "bob")
    outcome.secret_key.check(world.mpk)
    assert outcome.unavailable == {1: "KGC node 1 is unreachable"}

    below = [DownClient(1), DownClient(2), InProcessKgcClient(world.nodes[2], requester=bob.ibe_id)]
    with pytest.raises(ExtractionFailed) as info:
        world.extract(below, "bob")
    assert str(info.value) == (
        "need 2 verified partial keys, have 1; unavailable: node 1: KGC node 1 is unreachable; "
        "node 2: KGC node 2 is unreachable"
    )


def test_bad_share_is_named_and_excluded(world: World) -> None:
    carol = world.m["carol"]
    clients = [
        CorruptingClient(world.nodes[0], carol.ibe_id),
        InProcessKgcClient(world.nodes[1], requester=carol.ibe_id),
        InProcessKgcClient(world.nodes[2], requester=carol.ibe_id),
    ]
    outcome = world.extract(clients, "carol")
    outcome.secret_key.check(world.mpk)
    assert outcome.invalid == (1,)
    # Only two honest nodes asked, one bad: below τ, and the bad one is named.
    with pytest.raises(ExtractionFailed, match=r"rejected invalid shares from nodes \[1\]"):
        world.extract(clients[:2], "carol")


def test_node_answering_in_another_nodes_name_is_invalid(world: World) -> None:
    carol = world.m["carol"]

    class Impostor:
        index = 3

        def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
            # Requests are addressed to one node and signed by the member, so a relaying node
            # can only pass on another request of the member's: its answer is not for ours.
            return world.nodes[1].extract(world.request("carol", 2)[0])

    clients = [Impostor(), InProcessKgcClient(world.nodes[0], requester=carol.ibe_id)]
    with pytest.raises(ExtractionFailed) as info:
        world.extract(clients, "carol")
    assert info.value.invalid == (3,)


def test_unregistered_identity_is_refused(world: World) -> None:
    stranger = world.m["stranger"].ibe_id
    raw, _ = world.request("stranger", 1)
    with pytest.raises(IdentityNotRegistered) as info:
        world.nodes[0].extract(raw, requester=stranger)
    assert str(info.value) == (
        f"identity {stranger} is not registered on chain; KGC node 1 extracts keys only for "
        "registered identities"
    )


def test_caller_may_only_extract_its_own_identity(world: World) -> None:
    raw, _ = world.request("alice", 1)
    with pytest.raises(NotAuthorised, match="identity Org1MSP/bob may not extract the key of"):
        world.nodes[0].extract(raw, requester=world.m["bob"].ibe_id)


def test_garbage_request_is_a_bad_request(world: World) -> None:
    with pytest.raises(BadRequest, match="extraction request must be at least 107 bytes, got 3"):
        world.nodes[0].extract(b"abc")


def test_rate_limit_per_requester_with_injected_clock(world: World) -> None:
    node = KgcNode(
        index=2,
        node_key=world.node_keys[1],
        state_dir=world.nodes[1].state_dir,
        contract=world.nodes[1].contract,
        rate_limit_per_minute=3,
        clock=world.kgc_clock,
        wall_clock=world.clock,
    )
    alice, bob = world.m["alice"].ibe_id, world.m["bob"].ibe_id

    def fresh(name: str) -> bytes:
        return world.request(name, 2)[0]

    for _ in range(3):
        PartialKeyResponse.from_bytes(node.extract(fresh("alice"), requester=alice))
    with pytest.raises(RateLimited, match="identity Org1MSP/alice exceeded 3 extractions") as info:
        node.extract(fresh("alice"), requester=alice)
    assert info.value.retry_after == pytest.approx(20.0)
    # Another requester has its own bucket.
    node.extract(fresh("bob"), requester=bob)
    world.kgc_clock.now += 20.0
    node.extract(fresh("alice"), requester=alice)
    with pytest.raises(RateLimited):
        node.extract(fresh("alice"), requester=alice)


def test_every_extraction_is_logged_without_key_material(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    alice = world.m["alice"].ibe_id
    with caplog.at_level(logging.INFO, logger="ehrshare.services.kgc"):
        raw = world.nodes[2].extract(world.request("alice", 3)[0], requester=alice)
        with pytest.raises(IdentityNotRegistered):
            stranger = world.m["stranger"].ibe_id
            world.nodes[2].extract(world.request("stranger", 3)[0], requester=stranger)
    lines = [r.getMessage() for r in caplog.records if r.name == "ehrshare.services.kgc"]
    assert f"extraction node=3 identity={alice} requester={alice} session=" in lines[0]
    assert lines[0].endswith("outcome=ok")
    assert lines[1].endswith("outcome=refused: not registered")
    response = PartialKeyResponse.from_bytes(raw)
    share = world.nodes[2]._result
    assert share is not None
    text = "\n".join(lines)
    for secret in (response.sealed_key, share.share.value.to_bytes()):
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text


def test_extracted_key_matches_chain_mpk(world: World) -> None:
    row = world.m["alice"].evaluate("GetDKGResult", NONCE.hex())
    mpk = MasterPublicKey.from_bytes(base64.b64decode(row["mpk"]))
    world.key_of("alice").check(mpk)
    assert json.loads(json.dumps(row["qual"])) == row["qual"]
