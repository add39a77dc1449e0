"""Protocol state machines: message complexity, QC verification, view changes, determinism."""

from __future__ import annotations

from typing import Any

import pytest

from ehrshare_consensus.calibrate import CostModel
from ehrshare_consensus.core import Msg, NetworkModel, Sim, SimParams
from ehrshare_consensus.pbft import PbftNode, build_pbft
from ehrshare_consensus.policy import cluster_quorum
from ehrshare_consensus.rcdbft import RcNode, build_rcdbft
from ehrshare_consensus.runner import RunSpec, check_liveness, run_once


def _run(cost: CostModel, **kw: Any) -> dict[str, Any]:
    return run_once(RunSpec(**kw), cost)


def test_pbft_normal_case_costs_quadratic_messages(cost: CostModel) -> None:
    n = 16
    row = _run(cost, protocol="pbft", n=n, blocks=9, batch_size=10)  # no checkpoint in window
    expected = (n - 1) + (n - 1) * (n - 1) + n * (n - 1)  # PRE-PREPARE, PREPARE, COMMIT
    assert row["messages_per_block"] == pytest.approx(expected)


def test_rcdbft_normal_case_matches_k2_plus_5n(cost: CostModel) -> None:
    n = 100
    row = _run(cost, protocol="rcdbft", n=n, blocks=12, batch_size=10)
    k = row["k"]
    assert k == 10
    expected = (k - 1) + 5 * (n - k) + 2 * k * (k - 1)
    # ± a message or two: a slow cluster's commit QC may straddle the window's end
    assert row["messages_per_block"] == pytest.approx(expected, abs=2)


def test_raft_needs_about_two_messages_per_follower(cost: CostModel) -> None:
    row = _run(cost, protocol="raft", n=9, blocks=20, batch_size=10)
    assert 2 * 8 <= row["messages_per_block"] < 2 * 8 + 8  # plus occasional heartbeats


@pytest.mark.parametrize("protocol", ["pbft", "rcdbft", "raft"])
def test_same_seed_gives_identical_results(cost: CostModel, protocol: str) -> None:
    spec = {"protocol": protocol, "n": 16, "blocks": 15, "batch_size": 10, "seed": 5}
    a, b = _run(cost, **spec), _run(cost, **spec)
    for row in (a, b):
        row.pop("wall_time_s")
    assert a == b
    c = _run(cost, **{**spec, "seed": 6})
    assert c["latency_p50_ms"] != a["latency_p50_ms"]


@pytest.mark.parametrize("protocol", ["pbft", "rcdbft", "raft"])
def test_open_loop_load_cuts_blocks_at_the_batch_timeout(cost: CostModel, protocol: str) -> None:
    # Regression: a batch timer that fired a rounding error early re-armed itself for ~1e-17 s,
    # which did not advance simpy's clock, so any Poisson run spun for ever.
    row = _run(cost, protocol=protocol, n=7, blocks=20, rate="poisson", tps=500.0, seed=3)
    assert row["blocks_committed"] >= 20
    # 500 tx/s against a 50 ms timeout and batches of 100: blocks are cut by time, ~25 tx each,
    # and throughput follows the offered load rather than the batch size.
    assert 300.0 < row["throughput_tps"] < 700.0


def _pbft_sim(cost: CostModel, n: int = 4) -> tuple[Sim, list[PbftNode]]:
    sim = Sim(SimParams(n=n, batch_size=2, seed=1), NetworkModel(), cost)
    nodes = build_pbft(sim)
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    return sim, nodes


def _vc(src: int, last: int, digest: int, prepared: tuple[int, int] | None) -> Msg:
    return Msg("VC", src, 1, last, 0, data=(last, digest, prepared))


def test_new_view_reproposes_the_highest_prepared_block(cost: CostModel) -> None:
    sim, nodes = _pbft_sim(cost)
    sim.certified.add((3, 0x33))
    vcs = {
        0: _vc(0, 3, 0x33, (0, 0xA)),
        1: _vc(1, 3, 0x33, (2, 0xB)),  # prepared in a later view: wins
        2: _vc(2, 2, 0x22, None),
    }
    assert nodes[1].decide_new_view(vcs) == (3, 0xB)


