"""Raft (Ongaro–Ousterhout) on the simulation core: leader election, log replication, commit.

Crash faults only: Raft messages are not signed (channel MACs, as Fabric's etcdraft over TLS),
so they cost dispatch and hashing, not signatures. One block in flight, like the BFT protocols;
the leader's commit index reaches followers with the next AppendEntries. This module must not
be used to argue about Byzantine faults.
"""

from __future__ import annotations

from .core import HEADER_BYTES, Msg, Node, Sim

__all__ = ["RaftNode", "build_raft"]

SMALL = HEADER_BYTES + 16
MAX_ENTRIES = 64


class RaftNode(Node):
    """One Raft server with a log of (term, block digest) entries; heights are log indexes."""

    def __init__(self, sim: Sim, nid: int) -> None:
        super().__init__(sim, nid)
        self.n = sim.n
        self.others = [i for i in range(self.n) if i != nid]
        self.majority = self.n // 2 + 1
        self.term = 0
        self.voted_for: int | None = None
        self.role = "follower"
        self.entries: list[tuple[int, int]] = []  # index i+1 -> (term, digest)
        self.commit_index = 0
        self.votes: set[int] = set()
        self.next_index: dict[int, int] = {}
        self.match_index: dict[int, int] = {}
        self.heard = 0
        self.leader: int | None = None
        self.election_base = sim.params.view_timeout_s
        self.heartbeat = self.election_base / 4
        self.proposing = False

    def start(self) -> None:
        if self.id == 0:  # a deterministic first leader, as after a completed first election
            self.term = 1
            self.become_leader()
        else:
            self.term = 1
            self.leader = 0
            self.arm_election()

    # -- election -------------------------------------------------------------------------------
    def arm_election(self) -> None:
        mark = self.heard
        delay = self.election_base * (1.0 + self.sim.rng.random())

        def check() -> None:
            if self.heard == mark and self.role != "leader":
                self.start_election()

        self.timer(delay, check)

    def start_election(self) -> None:
        self.term += 1
        self.role = "candidate"
        self.voted_for = self.id
        self.votes = {self.id}
        self.heard += 1
        self.sim.note("election", node=self.id, term=self.term)
        last_t = self.entries[-1][0] if self.entries else 0
        self.send(
            self.others,
            Msg("RV", self.id, self.term, len(self.entries), last_t, size=SMALL, verifies=0),
            sign=False,
        )
        self.arm_election()

    def become_leader(self) -> None:
        self.role = "leader"
        self.leader = self.id
        self.sim.note("leader", node=self.id, term=self.term)
        nxt = len(self.entries) + 1
        self.next_index = dict.fromkeys(self.others, nxt)
        self.match_index = dict.fromkeys(self.others, 0)
        self.broadcast_append()
        self.tick_heartbeat(self.term)
        # Entries of earlier terms commit only under one of this term (Raft §5.4.2).
        self.try_propose(force=self.commit_index < len(self.entries))

    def tick_heartbeat(self, term: int) -> None:
        def beat() -> None:
            if self.role == "leader" and self.term == term:
                idle = [i for i in self.others if self.next_index[i] > len(self.entries)]
                self.append_to(idle, heartbeat=True)
                self.tick_heartbeat(term)

        self.timer(self.heartbeat, beat)

    def step_down(self, term: int) -> None:
        if term > self.term:
            self.term = term
            self.voted_for = None
        if self.role != "follower":
            self.role = "follower"
            self.arm_election()

    # -- replication ----------------------------------------------------------------------------
    def try_propose(self, force: bool = False) -> None:
        if self.role != "leader" or self.crashed or self.proposing:
            return
        if self.commit_index < len(self.entries) and not force:
            return  # one block in flight
        if not self.batch_due(force):
            return
        p = self.sim.params
        pool = self.sim.pool
        txs = pool.take(p.batch_size)
        blk = self.sim.new_block(len(self.entries) + 1, self.id, self.term, txs)
        self.entries.append((self.term, blk.digest))
        self.cpu(blk.size * self.cost.hash_s_per_byte)
        self.broadcast_append()
        if not self.others:
            # A single orderer (Fabric's Raft ×1) is its own majority: no reply will ever
            # come to advance the commit index, so commit the entry from the event loop (not
            # inline: with a full pool, commit → propose → commit would recurse without end).
            self.timer(0.0, self.advance_commit)

    def broadcast_append(self) -> None:
        self.append_to(self.others)

    def append_to(self, targets: list[int], heartbeat: bool = False) -> None:
        # Followers at the same next index get one multicast; the rest individual messages.
        groups: dict[int, list[int]] = {}
        for i in targets:
            groups.setdefault(self.next_index[i], []).append(i)
        for nxt, dsts in groups.items():
            chunk = self.entries[nxt - 1 : nxt - 1 + MAX_ENTRIES]
            prev_t = self.entries[nxt - 2][0] if nxt >= 2 else 0
            size = SMALL + sum(self.sim.blocks[d].size for _, d in chunk)
            hashb = size - SMALL
            msg = Msg(
                "AE" if chunk or not heartbeat else "HB",
                self.id,
                self.term,
                nxt - 1,
                prev_t,
                size=size,
                verifies=0,
                hash_bytes=hashb,
                data=(tuple(chunk), self.commit_index),
            )
            self.send(dsts, msg, sign=False)
            for i in dsts:  # optimistic pipelining: do not resend what is in flight
                self.next_index[i] = nxt + len(chunk)

    def on_message(self, msg: Msg) -> None:
        k = msg.kind
        if msg.view > self.term:
            self.step_down(msg.view)
        if k in ("AE", "HB"):
            self.on_append(msg)
        elif k == "AER":
            self.on_append_reply(msg)
        elif k == "RV":
            self.on_request_vote(msg)
        elif k == "RVR":
            self.on_vote(msg)

    def on_request_vote(self, msg: Msg) -> None:
        last_t = self.entries[-1][0] if self.entries else 0
        up_to_date = (msg.digest, msg.seq) >= (last_t, len(self.entries))
        grant = msg.view == self.term and self.voted_for in (None, msg.src) and up_to_date
        if grant:
            self.voted_for = msg.src
            self.heard += 1
            self.arm_election()
        self.send(
            [msg.src],
            Msg("RVR", self.id, self.term, 0, int(grant), size=SMALL, verifies=0),
            sign=False,
        )

    def on_vote(self, msg: Msg) -> None:
        if self.role != "candidate" or msg.view != self.term or not msg.digest:
            return
        self.votes.add(msg.src)
        if len(self.votes) >= self.majority:
            self.become_leader()

    def on_append(self, msg: Msg) -> None:
        if msg.view < self.term:
            self.send(
                [msg.src],
                Msg("AER", self.id, self.term, 0, 0, size=SMALL, verifies=0),
                sign=False,
            )
            return
        if self.role != "follower":
            self.role = "follower"
        self.leader = msg.src
        self.heard += 1
        self.arm_election()
        prev, prev_t = msg.seq, msg.digest
        chunk, leader_commit = msg.data
        ok = prev == 0 or (prev <= len(self.entries) and self.entries[prev - 1][0] == prev_t)
        if ok:
            for i, entry in enumerate(chunk):
                idx = prev + i + 1
                if idx <= len(self.entries):
                    if self.entries[idx - 1][0] != entry[0]:
                        if idx <= self.commit_index:
                            raise AssertionError("raft would truncate a committed entry")
                        del self.entries[idx - 1 :]
                        self.entries.append(entry)
                else:
                    self.entries.append(entry)
            match = prev + len(chunk)
            self.apply_to(min(leader_commit, match))
            if chunk:
                self.send(
                    [msg.src],
                    Msg("AER", self.id, self.term, match, 1, size=SMALL, verifies=0),
                    sign=False,
                )
        else:
            hint = min(prev - 1, len(self.entries))
            self.send(
                [msg.src],
                Msg("AER", self.id, self.term, hint, 0, size=SMALL, verifies=0),
                sign=False,
            )

    def on_append_reply(self, msg: Msg) -> None:
        if self.role != "leader" or msg.view != self.term:
            return
        i = msg.src
        if msg.digest:
            self.match_index[i] = max(self.match_index[i], msg.seq)
            self.next_index[i] = max(self.next_index[i], self.match_index[i] + 1)
            self.advance_commit()
            if self.next_index[i] <= len(self.entries):
                self.append_to([i])
        else:
            self.next_index[i] = max(1, msg.seq + 1)
            self.append_to([i])

    def advance_commit(self) -> None:
        for idx in range(len(self.entries), self.commit_index, -1):
            if self.entries[idx - 1][0] != self.term:
                break
            count = 1 + sum(1 for m in self.match_index.values() if m >= idx)
            if count >= self.majority:
                self.apply_to(idx)
                self.try_propose()
                break

    def apply_to(self, idx: int) -> None:
        while self.commit_index < idx:
            self.commit_index += 1
            self.commit(self.commit_index, self.entries[self.commit_index - 1][1])


def build_raft(sim: Sim) -> list[RaftNode]:
    """Create n Raft servers; a request commits when the leader commits its entry."""
    sim.commit_threshold = 1
    return [RaftNode(sim, i) for i in range(sim.n)]
