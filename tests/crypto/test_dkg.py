"""Joint-Feldman DKG: honest runs, injected faults, named errors, the phase table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from ehrshare.hazmat.board import Board, InMemoryBoard, deadline_hook, run_dkg
from ehrshare.hazmat.dkg import (
    BundleKind,
    DealBundle,
    DealStatus,
    DKGAborted,
    DKGConfig,
    DKGNode,
    DKGResult,
    EquivocationEvidence,
    InvalidNonce,
    InvalidSignature,
    JustificationBundle,
    Phase,
    PhaseError,
    ResponseBundle,
    ShareUnavailable,
    ThresholdTooHigh,
    UnknownParticipant,
    new_session_nonce,
    open_share,
    parse_bundle,
    seal_share,
)
from ehrshare.hazmat.errors import DecryptionError, VerificationError
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import G1, Scalar


class TamperBoard:
    """A Board whose entries tests may rewrite between phases (a malicious or lossy board)."""

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
        self.entries[key] = [b for b in self.entries[key] if parse_bundle(b).sender != sender]


@pytest.fixture(scope="module")
def keys16() -> list[KGCNodeKey]:
    return [KGCNodeKey.generate() for _ in range(16)]


def make_nodes(
    keys: Sequence[KGCNodeKey], threshold: int = 0, nonce: bytes | None = None
) -> list[DKGNode]:
    config = DKGConfig(
        tuple(k.public_key for k in keys), nonce or new_session_nonce(), threshold=threshold
    )
    return [DKGNode(config, k) for k in keys]


def lagrange_secret(results: Sequence[DKGResult]) -> Scalar:
    """Reconstruct s from shares (independently of the extraction code)."""
    indices = [r.index for r in results]
    secret = Scalar.from_int(0)
    for r in results:
        num, den = Scalar.from_int(1), Scalar.from_int(1)
        for m in indices:
            if m != r.index:
                num = num * Scalar.from_int(m)
                den = den * Scalar.from_int(m - r.index)
        secret = secret + r.share.value * num / den
    return secret


def deal_of(board: TamperBoard, session: bytes, dealer: int) -> DealBundle:
    raw = next(b for b in board.read(session, BundleKind.DEAL) if parse_bundle(b).sender == dealer)
    bundle = DealBundle.from_bytes(raw)
    return bundle


def corrupt_shares(
    board: TamperBoard,
    config: DKGConfig,
    dealer_key: KGCNodeKey,
    dealer: int,
    recipients: Sequence[int],
) -> None:
    """Replace the dealer's bundle by one whose shares for ``recipients`` are wrong, re-signed."""
    honest = deal_of(board, config.nonce, dealer)
    sealed = list(honest.sealed_shares)
    for j in recipients:
        sealed[j - 1] = seal_share(
            config.public_key_of(j), Scalar.random(), nonce=config.nonce, dealer=dealer, recipient=j
        )
    forged = DealBundle.create(
        dealer_key,
        nonce=config.nonce,
        dealer=dealer,
        commitments=honest.commitments,
        sealed_shares=sealed,
    )
    board.replace_from(config.nonce, BundleKind.DEAL, dealer, forged.to_bytes())


def deal_claiming(signer: DKGNode, key: KGCNodeKey, dealer: int) -> DealBundle:
    """A fresh deal of ``signer``, signed with its ``key`` but naming ``dealer`` as the sender."""
    deal = signer.deals()
    return DealBundle.create(
        key,
        nonce=signer.config.nonce,
        dealer=dealer,
        commitments=deal.commitments,
        sealed_shares=deal.sealed_shares,
    )


def at(kind: BundleKind, action: Callable[[Board], None]) -> Callable[[BundleKind, Board], None]:
    def hook(phase: BundleKind, board: Board) -> None:
        if phase is kind:
            action(board)

    return hook


# ---------------------------------------------------------------------------------------------
# configuration


def test_default_threshold_is_a_majority(keys16: list[KGCNodeKey]) -> None:
    for n in (2, 4, 7, 16):
        config = DKGConfig(tuple(k.public_key for k in keys16[:n]), new_session_nonce())
        assert config.threshold == n // 2 + 1
        assert config.threshold > n / 2


def test_threshold_above_n_is_threshold_too_high(keys16: list[KGCNodeKey]) -> None:
    with pytest.raises(ThresholdTooHigh, match="threshold 5 exceeds the 4 participants"):
        DKGConfig(tuple(k.public_key for k in keys16[:4]), new_session_nonce(), threshold=5)


def test_threshold_one_is_refused(keys16: list[KGCNodeKey]) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        DKGConfig(tuple(k.public_key for k in keys16[:4]), new_session_nonce(), threshold=1)


