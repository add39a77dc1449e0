"""The RC-DBFT simulation is pinned bit for bit: a seeded run's whole trace (every protocol
event with its virtual time, every replica's committed log, the per-run metrics and the
per-kind message counts) hashes to the fingerprint recorded before the module was split
(issue 14). A refactoring of the simulator must leave these digests unchanged; a change that
is meant to alter the simulation updates them in the same commit and says why."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ehrshare_consensus import runner
from ehrshare_consensus.calibrate import CostModel
from ehrshare_consensus.core import NetworkModel, Sim
from ehrshare_consensus.runner import RunSpec, run_once

# (scenario, seed, network) -> first 16 hex digits of the trace's SHA-256, recorded on the code
# of commit 58b8fe3 (rcdbft.py before the split). Together the runs send every RC-DBFT message
# kind; the WAN run (60 blocks, a view timeout below the WAN round trips) changes views
# constantly and re-clusters at epoch 10.
PINNED: dict[tuple[str, int, str], str] = {
    ("none", 1, "lan"): "77ca126f0f2fc137",
    ("none", 2, "lan"): "33a1cd6999004e1e",
    ("crash", 1, "lan"): "c1c30cfc47580f36",
    ("crash", 2, "lan"): "f5b101ba9aa7d45f",
    ("crash_per_cluster", 1, "lan"): "74c3a00b602de7c4",
    ("crash_per_cluster", 2, "lan"): "223331d079dfe712",
    ("crash_primary", 1, "lan"): "91161552a2773274",
    ("crash_primary", 2, "lan"): "01c8f2a8f25a0463",
    ("silent", 1, "lan"): "56343a27abe26f4e",
    ("silent", 2, "lan"): "f2dc6ddf48eb4bb4",
    ("slow_leader", 1, "lan"): "d861dbb6bd6e0f87",
    ("slow_leader", 2, "lan"): "78d15552466afe90",
    ("equivocating_primary", 1, "lan"): "b26c97245406f42f",
    ("equivocating_primary", 2, "lan"): "8193b9218adead9a",
    ("byzantine_leader", 1, "lan"): "f02e034e0cd28568",
    ("byzantine_leader", 2, "lan"): "a836628030d24525",
    ("reputation_farming", 1, "lan"): "dbae95abedfaf7b6",
    ("reputation_farming", 2, "lan"): "b885026370e000c7",
    ("message_loss", 1, "lan"): "8e2c91a43c15b94e",
    ("message_loss", 2, "lan"): "9e77163ca9c5009c",
    ("partition_heal", 1, "lan"): "52c2d74f2972d60d",
    ("partition_heal", 2, "lan"): "73924c1e02a484b5",
    ("join_leave", 1, "lan"): "22248cd8b86d1cf7",
    ("join_leave", 2, "lan"): "2a026e1587082e45",
    ("two_byzantine_leaders", 1, "lan"): "b969a74439534f78",
    ("two_byzantine_leaders", 2, "lan"): "e8851f98ab2acac8",
    ("none", 3, "wan"): "7b24cc5601104310",
}


def _trace(
    cost: CostModel, monkeypatch: pytest.MonkeyPatch, scenario: str, seed: int, network: str
) -> str:
    sims: list[Sim] = []

    class RecordingSim(Sim):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            sims.append(self)

    monkeypatch.setattr(runner, "Sim", RecordingSim)
    spec = RunSpec(
        protocol="rcdbft",
        n=16,
        blocks=60 if network == "wan" else 30,
        batch_size=10,
        view_timeout_s=0.2,
        epoch_blocks=5,
        scenario=scenario,
        seed=seed,
        network=NetworkModel(kind=network),
    )
    row = run_once(spec, cost)
    row.pop("wall_time_s")
    (sim,) = sims
    trace = {
        "row": row,
        "events": sim.events,
        "logs": [sorted(node.log.items()) for node in sim.nodes],
        "views": [getattr(node, "view", None) for node in sim.nodes],
        "blocks": [
            (b.digest, b.seq, b.proposer, b.view, b.txs, b.size, b.meta)
            for b in sim.blocks.values()
        ],
    }
    text = json.dumps(trace, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(("scenario", "seed", "network"), sorted(PINNED))
def test_rcdbft_trace_matches_the_recorded_fingerprint(
    cost: CostModel, monkeypatch: pytest.MonkeyPatch, scenario: str, seed: int, network: str
) -> None:
    assert _trace(cost, monkeypatch, scenario, seed, network) == PINNED[(scenario, seed, network)]
