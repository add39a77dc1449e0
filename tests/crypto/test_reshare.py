"""Resharing the DKG secret to a new committee: same mpk, new shares, faults named."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from ehrshare.hazmat.board import Board, InMemoryBoard, run_dkg, run_reshare
from ehrshare.hazmat.dkg import (
    BundleKind,
    DealBundle,
    DKGAborted,
    DKGConfig,
    DKGNode,
    DKGResult,
    InvalidNonce,
    PhaseError,
    ThresholdTooHigh,
    new_session_nonce,
    parse_bundle,
    seal_share,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import G1, Scalar
from ehrshare.hazmat.reshare import (
    NotADealer,
    NotARecipient,
    ReshareConfig,
    ReshareNode,
    ResharePhase,
    TooFewDealers,
    lagrange_at_zero,
)


class TamperBoard:
    """A Board whose entries tests may rewrite between phases."""

    def __init__(self) -> None:
        self.entries: dict[tuple[bytes, BundleKind], list[bytes]] = {}

    def post(self, session: bytes, phase: BundleKind, bundle: bytes) -> None:
        self.entries.setdefault((session, phase), []).append(bundle)

    def read(self, session: bytes, phase: BundleKind) -> list[bytes]:
        return list(self.entries.get((session, phase), []))

    def replace_from(self, session: bytes, phase: BundleKind, sender: int, new: bytes) -> None:
        bundles = self.entries[(session, phase)]
        pos = next(i for i, b in enumerate(bundles) if parse_bundle(b).sender == sender)
        bundles[pos] = new

    def drop_from(self, session: bytes, phase: BundleKind, sender: int) -> None:
        key = (session, phase)
        self.entries[key] = [
            b for b in self.entries.get(key, []) if parse_bundle(b).sender != sender
        ]


def at(kind: BundleKind, action: Callable[[Board], None]) -> Callable[[BundleKind, Board], None]:
    def hook(phase: BundleKind, board: Board) -> None:
        if phase is kind:
            action(board)

    return hook


@pytest.fixture(scope="module")
def keys() -> list[KGCNodeKey]:
    return [KGCNodeKey.generate() for _ in range(6)]


@pytest.fixture(scope="module")
def dkg4(keys: list[KGCNodeKey]) -> dict[int, DKGResult]:
    """A finished DKG among nodes 1..4 with τ=3 (keys[0..3])."""
    config = DKGConfig(tuple(k.public_key for k in keys[:4]), new_session_nonce(), threshold=3)
    run = run_dkg([DKGNode(config, k) for k in keys[:4]], InMemoryBoard())
    assert not run.failures
    return run.results


def interpolate(results: Sequence[DKGResult]) -> Scalar:
    """s from shares, by our own Lagrange at 0 over the results' share indices."""
    indices = [r.index for r in results]
    secret = Scalar.from_int(0)
    for r, lam in zip(results, lagrange_at_zero(indices), strict=True):
        secret = secret + r.share.value * lam
    return secret


def reshare(
    keys: Sequence[KGCNodeKey],
    old: dict[int, DKGResult],
    dealers: Sequence[int],
    members: Sequence[int],
    threshold: int = 0,
    nonce: bytes | None = None,
) -> tuple[ReshareConfig, list[ReshareNode]]:
    """Nodes for a resharing from old share indices ``dealers`` to new indices ``members``
    (node i has key keys[i-1])."""
    public = next(iter(old.values())).public
    config = ReshareConfig(
        old_public=public,
        dealers=tuple(keys[i - 1].public_key for i in dealers),
        dealer_indices=tuple(dealers),
        recipients=tuple(keys[j - 1].public_key for j in members),
        recipient_indices=tuple(members),
        nonce=nonce or new_session_nonce(),
        threshold=threshold,
    )
    everyone = sorted(set(dealers) | set(members))
    nodes = [
        ReshareNode(config, keys[i - 1], old_share=old[i].share if i in dealers else None)
        for i in everyone
    ]
    return config, nodes


def assert_same_key(old: dict[int, DKGResult], new: dict[int, DKGResult], tau: int) -> None:
    mpk = next(iter(old.values())).mpk
    publics = {r.public.to_bytes() for r in new.values()}
    assert len(publics) == 1
    public = next(iter(new.values())).public
    assert public.mpk == mpk
    assert public.threshold == tau
    for r in new.values():
        assert G1.generator() * r.share.value == public.evaluate(r.index)
    ordered = sorted(new.values(), key=lambda r: r.index)
    assert G1.generator() * interpolate(ordered[:tau]) == mpk
    assert G1.generator() * interpolate(ordered[-tau:]) == mpk
    assert G1.generator() * interpolate(ordered[: tau - 1]) != mpk
    assert interpolate(ordered[:tau]) == interpolate(sorted(old.values(), key=lambda r: r.index))


# ---------------------------------------------------------------------------------------------
# honest runs


