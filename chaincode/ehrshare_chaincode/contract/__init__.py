"""The ehrshare contract: one contract type across files, one function table, one dispatcher.

The backends call :func:`invoke` with ``(stub, function, args)``. Every function takes its caller
from the stub's creator certificate, its clock from the transaction timestamp, and stores
canonical JSON under composite keys. A failure raises :class:`ChaincodeError` before anything is
committed (the backend discards the write set). Every state change appends to the operation log
and the transaction's log entries are emitted as its single chaincode event.

Where things are: ``dispatch`` (:class:`EHRContract`, :data:`FUNCTIONS`, :func:`invoke`),
``functions`` (the ``submit``/``evaluate`` declarations), ``context`` (caller, clock, log),
``keys`` (state keys), ``checks`` (argument checks, limits), and one module per domain:
``identities`` (members, org CAs, type keys), ``records``, ``grants``, ``access`` (requests,
approvals, re-encryption reports), ``dkg_sessions`` (KGC keys, opening sessions), ``dkg_board``
(bundles, phases, results), ``audit`` (log reads, state digest), ``recovery``, ``guardians``
and ``emergency`` (break-glass policy, requests, approvals).

What this package must not do: import a backend, read a wall clock, use randomness or floats,
iterate over unordered collections into its output, or read back a key it wrote in the same
transaction (Fabric would show the old value). Crypto objects (capsules, type keys, DKG bundles)
are stored as opaque base64 with a format version; their meaning belongs to
``ehrshare.hazmat``, except that a type key's proof of knowledge is checked here
(:mod:`ehrshare_chaincode.typekey`, which repeats the little of BLS12-381 that needs).
"""

from __future__ import annotations

from .checks import MAX_HOPS, master_key_epoch
from .context import CONTRACT_NAME, ROLES, TxContext
from .dispatch import FUNCTIONS, EHRContract, invoke
from .dkg_sessions import DKG_HEADER_SIZE, DKG_PHASE_KIND
from .functions import FunctionSpec

__all__ = [
    "CONTRACT_NAME",
    "DKG_HEADER_SIZE",
    "DKG_PHASE_KIND",
    "FUNCTIONS",
    "MAX_HOPS",
    "ROLES",
    "EHRContract",
    "FunctionSpec",
    "TxContext",
    "invoke",
    "master_key_epoch",
]
