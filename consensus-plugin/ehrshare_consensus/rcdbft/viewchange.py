"""RC-DBFT's two-level view change, evidence and the progress watchdog.

Members depose their leader (LC, a cluster quorum of complaints → next in the cluster's
succession); leaders run PBFT's view change among themselves, but on what their members signed:
a leader announces its intent (TVI); once 2f_top+1 leaders want the view it asks its members
for signed reports (VCN → VCR: executed height, prepared block with its certificate) and sends
a TVC carrying a cluster quorum of them; the new primary's TNV must re-propose what those
reports force, and members check the TNV (NVF) and every PREP certificate themselves before
voting. So a Byzantine leader of a cluster whose members are within f_c can stall, not fork.
"""

from __future__ import annotations

from ..core import Msg
from ..policy import cluster_quorum
from .base import RcBase
from .wire import SIGNER, VOTE, Kind, Report, report_bytes, report_size, report_verifies

__all__ = ["ViewChange"]


class ViewChange(RcBase):
    """The view-change steps of `RcNode` (as a member and as a leader)."""

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
        lc = Msg(
            Kind.LC, self.id, nxt, self.last_exec, c, size=VOTE, epoch=self.cfg.epoch, data=prep
        )
        self.send([i for i in self.cfg.clusters[c] if i != self.id], lc)
        self.on_lc(lc)
        self.progress += 1  # wait a full timeout before complaining about the next leader
        self.arm_watchdog()

    def on_lc(self, msg: Msg) -> None:
        assert self.cfg is not None
        c, nxt = msg.digest, msg.view
        if msg.epoch != self.cfg.epoch or c != self.myc or nxt <= self.leader_idx[c]:
            return
        votes = self.as_member.lcs[(c, nxt)]
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
                Kind.NL,
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
            self.as_leader.deposed_pending[old] = self.as_leader.deposed_pending.get(old, 0) + 1
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
            self.as_leader.deposed_pending[msg.data] = (
                self.as_leader.deposed_pending.get(msg.data, 0) + 1
            )

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
                    Kind.VCR,
                    self.id,
                    msg.view,
                    self.last_exec,
                    0,
                    size=report_size(rep),
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
        self.vc.reported_view = max(self.vc.reported_view, nv)
        return rep

    def abandon_view_change(self, established: int) -> None:
        """Leave a view change we never signed a report for (a lone or spurious one) and
        return to `established`: without a report of ours in it, no new-view certificate can
        depend on our not voting in lower views."""
        if self.view > established and self.vc.reported_view < self.view:
            self.sim.note("view_change_abandoned", node=self.id, view=self.view)
            self.view = max(established, self.vc.reported_view)
            self.in_vc = False

    def on_vcr(self, msg: Msg) -> None:
        nv = msg.view
        if not self.is_leader() or self.cluster_of.get(msg.src) != self.myc:
            return
        if nv != self.view or not self.in_vc or msg.data[0] != msg.src:
            return
        self.vc.vcr[nv][msg.src] = msg.data
        self.maybe_send_tvc(nv)

    def maybe_send_tvc(self, nv: int) -> None:
        """Send our cluster's view-change certificate once a cluster quorum has reported."""
        assert self.cfg is not None
        reps = self.vc.vcr[nv]
        if self.myc in self.vc.tvcs[nv] or len(reps) < self.q_c(self.myc):
            return
        chosen = list(reps.values())
        if self.fork_plan(nv - 1, self.last_exec + 1) is not None:
            chosen.sort(key=lambda r: r[3] is not None)  # hide as many prepared reports as it can
        chosen = chosen[: self.q_c(self.myc)]
        tvc = Msg(
            Kind.TVC,
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
        self.vc.tvcs[nv][self.myc] = tvc
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
            sum((Kind.PV, i, v, s, d) in signed for i in members) >= cluster_quorum(len(members))[1]
            for members in cfg.clusters
        )
        return full >= cluster_quorum(len(cfg.clusters))[1]

    def on_nvf(self, msg: Msg) -> None:
        """Our leader forwards the new-view certificate of view `msg.view`: check it ourselves."""
        v = msg.view
        if self.myc < 0 or msg.src != self.leader(self.myc) or v in self.vc.nv_ok:
            return
        tnv: Msg = msg.data
        if not self.nv_justified(tnv):
            self.sim.note("bad_new_view", node=msg.src, by=self.id, view=v)
            return
        self.vc.nv_ok[v] = (tnv.seq, tnv.digest)
        self.vc.nv_proof[v] = tnv
        for m in self.as_member.await_nv.pop(v, []):
            self.on_fwd(m)

    def nv_justified(self, tnv: Msg) -> bool:
        """TNV check (leaders and members alike): from the primary of its view, 2f_top+1 valid
        cluster certificates, and the proposal is the one those certificates force."""
        cfg = self.ledger.configs.get(tnv.epoch)
        if tnv.kind != Kind.TNV or cfg is None:
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
        self.vc.tvis[nv][self.myc] = self.id
        self.send_intent(nv)
        mark = self.progress
        asked = [False]

        def tick() -> None:
            if not (self.in_vc and self.view == nv and self.progress == mark and self.is_leader()):
                return
            if len(self.vc.tvis[nv]) >= self.q_top():
                if not asked[0] and self.primary(nv) != self.id:
                    # Maybe only the NEW-VIEW was lost: ask the new primary for it once before
                    # giving up on the view (PBFT replicas re-fetch it the same way).
                    asked[0] = True
                    assert self.cfg is not None
                    self.send(
                        [self.primary(nv)],
                        Msg(
                            Kind.TNVQ,
                            self.id,
                            nv,
                            self.last_exec,
                            0,
                            size=VOTE,
                            epoch=self.cfg.epoch,
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
                Kind.TVI,
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
        intents = tuple(sorted(self.vc.tvis[nv].items())) if nv in self.vc.collecting else ()
        self.send(
            self.my_members(),
            Msg(
                Kind.VCN,
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
        if nv != self.view or not self.in_vc or nv in self.vc.collecting:
            return
        if len(self.vc.tvis[nv]) < self.q_top():
            return
        self.vc.collecting.add(nv)
        self.vc.vcr[nv][self.id] = self.my_report(nv)
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
        self.vc.tvis[msg.view][c] = msg.src
        self.evidence.update(msg.data)
        higher = {cl for v, d in self.vc.tvis.items() if v > self.view for cl in d}
        if len(higher) > cluster_quorum(self.k)[0]:
            target = min(v for v, d in self.vc.tvis.items() if v > self.view and d)
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
        self.vc.tvcs[nv][c] = msg
        self.vc.tvis[nv][c] = msg.src
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
        if self.primary(nv) != self.id or nv in self.vc.nv_sent or self.view != nv:
            return
        tvcs = self.vc.tvcs[nv]
        plan = self.fork_plan(nv - 1, self.last_exec + 1)
        if plan is not None:  # the colluding new primary leaves out whoever committed the block
            tvcs = {c: m for c, m in tvcs.items() if m.src not in plan["committers"]}
        if len(tvcs) < self.q_top():
            return
        self.vc.nv_sent.add(nv)
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
            Kind.TNV,
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
        self.vc.nv_proof[nv] = tnv
        self.vc.nv_ok[nv] = (s, digest)
        self.arm_watchdog()
        # Bind our own proposal for (view, height) now, even while still catching up, so that
        # no later path proposes a second block for it (that would be equivocation).
        self.as_leader.accepted[(nv, s)] = (digest, self.id)
        if self.last_exec == base:
            self.lead(nv, s, digest)
        else:
            self.as_leader.pending_lead = (nv, s, digest)

    def on_tnvq(self, msg: Msg) -> None:
        tnv = self.vc.nv_proof.get(msg.view)
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
        self.vc.nv_proof[nv] = msg
        self.vc.nv_ok[nv] = (msg.seq, msg.digest)
        self.view = nv
        self.in_vc = False
        self.arm_watchdog()
        pp = Msg(Kind.PP, msg.src, nv, msg.seq, msg.digest, size=0, epoch=msg.epoch)
        if self.last_exec < base:
            self.request_fetch(msg.src)
            self.future[msg.seq].append(pp)
        else:
            self.on_pp(pp)
