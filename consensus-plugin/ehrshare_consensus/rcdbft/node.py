"""RC-DBFT (reputation-clustered dynamic BFT, docs/consensus.md) on the simulation core:
the replica `RcNode`, its message dispatch, execution, epochs and state transfer.

The normal case is in `normal.py`, view changes in `viewchange.py`, the state by role in
`state.py`, message kinds and sizes in `wire.py`. Participation counts for reputation come from
committed participant lists plus members' own signed votes (RCPT receipts), judged against the
cluster's committed QCs. Epoch boundaries apply the committed data (QC signer sets, timely QCs,
depositions, evidence, join/leave requests) through `policy.next_epoch`.

Signatures are modelled as unforgeable: the simulator records who really signed what and a QC
counts only real signers. This package must not let an honest node commit without a verified
certificate, nor vote for two digests at one (view, height).
"""

from __future__ import annotations

from collections.abc import Callable

from ..core import Msg, Sim
from ..policy import (
    EpochConfig,
    EpochStats,
    RepRecord,
    choose_k,
    cluster_nodes,
    next_epoch,
    rank_cluster,
)
from .ledger import RcLedger
from .normal import NormalCase
from .viewchange import ViewChange
from .wire import QC_WINDOW, VOTE, Kind

__all__ = ["HANDLERS", "RcNode", "build_rcdbft"]

# Acted on at any height: view changes, complaints, receipts and state transfer. Every other
# kind belongs to the normal case at the next height.
ANY_HEIGHT = frozenset(
    {
        Kind.TVI,
        Kind.TVC,
        Kind.TNV,
        Kind.LC,
        Kind.NL,
        Kind.VCN,
        Kind.VCR,
        Kind.NVF,
        Kind.NVQ,
        Kind.RCPT,
        Kind.TNVQ,
        Kind.QCB,
        Kind.FETCH,
        Kind.BLOCKS,
    }
)
# Of those, a sender ahead of us makes us catch up first.
CATCH_UP = frozenset({Kind.TVI, Kind.TVC, Kind.LC})