def test_same_committee_lower_threshold_keeps_mpk(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    _, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4], threshold=2)
    run = run_reshare(nodes, InMemoryBoard())
    assert not run.failures and not run.needed_justifications
    assert sorted(run.results) == [1, 2, 3, 4]
    assert_same_key(dkg4, run.results, 2)
    result = run.results[1]
    assert result.qual == (1, 2, 3, 4)
    # Fresh shares: every old share is replaced.
    assert all(run.results[j].share != dkg4[j].share for j in range(1, 5))


def test_node_removed_and_node_added_keeps_indices(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    # Node 2 leaves, node 5 joins; node 3 keeps share index 3.
    _, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 3, 4, 5], threshold=3)
    run = run_reshare(nodes, InMemoryBoard())
    assert not run.failures
    assert sorted(run.results) == [1, 3, 4, 5]
    assert_same_key(dkg4, run.results, 3)
    leaving = next(n for n in nodes if n.index is None)
    assert leaving.phase is ResharePhase.FINISHED
    with pytest.raises(NotARecipient, match="dealer 2 is not in the new committee"):
        leaving.result()


def test_reshared_result_can_be_reshared_again(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    _, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 3, 5], threshold=2)
    first = run_reshare(nodes, InMemoryBoard()).results
    _, nodes = reshare(keys, first, [3, 5], [3, 5, 6], threshold=3)
    second = run_reshare(nodes, InMemoryBoard())
    assert not second.failures
    assert_same_key(dkg4, second.results, 3)


def test_only_tau_old_dealers_suffice(keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]) -> None:
    # Dealer 4 is offline (not even listed as a dealer): 3 = τ_old dealers remain.
    _, nodes = reshare(keys, dkg4, [1, 2, 3], [1, 2, 3, 4], threshold=3)
    run = run_reshare(nodes, InMemoryBoard())
    assert not run.failures
    assert run.results[1].qual == (1, 2, 3)
    assert_same_key(dkg4, run.results, 3)


# ---------------------------------------------------------------------------------------------
# faults


