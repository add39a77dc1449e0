"""The ehrshare chaincode: the on-chain half of the system (see docs/chaincode.md).

Backends run :func:`invoke` with a :class:`ChaincodeStub`; nothing in this package knows which
backend it runs on. :data:`FUNCTIONS` lists every transaction function with its kind (``submit``
or ``evaluate``) and its argument names: the one table clients build their calls from.
"""

from .auditlog import GENESIS_HASH, SYSTEM_CHAIN, entry_hash, verify_entries
from .contract import CONTRACT_NAME, FUNCTIONS, ROLES, EHRContract, FunctionSpec, invoke
from .stub import (
    ChaincodeError,
    ChaincodeStub,
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    partial_composite_range,
    split_composite_key,
)

__all__ = [
    "CONTRACT_NAME",
    "FUNCTIONS",
    "GENESIS_HASH",
    "ROLES",
    "SYSTEM_CHAIN",
    "ChaincodeError",
    "ChaincodeStub",
    "EHRContract",
    "FunctionSpec",
    "KeyModification",
    "KeyValue",
    "TxTimestamp",
    "create_composite_key",
    "entry_hash",
    "invoke",
    "partial_composite_range",
    "split_composite_key",
    "verify_entries",
]