def test_new_view_ignores_an_uncertified_height_claim(cost: CostModel) -> None:
    sim, nodes = _pbft_sim(cost)
    sim.certified.add((3, 0x33))
    vcs = {0: _vc(0, 3, 0x33, None), 1: _vc(1, 9, 0x99, None), 2: _vc(2, 3, 0x33, None)}
    assert nodes[1].decide_new_view(vcs) == (3, None)


def test_backup_rejects_a_new_view_with_the_wrong_block(cost: CostModel) -> None:
    sim, nodes = _pbft_sim(cost)
    backup = nodes[2]
    backup.start_view_change(1)
    vcs = {i: _vc(i, 0, 0, (0, 0xA) if i == 0 else None) for i in range(3)}
    bad = Msg("NV", 1, 1, 1, 0xB, data=vcs)  # must re-propose 0xA
    backup.on_nv(bad)
    assert backup.view == 2 and backup.in_vc
    assert any(e["event"] == "bad_new_view" for e in sim.events)


def test_rcdbft_leader_rejects_a_forged_cluster_qc(cost: CostModel) -> None:
    sim = Sim(SimParams(n=16, seed=1), NetworkModel(), cost)
    nodes, ledger = build_rcdbft(sim, epoch_blocks=5)
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    for node in nodes:
        node.start()
    cfg = ledger.configs[0]
    me, other = nodes[cfg.leaders[0]], cfg.leaders[1]
    members = cfg.clusters[1]
    q = cluster_quorum(len(members))[1]
    signers = tuple(members[:q])
    forged = Msg("PQC", other, 0, 1, 0xD, data=(1, signers, signers, cfg.leaders[0]))
    assert not me.valid_qc(forged, "PV")  # nobody really signed
    for i in signers:
        ledger.signed.add(("PV", i, 0, 1, 0xD))
    assert me.valid_qc(forged, "PV")
    short = Msg("PQC", other, 0, 1, 0xD, data=(1, signers[:-1], signers, cfg.leaders[0]))
    assert not me.valid_qc(short, "PV")  # below the cluster quorum
    wrong_sender = Msg("PQC", cfg.leaders[2], 0, 1, 0xD, data=(1, signers, signers, 0))
    assert not me.valid_qc(wrong_sender, "PV")


def test_member_commits_only_with_a_valid_decide_certificate(cost: CostModel) -> None:
    sim = Sim(SimParams(n=16, seed=1), NetworkModel(), cost)
    nodes, ledger = build_rcdbft(sim, epoch_blocks=5)
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    for node in nodes:
        node.start()
    cfg = ledger.configs[0]
    member = next(nodes[i] for i in cfg.clusters[0] if i != cfg.leaders[0])
    blk = sim.new_block(1, cfg.leaders[0], 0, ())
    cert = {c: tuple(cfg.clusters[c][: cluster_quorum(len(cfg.clusters[c]))[1]]) for c in (0, 1)}
    member.on_dec(Msg("DEC", cfg.leaders[0], 0, 1, blk.digest, data=cert))
    assert member.last_exec == 0  # only 2 of 4 clusters and no real signatures
    assert isinstance(member, RcNode)


def test_liveness_check_flags_a_stalled_run(cost: CostModel) -> None:
    params = SimParams(n=4, batch_size=2, max_blocks=10, max_time_s=5.0, seed=1)
    sim = Sim(params, NetworkModel(), cost)
    nodes = build_pbft(sim)
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    nodes[1].crashed = nodes[2].crashed = True  # f + 1 crashes: no quorum left
    sim.run()
    spec = RunSpec(protocol="pbft", n=4, blocks=10, view_timeout_s=params.view_timeout_s)
    assert check_liveness(sim, spec) is not None
    assert not sim.checker.violations


def _rc_sim(cost: CostModel) -> tuple[Sim, list[RcNode], Any]:
    sim = Sim(SimParams(n=16, seed=1), NetworkModel(), cost)
    nodes, ledger = build_rcdbft(sim, epoch_blocks=5)
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    for node in nodes:
        node.start()
    return sim, nodes, ledger


def _signed_report(
    ledger: Any, nv: int, member: int, prepared: tuple[int, int] | None = None, sigs: int = 0
) -> tuple[int, int, int, tuple[int, int] | None, int]:
    rep = (member, 0, 0, prepared, sigs)
    ledger.vc_reports.add((nv, rep))
    return rep