def test_short_nonce_and_duplicate_keys_are_refused(keys16: list[KGCNodeKey]) -> None:
    with pytest.raises(InvalidNonce, match="32 bytes, got 31"):
        DKGConfig(tuple(k.public_key for k in keys16[:4]), bytes(31))
    with pytest.raises(ValueError, match="distinct"):
        DKGConfig((keys16[0].public_key, keys16[0].public_key), new_session_nonce())


def test_node_key_outside_roster_is_unknown_participant(keys16: list[KGCNodeKey]) -> None:
    config = DKGConfig(tuple(k.public_key for k in keys16[:4]), new_session_nonce())
    with pytest.raises(UnknownParticipant, match="not in the roster"):
        DKGNode(config, keys16[5])


# ---------------------------------------------------------------------------------------------
# honest runs


@pytest.mark.parametrize("n", [2, 4, 7])
def test_honest_run_agrees_and_any_tau_shares_rebuild_mpk(keys16: list[KGCNodeKey], n: int) -> None:
    nodes = make_nodes(keys16[:n])
    run = run_dkg(nodes, InMemoryBoard())
    t = nodes[0].config.threshold
    assert not run.failures and not run.needed_justifications
    assert sorted(run.results) == list(range(1, n + 1))
    assert run.mpk_agreed
    result = run.only_result()
    assert result.qual == tuple(range(1, n + 1))
    for r in run.results.values():
        assert G1.generator() * r.share.value == result.public.evaluate(r.index)
    ordered = [run.results[j] for j in range(1, n + 1)]
    first, last = ordered[:t], ordered[-t:]
    assert G1.generator() * lagrange_secret(first) == result.mpk
    assert lagrange_secret(first) == lagrange_secret(last)
    # τ−1 shares interpolate to something else (the secret is not in fewer than τ shares).
    assert G1.generator() * lagrange_secret(ordered[: t - 1]) != result.mpk


def test_sixteen_nodes(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16)
    run = run_dkg(nodes, InMemoryBoard())
    assert len(run.results) == 16 and run.mpk_agreed
    result = run.only_result()
    assert result.public.threshold == 9
    shares = [run.results[j] for j in (2, 5, 7, 8, 10, 11, 13, 15, 16)]
    assert G1.generator() * lagrange_secret(shares) == result.mpk


def test_two_sessions_give_independent_keys(keys16: list[KGCNodeKey]) -> None:
    a = run_dkg(make_nodes(keys16[:4]), InMemoryBoard()).only_result()
    b = run_dkg(make_nodes(keys16[:4]), InMemoryBoard()).only_result()
    assert a.mpk != b.mpk


def test_shares_are_not_on_the_board_in_clear(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:4])
    board = InMemoryBoard()
    run = run_dkg(nodes, board)
    everything = b"".join(b"".join(board.read(nodes[0].config.nonce, kind)) for kind in BundleKind)
    for result in run.results.values():
        assert result.share.value.to_bytes() not in everything
    # Each dealer's own share for node j is sealed: recompute f_i(j) is impossible here, but the
    # share slots must not open for anyone other than the addressee.
    deal = DealBundle.from_bytes(board.read(nodes[0].config.nonce, BundleKind.DEAL)[0])
    with pytest.raises(DecryptionError):
        open_share(
            keys16[2], deal.sealed_shares[1], nonce=deal.nonce, dealer=deal.dealer, recipient=2
        )
    with pytest.raises(DecryptionError):  # right key, slot moved to another recipient
        open_share(
            keys16[1], deal.sealed_shares[1], nonce=deal.nonce, dealer=deal.dealer, recipient=3
        )
    open_share(keys16[1], deal.sealed_shares[1], nonce=deal.nonce, dealer=deal.dealer, recipient=2)


# ---------------------------------------------------------------------------------------------
# faults


def test_absent_dealer_is_disqualified_and_the_rest_finish(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:5])  # τ = 3
    run = run_dkg(nodes[:4], InMemoryBoard())  # node 5 never shows up
    assert sorted(run.results) == [1, 2, 3, 4] and run.mpk_agreed
    result = run.only_result()
    assert result.qual == (1, 2, 3, 4)
    assert result.disqualified == {5: "no valid deal bundle"}
    assert G1.generator() * lagrange_secret([run.results[j] for j in (1, 3, 4)]) == result.mpk


def test_silent_responder_complains_about_nobody(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:4])
    run = run_dkg(nodes, InMemoryBoard(), participating={BundleKind.RESPONSE: frozenset({1, 2, 4})})
    assert len(run.results) == 4 and not run.needed_justifications
    assert run.only_result().qual == (1, 2, 3, 4)


