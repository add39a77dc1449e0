"""ehrshare: patient-controlled sharing of electronic health records.

Encrypted records live in a content-addressed store (IPFS, or an embedded
store by default); their pointers, the patients' access grants and an
operation log live on a Hyperledger Fabric channel (or an embedded ledger
running the same chaincode). The cryptography — identity-based, type-
conditional, multi-hop proxy re-encryption on BLS12-381 with a distributed
key generation centre — runs client-side in :mod:`ehrshare.hazmat`.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