class RcNode(NormalCase, ViewChange):
    """One RC-DBFT replica. Roles (leader, member, observer) come from the epoch config."""

    # -- dispatch -------------------------------------------------------------------------------
    def on_message(self, msg: Msg) -> None:
        if self.cfg is None:
            return
        k = msg.kind
        if k in ANY_HEIGHT:
            if k in CATCH_UP and msg.seq > self.last_exec and not self.fetching:
                self.request_fetch(msg.src)  # the sender is ahead of us: catch up first
            HANDLERS[k](self, msg)
            return
        if msg.seq <= self.last_exec:
            if msg.seq > self.last_exec - QC_WINDOW and self.is_leader():
                # Late votes and commit QCs still count for participation (not for commit).
                late = LATE_HANDLERS.get(k)
                if late is not None:
                    late(self, msg)
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
        HANDLERS[k](self, msg)

    def late_pv(self, msg: Msg) -> None:
        """A PREPARE vote for a height we executed: it still counts for participation."""
        self.as_leader.pv[(msg.view, msg.seq, msg.digest)].add(msg.src)

    # -- execution and epochs -------------------------------------------------------------------
    def execute(self, s: int, d: int) -> None:
        self.sim.certified.add((s, d))
        self.account(s, d)
        self.commit(s, d)
        self.check_listed(s, d)
        for r in [r for r in self.as_leader.rcpts if r[0] < s - 2 * QC_WINDOW]:
            self.as_leader.rcpts.discard(r)
        for h in [h for h in self.as_member.listed if h < s - 2 * QC_WINDOW]:
            self.as_member.listed.discard(h)
        for h in [h for h in self.as_member.my_cv if h < s - 3]:
            del self.as_member.my_cv[h]
        self.progress += 1
        self.vc_timeout = self.sim.params.view_timeout_s
        for book in (self.as_leader.pqc, self.as_leader.cqc):
            for key in [x for x in book if x[1] <= s]:
                del book[key]
        for vbook in (self.as_leader.pv, self.as_leader.cv):
            for key in [x for x in vbook if x[1] <= s - QC_WINDOW]:
                del vbook[key]
        for vs in [x for x in self.as_member.voted if x[1] < s - 2]:
            del self.as_member.voted[vs]
        for h in [h for h in self.as_leader.qc_book if h < s - QC_WINDOW - 1]:
            del self.as_leader.qc_book[h]
        nxt = self.ledger.config_for(s + 1)
        if self.cfg is None or nxt.epoch != self.cfg.epoch:
            old_c = self.myc if self.cfg is not None and self.is_leader() else -1
            self.enter_epoch(nxt)
            if old_c >= 0:
                self.hand_over_qcs(s, old_c)
        self.arm_watchdog()
        pl = self.as_leader.pending_lead
        if pl is not None and pl[1] == s + 1 and pl[0] == self.view and not self.in_vc:
            self.as_leader.pending_lead = None
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
        self.abandon_view_change(max([0, *self.vc.nv_ok]))
        self.in_vc = False
        self.evidence -= self.ledger.seen_evidence
        self.as_leader.deposed_pending.clear()

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
            if (h, i) not in led.counted and (Kind.CV, i, v, h, hd) in led.signed:
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
        self.send([src], Msg(Kind.FETCH, self.id, 0, self.last_exec, 0, size=VOTE))

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
        proof = self.vc.nv_proof.get(self.view)
        if proof is not None:
            size += proof.size
        self.send(
            [msg.src],
            Msg(
                Kind.BLOCKS,
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
        if proof is not None and proof.view not in self.vc.nv_ok and self.nv_justified(proof):
            self.vc.nv_ok[proof.view] = (proof.seq, proof.digest)
            self.vc.nv_proof[proof.view] = proof
            for m in self.as_member.await_nv.pop(proof.view, []):
                self.on_fwd(m)
        if proof is not None and proof.view in self.vc.nv_ok:
            if proof.view > self.view:
                self.view = proof.view
                self.in_vc = False
            else:
                self.abandon_view_change(proof.view)
        elif proof is None and msg.view == 0 and data:
            self.abandon_view_change(0)


# One handler per message kind.
HANDLERS: dict[str, Callable[[RcNode, Msg], None]] = {
    Kind.PP: RcNode.on_pp,
    Kind.FWD: RcNode.on_fwd,
    Kind.PV: RcNode.on_pv,
    Kind.PQC: RcNode.on_pqc,
    Kind.PREP: RcNode.on_prep,
    Kind.CV: RcNode.on_cv,
    Kind.CQC: RcNode.on_cqc,
    Kind.DEC: RcNode.on_dec,
    Kind.RCPT: RcNode.on_rcpt,
    Kind.QCB: RcNode.on_qcb,
    Kind.LC: RcNode.on_lc,
    Kind.NL: RcNode.on_nl,
    Kind.TVI: RcNode.on_tvi,
    Kind.VCN: RcNode.on_vcn,
    Kind.VCR: RcNode.on_vcr,
    Kind.TVC: RcNode.on_tvc,
    Kind.TNV: RcNode.on_tnv,
    Kind.TNVQ: RcNode.on_tnvq,
    Kind.NVF: RcNode.on_nvf,
    Kind.NVQ: RcNode.on_nvq,
    Kind.FETCH: RcNode.on_fetch,
    Kind.BLOCKS: RcNode.on_blocks,
}
# A leader's handlers for normal-case messages of a height it already executed (within
# QC_WINDOW): they count for participation only.
LATE_HANDLERS: dict[str, Callable[[RcNode, Msg], None]] = {
    Kind.CQC: RcNode.late_qc,
    Kind.CV: RcNode.on_cv,
    Kind.PV: RcNode.late_pv,
}


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
