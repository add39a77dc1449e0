"""RC-DBFT epoch policy: quorum arithmetic, reputation, leader ranking, clustering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare_consensus.policy import (
    GAMMA,
    LAMBDA,
    EpochConfig,
    EpochStats,
    RepRecord,
    choose_k,
    cluster_nodes,
    cluster_quorum,
    next_epoch,
    rank_cluster,
    update_reputation,
)


@pytest.mark.parametrize(
    ("size", "f", "q"),
    [
        *[(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 1, 3), (5, 1, 4), (6, 1, 4), (7, 2, 5)],
        *[(8, 2, 6), (10, 3, 7), (100, 33, 67)],
    ],
)
def test_quorum_arithmetic(size: int, f: int, q: int) -> None:
    assert cluster_quorum(size) == (f, q)


@given(st.integers(min_value=1, max_value=1000))
def test_two_quorums_intersect_in_an_honest_node(size: int) -> None:
    f, q = cluster_quorum(size)
    assert 3 * f < size  # f is the largest tolerable count
    assert 2 * q - size >= f + 1  # any two quorums share at least one honest member


def test_quorum_rejects_empty_cluster() -> None:
    with pytest.raises(ValueError, match="at least one voter"):
        cluster_quorum(0)


@pytest.mark.parametrize(("n", "k"), [(4, 1), (15, 1), (16, 4), (64, 8), (100, 10), (256, 16)])
def test_choose_k_is_about_sqrt_n(n: int, k: int) -> None:
    assert choose_k(n) == k


def test_reputation_update_follows_the_formula() -> None:
    assert update_reputation(0.5, 1.0, 0) == pytest.approx(LAMBDA * 0.5 + (1 - LAMBDA))
    assert update_reputation(0.5, 0.0, 0) == pytest.approx(0.4)
    assert update_reputation(0.9, 1.0, 2) == pytest.approx((LAMBDA * 0.9 + 0.2) * GAMMA**2)
    with pytest.raises(ValueError, match="behaviour"):
        update_reputation(0.5, 1.5, 0)
    with pytest.raises(ValueError, match="deposed"):
        update_reputation(0.5, 0.5, -1)


@given(st.floats(0, 1), st.floats(0, 1), st.integers(0, 5))
def test_reputation_stays_in_unit_interval(r: float, b: float, vc: int) -> None:
    assert 0.0 <= update_reputation(r, b, vc) <= 1.0


def test_absent_node_falls_below_observer_threshold_in_three_epochs() -> None:
    r = 0.5
    for _ in range(3):
        r = update_reputation(r, 0.0, 0)
    assert r < 0.3


def test_rank_prefers_eligible_steady_nodes() -> None:
    recs = {
        1: RepRecord(r=0.9, history=[0.9, 0.9, 0.9], member_epochs=5),
        2: RepRecord(r=0.95, history=[0.2, 0.95], member_epochs=5),  # volatile
        3: RepRecord(r=0.99, history=[0.99], member_epochs=1),  # still on probation
        4: RepRecord(r=0.7, history=[0.7], member_epochs=5, leader_epochs=5),  # tenure limit
    }
    ranking = rank_cluster([1, 2, 3, 4], recs, seed=7)
    assert ranking[0] == 1
    assert set(ranking[2:]) == {3, 4}


def _rtt(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 100, size=(n, 2))
    return np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))


def test_clustering_is_deterministic_for_a_seed() -> None:
    rtt = _rtt(64)
    ids = list(range(64))
    a = cluster_nodes(ids, rtt, 8, {}, seed=42)
    b = cluster_nodes(ids, rtt, 8, {}, seed=42)
    assert a == b
    assert sorted(i for c in a for i in c) == ids


def test_clustering_respects_size_bounds() -> None:
    rtt = _rtt(100, seed=9)
    clusters = cluster_nodes(list(range(100)), rtt, 10, {}, seed=1)
    assert len(clusters) == 10
    assert all(4 <= len(c) <= 20 for c in clusters)


def test_clustering_spreads_suspects() -> None:
    rtt = _rtt(16, seed=5)
    ids = list(range(16))
    plain = cluster_nodes(ids, rtt, 4, {}, seed=1)
    suspects = set(plain[0])  # all of one cluster: far more than its f_c
    spread = cluster_nodes(ids, rtt, 4, {}, seed=1, suspects=suspects)
    for c in spread:
        assert sum(1 for i in c if i in suspects) <= cluster_quorum(len(c))[0]


def test_next_epoch_expels_provable_misbehaviour_and_admits_joiners() -> None:
    rtt = _rtt(20)
    ids = list(range(16))
    clusters = cluster_nodes(ids, rtt, 4, {}, seed=1)
    recs = {i: RepRecord() for i in ids}
    prev = EpochConfig(
        0,
        clusters,
        [rank_cluster(c, recs, 1) for c in clusters],
        [],
        frozenset(),
        True,
        frozenset(ids),
    )
    stats = EpochStats(
        blocks=10,
        participation=dict.fromkeys(ids, 10),
        eligible=dict.fromkeys(ids, 10),
        timely={},
        evidence={3},
        joins={16, 17},
        leaves={5},
    )
    nxt = next_epoch(prev, stats, recs, rtt, seed=99)
    assert 3 in nxt.expelled and 3 not in nxt.voters and recs[3].r == 0.0
    assert 5 not in nxt.voters
    assert {16, 17} <= set(nxt.voters)
    assert recs[0].r == pytest.approx(0.6)
