"""Real DKG bundles through the on-chain session: sender binding, phases closed by committed
transactions (a late bundle cannot split QUAL), a complaint answered in the justification phase,
and a result that counts only once τ nodes posted the same view.

The world's ledger clock is manual: a phase times out when a test moves it, never by sleeping.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from services_world import World

from ehrshare.hazmat.dkg import (
    BundleKind,
    DealBundle,
    DKGResult,
    new_session_nonce,
    seal_share,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import Scalar
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc import (
    DkgParticipation,
    KgcNode,
    LedgerBoard,
    open_dkg_session,
    public_polynomial_from_chain,
)

_names = itertools.count(1)


def _nodes(world: World, tmp_path: Path, n: int) -> tuple[list[KgcNode], list[str]]:
    """n fresh KGC identities with fresh node keys, keys published; their roster."""
    nodes = []
    for i in range(1, n + 1):
        member = world.sandbox.member(f"Org{1 + i % 2}MSP", f"phase{next(_names)}", "kgc")
        nodes.append(
            KgcNode(
                index=i,
                node_key=KGCNodeKey.generate(),
                state_dir=tmp_path / f"node{i}",
                contract=member.contract,
            )
        )
    return nodes, [node.publish_key() for node in nodes]


def _open(world: World, roster: list[str], threshold: int) -> bytes:
    nonce = new_session_nonce()
    open_dkg_session(
        world.m["admin"].contract,
        nonce=nonce,
        roster=roster,
        threshold=threshold,
        phase_timeout_s=30,
    )
    return nonce


def _join(nodes: list[KgcNode], nonce: bytes) -> list[DkgParticipation]:
    return [node.dkg_session(node.dkg_config(nonce)) for node in nodes]


def _close(world: World, nonce: bytes, phase: BundleKind, node: KgcNode) -> dict[str, object]:
    return LedgerBoard(node.contract).wait_closed(
        nonce, phase, give_up=10, poll=0.01, now=lambda: world.clock.seconds
    )


def test_a_real_bundle_posted_with_another_nodes_sender_index_is_refused(
    world: World, tmp_path: Path
) -> None:
    nodes, roster = _nodes(world, tmp_path, 3)
    nonce = _open(world, roster, 2)
    parts = _join(nodes, nonce)
    second_deal = parts[1]._proto.deals().to_bytes()
    # Node 1 relays node 2's signed deal as its own post: the chain refuses the sender index.
    with pytest.raises(LedgerError) as info:
        LedgerBoard(nodes[0].contract).post(nonce, BundleKind.DEAL, second_deal)
    assert info.value.message == (
        f"dkg bundle names sender 2, but kgc {roster[0]} is at position 1 of the roster of dkg "
        f"session {nonce.hex()}"
    )
    LedgerBoard(nodes[1].contract).post(nonce, BundleKind.DEAL, second_deal)
    state = LedgerBoard(nodes[0].contract).session_state(nonce)
    assert state["posted"] == [roster[1]]


def test_a_late_deal_is_refused_and_every_node_computes_the_same_qual(
    world: World, tmp_path: Path
) -> None:
    nodes, roster = _nodes(world, tmp_path, 3)
    nonce = _open(world, roster, 2)
    parts = _join(nodes, nonce)
    parts[0].post_deal()
    parts[1].post_deal()
    late = parts[2]._proto.deals().to_bytes()
    world.clock.advance(31)
    closed = _close(world, nonce, BundleKind.DEAL, nodes[2])
    assert closed["closed"][-1]["posters"] == sorted(roster[:2])  # type: ignore[index]
    with pytest.raises(LedgerError) as info:
        LedgerBoard(nodes[2].contract).post(nonce, BundleKind.DEAL, late)
    assert info.value.message == f"deal phase of dkg session {nonce.hex()} is closed"
    for part in parts:
        part.post_response()
    _close(world, nonce, BundleKind.RESPONSE, nodes[0])  # everyone posted: no timeout needed
    assert [part.post_justification() for part in parts] == [False, False, False]
    results: list[DKGResult] = [part.finish() for part in parts]
    assert {r.qual for r in results} == {(1, 2)}
    assert len({r.public.to_bytes() for r in results}) == 1
    final = world.m["alice"].evaluate("GetDKGResult", nonce.hex())
    assert final["qual"] == sorted(roster[:2])
    assert final["agreed_by"] == sorted(roster[:2])  # final at τ=2; node 3 is outside QUAL
    assert public_polynomial_from_chain(final).to_bytes() == results[0].public.to_bytes()
    assert world.m["alice"].evaluate("GetDKGSession", nonce.hex())["phase"] == "done"


def test_a_complaint_is_justified_after_a_committed_close(world: World, tmp_path: Path) -> None:
    nodes, roster = _nodes(world, tmp_path, 3)
    nonce = _open(world, roster, 2)
    parts = _join(nodes, nonce)
    config = parts[1].config
    parts[0].post_deal()
    parts[2].post_deal()
    honest = parts[1]._proto.deals()
    sealed = list(honest.sealed_shares)
    sealed[2] = seal_share(
        config.public_key_of(3), Scalar.random(), nonce=nonce, dealer=2, recipient=3
    )
    forged = DealBundle.create(
        nodes[1]._key,
        nonce=nonce,
        dealer=2,
        commitments=honest.commitments,
        sealed_shares=sealed,
    )
    LedgerBoard(nodes[1].contract).post(nonce, BundleKind.DEAL, forged.to_bytes())
    _close(world, nonce, BundleKind.DEAL, nodes[0])
    for part in parts:
        part.post_response()
    _close(world, nonce, BundleKind.RESPONSE, nodes[0])
    assert [part.post_justification() for part in parts] == [True, True, True]
    with pytest.raises(LedgerError) as info:
        parts[0].finish()
    assert info.value.message.startswith(
        f"justification phase of dkg session {nonce.hex()} is not closed"
    )
    # Only dealer 2 was accused and it justified: the phase closes without its timeout.
    closed = _close(world, nonce, BundleKind.JUSTIFICATION, nodes[2])
    assert closed["closed"][-1]["posters"] == [roster[1]]  # type: ignore[index]
    assert closed["closed"][-1]["timed_out"] is False  # type: ignore[index]
    results = [part.finish() for part in parts]
    assert {r.qual for r in results} == {(1, 2, 3)}
    assert len({r.public.to_bytes() for r in results}) == 1
    # Final at the second identical view (τ=2); the third confirms it.
    final = world.m["alice"].evaluate("GetDKGResult", nonce.hex())
    assert final["agreed_by"] == sorted(roster[:2])


def test_the_chain_result_is_final_only_when_tau_nodes_posted_it(
    world: World, tmp_path: Path
) -> None:
    nodes, roster = _nodes(world, tmp_path, 3)
    nonce = _open(world, roster, 3)
    parts = _join(nodes, nonce)
    for part in parts:
        part.post_deal()
    _close(world, nonce, BundleKind.DEAL, nodes[0])
    for part in parts:
        part.post_response()
    _close(world, nonce, BundleKind.RESPONSE, nodes[0])
    for part in parts:
        part.post_justification()
    alice = world.m["alice"]
    parts[0].finish()
    parts[1].finish()
    with pytest.raises(LedgerError) as info:
        alice.evaluate("GetDKGResult", nonce.hex())
    assert info.value.message == f"dkg session {nonce.hex()} result is not final yet: 2 of 3 agree"
    result = parts[2].finish()
    final = alice.evaluate("GetDKGResult", nonce.hex())
    assert final["agreed_by"] == sorted(roster)
    assert public_polynomial_from_chain(final).to_bytes() == result.public.to_bytes()


def test_a_node_whose_key_is_not_in_the_session_refuses_to_join(
    world: World, tmp_path: Path
) -> None:
    nodes, roster = _nodes(world, tmp_path, 2)
    nonce = _open(world, roster, 2)
    swapped = KgcNode(
        index=2, node_key=nodes[0]._key, state_dir=tmp_path / "swapped", contract=nodes[1].contract
    )
    with pytest.raises(Exception, match="is at position 1 of the roster"):
        swapped.dkg_config(nonce)
    stranger = KgcNode(
        index=1,
        node_key=KGCNodeKey.generate(),
        state_dir=tmp_path / "stranger",
        contract=nodes[0].contract,
    )
    with pytest.raises(Exception, match="its public key is not in the roster"):
        stranger.dkg_config(nonce)


def test_the_contracts_header_layout_is_the_dkg_wire_format() -> None:
    from ehrshare.hazmat.dkg import bundles as dkg
    from ehrshare_chaincode import contract

    assert dkg._HEADER.size == contract.DKG_HEADER_SIZE
    assert {k.name.lower(): int(k) for k in BundleKind} == contract.DKG_PHASE_KIND
