"""CPU cost calibration: time the real ECDSA P-256 and SHA-256 operations on this machine.

The simulator charges every node modelled CPU time per message; the signature costs come from
measuring `cryptography`'s ECDSA P-256 sign and verify here, once per process (cached), so the
numbers in a result JSON describe the machine they were produced on. This module must not
guess costs: anything it reports was measured, except the fixed per-message dispatch overhead,
which is a stated model parameter.
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import time
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["CostModel", "measured_costs"]

# Deserialisation and dispatch of one message, not measured (Python's own overhead here would
# say nothing about a Go orderer); a stated assumption, reported in every JSON result.
DEFAULT_MSG_OVERHEAD_S = 10e-6


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds of CPU a node spends per operation; when to use: build one per simulation run."""

    sign_s: float
    verify_s: float
    hash_s_per_byte: float
    msg_overhead_s: float = DEFAULT_MSG_OVERHEAD_S
    source: str = "measured"

    def as_dict(self) -> dict[str, float | str]:
        """The cost model as JSON-ready numbers (recorded in every result)."""
        return asdict(self)


def _median_time(fn: object, repeat: int) -> float:
    call = fn  # keeps mypy quiet about calling an object
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@functools.lru_cache(maxsize=1)
def measured_costs(repeat: int = 200) -> CostModel:
    """Measure ECDSA P-256 sign/verify and SHA-256 throughput once per process."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    msg = b"ehrshare-consensus-calibration" * 4
    sig = key.sign(msg, ec.ECDSA(hashes.SHA256()))
    for _ in range(20):  # warm-up
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    sign_s = _median_time(lambda: key.sign(msg, ec.ECDSA(hashes.SHA256())), repeat)
    verify_s = _median_time(lambda: pub.verify(sig, msg, ec.ECDSA(hashes.SHA256())), repeat)
    blob = bytes(1 << 20)
    hash_s = _median_time(lambda: hashlib.sha256(blob).digest(), 20) / len(blob)
    return CostModel(sign_s=sign_s, verify_s=verify_s, hash_s_per_byte=hash_s)
