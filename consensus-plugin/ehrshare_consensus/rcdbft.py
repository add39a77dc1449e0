"""RC-DBFT (reputation-clustered dynamic BFT, docs/consensus.md) on the simulation core.

Normal case: primary → leaders (PRE-PREPARE) → members (FWD); members PREPARE to their leader;
the leader aggregates 2f_c+1 votes into a cluster QC and sends it to the other leaders; with
2f_top+1 cluster QCs a leader is prepared, tells its members (PREP), collects COMMIT votes into
a commit QC, exchanges it, commits with 2f_top+1 and sends DECIDE with the certificate.
Two-level view change: members depose their leader (LC, a cluster quorum of complaints → next
in the cluster's succession); leaders run PBFT's view change among themselves, but on what their
members signed: a leader announces its intent (TVI); once 2f_top+1 leaders want the view it asks
its members for signed reports (VCN → VCR: executed height, prepared block with its certificate)
and sends a TVC carrying a cluster quorum of them; the new primary's TNV must re-propose what
those reports force, and members check the TNV (NVF) and every PREP certificate themselves
before voting. So a Byzantine leader of a cluster whose members are within f_c can stall, not
fork. Participation counts for reputation come from committed participant lists plus members'
own signed votes (RCPT receipts), judged against the cluster's committed QCs.
Epoch boundaries apply the committed data (QC signer sets, timely QCs, depositions, evidence,
join/leave requests) through `policy.next_epoch`.

Signatures are modelled as unforgeable: the simulator records who really signed what and a QC
counts only real signers. This module must not let an honest node commit without a verified
certificate, nor vote for two digests at one (view, height).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .core import HEADER_BYTES, SIG_BYTES, Msg, Node, Sim
from .policy import (
    EpochConfig,
    EpochStats,
    RepRecord,
    choose_k,
    cluster_nodes,
    cluster_quorum,
    next_epoch,
    rank_cluster,
)

__all__ = ["RcLedger", "RcNode", "build_rcdbft"]

VOTE = HEADER_BYTES + SIG_BYTES
SIGNER = SIG_BYTES + 4
# Commit QCs that reach the primary up to this many heights late still count for participation.
QC_WINDOW = 8

# A member's signed view-change report: (member, last executed height, its digest,
# prepared (view, digest) at the next height or None, signatures in that prepared certificate).
Report = tuple[int, int, int, tuple[int, int] | None, int]


@dataclass
class RcLedger:
    """Committed data shared by construction: what every honest node derives from the chain
    (computed once here because safety guarantees all honest nodes see the same blocks)."""

    epoch_blocks: int
    recluster_every: int
    configs: dict[int, EpochConfig] = field(default_factory=dict)
    recs: dict[int, RepRecord] = field(default_factory=dict)
    stats: dict[int, EpochStats] = field(default_factory=dict)
    accounted: int = 0
    rep_history: list[dict[int, float]] = field(default_factory=list)
    signed: set[tuple[str, int, int, int, int]] = field(default_factory=set)
    join_requests: set[int] = field(default_factory=set)
    leave_requests: set[int] = field(default_factory=set)
    seen_evidence: set[int] = field(default_factory=set)
    included: set[tuple[int, int]] = field(default_factory=set)
    # (height, node) already credited with participation; receipts included in blocks
    counted: set[tuple[int, int]] = field(default_factory=set)
    receipts_in: set[tuple[int, int]] = field(default_factory=set)
    fork_attack: dict[str, Any] | None = None
    # Signed view-change reports: (new view, report). A report is what one cluster member
    # signs about itself; a leader can choose which reports to forward but cannot make one up.
    vc_reports: set[tuple[int, Report]] = field(default_factory=set)
    fetch_delay_s: float = 0.01

    def epoch_of(self, height: int) -> int:
        return (height - 1) // self.epoch_blocks

    def config_for(self, height: int) -> EpochConfig:
        return self.configs[self.epoch_of(height)]


class RcNode(Node):
    """One RC-DBFT replica. Roles (leader, member, observer) come from the epoch config."""

    def __init__(self, sim: Sim, nid: int, ledger: RcLedger) -> None:
        super().__init__(sim, nid)
        self.ledger = ledger
        self.cfg: EpochConfig | None = None
        self.view = 0
        self.in_vc = False
        self.progress = 0
        self.vc_timeout = sim.params.view_timeout_s
        self.leader_idx: list[int] = []
        self.attack_from = float("inf")
        # member state
        self.voted: dict[tuple[int, int], int] = {}
        self.prepared: dict[int, tuple[int, int]] = {}
        self.prep_sigs: dict[int, int] = {}
        # view -> (first height, digest the new-view certificate binds there), once verified
        self.nv_ok: dict[int, tuple[int, int]] = {}
        self.nv_proof: dict[int, Msg] = {}
        self.nv_told: defaultdict[int, set[int]] = defaultdict(set)
        self.await_nv: defaultdict[int, list[Msg]] = defaultdict(list)
        self.vcr: defaultdict[int, dict[int, Report]] = defaultdict(dict)
        # participation receipts: our own COMMIT votes, heights whose committed participant
        # lists named us, and (as a proposer) members' receipts to put in the next block
        self.my_cv: dict[int, tuple[int, int]] = {}
        self.listed: set[int] = set()
        self.rcpts: set[tuple[int, int, int]] = set()
        self.future: defaultdict[int, list[Msg]] = defaultdict(list)
        self.lcs: defaultdict[tuple[int, int], dict[int, Msg]] = defaultdict(dict)
        # leader state
        self.accepted: dict[tuple[int, int], tuple[int, int]] = {}  # (v,s) -> (digest, primary)
        self.pv: defaultdict[tuple[int, int, int], set[int]] = defaultdict(set)
        self.cv: defaultdict[tuple[int, int, int], set[int]] = defaultdict(set)
        self.pqc: defaultdict[tuple[int, int, int], dict[int, tuple[int, ...]]] = defaultdict(dict)
        self.cqc: defaultdict[tuple[int, int, int], dict[int, tuple[int, ...]]] = defaultdict(dict)
        self.sent: set[tuple[str, int, int]] = set()
        self.qc_book: defaultdict[int, dict[int, tuple[int, tuple[int, ...]]]] = defaultdict(dict)
        self.evidence: set[int] = set()
        self.deposed_pending: dict[int, int] = {}
        self.tvcs: defaultdict[int, dict[int, Msg]] = defaultdict(dict)
        self.tvis: defaultdict[int, dict[int, int]] = defaultdict(dict)
        self.collecting: set[int] = set()
        self.reported_view = 0
        self.nv_sent: set[int] = set()
        self.proposing = False
        self.fetching = False
        self.wd_gen = 0
        self.skipped = 0
        self.pending_lead: tuple[int, int, int] | None = None

    # -- roles ----------------------------------------------------------------------------------
    def set_config(self, cfg: EpochConfig) -> None:
        self.cfg = cfg
        self.leader_idx = [0] * len(cfg.clusters)
        self.cluster_of = {i: c for c, members in enumerate(cfg.clusters) for i in members}
        self.myc = self.cluster_of.get(self.id, -1)
        self.obs_cluster = {o: o % len(cfg.clusters) for o in cfg.observers}
        self.lcs.clear()

    @property
    def k(self) -> int:
        assert self.cfg is not None
        return len(self.cfg.clusters)

    def leader(self, c: int) -> int:
        assert self.cfg is not None
        rank = self.cfg.ranking[c]
        return rank[min(self.leader_idx[c], len(rank) - 1)]

    def is_leader(self) -> bool:
        return self.myc >= 0 and self.leader(self.myc) == self.id

    def primary(self, view: int) -> int:
        return self.leader(view % self.k)

    def leaders_except_me(self) -> list[int]:
        return [self.leader(c) for c in range(self.k) if self.leader(c) != self.id]

    def my_members(self) -> list[int]:
        assert self.cfg is not None
        return [i for i in self.cfg.clusters[self.myc] if i != self.id]

    def my_observers(self) -> list[int]:
        return [o for o, c in self.obs_cluster.items() if c == self.myc]

    def q_top(self) -> int:
        return cluster_quorum(self.k)[1]

    def q_c(self, c: int) -> int:
        assert self.cfg is not None
        return cluster_quorum(len(self.cfg.clusters[c]))[1]

    def attacking(self) -> bool:
        return not self.honest and self.t >= self.attack_from

    # -- proposals ------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.ledger.configs.get(0)
        if cfg is None or (self.id not in cfg.voters and self.id not in cfg.observers):
            return  # not a member yet (a future joiner)
        self.set_config(cfg)
        self.arm_watchdog()
        if self.primary(self.view) == self.id:
            self.try_propose()

    def try_propose(self) -> None:
        if self.crashed or self.in_vc or self.proposing or self.cfg is None:
            return
        if self.primary(self.view) != self.id:
            return
        s = self.last_exec + 1
        if (self.view, s) in self.accepted:
            return
        if not self.batch_due():
            return
        p = self.sim.params
        pool = self.sim.pool
        blk = self.sim.new_block(s, self.id, self.view, pool.take(p.batch_size))
        blk.meta = self.block_meta(s)
        self.propose_digest(self.view, s, blk.digest)

    def block_meta(self, s: int) -> dict[str, Any]:
        cert: dict[int, dict[int, tuple[int, tuple[int, ...]]]] = {}
        for h in range(s - 1, s - 1 - QC_WINDOW, -1):
            for c, parts in self.qc_book.get(h, {}).items():
                if (h, c) not in self.ledger.included:
                    cert.setdefault(h, {})[c] = parts
        return {
            "cert": cert,
            "evidence": sorted(self.evidence - self.ledger.seen_evidence),
            "deposed": dict(self.deposed_pending),
            "receipts": sorted(
                r for r in self.rcpts if (r[0], r[1]) not in self.ledger.receipts_in
            ),
            "joins": sorted(self.ledger.join_requests),
            "leaves": sorted(self.ledger.leave_requests),
        }

    def pp(self, v: int, s: int, d: int, kind: str = "PP") -> Msg:
        size = self.sim.blocks[d].size
        extra = VOTE if kind == "FWD" else 0
        return Msg(
            kind,
            self.id,
            v,
            s,
            d,
            size=size + extra,
            verifies=1 + (kind == "FWD"),
            hash_bytes=size,
            epoch=self.cfg.epoch if self.cfg else 0,
            data=self.id,
        )

    def fork_plan(self, v: int, s: int) -> dict[str, Any] | None:
        """The colluding leaders' plan if this node is one of them and (v, s) is its target."""
        plan = self.ledger.fork_attack
        if self.behaviour != "fork_attack" or plan is None or s != plan["height"]:
            return None
        return plan if v in (plan["view"], plan["view"] + 1) else None

    def propose_digest(self, v: int, s: int, d: int) -> None:
        self.accepted[(v, s)] = (d, self.id)
        others = self.leaders_except_me()
        plan = self.fork_plan(v, s)
        if plan is not None and v == plan["view"]:
            # Colluding primary: the block goes to its accomplice and to the honest leaders
            # that will commit it, not to those that will later commit another one.
            others = [i for i in others if i not in plan["excluded"]]
            self.sim.note("fork_attack", node=self.id, view=v, seq=s)
        if self.attacking() and self.behaviour in ("equivocate", "farming"):
            blk = self.sim.blocks[d]
            other = self.sim.new_block(s, self.id, v, tuple(reversed(blk.txs)))
            other.meta = blk.meta
            half = len(others) // 2
            self.sim.note("equivocation", node=self.id, view=v, seq=s)
            self.send(others[:half], self.pp(v, s, d))
            self.send(others[half:], self.pp(v, s, other.digest))
        else:
            self.send(others, self.pp(v, s, d))
        self.lead(v, s, d)

    # -- dispatch -------------------------------------------------------------------------------
    def on_message(self, msg: Msg) -> None:
        if self.cfg is None:
            return
        k = msg.kind
        if k in (
            "TVI",
            "TVC",
            "TNV",
            "LC",
            "NL",
            "VCN",
            "VCR",
            "NVF",
            "NVQ",
            "RCPT",
            "TNVQ",
            "QCB",
            "FETCH",
            "BLOCKS",
        ):
            if k in ("TVI", "TVC", "LC") and msg.seq > self.last_exec and not self.fetching:
                self.request_fetch(msg.src)  # the sender is ahead of us: catch up first
            getattr(self, "on_" + k.lower())(msg)
            return
        if msg.seq <= self.last_exec:
            if msg.seq > self.last_exec - QC_WINDOW and self.is_leader():
                # Late votes and commit QCs still count for participation (not for commit).
                if k == "CQC":
                    self.late_qc(msg)
                elif k == "CV":
                    self.on_cv(msg)
                elif k == "PV":
                    self.pv[(msg.view, msg.seq, msg.digest)].add(msg.src)
            return
        if msg.seq > self.last_exec + 1 or msg.epoch > self.cfg.epoch:
            self.future[msg.seq].append(msg)
            if not self.fetching:
                seq, src = msg.seq, msg.src

                def still_behind() -> None:
                    if self.last_exec < seq - 1 and not self.fetching:
                        self.request_fetch(src)

                # Give the missing DECIDE a moment (two worst-case link delays) to arrive
                # before asking for the block.
                self.timer(self.ledger.fetch_delay_s, still_behind)
            return
        getattr(self, "on_" + k.lower())(msg)

    # -- leader: normal case --------------------------------------------------------------------
    def on_pp(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if not self.is_leader() or v != self.view or self.in_vc or msg.src != self.primary(v):
            return
        prev = self.accepted.get((v, s))
        if prev is not None:
            if prev[0] != d:
                self.found_evidence(msg.src)
            return
        self.accepted[(v, s)] = (d, msg.src)
        self.lead(v, s, d)
        self.check_prepared(v, s, d)

    def lead(self, v: int, s: int, d: int) -> None:
        if (
            self.attacking()
            and self.behaviour in ("byz_leader", "farming")
            and (self.primary(v) != self.id)
        ):
            # Byzantine cluster leader: stall its cluster and try to slip a forged QC through.
            fake = tuple(self.my_members()[: self.q_c(self.myc)])
            self.sim.note("forged_qc", node=self.id, view=v, seq=s)
            self.send(self.leaders_except_me(), self.qc_msg("PQC", v, s, d, fake, fake))
            return
        self.tell_members(v)
        self.send(self.my_members(), self.pp(v, s, d, "FWD"))
        self.vote_self("PV", v, s, d)

    def tell_members(self, v: int, to: list[int] | None = None) -> None:
        """Members vote in view v > 0 only once they have checked its new-view certificate.
        It is pushed to all our members with the view's first proposal; later (a member that
        changed cluster, a joiner) it is sent only on request (NVQ): nothing in the normal case.
        The block itself is not in it (the member gets that in FWD)."""
        proof = self.nv_proof.get(v)
        if v == 0 or proof is None:
            return
        if to is None:
            if self.nv_ok.get(v, (-1, 0))[0] != self.last_exec + 1:
                return
            to = self.my_members()
        todo = [i for i in to if i not in self.nv_told[v]]
        if todo:
            self.nv_told[v].update(todo)
            self.send(
                todo,
                Msg(
                    "NVF",
                    self.id,
                    v,
                    proof.seq,
                    proof.digest,
                    size=proof.size - self.sim.blocks[proof.digest].size,
                    verifies=proof.verifies,
                    epoch=proof.epoch,
                    data=proof,
                ),
            )

    def on_nvq(self, msg: Msg) -> None:
        if self.is_leader() and self.cluster_of.get(msg.src) == self.myc:
            self.nv_told[msg.view].discard(msg.src)
            self.tell_members(msg.view, [msg.src])

    def vote_self(self, kind: str, v: int, s: int, d: int) -> None:
        self.ledger.signed.add((kind, self.id, v, s, d))
        self.cpu(self.cost.sign_s)
        (self.pv if kind == "PV" else self.cv)[(v, s, d)].add(self.id)
        self.check_cluster_qc(kind, v, s, d)

    def on_pv(self, msg: Msg) -> None:
        self.on_vote(msg, self.pv, "PV")

    def on_cv(self, msg: Msg) -> None:
        self.on_vote(msg, self.cv, "CV")

    def on_vote(
        self, msg: Msg, book: defaultdict[tuple[int, int, int], set[int]], kind: str
    ) -> None:
        if not self.is_leader() or self.cluster_of.get(msg.src) != self.myc:
            return
        if msg.seq > self.last_exec and (msg.view != self.view or self.in_vc):
            return  # a leader that left view v takes no further part in it
        key = (msg.view, msg.seq, msg.digest)
        book[key].add(msg.src)
        self.check_cluster_qc(kind, *key)

    def check_cluster_qc(self, kind: str, v: int, s: int, d: int) -> None:
        book = self.pv if kind == "PV" else self.cv
        votes = book[(v, s, d)]
        tag = ("Q" + kind, v, s)
        if tag in self.sent or len(votes) < self.q_c(self.myc):
            return
        if kind == "PV" and s <= self.last_exec:
            return
        if s > self.last_exec and (v != self.view or self.in_vc):
            return
        if self.accepted.get((v, s), (None,))[0] != d:
            return
        self.sent.add(tag)
        signers = tuple(sorted(votes))[: self.q_c(self.myc)]
        parts = tuple(sorted(self.pv[(v, s, d)] | votes))
        qkind = "PQC" if kind == "PV" else "CQC"
        self.send(self.leaders_except_me(), self.qc_msg(qkind, v, s, d, signers, parts))
        (self.pqc if kind == "PV" else self.cqc)[(v, s, d)][self.myc] = signers
        if qkind == "CQC":
            self.qc_book[s][self.myc] = (self.id, parts)
        self.check_prepared(v, s, d)
        self.check_committed(v, s, d)

    def qc_msg(
        self, kind: str, v: int, s: int, d: int, signers: tuple[int, ...], parts: tuple[int, ...]
    ) -> Msg:
        assert self.cfg is not None
        return Msg(
            kind,
            self.id,
            v,
            s,
            d,
            size=VOTE * 2 + SIGNER * len(signers) + 4 * len(parts),
            verifies=0,
            epoch=self.cfg.epoch,
            data=(self.myc, signers, parts, self.accepted.get((v, s), (d, -1))[1]),
        )

    def valid_qc(self, msg: Msg, kind: str) -> bool:
        assert self.cfg is not None
        c, signers, _parts, _prim = msg.data
        # Verifying the QC is one ECDSA verification per signer plus the leader's own signature.
        self.cpu((len(signers) + 1) * self.cost.verify_s)
        if not 0 <= c < self.k or self.cluster_of.get(msg.src) != c:
            return False
        members = set(self.cfg.clusters[c])
        signed = self.ledger.signed
        return (
            len(set(signers)) >= self.q_c(c)
            and set(signers) <= members
            and all((kind, i, msg.view, msg.seq, msg.digest) in signed for i in signers)
        )

    def on_pqc(self, msg: Msg) -> None:
        self.on_qc(msg, self.pqc, "PV")

    def on_cqc(self, msg: Msg) -> None:
        self.on_qc(msg, self.cqc, "CV")

    def on_qc(
        self,
        msg: Msg,
        book: defaultdict[tuple[int, int, int], dict[int, tuple[int, ...]]],
        kind: str,
    ) -> None:
        if not self.is_leader():
            return
        if not self.valid_qc(msg, kind):
            self.sim.note("invalid_qc", node=msg.src, by=self.id)
            self.found_evidence(msg.src)
            return
        v, s, d = msg.view, msg.seq, msg.digest
        c, signers, parts, prim = msg.data
        mine = self.accepted.get((v, s))
        if mine is not None and mine[0] != d and prim == mine[1]:
            self.found_evidence(prim)  # two signed proposals for one (view, height)
        book[(v, s, d)][c] = signers
        if kind == "CV":
            self.qc_book[s][c] = (msg.src, parts)
        self.check_prepared(v, s, d)
        self.check_committed(v, s, d)

    def late_qc(self, msg: Msg) -> None:
        if self.sim.certified.isdisjoint({(msg.seq, msg.digest)}):
            return
        if self.valid_qc(msg, "CV"):
            c, _signers, parts, _prim = msg.data
            self.qc_book[msg.seq][c] = (msg.src, parts)

    def check_prepared(self, v: int, s: int, d: int) -> None:
        if v != self.view or self.in_vc:
            return
        tag = ("PREP", v, s)
        if tag in self.sent or len(self.pqc[(v, s, d)]) < self.q_top():
            return
        if self.accepted.get((v, s), (None,))[0] != d:
            return
        self.sent.add(tag)
        cert = dict(list(self.pqc[(v, s, d)].items())[: self.q_top()])
        sigs = sum(len(x) for x in cert.values())
        self.prepared[s] = (v, d)
        self.prep_sigs[s] = sigs
        assert self.cfg is not None
        self.send(
            self.my_members(),
            Msg(
                "PREP",
                self.id,
                v,
                s,
                d,
                size=VOTE + sigs * SIGNER,
                verifies=sigs + 1,
                epoch=self.cfg.epoch,
                data=cert,
            ),
        )
        self.vote_self("CV", v, s, d)

    def check_committed(self, v: int, s: int, d: int) -> None:
        if v != self.view or self.in_vc:
            return
        if s != self.last_exec + 1 or len(self.cqc[(v, s, d)]) < self.q_top():
            return
        if self.prepared.get(s) != (v, d):
            return
        plan = self.fork_plan(v, s)
        if plan is not None and v == plan["view"]:
            return  # colluders neither execute nor DECIDE the first block: they will deny it
        cert = dict(list(self.cqc[(v, s, d)].items())[: self.q_top()])
        sigs = sum(len(x) for x in cert.values())
        assert self.cfg is not None
        dec = Msg(
            "DEC",
            self.id,
            v,
            s,
            d,
            size=VOTE + sigs * SIGNER,
            verifies=sigs + 1,
            epoch=self.cfg.epoch,
            data=cert,
        )
        self.send(self.my_members() + self.my_observers(), dec)
        self.execute(s, d)

    # -- member: normal case --------------------------------------------------------------------
    def cert_ok(self, cert: dict[int, tuple[int, ...]], kind: str, v: int, s: int, d: int) -> bool:
        """A top-level certificate: cluster QCs of `kind` votes for (v, s, d) from 2f_top+1
        clusters of the epoch of height s, each signed by a cluster quorum of its members."""
        cfg = self.ledger.configs.get(self.ledger.epoch_of(s))
        if cfg is None:
            return False
        k = len(cfg.clusters)
        signed = self.ledger.signed
        return len(cert) >= cluster_quorum(k)[1] and all(
            0 <= c < k
            and len(set(sig)) >= cluster_quorum(len(cfg.clusters[c]))[1]
            and set(sig) <= set(cfg.clusters[c])
            and all((kind, i, v, s, d) in signed for i in sig)
            for c, sig in cert.items()
        )

    def on_fwd(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if self.myc < 0 or msg.src != self.leader(self.myc) or v < self.view:
            return
        if (v, s) in self.voted:
            return
        if v > 0:
            ok = self.nv_ok.get(v)
            if ok is None:
                self.await_nv[v].append(msg)  # vote once the new-view certificate is checked
                if len(self.await_nv[v]) == 1 or len(self.await_nv[v]) % 8 == 0:
                    assert self.cfg is not None
                    self.send(
                        [msg.src], Msg("NVQ", self.id, v, s, 0, size=VOTE, epoch=self.cfg.epoch)
                    )
                return
            if s < ok[0] or (s == ok[0] and d != ok[1]):
                # The leader forwards a block the new-view certificate does not justify.
                self.sim.note("unjustified_proposal", node=msg.src, by=self.id, view=v, seq=s)
                return
        self.view = max(self.view, v)
        self.in_vc = False
        self.voted[(v, s)] = d
        self.ledger.signed.add(("PV", self.id, v, s, d))
        assert self.cfg is not None
        self.send([msg.src], Msg("PV", self.id, v, s, d, size=VOTE, epoch=self.cfg.epoch))

    def on_prep(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if self.myc < 0 or msg.src != self.leader(self.myc) or self.voted.get((v, s)) != d:
            return
        if v < self.view or self.prepared.get(s) == (v, d):
            return
        cert: dict[int, tuple[int, ...]] = msg.data or {}
        if not self.cert_ok(cert, "PV", v, s, d):
            self.sim.note("invalid_prepare_cert", node=msg.src, by=self.id)
            return
        self.prepared[s] = (v, d)
        self.prep_sigs[s] = sum(len(x) for x in cert.values())
        self.ledger.signed.add(("CV", self.id, v, s, d))
        self.my_cv[s] = (v, d)
        assert self.cfg is not None
        self.send([msg.src], Msg("CV", self.id, v, s, d, size=VOTE, epoch=self.cfg.epoch))

    def on_dec(self, msg: Msg) -> None:
        assert self.cfg is not None
        v, s, d = msg.view, msg.seq, msg.digest
        cert: dict[int, tuple[int, ...]] = msg.data
        signed = self.ledger.signed
        ok = len(cert) >= self.q_top() and all(
            0 <= c < self.k
            and len(set(sig)) >= self.q_c(c)
            and set(sig) <= set(self.cfg.clusters[c])
            and all(("CV", i, v, s, d) in signed for i in sig)
            for c, sig in cert.items()
        )
        if not ok:
            self.sim.note("invalid_decide", node=msg.src, by=self.id)
            return
        # A leader that decides blocks without letting us vote is excluding (framing) us:
        # two such blocks in a row and we complain as if it had stalled.
        if (v, s) in self.voted or self.myc < 0:
            self.skipped = 0
        else:
            self.skipped += 1
        self.execute(s, d)
        if self.skipped >= 2 and self.myc >= 0 and msg.src == self.leader(self.myc):
            self.skipped = 0
            self.complain()

    # -- participation receipts ------------------------------------------------------------------
    def check_listed(self, s: int, d: int) -> None:
        """A member whose signed COMMIT vote for a committed block is missing from every
        participant list committed for that height sends the vote to the primary itself."""
        if self.myc < 0 or self.is_leader():
            return
        for h, per_cluster in self.sim.blocks[d].meta.get("cert", {}).items():
            if any(self.id in parts for _ldr, parts in per_cluster.values()):
                self.listed.add(h)
        h = s - 3
        mine = self.my_cv.pop(h, None)
        if mine is None or h in self.listed or self.log.get(h) != mine[1]:
            return
        assert self.cfg is not None
        self.sim.note("receipt_sent", node=self.id, height=h)
        self.send(
            [self.primary(self.view)],
            Msg("RCPT", self.id, mine[0], h, mine[1], size=2 * VOTE, epoch=self.cfg.epoch),
        )

    def hand_over_qcs(self, s: int, old_c: int) -> None:
        """Leaving an epoch as a leader: send our cluster's commit QCs that no committed block
        lists yet (the epoch's last block's, typically) to the new primary, which was usually
        not a leader when they were exchanged. One message per old leader per epoch; without it
        every member would need a receipt for that block."""
        entries = []
        for h in range(s - QC_WINDOW + 1, s + 1):
            got = self.qc_book.get(h, {}).get(old_c)
            prep = self.prepared.get(h)
            if got is None or prep is None or (h, old_c) in self.ledger.included:
                continue
            entries.append((h, old_c, got[0], got[1], prep[0]))
        # Receipts we hold as the old primary travel along (the new primary puts them in).
        rcpts = tuple(sorted(r for r in self.rcpts if (r[0], r[1]) not in self.ledger.receipts_in))
        dst = self.primary(self.view)
        if not (entries or rcpts) or dst == self.id:
            return
        assert self.cfg is not None
        size = VOTE + sum(VOTE + 4 * len(e[3]) + SIGNER * len(e[3]) for e in entries)
        size += 2 * VOTE * len(rcpts)
        verifies = sum(len(e[3]) for e in entries) + len(rcpts)
        self.send(
            [dst],
            Msg(
                "QCB",
                self.id,
                self.view,
                s,
                0,
                size=size,
                verifies=verifies,
                epoch=self.cfg.epoch,
                data=(tuple(entries), rcpts),
            ),
        )

    def on_qcb(self, msg: Msg) -> None:
        entries, rcpts = msg.data
        signed = self.ledger.signed
        for h, i, v in rcpts:
            # Each receipt's signature is checked against the committed block when a block
            # carrying it is accounted; here we only keep it.
            if (h, i) not in self.ledger.receipts_in:
                self.rcpts.add((h, i, v))
        top = max((e[0] for e in entries), default=0)
        if top > self.last_exec:
            self.future[top + 1].append(
                Msg("QCB", msg.src, msg.view, msg.seq, 0, size=0, data=(entries, ()))
            )
            return
        for h, c, ldr, parts, v in entries:
            cfg_h = self.ledger.configs.get(self.ledger.epoch_of(h))
            d = self.log.get(h)
            if cfg_h is None or d is None or not 0 <= c < len(cfg_h.clusters):
                continue
            members = cfg_h.clusters[c]
            voted = [i for i in parts if i in members and ("CV", i, v, h, d) in signed]
            if ldr == msg.src and len(voted) >= cluster_quorum(len(members))[1]:
                self.qc_book[h].setdefault(c, (ldr, parts))

    def on_rcpt(self, msg: Msg) -> None:
        if (msg.seq, msg.src) in self.ledger.receipts_in:
            return
        if ("CV", msg.src, msg.view, msg.seq, msg.digest) in self.ledger.signed:
            self.rcpts.add((msg.seq, msg.src, msg.view))

    # -- execution and epochs -------------------------------------------------------------------
    def execute(self, s: int, d: int) -> None:
        self.sim.certified.add((s, d))
        self.account(s, d)
        self.commit(s, d)
        self.check_listed(s, d)
        for r in [r for r in self.rcpts if r[0] < s - 2 * QC_WINDOW]:
            self.rcpts.discard(r)
        for h in [h for h in self.listed if h < s - 2 * QC_WINDOW]:
            self.listed.discard(h)
        for h in [h for h in self.my_cv if h < s - 3]:
            del self.my_cv[h]
        self.progress += 1
        self.vc_timeout = self.sim.params.view_timeout_s
        for book in (self.pqc, self.cqc):
            for key in [x for x in book if x[1] <= s]:
                del book[key]
        for vbook in (self.pv, self.cv):
            for key in [x for x in vbook if x[1] <= s - QC_WINDOW]:
                del vbook[key]
        for vs in [x for x in self.voted if x[1] < s - 2]:
            del self.voted[vs]
        for h in [h for h in self.qc_book if h < s - QC_WINDOW - 1]:
            del self.qc_book[h]
        nxt = self.ledger.config_for(s + 1)
        if self.cfg is None or nxt.epoch != self.cfg.epoch:
            old_c = self.myc if self.cfg is not None and self.is_leader() else -1
            self.enter_epoch(nxt)
            if old_c >= 0:
                self.hand_over_qcs(s, old_c)
        self.arm_watchdog()
        pl = self.pending_lead
        if pl is not None and pl[1] == s + 1 and pl[0] == self.view and not self.in_vc:
            self.pending_lead = None
            self.lead(*pl)
        if self.is_leader() and not self.in_vc:
            self.try_propose()
        for m in self.future.pop(s + 1, []):
            if not self.crashed:
                self.on_message(m)

    def enter_epoch(self, cfg: EpochConfig) -> None:
        if self.cfg is not None and self.myc >= 0 and self.id not in cfg.voters:
            self.sim.note("lost_vote", node=self.id, epoch=cfg.epoch)
        self.set_config(cfg)
        # Blocks commit, so a view change we alone started (and signed no report for) is moot.
        self.abandon_view_change(max([0, *self.nv_ok]))
        self.in_vc = False
        self.evidence -= self.ledger.seen_evidence
        self.deposed_pending.clear()

    def account(self, s: int, d: int) -> None:
        """Fold block s's committed metadata into the epoch statistics (once per height)."""
        led = self.ledger
        if s <= led.accounted:
            return
        led.accounted = s
        meta = self.sim.blocks[d].meta
        e = led.epoch_of(s)
        st = led.stats.setdefault(e, EpochStats())
        st.blocks += 1
        cfg = led.configs[e]
        for h, per_cluster in meta.get("cert", {}).items():
            cfg_h = led.configs[led.epoch_of(h)]
            for c, (ldr, parts) in per_cluster.items():
                if (h, c) in led.included:
                    continue
                for i in cfg_h.clusters[c]:
                    st.eligible[i] = st.eligible.get(i, 0) + 1
                for i in parts:
                    if (h, i) not in led.counted:
                        led.counted.add((h, i))
                        st.participation[i] = st.participation.get(i, 0) + 1
                if h == s - 1:
                    st.timely[ldr] = st.timely.get(ldr, 0) + 1
                st.qc_clusters[c] = st.qc_clusters.get(c, 0) + 1
            for c in per_cluster:
                led.included.add((h, c))
        for h, i, v in meta.get("receipts", []):
            # A member's own signed COMMIT vote for the block committed at h, which its leader
            # left out of the participant list: the vote itself is the evidence.
            led.receipts_in.add((h, i))
            hd = self.log.get(h)
            if (h, i) not in led.counted and ("CV", i, v, h, hd) in led.signed:
                led.counted.add((h, i))
                st.participation[i] = st.participation.get(i, 0) + 1
                self.sim.note("receipt_counted", node=i, height=h)
        for i, cnt in meta.get("deposed", {}).items():
            st.deposed[i] = st.deposed.get(i, 0) + cnt
        st.evidence.update(meta.get("evidence", []))
        led.seen_evidence.update(meta.get("evidence", []))
        st.joins.update(meta.get("joins", []))
        st.leaves.update(meta.get("leaves", []))
        led.join_requests -= set(meta.get("joins", []))
        led.leave_requests -= set(meta.get("leaves", []))
        if s % led.epoch_blocks == 0:
            new = next_epoch(cfg, st, led.recs, self.sim.latency * 2.0, d, led.recluster_every)
            led.configs[e + 1] = new
            led.rep_history.append({i: round(r.r, 4) for i, r in led.recs.items()})
            self.sim.note(
                "epoch",
                epoch=e + 1,
                clusters=len(new.clusters),
                reclustered=new.reclustered,
                observers=new.observers,
                expelled=sorted(new.expelled),
            )
            for i in new.voters + new.observers:
                node = self.sim.nodes[i]
                if isinstance(node, RcNode) and node.cfg is None and node.last_exec < s:
                    node.joined(s)

    def joined(self, upto: int) -> None:
        """A newly admitted node: fetch the chain it missed from a leader."""
        self.sim.note("joined", node=self.id)
        self.set_config(self.ledger.configs[0])  # replays the epochs while catching up
        src = self.ledger.config_for(upto + 1).leaders[0]
        self.at(0.0, lambda: self.request_fetch(src))

    # -- state transfer -------------------------------------------------------------------------
    def request_fetch(self, src: int) -> None:
        if src == self.id:
            return
        self.fetching = True
        self.send([src], Msg("FETCH", self.id, 0, self.last_exec, 0, size=VOTE))

        def clear() -> None:
            self.fetching = False

        self.timer(self.sim.params.view_timeout_s, clear)

    def on_fetch(self, msg: Msg) -> None:
        start = msg.seq + 1
        hs = [h for h in range(start, min(self.last_exec, start + 63) + 1)]
        # An empty answer too: the asker must not sit out its fetch timeout (a full view
        # timeout) because it asked a peer that was no further than itself.
        data = [(h, self.log[h]) for h in hs]
        size = VOTE + sum(self.sim.blocks[d].size for _, d in data)
        # The new-view certificate of our view travels along, so that a node catching up can
        # lead its members in this view (they check it).
        proof = self.nv_proof.get(self.view)
        if proof is not None:
            size += proof.size
        self.send(
            [msg.src],
            Msg(
                "BLOCKS",
                self.id,
                self.view,
                hs[-1] if hs else self.last_exec,
                0,
                size=size,
                verifies=max(1, len(hs)),
                data=(data, proof),
            ),
        )

    def on_blocks(self, msg: Msg) -> None:
        self.fetching = False
        data, proof = msg.data
        for h, d in data:
            if h == self.last_exec + 1 and (h, d) in self.sim.certified:
                self.execute(h, d)
        # Move to the sender's view only on its new-view certificate: the sender may be a lone
        # leader in a view change nobody else joined.
        if proof is not None and proof.view not in self.nv_ok and self.nv_justified(proof):
            self.nv_ok[proof.view] = (proof.seq, proof.digest)
            self.nv_proof[proof.view] = proof
            for m in self.await_nv.pop(proof.view, []):
                self.on_fwd(m)
        if proof is not None and proof.view in self.nv_ok:
            if proof.view > self.view:
                self.view = proof.view
                self.in_vc = False
            else:
                self.abandon_view_change(proof.view)
        elif proof is None and msg.view == 0 and data:
            self.abandon_view_change(0)

    # -- evidence and view changes ---------------------------------------------------------------
    def found_evidence(self, culprit: int) -> None:
        if culprit in self.evidence or culprit == self.id:
            return
        self.evidence.add(culprit)
        self.sim.note("evidence", node=culprit, by=self.id)
        if self.is_leader() and culprit == self.primary(self.view) and not self.in_vc:
            self.start_view_change(self.view + 1)

    def arm_watchdog(self) -> None:
        """(Re)start the progress timer; only the newest timer acts, and it never dies."""
        self.wd_gen += 1
        gen = self.wd_gen
        mark = self.progress
        delay = self.vc_timeout * (1.0 if self.is_leader() else 2.5)

        def check() -> None:
            if gen != self.wd_gen or self.cfg is None:
                return
            if self.progress != mark or not self.sim.pool.open:
                self.arm_watchdog()
                return
            peers = self.leaders_except_me()
            if peers and not self.fetching:  # maybe we are the one behind
                self.request_fetch(peers[self.wd_gen % len(peers)])
            if self.is_leader():
                if self.in_vc:
                    self.arm_watchdog()  # the view-change timer is in charge
                else:
                    self.start_view_change(self.view + 1)
            elif self.myc >= 0:
                self.complain()
            else:
                self.arm_watchdog()

        self.timer(delay, check)

    def complain(self) -> None:
        assert self.cfg is not None
        c = self.myc
        nxt = self.leader_idx[c] + 1
        if nxt >= len(self.cfg.ranking[c]):
            self.arm_watchdog()
            return
        prep = self.prepared.get(self.last_exec + 1)
        lc = Msg("LC", self.id, nxt, self.last_exec, c, size=VOTE, epoch=self.cfg.epoch, data=prep)
        self.send([i for i in self.cfg.clusters[c] if i != self.id], lc)
        self.on_lc(lc)
        self.progress += 1  # wait a full timeout before complaining about the next leader
        self.arm_watchdog()

    def on_lc(self, msg: Msg) -> None:
        assert self.cfg is not None
        c, nxt = msg.digest, msg.view
        if msg.epoch != self.cfg.epoch or c != self.myc or nxt <= self.leader_idx[c]:
            return
        votes = self.lcs[(c, nxt)]
        votes[msg.src] = msg
        if len(votes) < self.q_c(c):
            return
        old = self.leader(c)
        self.leader_idx[c] = nxt
        new = self.leader(c)
        self.sim.note("leader_change", cluster=c, old=old, new=new, by=self.id)
        if new == self.id:
            for m in votes.values():
                if m.data is not None and m.seq == self.last_exec:
                    v, d = m.data
                    if self.prepared.get(self.last_exec + 1, (-1, 0))[0] < v:
                        self.prepared[self.last_exec + 1] = (v, d)
            nl = Msg(
                "NL",
                self.id,
                nxt,
                self.last_exec,
                c,
                size=VOTE + SIGNER * len(votes),
                verifies=len(votes),
                epoch=self.cfg.epoch,
                data=old,
            )
            # Everyone, not just the leaders we know of: other clusters may have replaced their
            # leaders too, and new leaders must be able to find each other for a view change.
            assert self.cfg is not None
            everyone = [i for i in self.cfg.voters + self.cfg.observers if i != self.id]
            self.send(everyone, nl)
            self.deposed_pending[old] = self.deposed_pending.get(old, 0) + 1
            others = [self.leader(x) for x in range(self.k) if x != c]
            if others:
                self.request_fetch(others[0])
        self.arm_watchdog()

    def on_nl(self, msg: Msg) -> None:
        assert self.cfg is not None
        c, nxt = msg.digest, msg.view
        if msg.epoch != self.cfg.epoch or not 0 <= c < self.k or nxt <= self.leader_idx[c]:
            return
        self.leader_idx[c] = nxt
        if self.is_leader():
            self.deposed_pending[msg.data] = self.deposed_pending.get(msg.data, 0) + 1

    def on_vcn(self, msg: Msg) -> None:
        if self.myc >= 0 and msg.src == self.leader(self.myc):
            # The leader is working on a view change: wait as long as its timer runs.
            timeout, intents = msg.data
            self.vc_timeout = max(self.vc_timeout, timeout)
            self.progress += 1
            self.arm_watchdog()
            if len({c for c, _ldr in intents}) < self.q_top():
                return  # not (yet) a view change the other leaders want
            self.view = max(self.view, msg.view)  # stop voting in the view being left
            # Sign what we executed and prepared: the leader can speak for the cluster in the
            # view change only with a cluster quorum of these reports.
            rep = self.my_report(msg.view)
            assert self.cfg is not None
            self.send(
                [msg.src],
                Msg(
                    "VCR",
                    self.id,
                    msg.view,
                    self.last_exec,
                    0,
                    size=self.report_size(rep),
                    epoch=self.cfg.epoch,
                    data=rep,
                ),
            )

    def my_report(self, nv: int) -> Report:
        s = self.last_exec + 1
        prep = self.prepared.get(s)
        if self.fork_plan(nv - 1, s) is not None:
            prep = None  # a colluding leader lies about its own state
        rep: Report = (
            self.id,
            self.last_exec,
            self.log.get(self.last_exec, 0),
            prep,
            self.prep_sigs.get(s, 0) if prep else 0,
        )
        self.ledger.vc_reports.add((nv, rep))
        self.reported_view = max(self.reported_view, nv)
        return rep

    def abandon_view_change(self, established: int) -> None:
        """Leave a view change we never signed a report for (a lone or spurious one) and
        return to `established`: without a report of ours in it, no new-view certificate can
        depend on our not voting in lower views."""
        if self.view > established and self.reported_view < self.view:
            self.sim.note("view_change_abandoned", node=self.id, view=self.view)
            self.view = max(established, self.reported_view)
            self.in_vc = False

    @staticmethod
    def report_size(rep: Report) -> int:
        return VOTE + 16 + SIGNER * rep[4]

    def on_vcr(self, msg: Msg) -> None:
        nv = msg.view
        if not self.is_leader() or self.cluster_of.get(msg.src) != self.myc:
            return
        if nv != self.view or not self.in_vc or msg.data[0] != msg.src:
            return
        self.vcr[nv][msg.src] = msg.data
        self.maybe_send_tvc(nv)

    def maybe_send_tvc(self, nv: int) -> None:
        """Send our cluster's view-change certificate once a cluster quorum has reported."""
        assert self.cfg is not None
        reps = self.vcr[nv]
        if self.myc in self.tvcs[nv] or len(reps) < self.q_c(self.myc):
            return
        chosen = list(reps.values())
        if self.fork_plan(nv - 1, self.last_exec + 1) is not None:
            chosen.sort(key=lambda r: r[3] is not None)  # hide as many prepared reports as it can
        chosen = chosen[: self.q_c(self.myc)]
        tvc = Msg(
            "TVC",
            self.id,
            nv,
            self.last_exec,
            0,
            size=VOTE + report_bytes(chosen),
            verifies=1 + report_verifies(chosen),
            epoch=self.cfg.epoch,
            data=(tuple(chosen), tuple(sorted(self.evidence))),
        )
        self.send(self.leaders_except_me(), tvc)
        self.tvcs[nv][self.myc] = tvc
        self.maybe_new_view(nv)

    def valid_tvc(self, msg: Msg) -> bool:
        """The sender leads its cluster's members and carries a cluster quorum of their
        signed reports, each prepared claim backed by a prepared certificate."""
        cfg = self.ledger.configs.get(msg.epoch)
        if cfg is None or not isinstance(msg.data, tuple) or len(msg.data) != 2:
            return False
        c = next((c for c, m in enumerate(cfg.clusters) if msg.src in m), -1)
        if c < 0:
            return False
        reps: tuple[Report, ...] = msg.data[0]
        who = {r[0] for r in reps}
        members = cfg.clusters[c]
        if (
            len(who) != len(reps)
            or len(who) < cluster_quorum(len(members))[1]
            or not who <= set(members)
        ):
            return False
        for r in reps:
            if (msg.view, r) not in self.ledger.vc_reports:
                return False
            prep = r[3]
            if prep is not None and not self.prepared_ok(prep[0], r[1] + 1, prep[1]):
                return False
        return True

    def prepared_ok(self, v: int, s: int, d: int) -> bool:
        cfg = self.ledger.configs.get(self.ledger.epoch_of(s))
        if cfg is None:
            return False
        signed = self.ledger.signed
        full = sum(
            sum(("PV", i, v, s, d) in signed for i in members) >= cluster_quorum(len(members))[1]
            for members in cfg.clusters
        )
        return full >= cluster_quorum(len(cfg.clusters))[1]

    def cfg_epoch(self) -> int:
        return self.cfg.epoch if self.cfg is not None else -1

    def on_nvf(self, msg: Msg) -> None:
        """Our leader forwards the new-view certificate of view `msg.view`: check it ourselves."""
        v = msg.view
        if self.myc < 0 or msg.src != self.leader(self.myc) or v in self.nv_ok:
            return
        tnv: Msg = msg.data
        if not self.nv_justified(tnv):
            self.sim.note("bad_new_view", node=msg.src, by=self.id, view=v)
            return
        self.nv_ok[v] = (tnv.seq, tnv.digest)
        self.nv_proof[v] = tnv
        for m in self.await_nv.pop(v, []):
            self.on_fwd(m)

    def nv_justified(self, tnv: Msg) -> bool:
        """TNV check (leaders and members alike): from the primary of its view, 2f_top+1 valid
        cluster certificates, and the proposal is the one those certificates force."""
        cfg = self.ledger.configs.get(tnv.epoch)
        if tnv.kind != "TNV" or cfg is None:
            return False
        k = len(cfg.clusters)
        if tnv.epoch == self.cfg_epoch():
            if tnv.src != self.primary(tnv.view):
                return False
        elif tnv.src not in cfg.clusters[tnv.view % k]:
            return False
        tvcs: dict[int, Msg] = tnv.data
        if len(tvcs) < cluster_quorum(k)[1] or not all(
            m.view == tnv.view
            and m.epoch == tnv.epoch
            and m.src in cfg.clusters[c]
            and self.valid_tvc(m)
            for c, m in tvcs.items()
        ):
            return False
        base, digest = self.decide_new_view(tvcs)
        return tnv.seq == base + 1 and (digest is None or digest == tnv.digest)

    def start_view_change(self, nv: int) -> None:
        assert self.cfg is not None
        if nv <= self.view and self.in_vc:
            return
        self.view = nv
        self.in_vc = True
        self.proposing = False
        self.sim.note("view_change_start", node=self.id, view=nv)
        self.vc_timeout *= 2
        # Phase 1: tell the other leaders we want view nv (TVI). Phase 2, once 2f_top+1 leaders
        # want it: ask our members for signed reports (VCN with those intents) and send a TVC
        # carrying a cluster quorum of them. Members stop voting in lower views only in phase 2,
        # so a lone (or lying) leader cannot freeze its members in a view nobody else enters.
        self.tvis[nv][self.myc] = self.id
        self.send_intent(nv)
        mark = self.progress
        asked = [False]

        def tick() -> None:
            if not (self.in_vc and self.view == nv and self.progress == mark and self.is_leader()):
                return
            if len(self.tvis[nv]) >= self.q_top():
                if not asked[0] and self.primary(nv) != self.id:
                    # Maybe only the NEW-VIEW was lost: ask the new primary for it once before
                    # giving up on the view (PBFT replicas re-fetch it the same way).
                    asked[0] = True
                    assert self.cfg is not None
                    self.send(
                        [self.primary(nv)],
                        Msg(
                            "TNVQ", self.id, nv, self.last_exec, 0, size=VOTE, epoch=self.cfg.epoch
                        ),
                    )
                    self.timer(self.vc_timeout / 2, tick)
                    return
                self.start_view_change(nv + 1)  # a quorum wanted nv and it still failed
            else:
                # Wait for the other leaders instead of racing through views alone (PBFT starts
                # this timer only at a quorum); re-send in case the message was lost.
                self.send_intent(nv)
                self.timer(self.vc_timeout, tick)

        self.timer(self.vc_timeout, tick)
        self.maybe_collect(nv)

    def send_intent(self, nv: int) -> None:
        """View-change phase 1: TVI to the other leaders (with our evidence), VCN to members."""
        assert self.cfg is not None
        self.send(
            self.leaders_except_me(),
            Msg(
                "TVI",
                self.id,
                nv,
                self.last_exec,
                0,
                size=VOTE,
                epoch=self.cfg.epoch,
                data=tuple(sorted(self.evidence)),
            ),
        )
        self.send_vcn(nv)

    def send_vcn(self, nv: int) -> None:
        assert self.cfg is not None
        intents = tuple(sorted(self.tvis[nv].items())) if nv in self.collecting else ()
        self.send(
            self.my_members(),
            Msg(
                "VCN",
                self.id,
                nv,
                self.last_exec + 1,
                0,
                size=VOTE + SIGNER * len(intents),
                verifies=1 + len(intents),
                epoch=self.cfg.epoch,
                data=(self.vc_timeout, intents),
            ),
        )

    def maybe_collect(self, nv: int) -> None:
        """Phase 2 of the view change, once 2f_top+1 leaders (us included) want view nv."""
        if nv != self.view or not self.in_vc or nv in self.collecting:
            return
        if len(self.tvis[nv]) < self.q_top():
            return
        self.collecting.add(nv)
        self.vcr[nv][self.id] = self.my_report(nv)
        self.send_vcn(nv)
        self.maybe_send_tvc(nv)

    def leader_msg_ok(self, msg: Msg) -> int:
        """The sender's cluster if it (still) leads it and nv is not behind us, else -1."""
        if not self.is_leader():
            return -1
        nv = msg.view
        c = self.cluster_of.get(msg.src, -1)
        if c < 0 or nv < self.view or (nv == self.view and not self.in_vc):
            return -1
        assert self.cfg is not None
        pos = self.cfg.ranking[c].index(msg.src)
        if pos < self.leader_idx[c]:
            return -1  # a deposed leader no longer speaks for its cluster
        self.leader_idx[c] = pos
        return c

    def on_tvi(self, msg: Msg) -> None:
        c = self.leader_msg_ok(msg)
        if c < 0:
            return
        self.tvis[msg.view][c] = msg.src
        self.evidence.update(msg.data)
        higher = {cl for v, d in self.tvis.items() if v > self.view for cl in d}
        if len(higher) > cluster_quorum(self.k)[0]:
            target = min(v for v, d in self.tvis.items() if v > self.view and d)
            self.start_view_change(target)
        self.maybe_collect(msg.view)

    def on_tvc(self, msg: Msg) -> None:
        c = self.leader_msg_ok(msg)
        if c < 0:
            return
        nv = msg.view
        # One verification per report and per signature of each prepared certificate in it.
        self.cpu(msg.verifies * self.cost.verify_s)
        if not self.valid_tvc(msg):
            self.sim.note("invalid_tvc", node=msg.src, by=self.id)
            return
        self.tvcs[nv][c] = msg
        self.tvis[nv][c] = msg.src
        self.evidence.update(msg.data[1])
        self.maybe_collect(nv)
        self.maybe_new_view(nv)

    def decide_new_view(self, tvcs: dict[int, Msg]) -> tuple[int, int | None]:
        """PBFT's new-view rule over every member report in the cluster certificates: start
        after the highest committed height reported; re-propose the block prepared in the
        highest view there, if any."""
        reports = [r for m in tvcs.values() for r in m.data[0]]
        base = 0
        for _i, h, d, _p, _n in reports:
            if h > base and (h, d) in self.sim.certified:
                base = h
        best: tuple[int, int] | None = None
        for _i, h, _d, prep, _n in reports:
            if prep is not None and h == base and (best is None or prep[0] > best[0]):
                best = prep
        return base, (best[1] if best else None)

    def maybe_new_view(self, nv: int) -> None:
        if self.primary(nv) != self.id or nv in self.nv_sent or self.view != nv:
            return
        tvcs = self.tvcs[nv]
        plan = self.fork_plan(nv - 1, self.last_exec + 1)
        if plan is not None:  # the colluding new primary leaves out whoever committed the block
            tvcs = {c: m for c, m in tvcs.items() if m.src not in plan["committers"]}
        if len(tvcs) < self.q_top():
            return
        self.nv_sent.add(nv)
        base, digest = self.decide_new_view(tvcs)
        if plan is not None:
            digest = None  # the colluder proposes a fresh block whatever the reports force
        self.in_vc = False
        self.sim.note("new_view", node=self.id, view=nv)
        s = base + 1
        if self.last_exec < base:
            src = next(m.src for m in tvcs.values() if m.seq >= base)
            self.request_fetch(src)
        if digest is None:
            blk = self.sim.new_block(s, self.id, nv, self.sim.pool.take(self.sim.params.batch_size))
            blk.meta = self.block_meta(s)
            digest = blk.digest
        assert self.cfg is not None
        chosen = dict(list(tvcs.items())[: self.q_top()])
        reps = [r for m in chosen.values() for r in m.data[0]]
        size = self.sim.blocks[digest].size + VOTE * (1 + len(chosen)) + report_bytes(reps)
        tnv = Msg(
            "TNV",
            self.id,
            nv,
            s,
            digest,
            size=size,
            verifies=1 + len(chosen) + report_verifies(reps),
            hash_bytes=self.sim.blocks[digest].size,
            epoch=self.cfg.epoch,
            data=chosen,
        )
        self.send(self.leaders_except_me(), tnv)
        self.nv_proof[nv] = tnv
        self.nv_ok[nv] = (s, digest)
        self.arm_watchdog()
        # Bind our own proposal for (view, height) now, even while still catching up, so that
        # no later path proposes a second block for it (that would be equivocation).
        self.accepted[(nv, s)] = (digest, self.id)
        if self.last_exec == base:
            self.lead(nv, s, digest)
        else:
            self.pending_lead = (nv, s, digest)

    def on_tnvq(self, msg: Msg) -> None:
        tnv = self.nv_proof.get(msg.view)
        if tnv is not None and tnv.src == self.id and self.cluster_of.get(msg.src, -1) >= 0:
            self.send([msg.src], tnv)

    def on_tnv(self, msg: Msg) -> None:
        nv = msg.view
        if (
            not self.is_leader()
            or msg.src != self.primary(nv)
            or nv < self.view
            or (nv == self.view and not self.in_vc)
        ):
            return
        self.cpu(msg.verifies * self.cost.verify_s)
        if not self.nv_justified(msg):
            self.sim.note("bad_new_view", node=msg.src, by=self.id, view=nv)
            self.start_view_change(nv + 1)
            return
        base = msg.seq - 1
        self.nv_proof[nv] = msg
        self.nv_ok[nv] = (msg.seq, msg.digest)
        self.view = nv
        self.in_vc = False
        self.arm_watchdog()
        pp = Msg("PP", msg.src, nv, msg.seq, msg.digest, size=0, epoch=msg.epoch)
        if self.last_exec < base:
            self.request_fetch(msg.src)
            self.future[msg.seq].append(pp)
        else:
            self.on_pp(pp)


def report_bytes(reps: list[Report] | tuple[Report, ...]) -> int:
    """Wire size of view-change reports: each report's own signature and fields, plus each
    distinct prepared certificate once (reports claiming the same (view, digest) share it)."""
    certs = {(r[1] + 1, r[3]): r[4] for r in reps if r[3] is not None}
    return len(reps) * (VOTE + 16) + SIGNER * sum(certs.values())


def report_verifies(reps: list[Report] | tuple[Report, ...]) -> int:
    certs = {(r[1] + 1, r[3]): r[4] for r in reps if r[3] is not None}
    return len(reps) + sum(certs.values())


def build_rcdbft(
    sim: Sim,
    epoch_blocks: int = 10,
    recluster_every: int = 10,
    k: int | None = None,
) -> tuple[list[RcNode], RcLedger]:
    """Create the replicas and the genesis epoch (clusters from the RTT matrix, seed 0)."""
    ledger = RcLedger(epoch_blocks=epoch_blocks, recluster_every=recluster_every)
    ledger.fetch_delay_s = 2.0 * float(sim.latency.max()) + 0.005
    n = sim.n
    members = list(range(n))
    ledger.recs = {i: RepRecord() for i in members}
    kk = k if k is not None else choose_k(n)
    clusters = cluster_nodes(members, sim.latency * 2.0, kk, {}, sim.params.seed)
    ranking = [rank_cluster(c, ledger.recs, sim.params.seed) for c in clusters]
    ledger.configs[0] = EpochConfig(
        epoch=0,
        clusters=clusters,
        ranking=ranking,
        observers=[],
        expelled=frozenset(),
        reclustered=True,
        members_at_clustering=frozenset(members),
    )
    ledger.rep_history.append({i: r.r for i, r in ledger.recs.items()})
    nodes = [RcNode(sim, i, ledger) for i in range(n + sim.params.extra_nodes)]
    sim.commit_threshold = (n - 1) // 3 + 1
    return nodes, ledger
