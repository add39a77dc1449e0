"""Consensus simulator: PBFT, RC-DBFT and Raft on simpy, and the benchmark harness.

Use `runner.run_once(RunSpec(...))` for one seeded run (safety and liveness checked), or
`experiments.load_experiment` + `run_experiment` for declarative rounds; the CLI is
`ehrshare bench consensus`. Everything here is simulated: nothing in this package talks to a
real Fabric network or reports a live measurement.
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
