"""RC-DBFT's normal case: proposals, the leaders' cluster QCs and the members' votes, and
participation receipts.

Primary → leaders (PRE-PREPARE) → members (FWD); members PREPARE to their leader; the leader
aggregates 2f_c+1 votes into a cluster QC and sends it to the other leaders; with 2f_top+1
cluster QCs a leader is prepared, tells its members (PREP), collects COMMIT votes into a commit
QC, exchanges it, commits with 2f_top+1 and sends DECIDE with the certificate. A member votes
only for what its leader forwards in the view it has checked, and never for two digests at one
(view, height).
"""

from __future__ import annotations

from collections import defaultdict

from ..core import Msg
from ..policy import cluster_quorum
from .base import RcBase
from .wire import QC_WINDOW, SIGNER, VOTE, Kind

__all__ = ["NormalCase"]


class NormalCase(RcBase):
    """The normal-case steps of `RcNode` (leader, member and proposer)."""

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
        if (self.view, s) in self.as_leader.accepted:
            return
        if not self.batch_due():
            return
        p = self.sim.params
        pool = self.sim.pool
        blk = self.sim.new_block(s, self.id, self.view, pool.take(p.batch_size))
        blk.meta = self.block_meta(s)
        self.propose_digest(self.view, s, blk.digest)

    def pp(self, v: int, s: int, d: int, kind: str = Kind.PP) -> Msg:
        size = self.sim.blocks[d].size
        extra = VOTE if kind == Kind.FWD else 0
        return Msg(
            kind,
            self.id,
            v,
            s,
            d,
            size=size + extra,
            verifies=1 + (kind == Kind.FWD),
            hash_bytes=size,
            epoch=self.cfg.epoch if self.cfg else 0,
            data=self.id,
        )

    def propose_digest(self, v: int, s: int, d: int) -> None:
        self.as_leader.accepted[(v, s)] = (d, self.id)
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

    # -- leader: normal case --------------------------------------------------------------------
    def on_pp(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if not self.is_leader() or v != self.view or self.in_vc or msg.src != self.primary(v):
            return
        prev = self.as_leader.accepted.get((v, s))
        if prev is not None:
            if prev[0] != d:
                self.found_evidence(msg.src)
            return
        self.as_leader.accepted[(v, s)] = (d, msg.src)
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
            self.send(self.leaders_except_me(), self.qc_msg(Kind.PQC, v, s, d, fake, fake))
            return
        self.tell_members(v)
        self.send(self.my_members(), self.pp(v, s, d, Kind.FWD))
        self.vote_self(Kind.PV, v, s, d)

    def tell_members(self, v: int, to: list[int] | None = None) -> None:
        """Members vote in view v > 0 only once they have checked its new-view certificate.
        It is pushed to all our members with the view's first proposal; later (a member that
        changed cluster, a joiner) it is sent only on request (NVQ): nothing in the normal case.
        The block itself is not in it (the member gets that in FWD)."""
        proof = self.vc.nv_proof.get(v)
        if v == 0 or proof is None:
            return
        if to is None:
            if self.vc.nv_ok.get(v, (-1, 0))[0] != self.last_exec + 1:
                return
            to = self.my_members()
        todo = [i for i in to if i not in self.vc.nv_told[v]]
        if todo:
            self.vc.nv_told[v].update(todo)
            self.send(
                todo,
                Msg(
                    Kind.NVF,
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
            self.vc.nv_told[msg.view].discard(msg.src)
            self.tell_members(msg.view, [msg.src])

    def vote_self(self, kind: str, v: int, s: int, d: int) -> None:
        self.ledger.signed.add((kind, self.id, v, s, d))
        self.cpu(self.cost.sign_s)
        (self.as_leader.pv if kind == Kind.PV else self.as_leader.cv)[(v, s, d)].add(self.id)
        self.check_cluster_qc(kind, v, s, d)

    def on_pv(self, msg: Msg) -> None:
        self.on_vote(msg, self.as_leader.pv, Kind.PV)

    def on_cv(self, msg: Msg) -> None:
        self.on_vote(msg, self.as_leader.cv, Kind.CV)

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
        book = self.as_leader.pv if kind == Kind.PV else self.as_leader.cv
        votes = book[(v, s, d)]
        tag = ("Q" + kind, v, s)
        if tag in self.as_leader.sent or len(votes) < self.q_c(self.myc):
            return
        if kind == Kind.PV and s <= self.last_exec:
            return
        if s > self.last_exec and (v != self.view or self.in_vc):
            return
        if self.as_leader.accepted.get((v, s), (None,))[0] != d:
            return
        self.as_leader.sent.add(tag)
        signers = tuple(sorted(votes))[: self.q_c(self.myc)]
        parts = tuple(sorted(self.as_leader.pv[(v, s, d)] | votes))
        qkind = Kind.PQC if kind == Kind.PV else Kind.CQC
        self.send(self.leaders_except_me(), self.qc_msg(qkind, v, s, d, signers, parts))
        (self.as_leader.pqc if kind == Kind.PV else self.as_leader.cqc)[(v, s, d)][self.myc] = (
            signers
        )
        if qkind == Kind.CQC:
            self.as_leader.qc_book[s][self.myc] = (self.id, parts)
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
            data=(self.myc, signers, parts, self.as_leader.accepted.get((v, s), (d, -1))[1]),
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
        self.on_qc(msg, self.as_leader.pqc, Kind.PV)

    def on_cqc(self, msg: Msg) -> None:
        self.on_qc(msg, self.as_leader.cqc, Kind.CV)

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
        mine = self.as_leader.accepted.get((v, s))
        if mine is not None and mine[0] != d and prim == mine[1]:
            self.found_evidence(prim)  # two signed proposals for one (view, height)
        book[(v, s, d)][c] = signers
        if kind == Kind.CV:
            self.as_leader.qc_book[s][c] = (msg.src, parts)
        self.check_prepared(v, s, d)
        self.check_committed(v, s, d)

    def late_qc(self, msg: Msg) -> None:
        if self.sim.certified.isdisjoint({(msg.seq, msg.digest)}):
            return
        if self.valid_qc(msg, Kind.CV):
            c, _signers, parts, _prim = msg.data
            self.as_leader.qc_book[msg.seq][c] = (msg.src, parts)

    def check_prepared(self, v: int, s: int, d: int) -> None:
        if v != self.view or self.in_vc:
            return
        tag = (Kind.PREP, v, s)
        if tag in self.as_leader.sent or len(self.as_leader.pqc[(v, s, d)]) < self.q_top():
            return
        if self.as_leader.accepted.get((v, s), (None,))[0] != d:
            return
        self.as_leader.sent.add(tag)
        cert = dict(list(self.as_leader.pqc[(v, s, d)].items())[: self.q_top()])
        sigs = sum(len(x) for x in cert.values())
        self.prepared[s] = (v, d)
        self.prep_sigs[s] = sigs
        assert self.cfg is not None
        self.send(
            self.my_members(),
            Msg(
                Kind.PREP,
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
        self.vote_self(Kind.CV, v, s, d)

    def check_committed(self, v: int, s: int, d: int) -> None:
        if v != self.view or self.in_vc:
            return
        if s != self.last_exec + 1 or len(self.as_leader.cqc[(v, s, d)]) < self.q_top():
            return
        if self.prepared.get(s) != (v, d):
            return
        plan = self.fork_plan(v, s)
        if plan is not None and v == plan["view"]:
            return  # colluders neither execute nor DECIDE the first block: they will deny it
        cert = dict(list(self.as_leader.cqc[(v, s, d)].items())[: self.q_top()])
        sigs = sum(len(x) for x in cert.values())
        assert self.cfg is not None
        dec = Msg(
            Kind.DEC,
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
        if (v, s) in self.as_member.voted:
            return
        if v > 0:
            ok = self.vc.nv_ok.get(v)
            if ok is None:
                self.as_member.await_nv[v].append(
                    msg
                )  # vote once the new-view certificate is checked
                if len(self.as_member.await_nv[v]) == 1 or len(self.as_member.await_nv[v]) % 8 == 0:
                    assert self.cfg is not None
                    self.send(
                        [msg.src], Msg(Kind.NVQ, self.id, v, s, 0, size=VOTE, epoch=self.cfg.epoch)
                    )
                return
            if s < ok[0] or (s == ok[0] and d != ok[1]):
                # The leader forwards a block the new-view certificate does not justify.
                self.sim.note("unjustified_proposal", node=msg.src, by=self.id, view=v, seq=s)
                return
        self.view = max(self.view, v)
        self.in_vc = False
        self.as_member.voted[(v, s)] = d
        self.ledger.signed.add((Kind.PV, self.id, v, s, d))
        assert self.cfg is not None
        self.send([msg.src], Msg(Kind.PV, self.id, v, s, d, size=VOTE, epoch=self.cfg.epoch))

    def on_prep(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if (
            self.myc < 0
            or msg.src != self.leader(self.myc)
            or self.as_member.voted.get((v, s)) != d
        ):
            return
        if v < self.view or self.prepared.get(s) == (v, d):
            return
        cert: dict[int, tuple[int, ...]] = msg.data or {}
        if not self.cert_ok(cert, Kind.PV, v, s, d):
            self.sim.note("invalid_prepare_cert", node=msg.src, by=self.id)
            return
        self.prepared[s] = (v, d)
        self.prep_sigs[s] = sum(len(x) for x in cert.values())
        self.ledger.signed.add((Kind.CV, self.id, v, s, d))
        self.as_member.my_cv[s] = (v, d)
        assert self.cfg is not None
        self.send([msg.src], Msg(Kind.CV, self.id, v, s, d, size=VOTE, epoch=self.cfg.epoch))

    def on_dec(self, msg: Msg) -> None:
        assert self.cfg is not None
        v, s, d = msg.view, msg.seq, msg.digest
        cert: dict[int, tuple[int, ...]] = msg.data
        signed = self.ledger.signed
        ok = len(cert) >= self.q_top() and all(
            0 <= c < self.k
            and len(set(sig)) >= self.q_c(c)
            and set(sig) <= set(self.cfg.clusters[c])
            and all((Kind.CV, i, v, s, d) in signed for i in sig)
            for c, sig in cert.items()
        )
        if not ok:
            self.sim.note("invalid_decide", node=msg.src, by=self.id)
            return
        # A leader that decides blocks without letting us vote is excluding (framing) us:
        # two such blocks in a row and we complain as if it had stalled.
        if (v, s) in self.as_member.voted or self.myc < 0:
            self.as_member.skipped = 0
        else:
            self.as_member.skipped += 1
        self.execute(s, d)
        if self.as_member.skipped >= 2 and self.myc >= 0 and msg.src == self.leader(self.myc):
            self.as_member.skipped = 0
            self.complain()

    # -- participation receipts ------------------------------------------------------------------
    def check_listed(self, s: int, d: int) -> None:
        """A member whose signed COMMIT vote for a committed block is missing from every
        participant list committed for that height sends the vote to the primary itself."""
        if self.myc < 0 or self.is_leader():
            return
        for h, per_cluster in self.sim.blocks[d].meta.get("cert", {}).items():
            if any(self.id in parts for _ldr, parts in per_cluster.values()):
                self.as_member.listed.add(h)
        h = s - 3
        mine = self.as_member.my_cv.pop(h, None)
        if mine is None or h in self.as_member.listed or self.log.get(h) != mine[1]:
            return
        assert self.cfg is not None
        self.sim.note("receipt_sent", node=self.id, height=h)
        self.send(
            [self.primary(self.view)],
            Msg(Kind.RCPT, self.id, mine[0], h, mine[1], size=2 * VOTE, epoch=self.cfg.epoch),
        )

    def hand_over_qcs(self, s: int, old_c: int) -> None:
        """Leaving an epoch as a leader: send our cluster's commit QCs that no committed block
        lists yet (the epoch's last block's, typically) to the new primary, which was usually
        not a leader when they were exchanged. One message per old leader per epoch; without it
        every member would need a receipt for that block."""
        entries = []
        for h in range(s - QC_WINDOW + 1, s + 1):
            got = self.as_leader.qc_book.get(h, {}).get(old_c)
            prep = self.prepared.get(h)
            if got is None or prep is None or (h, old_c) in self.ledger.included:
                continue
            entries.append((h, old_c, got[0], got[1], prep[0]))
        # Receipts we hold as the old primary travel along (the new primary puts them in).
        rcpts = tuple(
            sorted(r for r in self.as_leader.rcpts if (r[0], r[1]) not in self.ledger.receipts_in)
        )
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
                Kind.QCB,
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
                self.as_leader.rcpts.add((h, i, v))
        top = max((e[0] for e in entries), default=0)
        if top > self.last_exec:
            self.future[top + 1].append(
                Msg(Kind.QCB, msg.src, msg.view, msg.seq, 0, size=0, data=(entries, ()))
            )
            return
        for h, c, ldr, parts, v in entries:
            cfg_h = self.ledger.configs.get(self.ledger.epoch_of(h))
            d = self.log.get(h)
            if cfg_h is None or d is None or not 0 <= c < len(cfg_h.clusters):
                continue
            members = cfg_h.clusters[c]
            voted = [i for i in parts if i in members and (Kind.CV, i, v, h, d) in signed]
            if ldr == msg.src and len(voted) >= cluster_quorum(len(members))[1]:
                self.as_leader.qc_book[h].setdefault(c, (ldr, parts))

    def on_rcpt(self, msg: Msg) -> None:
        if (msg.seq, msg.src) in self.ledger.receipts_in:
            return
        if (Kind.CV, msg.src, msg.view, msg.seq, msg.digest) in self.ledger.signed:
            self.as_leader.rcpts.add((msg.seq, msg.src, msg.view))