def test_corrupted_share_is_justified_and_the_dealer_stays(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    board = TamperBoard()
    hook = at(BundleKind.DEAL, lambda b: corrupt_shares(board, config, keys[1], 2, [3]))
    run = run_dkg(nodes, board, on_phase_end=hook)
    assert run.needed_justifications
    assert sorted(run.results) == [1, 2, 3, 4] and run.mpk_agreed
    result = run.only_result()
    assert result.qual == (1, 2, 3, 4)
    # Node 3 now holds the share revealed in the justification, and it is consistent.
    assert G1.generator() * run.results[3].share.value == result.public.evaluate(3)
    just = JustificationBundle.from_bytes(board.read(config.nonce, BundleKind.JUSTIFICATION)[0])
    assert just.dealer == 2 and [j for j, _ in just.revealed] == [3]


def test_unjustified_dealer_is_disqualified(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    board = TamperBoard()
    hook = at(BundleKind.DEAL, lambda b: corrupt_shares(board, config, keys[1], 2, [3]))
    run = run_dkg(
        nodes,
        board,
        on_phase_end=hook,
        participating={BundleKind.JUSTIFICATION: frozenset({1, 3, 4})},
    )
    result = run.only_result()
    assert run.mpk_agreed and len(run.results) == 4
    assert result.qual == (1, 3, 4)
    assert "did not justify complaints from [3]" in result.disqualified[2]
    assert G1.generator() * lagrange_secret([run.results[j] for j in (1, 2, 3)]) == result.mpk


def test_dealer_justifying_with_a_wrong_share_is_disqualified(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    board = TamperBoard()

    def hook(phase: BundleKind, _: Board) -> None:
        if phase is BundleKind.DEAL:
            corrupt_shares(board, config, keys[1], 2, [3])
        elif phase is BundleKind.JUSTIFICATION:
            lie = JustificationBundle.create(
                keys[1], nonce=config.nonce, dealer=2, revealed=[(3, Scalar.random())]
            )
            board.replace_from(config.nonce, BundleKind.JUSTIFICATION, 2, lie.to_bytes())

    run = run_dkg(nodes, board, on_phase_end=hook)
    result = run.only_result()
    assert run.mpk_agreed and result.qual == (1, 3, 4)
    assert "do not match commitments" in result.disqualified[2]


def test_tau_complaints_disqualify_without_a_justification_round(
    keys16: list[KGCNodeKey],
) -> None:
    keys = keys16[:4]  # τ = 3
    nodes = make_nodes(keys)
    config = nodes[0].config
    board = TamperBoard()
    hook = at(BundleKind.DEAL, lambda b: corrupt_shares(board, config, keys[1], 2, [1, 3, 4]))
    run = run_dkg(nodes, board, on_phase_end=hook)
    assert not run.needed_justifications
    assert not board.read(config.nonce, BundleKind.JUSTIFICATION)  # nothing revealed
    result = run.only_result()
    assert result.qual == (1, 3, 4)
    assert "3 complaints" in result.disqualified[2]


def test_equivocating_dealer_is_disqualified_with_proof(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    twin = DKGNode(config, keys[0])  # same long-term key, second polynomial

    def equivocate(board: Board) -> None:
        board.post(config.nonce, BundleKind.DEAL, twin.deals().to_bytes())

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.DEAL, equivocate))
    result = run.only_result()
    assert run.mpk_agreed and result.qual == (2, 3, 4)
    assert result.disqualified[1].startswith("equivocated")
    for node in nodes:
        assert len(node.evidence) == 1
        proof = node.evidence[0]
        assert proof.sender == 1 and proof.kind is BundleKind.DEAL
        proof.verify(config)  # anyone can check it


def test_identical_repost_is_not_equivocation(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:4])
    config = nodes[0].config

    def repost(board: Board) -> None:
        board.post(config.nonce, BundleKind.DEAL, board.read(config.nonce, BundleKind.DEAL)[0])

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.DEAL, repost))
    assert run.only_result().qual == (1, 2, 3, 4)
    assert all(not n.evidence for n in nodes)