def test_absent_dealer_is_named_and_session_completes(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()
    run = run_reshare(
        nodes,
        board,
        on_phase_end=at(
            BundleKind.DEAL, lambda b: board.drop_from(config.nonce, BundleKind.DEAL, 2)
        ),
    )
    assert not run.failures
    assert run.results[1].qual == (1, 3, 4)
    assert run.results[1].disqualified == {2: "no valid deal bundle"}
    assert_same_key(dkg4, run.results, config.threshold)


def test_too_few_dealers_aborts_every_node(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()

    def drop(b: Board) -> None:
        board.drop_from(config.nonce, BundleKind.DEAL, 2)
        board.drop_from(config.nonce, BundleKind.DEAL, 3)

    run = run_reshare(nodes, board, on_phase_end=at(BundleKind.DEAL, drop))
    assert not run.results
    assert set(run.failures) == {1, 2, 3, 4}
    failure = run.failures[1]
    assert isinstance(failure, DKGAborted)
    assert "2 qualified dealers [1, 4], need at least 3" in str(failure)
    with pytest.raises(PhaseError, match="after the session aborted"):
        nodes[0].result()


def test_dealer_dealing_another_secret_is_disqualified(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    """A dealer that deals a fresh random value instead of its share (A_0 ≠ S_i) — e.g. to
    change the master key — is named without any complaint round."""
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()

    def forge(b: Board) -> None:
        coefficients = [Scalar.random() for _ in range(config.threshold)]
        sealed = []
        for q, j in enumerate(config.recipient_indices, start=1):
            value = Scalar.from_int(0)
            for c in reversed(coefficients):
                value = value * Scalar.from_int(j) + c
            sealed.append(
                seal_share(
                    config.recipients[q - 1], value, nonce=config.nonce, dealer=3, recipient=q
                )
            )
        bundle = DealBundle.create(
            keys[2],
            nonce=config.nonce,
            dealer=3,
            commitments=[G1.generator() * c for c in coefficients],
            sealed_shares=sealed,
        )
        board.replace_from(config.nonce, BundleKind.DEAL, 3, bundle.to_bytes())

    run = run_reshare(nodes, board, on_phase_end=at(BundleKind.DEAL, forge))
    assert not run.failures
    assert run.results[1].disqualified == {
        3: "dealt another value than its old share (A_0 is not S_i)"
    }
    assert run.results[1].qual == (1, 2, 4)
    assert_same_key(dkg4, run.results, config.threshold)


def _corrupt(
    board: TamperBoard, config: ReshareConfig, key: KGCNodeKey, dealer: int, q: int
) -> None:
    raw = next(
        b for b in board.read(config.nonce, BundleKind.DEAL) if parse_bundle(b).sender == dealer
    )
    honest = DealBundle.from_bytes(raw)
    sealed = list(honest.sealed_shares)
    sealed[q - 1] = seal_share(
        config.recipients[q - 1], Scalar.random(), nonce=config.nonce, dealer=dealer, recipient=q
    )
    forged = DealBundle.create(
        key, nonce=config.nonce, dealer=dealer, commitments=honest.commitments, sealed_shares=sealed
    )
    board.replace_from(config.nonce, BundleKind.DEAL, dealer, forged.to_bytes())


def test_bad_share_without_justification_names_and_disqualifies_dealer(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()

    def hook(phase: BundleKind, b: Board) -> None:
        if phase is BundleKind.DEAL:
            _corrupt(board, config, keys[1], dealer=2, q=4)
        if phase is BundleKind.JUSTIFICATION:
            board.drop_from(config.nonce, BundleKind.JUSTIFICATION, 2)

    run = run_reshare(nodes, board, on_phase_end=hook)
    assert run.needed_justifications
    assert not run.failures
    assert run.results[4].disqualified == {2: "did not justify complaints from [4]"}
    assert run.results[1].qual == (1, 3, 4)
    assert_same_key(dkg4, run.results, config.threshold)


def test_bad_share_justified_keeps_dealer_and_gives_the_share(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()
    run = run_reshare(
        nodes,
        board,
        on_phase_end=at(BundleKind.DEAL, lambda b: _corrupt(board, config, keys[0], 1, 3)),
    )
    assert run.needed_justifications and not run.failures
    assert run.results[3].qual == (1, 2, 3, 4)
    assert_same_key(dkg4, run.results, config.threshold)


def test_replayed_deal_from_old_session_is_rejected(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    old_config, old_nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    old_board = InMemoryBoard()
    run_reshare(old_nodes, old_board)
    stale = next(
        b for b in old_board.read(old_config.nonce, BundleKind.DEAL) if parse_bundle(b).sender == 4
    )
    config, nodes = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    board = TamperBoard()
    run = run_reshare(
        nodes,
        board,
        on_phase_end=at(
            BundleKind.DEAL, lambda b: board.replace_from(config.nonce, BundleKind.DEAL, 4, stale)
        ),
    )
    assert run.results[1].disqualified == {4: "no valid deal bundle"}
    assert any(isinstance(r.error, InvalidNonce) for r in nodes[0].rejected)


# ---------------------------------------------------------------------------------------------
# configuration and the phase table


def test_config_refuses_too_few_dealers_and_high_threshold(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    with pytest.raises(TooFewDealers, match="2 dealers cannot reshare a key with threshold 3"):
        reshare(keys, dkg4, [1, 2], [1, 2, 3])
    with pytest.raises(ThresholdTooHigh, match="threshold 4 exceeds the 3 new members"):
        reshare(keys, dkg4, [1, 2, 3], [1, 2, 3], threshold=4)
    with pytest.raises(ValueError, match="distinct and ≥ 1"):
        ReshareConfig(
            old_public=dkg4[1].public,
            dealers=tuple(k.public_key for k in keys[:3]),
            dealer_indices=(1, 1, 2),
            recipients=tuple(k.public_key for k in keys[:3]),
            recipient_indices=(1, 2, 3),
            nonce=new_session_nonce(),
        )


def test_dealer_needs_its_own_old_share(keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]) -> None:
    config, _ = reshare(keys, dkg4, [1, 2, 3], [1, 2, 3])
    with pytest.raises(NotADealer, match="needs its old share"):
        ReshareNode(config, keys[0])
    with pytest.raises(NotADealer, match="deals share 1, but was given share 2"):
        ReshareNode(config, keys[0], old_share=dkg4[2].share)


def test_calls_out_of_order_are_phase_errors(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    _, nodes = reshare(keys, dkg4, [1, 2, 3], [1, 2, 3])
    with pytest.raises(PhaseError, match="process_deals\\(\\) is not allowed in phase ready"):
        nodes[0].process_deals([])
    nodes[0].deals()
    with pytest.raises(PhaseError, match="allowed: process_deals"):
        nodes[0].deals()
    assert set(ReshareNode.TRANSITIONS) == {
        (ResharePhase.READY, "deals"),
        (ResharePhase.AWAITING_DEALS, "process_deals"),
        (ResharePhase.AWAITING_RESPONSES, "process_responses"),
        (ResharePhase.AWAITING_JUSTIFICATIONS, "process_justifications"),
        (ResharePhase.FINISHED, "result"),
    }


def test_a_dealer_without_its_share_abstains_and_still_receives(
    keys: list[KGCNodeKey], dkg4: dict[int, DKGResult]
) -> None:
    config, _ = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3, 4])
    nodes = [
        ReshareNode(
            config, keys[i - 1], old_share=dkg4[i].share if i != 4 else None, abstain=i == 4
        )
        for i in range(1, 5)
    ]
    run = run_reshare(nodes, InMemoryBoard())
    assert not run.failures
    assert run.results[4].qual == (1, 2, 3)
    assert run.results[4].disqualified == {4: "no valid deal bundle"}
    assert_same_key(dkg4, run.results, config.threshold)
    with pytest.raises(NotADealer, match="abstains and is not a new member"):
        leaving, _ = reshare(keys, dkg4, [1, 2, 3, 4], [1, 2, 3])
        ReshareNode(leaving, keys[3], abstain=True)
