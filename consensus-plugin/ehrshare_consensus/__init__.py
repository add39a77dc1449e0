"""Consensus simulator: PBFT, RC-DBFT and Raft on simpy, and the benchmark harness."""