def test_same_bundle_signed_twice_is_not_equivocation(keys16: list[KGCNodeKey]) -> None:
    # ECDSA signatures are randomised: a node that re-signs its unchanged response (a retry)
    # posts different bytes with the same content, which must not disqualify it.
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config

    def resign(board: Board) -> None:
        raw = board.read(config.nonce, BundleKind.RESPONSE)[1]
        first = ResponseBundle.from_bytes(raw)
        again = ResponseBundle.create(
            keys[1], nonce=config.nonce, responder=2, statuses=first.statuses
        )
        assert again.to_bytes() != raw  # a fresh signature, same body
        board.post(config.nonce, BundleKind.RESPONSE, again.to_bytes())
        with pytest.raises(VerificationError, match="same bundle twice"):
            EquivocationEvidence(BundleKind.RESPONSE, 2, raw, again.to_bytes()).verify(config)

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.RESPONSE, resign))
    assert run.only_result().qual == (1, 2, 3, 4)
    assert all(not n.evidence and not n.disqualified for n in nodes)


def test_replayed_bundles_from_an_old_session_are_rejected(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    old_nodes = make_nodes(keys)
    old_board = InMemoryBoard()
    run_dkg(old_nodes, old_board)
    old_nonce = old_nodes[0].config.nonce

    nodes = make_nodes(keys)
    nonce = nodes[0].config.nonce

    def replay(phase: BundleKind, board: Board) -> None:
        for bundle in old_board.read(old_nonce, phase):
            board.post(nonce, phase, bundle)

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=replay)
    result = run.only_result()
    assert result.qual == (1, 2, 3, 4) and run.mpk_agreed
    assert not run.needed_justifications
    for node in nodes:
        assert not node.evidence  # an old bundle is not evidence of equivocation
        reasons = [r.error for r in node.rejected]
        assert len(reasons) == 8  # 4 deals + 4 responses from the old session
        assert all(isinstance(e, InvalidNonce) for e in reasons)


def test_bad_signature_and_impersonation_are_rejected(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    impostor = DKGNode(config, keys[0])

    def inject(board: Board) -> None:
        genuine = board.read(config.nonce, BundleKind.DEAL)[2]  # dealer 3
        flipped = genuine[:-1] + bytes([genuine[-1] ^ 1])
        board.post(config.nonce, BundleKind.DEAL, flipped)
        # Node 1 signs a deal that claims to be from dealer 4.
        board.post(config.nonce, BundleKind.DEAL, deal_claiming(impostor, keys[0], 4).to_bytes())

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.DEAL, inject))
    assert run.only_result().qual == (1, 2, 3, 4)
    for node in nodes:
        assert not node.evidence  # unsigned junk cannot frame an honest dealer
        assert [(r.sender, type(r.error)) for r in node.rejected] == [
            (3, InvalidSignature),
            (4, InvalidSignature),
        ]


def test_abort_when_fewer_than_tau_dealers(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:4])  # τ = 3
    run = run_dkg(nodes[:2], InMemoryBoard())
    assert not run.results
    for index in (1, 2):
        error = run.failures[index]
        assert isinstance(error, DKGAborted)
        assert error.qual == (1, 2) and error.threshold == 3
        assert "need at least 3" in str(error)
    assert nodes[0].phase is Phase.ABORTED
    with pytest.raises(PhaseError, match="aborted"):
        nodes[0].result()


def test_abort_after_disqualification_leaves_too_few(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys, threshold=4)
    config = nodes[0].config
    board = TamperBoard()
    hook = at(BundleKind.DEAL, lambda b: corrupt_shares(board, config, keys[1], 2, [3]))
    run = run_dkg(
        nodes,
        board,
        on_phase_end=hook,
        participating={BundleKind.JUSTIFICATION: frozenset({1, 3, 4})},
    )
    assert not run.results and len(run.failures) == 4
    error = run.failures[1]
    assert isinstance(error, DKGAborted) and error.qual == (1, 3, 4)
    assert 2 in error.disqualified


def test_node_whose_complaint_is_lost_has_no_share(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    board = TamperBoard()

    def hook(phase: BundleKind, _: Board) -> None:
        if phase is BundleKind.DEAL:
            corrupt_shares(board, config, keys[1], 2, [3])
        elif phase is BundleKind.RESPONSE:
            board.drop_from(config.nonce, BundleKind.RESPONSE, 3)

    run = run_dkg(nodes, board, on_phase_end=hook)
    assert sorted(run.results) == [1, 2, 4] and run.mpk_agreed
    assert isinstance(run.failures[3], ShareUnavailable)
    assert "dealers [2]" in str(run.failures[3])


# ---------------------------------------------------------------------------------------------
# the phase table


def test_out_of_order_calls_are_phase_errors(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:3])
    node = nodes[0]
    with pytest.raises(PhaseError, match=r"process_deals\(\) is not allowed in phase ready"):
        node.process_deals([])
    with pytest.raises(PhaseError, match="result"):
        node.result()
    deals = [n.deals().to_bytes() for n in nodes]
    with pytest.raises(PhaseError, match=r"deals\(\) is not allowed"):
        node.deals()
    with pytest.raises(PhaseError):
        node.process_justifications([])
    node.process_deals(deals)
    assert node.phase is Phase.AWAITING_RESPONSES
    with pytest.raises(PhaseError):
        node.process_deals(deals)