def test_rcdbft_tvc_needs_a_cluster_quorum_of_signed_member_reports(cost: CostModel) -> None:
    _sim, nodes, ledger = _rc_sim(cost)
    cfg = ledger.configs[0]
    judge, ldr = nodes[cfg.leaders[0]], cfg.leaders[1]
    members = cfg.clusters[1]
    q = cluster_quorum(len(members))[1]
    reps = tuple(_signed_report(ledger, 1, i) for i in members[:q])

    def tvc(r: tuple[Any, ...], src: int = ldr) -> Msg:
        return Msg("TVC", src, 1, 0, 0, data=(r, ()))

    assert judge.valid_tvc(tvc(reps))
    assert not judge.valid_tvc(tvc(reps[:-1]))  # below the cluster quorum
    made_up = (members[0], 0, 0, (0, 0xA), 9)  # the leader writes a report nobody signed
    forged = (*[r for r in reps if r[0] != members[0]], made_up)
    assert not judge.valid_tvc(tvc(forged))
    other = cfg.clusters[2][0]
    assert not judge.valid_tvc(tvc((*reps[:-1], _signed_report(ledger, 1, other))))
    # A prepared claim needs a prepared certificate (2f_top+1 cluster quorums of PREPAREs).
    claim = tuple(_signed_report(ledger, 1, i, (0, 0xA), 12) for i in members[:q])
    assert not judge.valid_tvc(tvc(claim))
    for c in cfg.clusters[: cluster_quorum(len(cfg.clusters))[1]]:
        for i in c:
            ledger.signed.add(("PV", i, 0, 1, 0xA))
    assert judge.valid_tvc(tvc(claim))


def test_rcdbft_new_view_follows_the_members_reports_not_the_leader(cost: CostModel) -> None:
    _sim, nodes, ledger = _rc_sim(cost)
    cfg = ledger.configs[0]
    judge = nodes[cfg.leaders[0]]
    tvcs = {}
    for c in (1, 2, 3):
        members = cfg.clusters[c]
        q = cluster_quorum(len(members))[1]
        # The leader of cluster 1 reports nothing prepared, but one of its members prepared X.
        reps = tuple(
            _signed_report(ledger, 1, i, (0, 0xA) if (c == 1 and i == members[-1]) else None)
            for i in ([members[0], *members[-(q - 1) :]] if c == 1 else members[:q])
        )
        tvcs[c] = Msg("TVC", cfg.leaders[c], 1, 0, 0, data=(reps, ()))
    assert judge.decide_new_view(tvcs) == (0, 0xA)


def test_rcdbft_member_votes_in_a_new_view_only_for_the_justified_block(cost: CostModel) -> None:
    sim, nodes, ledger = _rc_sim(cost)
    cfg = ledger.configs[0]
    ldr = cfg.leaders[0]
    member = next(nodes[i] for i in cfg.clusters[0] if i != ldr)
    member.on_fwd(Msg("FWD", ldr, 1, 1, 0xB))  # view 1, certificate not seen yet: waits
    assert (1, 1) not in member.as_member.voted and member.as_member.await_nv[1]
    member.as_member.await_nv.clear()
    member.vc.nv_ok[1] = (1, 0xA)  # the checked NEW-VIEW forces 0xA at height 1
    member.on_fwd(Msg("FWD", ldr, 1, 1, 0xB))
    assert (1, 1) not in member.as_member.voted
    assert any(e["event"] == "unjustified_proposal" for e in sim.events)
    member.on_fwd(Msg("FWD", ldr, 1, 1, 0xA))
    assert member.as_member.voted[(1, 1)] == 0xA


def test_rcdbft_member_does_not_freeze_for_a_lone_leaders_view_change(cost: CostModel) -> None:
    _sim, nodes, ledger = _rc_sim(cost)
    cfg = ledger.configs[0]
    ldr = cfg.leaders[0]
    member = next(nodes[i] for i in cfg.clusters[0] if i != ldr)
    member.on_vcn(Msg("VCN", ldr, 1, 1, 0, data=(2.0, ())))  # no intents of other leaders
    assert member.view == 0 and not any(nv == 1 for nv, _ in ledger.vc_reports)
    q_top = cluster_quorum(len(cfg.clusters))[1]
    intents = tuple((c, cfg.leaders[c]) for c in range(q_top))
    member.on_vcn(Msg("VCN", ldr, 1, 1, 0, data=(2.0, intents)))
    assert member.view == 1  # it stops voting in view 0 only when it signs its report
    assert any(nv == 1 and r[0] == member.id for nv, r in ledger.vc_reports)
