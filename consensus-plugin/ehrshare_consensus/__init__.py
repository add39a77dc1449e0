"""Consensus simulator: PBFT, RC-DBFT and Raft on simpy, and the benchmark harness.

Use `runner.run_once(RunSpec(...))` for one seeded run (safety and liveness checked), or
`experiments.load_experiment` + `run_experiment` for declarative rounds; the CLI is
`ehrshare bench consensus`. The simulation is everything but `live`: that module drives a
real network only through a `LiveTarget` handed to it (the SDK's Fabric target), so this
package never imports a Fabric client or starts a process itself.
"""

from __future__ import annotations

from .calibrate import CostModel, measured_costs
from .core import NetworkModel, SafetyViolation
from .runner import PROTOCOLS, Driver, LivenessViolation, RunSpec, SimulatedDriver, run_once

__all__ = [
    "PROTOCOLS",
    "CostModel",
    "Driver",
    "LivenessViolation",
    "NetworkModel",
    "RunSpec",
    "SafetyViolation",
    "SimulatedDriver",
    "measured_costs",
    "run_once",
]
