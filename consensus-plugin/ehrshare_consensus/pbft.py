"""PBFT (Castro–Liskov) as a state machine on the simulation core: normal case, checkpoints,
view change with NEW-VIEW validation, state transfer.

Signed messages throughout (as Fabric's BFT orderer signs), one block in flight (sequence
numbers are ordered one after the other, no pipelining; the same for every protocol here).
This module must not shortcut the quadratic phases: every PREPARE and COMMIT is a real message
to every other replica and costs a verification at each receiver.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .core import HEADER_BYTES, SIG_BYTES, Msg, Node, Sim
from .policy import cluster_quorum

__all__ = ["PbftNode", "build_pbft"]

VOTE_BYTES = HEADER_BYTES + SIG_BYTES


class PbftNode(Node):
    """One PBFT replica; static membership 0..n-1, primary = view mod n."""

    def __init__(self, sim: Sim, nid: int) -> None:
        super().__init__(sim, nid)
        n = sim.n
        self.n = n
        self.f, self.q = cluster_quorum(n)
        self.others = [i for i in range(n) if i != nid]
        self.view = 0
        self.in_vc = False
        self.accepted: dict[tuple[int, int], int] = {}
        self.prep: defaultdict[tuple[int, int, int], set[int]] = defaultdict(set)
        self.comm: defaultdict[tuple[int, int, int], set[int]] = defaultdict(set)
        self.prepared: dict[int, tuple[int, int]] = {}
        self.sent_commit: set[tuple[int, int]] = set()
        self.future: defaultdict[int, list[Msg]] = defaultdict(list)
        self.vcs: defaultdict[int, dict[int, Msg]] = defaultdict(dict)
        self.nv_sent: set[int] = set()
        self.cps: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        self.stable_cp = 0
        self.cp_views: dict[int, int] = {}
        self.progress = 0
        self.vc_timeout = sim.params.view_timeout_s
        self.proposing = False
        self.fetching: set[int] = set()
        self.equivocate_from = float("inf")  # time from which a Byzantine primary equivocates
        self.colluders: list[int] = []
        self.wd_gen = 0

    def primary(self, view: int) -> int:
        return view % self.n

    # -- start, proposals ---------------------------------------------------------------------
    def start(self) -> None:
        self.arm_watchdog()
        if self.primary(self.view) == self.id:
            self.try_propose()

    def try_propose(self) -> None:
        if self.crashed or self.in_vc or self.primary(self.view) != self.id or self.proposing:
            return
        s = self.last_exec + 1
        if (self.view, s) in self.accepted:
            return
        if not self.batch_due():
            return
        p = self.sim.params
        pool = self.sim.pool
        txs = pool.take(p.batch_size)
        self.propose(s, txs)

    def propose(self, s: int, txs: tuple[int, ...]) -> None:
        v = self.view
        blk = self.sim.new_block(s, self.id, v, txs)
        if self.t >= self.equivocate_from and not self.honest:
            other = self.sim.new_block(s, self.id, v, tuple(reversed(txs)))
            half = len(self.others) // 2
            honest_others = [i for i in self.others if i not in self.colluders]
            a_side = honest_others[:half]
            b_side = [i for i in honest_others if i not in a_side]
            self.sim.note("equivocation", node=self.id, view=v, seq=s)
            for side, b in ((a_side, blk), (b_side, other)):
                self.send(side, self.pp_msg(v, s, b.digest))
            for c in self.colluders:
                self.send([c], self.pp_msg(v, s, blk.digest))
                self.send([c], self.pp_msg(v, s, other.digest))
            if self.colluders:  # beyond the assumptions: the primary also commits both blocks
                for b in (blk, other):
                    self.send(self.others, Msg("C", self.id, v, s, b.digest, size=VOTE_BYTES))
            self.accepted[(v, s)] = blk.digest
            return
        self.accepted[(v, s)] = blk.digest
        self.send(self.others, self.pp_msg(v, s, blk.digest))

    def pp_msg(self, v: int, s: int, d: int, data: Any = None) -> Msg:
        size = self.sim.blocks[d].size
        return Msg("PP", self.id, v, s, d, size=size, hash_bytes=size, data=data)

    # -- message dispatch ---------------------------------------------------------------------
    def on_message(self, msg: Msg) -> None:
        k = msg.kind
        if k == "VC":
            self.on_vc(msg)
        elif k == "NV":
            self.on_nv(msg)
        elif k == "CP":
            self.on_cp(msg)
        elif k == "FETCH":
            self.on_fetch(msg)
        elif k == "BLOCKS":
            self.on_blocks(msg)
        elif msg.seq <= self.last_exec:
            return
        elif msg.seq > self.last_exec + 1:
            self.future[msg.seq].append(msg)
        elif k == "PP":
            self.on_pp(msg)
        elif k == "P":
            self.on_prepare(msg)
        elif k == "C":
            self.on_commit_vote(msg)

    def on_pp(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        if msg.src != self.primary(v) or v != self.view or self.in_vc:
            return
        if (v, s) in self.accepted:
            return
        self.accepted[(v, s)] = d
        if self.behaviour == "collude":
            return  # colluders vote on everything they see below
        self.send(self.others, Msg("P", self.id, v, s, d, size=VOTE_BYTES))
        self.prep[(v, s, d)].add(self.id)
        self.check_prepared(v, s, d)

    def on_prepare(self, msg: Msg) -> None:
        key = (msg.view, msg.seq, msg.digest)
        self.prep[key].add(msg.src)
        self.check_prepared(*key)

    def check_prepared(self, v: int, s: int, d: int) -> None:
        if v != self.view or self.in_vc:
            return  # after asking for a view change a replica sends nothing more in view v
        if self.accepted.get((v, s)) != d or (v, s) in self.sent_commit:
            return
        votes = self.prep[(v, s, d)]
        if len(votes) - (self.primary(v) in votes) < self.q - 1:
            return
        self.sent_commit.add((v, s))
        self.prepared[s] = (v, d)
        self.send(self.others, Msg("C", self.id, v, s, d, size=VOTE_BYTES))
        self.comm[(v, s, d)].add(self.id)
        self.check_committed(v, s, d)

    def on_commit_vote(self, msg: Msg) -> None:
        key = (msg.view, msg.seq, msg.digest)
        self.comm[key].add(msg.src)
        self.check_committed(*key)

    def check_committed(self, v: int, s: int, d: int) -> None:
        if s != self.last_exec + 1:
            return
        votes = self.comm[(v, s, d)]
        if len(votes) < self.q:
            return
        if self.prepared.get(s) == (v, d):
            self.execute(s, d)
        elif s not in self.fetching and self.accepted.get((v, s)) != d:
            # A commit certificate proves d is committed; fetch the block we never accepted
            # (if we accepted it, our own PREPAREs are still queued: wait for them).
            # The PRE-PREPARE may still be on its way (a large block reaches the last backups
            # late): give it a quarter of a view timeout before fetching.
            self.fetching.add(s)
            src = next(i for i in sorted(votes) if i != self.id)

            def fetch() -> None:
                if self.last_exec < s:
                    self.send([src], Msg("FETCH", self.id, v, s, d, size=VOTE_BYTES))
                else:
                    self.fetching.discard(s)

            self.timer(self.sim.params.view_timeout_s / 4, fetch)

    def execute(self, s: int, d: int) -> None:
        self.sim.certified.add((s, d))
        self.fetching.discard(s)
        self.commit(s, d)
        self.progress += 1
        self.vc_timeout = self.sim.params.view_timeout_s
        for key in [k for k in self.prep if k[1] <= s]:
            del self.prep[key]
        for key in [k for k in self.comm if k[1] <= s]:
            del self.comm[key]
        every = self.sim.params.checkpoint_every
        if every and s % every == 0:
            self.send(self.others, Msg("CP", self.id, self.view, s, d, size=VOTE_BYTES))
            self.cps[(s, d)].add(self.id)
        self.arm_watchdog()
        pending = self.future.pop(s + 1, [])
        if self.primary(self.view) == self.id and not self.in_vc:
            self.try_propose()
        for m in pending:
            if not self.crashed:
                self.on_message(m)

    # -- checkpoints and state transfer -------------------------------------------------------
    def on_cp(self, msg: Msg) -> None:
        votes = self.cps[(msg.seq, msg.digest)]
        votes.add(msg.src)
        self.cp_views[msg.src] = max(self.cp_views.get(msg.src, 0), msg.view)
        if len(votes) >= self.q and msg.seq > self.stable_cp:
            self.stable_cp = msg.seq
            for key in [k for k in self.cps if k[0] < msg.seq]:
                del self.cps[key]
            # A view at least f+1 checkpoint signers have reached (so an honest one has): a
            # replica that was cut off learns where the others went.
            view = sorted((self.cp_views.get(i, 0) for i in votes), reverse=True)[self.f]
            if view > self.view:
                self.view = view
                self.in_vc = False
                self.arm_watchdog()
            if self.last_exec < msg.seq:
                self.fetch_from(sorted(votes), msg.seq)

    def fetch_from(self, sources: list[int], upto: int) -> None:
        if upto in self.fetching:
            return
        src = next((i for i in sources if i != self.id), None)
        if src is None:
            return
        self.fetching.add(upto)
        self.send([src], Msg("FETCH", self.id, 0, upto, 0, size=VOTE_BYTES, data=self.last_exec))

    def on_fetch(self, msg: Msg) -> None:
        have = msg.data if isinstance(msg.data, int) else msg.seq - 1
        upto = min(msg.seq, self.last_exec, have + 64)
        want = [(h, self.log[h]) for h in range(have + 1, upto + 1) if h in self.log]
        if not want:
            return
        size = sum(self.sim.blocks[d].size for _, d in want) + HEADER_BYTES
        self.send([msg.src], Msg("BLOCKS", self.id, 0, msg.seq, 0, size=size, data=want))

    def on_blocks(self, msg: Msg) -> None:
        # Blocks in a transfer are bound to a checkpoint/commit certificate we already verified;
        # the simulator keeps only certified (height, digest) pairs, so a liar is ignored here.
        for h in [h for h in self.fetching if h <= msg.seq]:
            self.fetching.discard(h)
        for h, d in msg.data:
            if h == self.last_exec + 1 and (h, d) in self.sim.certified:
                self.cpu(self.sim.blocks[d].size * self.cost.hash_s_per_byte)
                self.execute(h, d)
        if self.last_exec < max(self.stable_cp, msg.seq):
            self.fetch_from([msg.src], max(self.stable_cp, msg.seq))

    # -- view change --------------------------------------------------------------------------
    def arm_watchdog(self) -> None:
        """(Re)start the progress timer; only the newest timer acts, and it never dies."""
        self.wd_gen += 1
        gen = self.wd_gen
        mark = self.progress

        def check() -> None:
            if gen != self.wd_gen:
                return
            pending = self.sim.pool.open or any(k[1] > self.last_exec for k in self.accepted)
            if self.progress != mark or not pending or self.in_vc:
                self.arm_watchdog()
            else:
                self.start_view_change(self.view + 1)

        self.timer(self.vc_timeout, check)

    def start_view_change(self, nv: int) -> None:
        if nv <= self.view and self.in_vc:
            return
        self.view = nv
        self.in_vc = True
        self.proposing = False
        self.sim.note("view_change_start", node=self.id, view=nv)
        s = self.last_exec + 1
        prep = self.prepared.get(s)
        vc = Msg(
            "VC",
            self.id,
            nv,
            self.last_exec,
            0,
            size=VOTE_BYTES + (VOTE_BYTES * self.q if prep else 0),
            verifies=1 + (self.q if prep else 0),
            data=(self.last_exec, self.log.get(self.last_exec, 0), prep),
        )
        self.send(self.others, vc)
        self.vcs[nv][self.id] = vc
        self.vc_timeout *= 2
        mark = self.progress

        def tick() -> None:
            if not (self.in_vc and self.view == nv and self.progress == mark):
                return
            if len(self.vcs[nv]) >= self.q:
                self.start_view_change(nv + 1)  # a quorum wanted nv and it still failed
            else:
                # Like PBFT, whose timer only starts at 2f+1 VIEW-CHANGEs: a replica that is
                # ahead waits for the others (re-sending, in case its message was lost)
                # instead of racing through views alone.
                self.send(self.others, self.vcs[nv][self.id])
                self.timer(self.vc_timeout, tick)

        self.timer(self.vc_timeout, tick)
        self.maybe_new_view(nv)

    def on_vc(self, msg: Msg) -> None:
        nv = msg.view
        if nv < self.view or (nv == self.view and not self.in_vc):
            return
        self.vcs[nv][msg.src] = msg
        # Join a higher view once f+1 replicas ask for one (PBFT's liveness rule).
        higher = {src for v, d in self.vcs.items() if v > self.view for src in d}
        if len(higher) > self.f:
            target = min(v for v, d in self.vcs.items() if v > self.view and d)
            self.start_view_change(target)
        self.maybe_new_view(nv)

    def decide_new_view(self, vcs: dict[int, Msg]) -> tuple[int, int | None]:
        """From 2f+1 VIEW-CHANGEs: the next height and the digest that must be re-proposed."""
        base = 0
        for m in vcs.values():
            h, d, _ = m.data
            if h > base and (h, d) in self.sim.certified:
                base = h
        best: tuple[int, int] | None = None
        for m in vcs.values():
            h, _, prep = m.data
            if prep is not None and h + 1 == base + 1 and (best is None or prep[0] > best[0]):
                best = prep
        return base, (best[1] if best else None)

    def maybe_new_view(self, nv: int) -> None:
        if self.primary(nv) != self.id or nv in self.nv_sent or self.view != nv:
            return
        vcs = self.vcs[nv]
        if len(vcs) < self.q:
            return
        self.nv_sent.add(nv)
        base, digest = self.decide_new_view(vcs)
        self.cpu(self.q * self.cost.verify_s)
        if self.last_exec < base:
            self.catch_up(base, vcs)
        self.in_vc = False
        self.sim.note("new_view", node=self.id, view=nv)
        s = base + 1
        if digest is None:
            txs = self.sim.pool.take(self.sim.params.batch_size)
            digest = self.sim.new_block(s, self.id, nv, txs).digest
        self.accepted[(nv, s)] = digest
        chosen = dict(list(vcs.items())[: self.q])
        size = self.sim.blocks[digest].size + sum(m.size for m in chosen.values())
        nvm = Msg(
            "NV",
            self.id,
            nv,
            s,
            digest,
            size=size,
            verifies=1 + self.q,
            hash_bytes=self.sim.blocks[digest].size,
            data=chosen,
        )
        self.send(self.others, nvm)
        self.arm_watchdog()

    def catch_up(self, base: int, vcs: dict[int, Msg]) -> None:
        src = next((i for i, m in vcs.items() if m.data[0] >= base and i != self.id), None)
        if src is not None:
            self.fetch_from([src], base)

    def on_nv(self, msg: Msg) -> None:
        nv = msg.view
        if msg.src != self.primary(nv) or nv < self.view or (nv == self.view and not self.in_vc):
            return
        base, digest = self.decide_new_view(msg.data)
        if (
            len(msg.data) < self.q
            or msg.seq != base + 1
            or (digest is not None and digest != msg.digest)
        ):
            self.sim.note("bad_new_view", node=self.id, view=nv)
            self.start_view_change(nv + 1)
            return
        self.view = nv
        self.in_vc = False
        if self.last_exec < base:
            self.catch_up(base, msg.data)
        self.arm_watchdog()
        if self.last_exec == base:
            self.on_pp(Msg("PP", msg.src, nv, msg.seq, msg.digest, size=0))
        else:
            self.future[msg.seq].append(Msg("PP", msg.src, nv, msg.seq, msg.digest, size=0))


class ColludingPbftNode(PbftNode):
    """A Byzantine replica that signs PREPARE and COMMIT for every block it sees at a height —
    only used by the scenario beyond the f < n/3 assumption."""

    def on_pp(self, msg: Msg) -> None:
        v, s, d = msg.view, msg.seq, msg.digest
        self.send(self.others, Msg("P", self.id, v, s, d, size=VOTE_BYTES))
        self.send(self.others, Msg("C", self.id, v, s, d, size=VOTE_BYTES))
        if (v, s) not in self.accepted:
            self.accepted[(v, s)] = d


def build_pbft(sim: Sim) -> list[PbftNode]:
    """Create n PBFT replicas on sim (client commit = f+1 honest replicas executed)."""
    nodes = [PbftNode(sim, i) for i in range(sim.n)]
    sim.commit_threshold = nodes[0].f + 1
    return nodes
