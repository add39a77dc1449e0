"""RC-DBFT epoch policy (docs/consensus.md, *The RC-DBFT specification*): reputation update,
K-medoids clustering, leader ranking.

Pure, deterministic functions of committed data (quorum-certificate signer sets, evidence,
deposition records, measured RTTs) and a seed taken from the last committed block, so every
honest node computes the same roles. Nothing here does I/O or reads a clock; nothing here may
depend on iteration order of a set or on Python's hash randomisation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import kmedoids
import numpy as np

__all__ = [
    "GAMMA",
    "LAMBDA",
    "EpochConfig",
    "EpochStats",
    "RepRecord",
    "choose_k",
    "cluster_nodes",
    "cluster_quorum",
    "leader_score",
    "next_epoch",
    "rank_cluster",
    "update_reputation",
]

LAMBDA = 0.8
GAMMA = 0.7
START_R = 0.5
OBSERVER_BELOW = 0.3
LEADER_MIN_R = 0.6
PROBATION_EPOCHS = 3
TENURE_LIMIT = 5
HISTORY = 5
MIN_CLUSTER = 4
# Not in the specification (docs/consensus.md): a voter that signed fewer than half of an
# epoch's blocks is a *suspect*; re-clustering spreads suspects so that no cluster holds more
# than its f_c of them (otherwise K-medoids could pack several crashed nodes into one cluster
# and stall it for good).
SUSPECT_BELOW = 0.5


def cluster_quorum(size: int) -> tuple[int, int]:
    """(f, quorum) for a group of `size` voters: f = ⌊(size−1)/3⌋, quorum = ⌈(size+f+1)/2⌉.

    For size = 3f+1 this is the specification's 2f+1; for other sizes 2f+1 is too small (two quorums
    of a 6-node cluster with f=1 would need not share an honest node), so the quorum is the
    smallest that makes any two quorums intersect in f+1 nodes.
    """
    if size < 1:
        raise ValueError(f"a cluster needs at least one voter, got {size}")
    f = (size - 1) // 3
    return f, (size + f + 2) // 2


def choose_k(n: int) -> int:
    """K ≈ √N, K = 1 below 16 nodes, and never so many that a cluster falls below 4."""
    if n < 16:
        return 1
    return max(1, min(round(math.sqrt(n)), n // MIN_CLUSTER))


def update_reputation(r: float, behaviour: float, deposed: int) -> float:
    """R ← clip(λ·R + (1−λ)·b) · γ^vc."""
    if not 0.0 <= behaviour <= 1.0:
        raise ValueError(f"behaviour must be in [0, 1], got {behaviour}")
    if deposed < 0:
        raise ValueError(f"deposed count must be >= 0, got {deposed}")
    val = min(1.0, max(0.0, LAMBDA * r + (1.0 - LAMBDA) * behaviour))
    return val * GAMMA**deposed


def _tiebreak(node: int, seed: int) -> int:
    h = hashlib.sha256(f"{seed}:{node}".encode()).digest()
    return int.from_bytes(h[:8], "big")


@dataclass(slots=True)
class RepRecord:
    """What the ledger knows about one node's standing."""

    r: float = START_R
    history: list[float] = field(default_factory=list)
    member_epochs: int = 0
    leader_epochs: int = 0


def leader_score(rec: RepRecord) -> float:
    """R − 0.5·σ(R over the last epochs): steady reputation beats a recent spike."""
    hist = rec.history[-HISTORY:] or [rec.r]
    return rec.r - 0.5 * float(np.std(hist))


def rank_cluster(members: Sequence[int], recs: Mapping[int, RepRecord], seed: int) -> list[int]:
    """Leader succession order for a cluster: eligible nodes by score, then the rest.

    Eligible: R ≥ 0.6, at least 3 epochs of probation, under the tenure limit. If nobody is
    eligible (e.g. at genesis, when every R is 0.5) the best-scored members lead — the specification
    leaves bootstrap open; this is the choice made here.
    """

    def key(i: int) -> tuple[float, int]:
        return (-leader_score(recs[i]), _tiebreak(i, seed))

    eligible = [
        i
        for i in members
        if recs[i].r >= LEADER_MIN_R
        and recs[i].member_epochs >= PROBATION_EPOCHS
        and recs[i].leader_epochs < TENURE_LIMIT
    ]
    rest = [i for i in members if i not in set(eligible)]
    return sorted(eligible, key=key) + sorted(rest, key=key)


