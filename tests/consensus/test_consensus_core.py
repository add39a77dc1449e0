"""Simulation core: safety checker, network accounting, latency models, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from ehrshare_consensus.calibrate import CostModel, measured_costs
from ehrshare_consensus.core import (
    Msg,
    NetworkModel,
    Node,
    SafetyChecker,
    SafetyViolation,
    Sim,
    SimParams,
    latency_matrix,
)


def test_safety_checker_catches_an_injected_fork() -> None:
    checker = SafetyChecker(strict=True)
    checker.record(node=1, height=5, digest=0xAA)
    checker.record(node=2, height=5, digest=0xAA)
    with pytest.raises(SafetyViolation, match="fork at height 5"):
        checker.record(node=3, height=5, digest=0xBB)
    assert len(checker.violations) == 1


def test_lenient_checker_records_every_fork() -> None:
    checker = SafetyChecker(strict=False)
    checker.record(1, 1, 1)
    checker.record(2, 1, 2)
    checker.record(3, 1, 3)
    assert len(checker.violations) == 2


class _Sink(Node):  # type: ignore[misc]
    def __init__(self, sim: Sim, nid: int) -> None:
        super().__init__(sim, nid)
        self.got: list[tuple[float, str]] = []

    def on_message(self, msg: Msg) -> None:
        self.got.append((self.sim.env.now, msg.kind))


def _sim(cost: CostModel, n: int = 5, **net: float) -> tuple[Sim, list[_Sink]]:
    sim = Sim(SimParams(n=n, seed=3), NetworkModel(jitter=0.0, **net), cost)
    nodes = [_Sink(sim, i) for i in range(n)]
    sim.nodes = list(nodes)
    sim.net.nodes = list(nodes)
    return sim, nodes


def test_multicast_counts_every_copy_and_serialises_on_the_nic(cost: CostModel) -> None:
    sim, nodes = _sim(cost, n=6, bandwidth_mbps=8.0)  # 1 byte per microsecond
    msg = Msg("X", 0, size=1000)
    sim.net.send(0, [1, 2, 3, 4, 5], msg, 0.0)
    sim.env.run()
    assert sim.net.messages == 5
    assert sim.net.bytes == 5000
    arrivals = sorted(t for n in nodes[1:] for t, _ in n.got)
    lat = sim.latency[0, 1:]
    # copy i leaves the NIC after (i+1) ms at 1 byte/us; then one link latency
    expected = sorted(1e-3 * (i + 1) + lat[i] for i in range(5))
    assert arrivals == pytest.approx(expected)


def test_partition_drops_cross_group_copies(cost: CostModel) -> None:
    sim, nodes = _sim(cost)
    sim.net.set_partition([[0, 1], [2, 3, 4]])
    sim.net.send(0, [1, 2, 3], Msg("X", 0), 0.0)
    sim.env.run()
    assert [len(n.got) for n in nodes] == [0, 1, 0, 0, 0]
    sim.net.set_partition(None)
    sim.net.send(0, [2], Msg("X", 0), sim.env.now)
    sim.env.run()
    assert len(nodes[2].got) == 1


def test_busy_node_processes_in_fifo_order(cost: CostModel) -> None:
    sim, nodes = _sim(cost)
    heavy = Msg("H", 1, verifies=100)
    sim.net.send(1, [0], heavy, 0.0)
    sim.net.send(2, [0], Msg("L", 2, verifies=1), 0.0)
    sim.env.run()
    # the second message cannot finish before the first one's 100 verifications
    assert nodes[0].busy >= 101 * cost.verify_s


def test_latency_models() -> None:
    rng = np.random.default_rng(1)
    lan = latency_matrix(NetworkModel(kind="lan"), 10, rng)
    assert lan.shape == (10, 10) and np.allclose(lan, lan.T) and (np.diag(lan) == 0).all()
    assert lan.max() < 0.001
    wan = latency_matrix(NetworkModel(kind="wan"), 10, rng)
    assert wan.max() > 0.05
    given = ((0.0, 5.0), (5.0, 0.0))
    measured = latency_matrix(NetworkModel(kind="measured", matrix_ms=given), 2, rng)
    assert measured[0, 1] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="needs 3"):
        latency_matrix(NetworkModel(kind="measured", matrix_ms=given), 3, rng)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"kind": "moon"}, "lan, wan or measured"),
        ({"loss": 1.0}, "loss"),
        ({"bandwidth_mbps": 0}, "bandwidth"),
        ({"kind": "measured"}, "matrix_ms"),
    ],
)
def test_network_model_rejects_bad_values(kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        NetworkModel(**kwargs)


def test_calibration_measures_real_signatures() -> None:
    cm = measured_costs()
    assert cm.source == "measured"
    assert 0 < cm.sign_s < 0.01 and 0 < cm.verify_s < 0.01
    assert cm.as_dict()["verify_s"] == cm.verify_s