def test_transition_table_covers_every_method() -> None:
    actions = {action for (_, action) in DKGNode.TRANSITIONS}
    assert actions == {
        "deals",
        "process_deals",
        "process_responses",
        "process_justifications",
        "result",
    }
    for targets in DKGNode.TRANSITIONS.values():
        assert targets  # every allowed action leads somewhere


def test_repr_hides_secrets(keys16: list[KGCNodeKey]) -> None:
    run = run_dkg(make_nodes(keys16[:3]), InMemoryBoard())
    result = run.results[1]
    text = repr(result)
    assert result.share.value.to_bytes().hex() not in text
    assert "<hidden>" in repr(result.share)
    assert "<hidden>" in repr(keys16[0])
    with pytest.raises(TypeError):
        hash(result.share)


def test_equivocating_responder_is_disqualified_and_its_complaints_ignored(
    keys16: list[KGCNodeKey],
) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config

    def second_response(board: Board) -> None:
        # Node 4 also signs a response complaining about dealers 1 and 2.
        c, a = DealStatus.COMPLAINT, DealStatus.ACCEPTED
        statuses = [c, c, a, a]
        extra = ResponseBundle.create(keys[3], nonce=config.nonce, responder=4, statuses=statuses)
        board.post(config.nonce, BundleKind.RESPONSE, extra.to_bytes())

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.RESPONSE, second_response))
    result = run.only_result()
    assert run.mpk_agreed and len(run.results) == 4
    assert not run.needed_justifications  # node 4's complaints carry no weight
    assert result.qual == (1, 2, 3)
    assert result.disqualified[4].startswith("equivocated")
    for node in nodes:
        assert [(e.kind, e.sender) for e in node.evidence] == [(BundleKind.RESPONSE, 4)]
        node.evidence[0].verify(config)


def test_bundle_naming_a_sender_outside_the_roster_is_rejected(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    stray = DKGNode(config, keys[0])

    def inject(board: Board) -> None:
        board.post(config.nonce, BundleKind.DEAL, deal_claiming(stray, keys[0], 9).to_bytes())

    run = run_dkg(nodes, InMemoryBoard(), on_phase_end=at(BundleKind.DEAL, inject))
    assert run.only_result().qual == (1, 2, 3, 4)
    errors = [r.error for r in nodes[1].rejected]
    assert len(errors) == 1 and isinstance(errors[0], UnknownParticipant)
    assert "between 1 and 4, got 9" in str(errors[0])


def test_nodes_accept_parsed_bundles_as_well_as_bytes(keys16: list[KGCNodeKey]) -> None:
    nodes = make_nodes(keys16[:3])
    deals = [n.deals() for n in nodes]
    responses = [n.process_deals(deals) for n in nodes]
    for n in nodes:
        assert n.process_responses([r.to_bytes() for r in responses]) is None
    results = [n.result() for n in nodes]
    assert len({r.public.to_bytes() for r in results}) == 1


def test_deadline_hook_waits_once_per_phase(keys16: list[KGCNodeKey]) -> None:
    waits: list[float] = []
    hook = deadline_hook(0.25, sleep=waits.append)
    run = run_dkg(make_nodes(keys16[:3]), InMemoryBoard(), on_phase_end=hook)
    assert run.only_result().qual == (1, 2, 3)
    assert waits == [0.25, 0.25]  # deal and response; no justification round was needed
    with pytest.raises(ValueError, match="≥ 0 seconds"):
        deadline_hook(-1)


def test_equivocation_evidence_that_is_not_a_proof_is_refused(keys16: list[KGCNodeKey]) -> None:
    keys = keys16[:4]
    nodes = make_nodes(keys)
    config = nodes[0].config
    a, b = nodes[0].deals().to_bytes(), nodes[1].deals().to_bytes()
    with pytest.raises(VerificationError, match="same bundle twice"):
        EquivocationEvidence(BundleKind.DEAL, 1, a, a).verify(config)
    with pytest.raises(VerificationError, match="from node 2, expected DEAL from node 1"):
        EquivocationEvidence(BundleKind.DEAL, 1, a, b).verify(config)
    other_session = DKGNode(
        DKGConfig(config.participants, new_session_nonce(), config.threshold), keys[0]
    )
    with pytest.raises(InvalidNonce):
        EquivocationEvidence(BundleKind.DEAL, 1, a, other_session.deals().to_bytes()).verify(config)
