"""The trivial key-value chaincode: the yardstick ``ehrshare bench fabric`` measures the
contract against (issue 20). A second chaincode of this project, deployed beside the contract
under its own name and served by the same ccaas server (``ehrshare chaincode serve --contract
kv``).

``Put(key, value)`` writes one key (one ``PUT_STATE``, no read, no event, no log entry);
``Get(key)`` returns it. It checks nothing but its arguments: it must never hold data of the
application, and it must stay trivial, or it stops being a yardstick.
"""

from __future__ import annotations

from .stub import ChaincodeError, ChaincodeStub

__all__ = ["KV_FUNCTIONS", "MAX_KEY", "MAX_VALUE", "invoke"]

KV_FUNCTIONS = {"Put": "submit", "Get": "evaluate"}
"""The KV chaincode's functions and their kind."""
MAX_KEY = 256
MAX_VALUE = 64 * 1024


def _key(raw: bytes) -> str:
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ChaincodeError("key is not valid utf-8") from None
    if not key or len(raw) > MAX_KEY or not key.isprintable():
        raise ChaincodeError(f"key must be 1 to {MAX_KEY} printable bytes")
    return key


def invoke(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    """Run ``function`` of the KV chaincode; ChaincodeError names what was wrong."""
    if function == "Put":
        if len(args) != 2:
            raise ChaincodeError(f"Put takes 2 arguments (key, value), got {len(args)}")
        if len(args[1]) > MAX_VALUE:
            raise ChaincodeError(f"value is {len(args[1])} bytes, at most {MAX_VALUE}")
        stub.put_state(_key(args[0]), args[1])
        return b""
    if function == "Get":
        if len(args) != 1:
            raise ChaincodeError(f"Get takes 1 argument (key), got {len(args)}")
        key = _key(args[0])
        value = stub.get_state(key)
        if value is None:
            raise ChaincodeError(f"key {key} does not exist")
        return value
    raise ChaincodeError(f"function {function} does not exist in the kv chaincode")