def _seed_medoids(
    diss: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    # k-means++-style seeding weighted by reputation: well-reputed, spread-out medoids first.
    n = diss.shape[0]
    first = int(np.argmax(weights))
    chosen = [first]
    dmin = diss[first].copy()
    for _ in range(1, k):
        p = weights * dmin**2
        p[chosen] = 0.0
        total = p.sum()
        nxt = (
            int(rng.choice(n, p=p / total))
            if total > 0
            else next(i for i in range(n) if i not in chosen)
        )
        chosen.append(nxt)
        dmin = np.minimum(dmin, diss[nxt])
    return np.asarray(chosen, dtype=np.int64)


def cluster_nodes(
    ids: Sequence[int],
    rtt: np.ndarray,
    k: int,
    reputation: Mapping[int, float],
    seed: int,
    suspects: Mapping[int, float] | Iterable[int] = (),
) -> list[list[int]]:
    """K-medoids (FasterPAM) on the RTT matrix of `ids`, then size bounds [4, 2N/K], then
    suspects (nodes that missed most votes) spread to at most f_c per cluster by swaps.

    Returns clusters as sorted lists of node ids, ordered by their smallest id.
    """
    n = len(ids)
    if k <= 1 or n < 2 * MIN_CLUSTER:
        return [sorted(ids)]
    sub = rtt[np.ix_(list(ids), list(ids))].astype(float)
    sub = (sub + sub.T) / 2.0
    np.fill_diagonal(sub, 0.0)
    rng = np.random.default_rng(seed % 2**32)
    weights = np.asarray([max(reputation.get(i, START_R), 1e-3) for i in ids])
    init = _seed_medoids(sub, weights, k, rng)
    res = kmedoids.fasterpam(sub, init, max_iter=100, n_cpu=1)
    labels = [int(x) for x in res.labels]
    medoids = [int(m) for m in res.medoids]
    max_size = max(MIN_CLUSTER, (2 * n) // k)
    groups: dict[int, list[int]] = {c: [] for c in range(len(medoids))}
    for pos, c in enumerate(labels):
        groups[c].append(pos)

    def nearest(pos: int, allowed: list[int]) -> int:
        return min(allowed, key=lambda c: (sub[pos, medoids[c]], c))

    # Too small: pull the nearest nodes from clusters that can spare one (keeps K, because
    # K < 4 clusters would leave no Byzantine leader tolerance at the top level).
    for c in sorted(groups):
        while len(groups[c]) < MIN_CLUSTER:
            donors = [
                (float(sub[pos, medoids[c]]), pos, x)
                for x in groups
                if x != c and len(groups[x]) > MIN_CLUSTER
                for pos in groups[x]
                if pos != medoids[x]
            ]
            if not donors:
                break
            _, pos, x = min(donors)
            groups[x].remove(pos)
            groups[c].append(pos)
    # Too large: move the farthest members to the nearest cluster with room.
    for c in sorted(groups):
        while len(groups[c]) > max_size:
            far = max(groups[c], key=lambda pos: (sub[pos, medoids[c]], pos))
            room = [x for x in groups if x != c and len(groups[x]) < max_size]
            if not room:
                break
            groups[c].remove(far)
            groups[nearest(far, room)].append(far)
    # The worst-participating suspects first, as many as the clusters can absorb (Σ f_c).
    score = dict(suspects) if isinstance(suspects, Mapping) else dict.fromkeys(suspects, 0.0)
    capacity = sum(cluster_quorum(len(g))[0] for g in groups.values())
    where = {i: p for p, i in enumerate(ids)}
    worst = sorted((i for i in score if i in where), key=lambda i: (score[i], i))[:capacity]
    _spread_suspects(groups, {where[i] for i in worst}, sub, medoids)
    clusters = [sorted(ids[pos] for pos in g) for g in groups.values() if g]
    return sorted(clusters, key=lambda g: g[0])


def _spread_suspects(
    groups: dict[int, list[int]], sus: set[int], sub: np.ndarray, medoids: list[int]
) -> None:
    def excess(c: int) -> int:
        return sum(1 for p in groups[c] if p in sus) - cluster_quorum(len(groups[c]))[0]

    for _ in range(len(sus) + 1):
        over = [c for c in sorted(groups) if excess(c) > 0]
        room = [c for c in sorted(groups) if excess(c) < 0]
        if not over or not room:
            return
        c = over[0]
        p = max((q for q in groups[c] if q in sus), key=lambda q: (sub[q, medoids[c]], q))
        x = min(room, key=lambda x: (sub[p, medoids[x]], x))
        q = min(
            (q for q in groups[x] if q not in sus and q != medoids[x]),
            key=lambda q: (sub[q, medoids[c]], q),
            default=None,
        )
        if q is None:
            return
        groups[c].remove(p)
        groups[x].remove(q)
        groups[c].append(q)
        groups[x].append(p)


@dataclass(slots=True)
class EpochStats:
    """Committed evidence about one epoch, accumulated block by block."""

    blocks: int = 0
    participation: dict[int, int] = field(default_factory=dict)
    # Committed cluster QCs a member could have signed (its cluster's, while it was a member):
    # a member is judged on these, so a leader that produces no QC at all frames nobody.
    eligible: dict[int, int] = field(default_factory=dict)
    timely: dict[int, int] = field(default_factory=dict)
    qc_clusters: dict[int, int] = field(default_factory=dict)
    deposed: dict[int, int] = field(default_factory=dict)
    evidence: set[int] = field(default_factory=set)
    joins: set[int] = field(default_factory=set)
    leaves: set[int] = field(default_factory=set)


@dataclass(slots=True)
class EpochConfig:
    """Roles for one epoch: voters by cluster, leader succession per cluster, observers."""

    epoch: int
    clusters: list[list[int]]
    ranking: list[list[int]]
    observers: list[int]
    expelled: frozenset[int]
    reclustered: bool
    members_at_clustering: frozenset[int]

    @property
    def leaders(self) -> list[int]:
        return [r[0] for r in self.ranking]

    @property
    def voters(self) -> list[int]:
        return sorted(i for c in self.clusters for i in c)


def next_epoch(
    prev: EpochConfig,
    stats: EpochStats,
    recs: dict[int, RepRecord],
    rtt: np.ndarray,
    seed: int,
    recluster_every: int = 10,
) -> EpochConfig:
    """Apply the epoch's committed data: reputation, expulsion, roles, clustering, leaders."""
    leaders_now = set(prev.leaders)
    blocks = max(stats.blocks, 1)
    expelled = set(prev.expelled) | stats.evidence
    suspects: dict[int, float] = {}
    for i in prev.voters + prev.observers:
        rec = recs[i]
        part = stats.participation.get(i, 0) / blocks
        if part < SUSPECT_BELOW and rec.member_epochs > 0:  # not in a first (catch-up) epoch
            suspects[i] = part
        if i in leaders_now:
            b = 0.5 * min(1.0, part) + 0.5 * min(1.0, stats.timely.get(i, 0) / blocks)
            rec.leader_epochs += 1
        else:
            elig = stats.eligible.get(i, 0)
            # No committed QC of its cluster this epoch: nothing to judge the member on.
            b = min(1.0, stats.participation.get(i, 0) / elig) if elig else rec.r
            rec.leader_epochs = 0
        rec.r = update_reputation(rec.r, b, stats.deposed.get(i, 0))
        rec.member_epochs += 1
    for i in stats.evidence:
        recs.setdefault(i, RepRecord()).r = 0.0
    for i in stats.joins - expelled:
        recs.setdefault(i, RepRecord())
    for rec in recs.values():
        rec.history.append(rec.r)
        del rec.history[:-HISTORY]
    members = (set(prev.voters) | set(prev.observers) | stats.joins) - stats.leaves - expelled
    voters = sorted(i for i in members if recs[i].r >= OBSERVER_BELOW)
    observers = sorted(i for i in members if recs[i].r < OBSERVER_BELOW)
    old = prev.members_at_clustering
    changed = len(old.symmetric_difference(voters)) > 0.1 * max(len(old), 1)
    unhealthy = any(
        len([i for i in c if i in set(voters)]) < min(MIN_CLUSTER, len(c))
        or stats.qc_clusters.get(ci, 0) < 0.5 * stats.blocks
        or sum(stats.deposed.get(i, 0) for i in c) >= 2
        for ci, c in enumerate(prev.clusters)
    )
    scheduled = recluster_every > 0 and (prev.epoch + 1) % recluster_every == 0
    k = choose_k(len(voters))
    if changed or unhealthy or scheduled or k != len(prev.clusters):
        clusters = cluster_nodes(voters, rtt, k, {i: recs[i].r for i in voters}, seed, suspects)
        at = frozenset(voters)
        re = True
    else:
        vset = set(voters)
        clusters = [[i for i in c if i in vset] for c in prev.clusters]
        placed = {i for c in clusters for i in c}
        for i in voters:
            if i not in placed:  # a joiner goes to the cluster it is nearest to on average
                best = min(
                    range(len(clusters)),
                    key=lambda c: (float(np.mean([rtt[i, j] for j in clusters[c]])), c),
                )
                clusters[best].append(i)
        clusters = [sorted(c) for c in clusters if c]
        at = prev.members_at_clustering
        re = False
    ranking = [rank_cluster(c, recs, seed) for c in clusters]
    return EpochConfig(
        epoch=prev.epoch + 1,
        clusters=clusters,
        ranking=ranking,
        observers=observers,
        expelled=frozenset(expelled),
        reclustered=re,
        members_at_clustering=at,
    )
