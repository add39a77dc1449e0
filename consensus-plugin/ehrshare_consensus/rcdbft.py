"""RC-DBFT (reputation-clustered dynamic BFT, DESIGN.md §6) on the simulation core.

Normal case: primary → leaders (PRE-PREPARE) → members (FWD); members PREPARE to their leader;
the leader aggregates 2f_c+1 votes into a cluster QC and sends it to the other leaders; with
2f_top+1 cluster QCs a leader is prepared, tells its members (PREP), collects COMMIT votes into
a commit QC, exchanges it, commits with 2f_top+1 and sends DECIDE with the certificate.
Two-level view change: members depose their leader (LC, 2f_c+1 complaints → next in the
cluster's succession); leaders run PBFT's view change among themselves (TVC / TNV).
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
    fork_attack: dict[str, Any] | None = None
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
        p = self.sim.params
        pool = self.sim.pool
        if len(pool.pending) < p.batch_size and pool.oldest_age(self.t) < p.batch_timeout_s:
            self.proposing = True

            def again() -> None:
                self.proposing = False
                self.try_propose()

            if pool.pending:
                self.timer(p.batch_timeout_s - pool.oldest_age(self.t), again)
            else:
                pool.waiters.append((self, again))
            return
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
        if k in ("TVC", "TNV", "LC", "NL", "VCN", "FETCH", "BLOCKS"):
            if k in ("TVC", "LC") and msg.seq > self.last_exec and not self.fetching:
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
        self.send(self.my_members(), self.pp(v, s, d, "FWD"))
        self.vote_self("PV", v, s, d)

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
        self.prepared[s] = (v, d)
        sigs = sum(len(x) for x in list(self.pqc[(v, s, d)].values())[: self.q_top()])
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
    def on_fwd(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if self.myc < 0 or msg.src != self.leader(self.myc) or v < self.view:
            return
        if (v, s) in self.voted:
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
        self.prepared[s] = (v, d)
        self.ledger.signed.add(("CV", self.id, v, s, d))
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

    # -- execution and epochs -------------------------------------------------------------------
    def execute(self, s: int, d: int) -> None:
        self.sim.certified.add((s, d))
        self.account(s, d)
        self.commit(s, d)
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
            self.enter_epoch(nxt)
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
        self.view = 0 if self.view == 0 else self.view
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
            for c, (ldr, parts) in per_cluster.items():
                for i in parts:
                    st.participation[i] = st.participation.get(i, 0) + 1
                if h == s - 1:
                    st.timely[ldr] = st.timely.get(ldr, 0) + 1
                st.qc_clusters[c] = st.qc_clusters.get(c, 0) + 1
            for c in per_cluster:
                led.included.add((h, c))
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
        if not hs:
            return
        data = [(h, self.log[h]) for h in hs]
        size = VOTE + sum(self.sim.blocks[d].size for _, d in data)
        self.send(
            [msg.src],
            Msg("BLOCKS", self.id, self.view, hs[-1], 0, size=size, verifies=len(hs), data=data),
        )

    def on_blocks(self, msg: Msg) -> None:
        self.fetching = False
        for h, d in msg.data:
            if h == self.last_exec + 1 and (h, d) in self.sim.certified:
                self.execute(h, d)
        if msg.view > self.view:
            self.view = msg.view
            self.in_vc = False

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
            if self.progress != mark or not self.sim.pool.pending:
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
            self.vc_timeout = max(self.vc_timeout, msg.data)
            self.view = max(self.view, msg.view)  # stop voting in the view being left
            self.progress += 1
            self.arm_watchdog()

    def start_view_change(self, nv: int) -> None:
        assert self.cfg is not None
        if nv <= self.view and self.in_vc:
            return
        self.view = nv
        self.in_vc = True
        self.proposing = False
        self.sim.note("view_change_start", node=self.id, view=nv)
        s = self.last_exec + 1
        prep = self.prepared.get(s)
        if self.fork_plan(nv - 1, s) is not None:
            prep = None  # the colluders lie: "nothing was prepared"
        q = self.q_top()
        tvc = Msg(
            "TVC",
            self.id,
            nv,
            self.last_exec,
            0,
            size=VOTE + (SIGNER * q * 3 if prep else 0),
            verifies=1 + (q * 3 if prep else 0),
            epoch=self.cfg.epoch,
            data=(
                self.last_exec,
                self.log.get(self.last_exec, 0),
                prep,
                tuple(sorted(self.evidence)),
            ),
        )
        self.send(self.leaders_except_me(), tvc)
        self.tvcs[nv][self.myc] = tvc
        self.vc_timeout *= 2
        self.send(
            self.my_members(),
            Msg("VCN", self.id, nv, s, 0, size=VOTE, epoch=self.cfg.epoch, data=self.vc_timeout),
        )
        mark = self.progress

        def tick() -> None:
            if not (self.in_vc and self.view == nv and self.progress == mark and self.is_leader()):
                return
            if len(self.tvcs[nv]) >= self.q_top():
                self.start_view_change(nv + 1)  # a quorum wanted nv and it still failed
            else:
                # Wait for the other leaders instead of racing through views alone (PBFT starts
                # this timer only at a quorum); re-send in case the message was lost.
                self.send(self.leaders_except_me(), self.tvcs[nv][self.myc])
                assert self.cfg is not None
                self.send(
                    self.my_members(),
                    Msg(
                        "VCN",
                        self.id,
                        nv,
                        s,
                        0,
                        size=VOTE,
                        epoch=self.cfg.epoch,
                        data=self.vc_timeout,
                    ),
                )
                self.timer(self.vc_timeout, tick)

        self.timer(self.vc_timeout, tick)
        self.maybe_new_view(nv)

    def on_tvc(self, msg: Msg) -> None:
        if not self.is_leader():
            return
        nv = msg.view
        c = self.cluster_of.get(msg.src, -1)
        if c < 0 or nv < self.view or (nv == self.view and not self.in_vc):
            return
        assert self.cfg is not None
        rank = self.cfg.ranking[c]
        pos = rank.index(msg.src)
        if pos < self.leader_idx[c]:
            return  # a deposed leader no longer speaks for its cluster
        self.leader_idx[c] = pos
        self.tvcs[nv][c] = msg
        for e in msg.data[3]:
            if e not in self.evidence:
                self.evidence.add(e)
        higher = {cl for v, d in self.tvcs.items() if v > self.view for cl in d}
        if len(higher) > cluster_quorum(self.k)[0]:
            target = min(v for v, d in self.tvcs.items() if v > self.view and d)
            self.start_view_change(target)
        self.maybe_new_view(nv)

    def decide_new_view(self, tvcs: dict[int, Msg]) -> tuple[int, int | None]:
        base = 0
        for m in tvcs.values():
            h, d, _, _ = m.data
            if h > base and (h, d) in self.sim.certified:
                base = h
        best: tuple[int, int] | None = None
        for m in tvcs.values():
            h, _, prep, _ = m.data
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
        self.cpu(len(tvcs) * self.cost.verify_s)
        self.in_vc = False
        self.sim.note("new_view", node=self.id, view=nv)
        s = base + 1
        if self.last_exec < base:
            src = next(m.src for m in tvcs.values() if m.data[0] >= base)
            self.request_fetch(src)
        if digest is None:
            blk = self.sim.new_block(s, self.id, nv, self.sim.pool.take(self.sim.params.batch_size))
            blk.meta = self.block_meta(s)
            digest = blk.digest
        assert self.cfg is not None
        chosen = dict(list(tvcs.items())[: self.q_top()])
        size = self.sim.blocks[digest].size + sum(m.size for m in chosen.values())
        self.send(
            self.leaders_except_me(),
            Msg(
                "TNV",
                self.id,
                nv,
                s,
                digest,
                size=size,
                verifies=1 + len(chosen),
                hash_bytes=self.sim.blocks[digest].size,
                epoch=self.cfg.epoch,
                data=chosen,
            ),
        )
        self.arm_watchdog()
        # Bind our own proposal for (view, height) now, even while still catching up, so that
        # no later path proposes a second block for it (that would be equivocation).
        self.accepted[(nv, s)] = (digest, self.id)
        if self.last_exec == base:
            self.lead(nv, s, digest)
        else:
            self.pending_lead = (nv, s, digest)

    def on_tnv(self, msg: Msg) -> None:
        nv = msg.view
        if (
            not self.is_leader()
            or msg.src != self.primary(nv)
            or nv < self.view
            or (nv == self.view and not self.in_vc)
        ):
            return
        base, digest = self.decide_new_view(msg.data)
        if (
            len(msg.data) < self.q_top()
            or msg.seq != base + 1
            or (digest is not None and digest != msg.digest)
        ):
            self.sim.note("bad_new_view", node=self.id, view=nv)
            self.start_view_change(nv + 1)
            return
        self.view = nv
        self.in_vc = False
        self.arm_watchdog()
        pp = Msg("PP", msg.src, nv, msg.seq, msg.digest, size=0, epoch=msg.epoch)
        if self.last_exec < base:
            self.request_fetch(msg.src)
            self.future[msg.seq].append(pp)
        else:
            self.on_pp(pp)


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
