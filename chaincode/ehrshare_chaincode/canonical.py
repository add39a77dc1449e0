"""Canonical JSON for everything the chaincode stores or returns.

Sorted keys, no insignificant whitespace, UTF-8, and no floats: every endorsing peer must produce
byte-identical writes, and a float's text form is not something to bet consensus on. This module
must stay pure (no I/O, no clock).
"""

from __future__ import annotations

import json
from typing import Any

from .stub import ChaincodeError

__all__ = ["dumps", "loads"]


def _check(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise ChaincodeError(f"value at {path} is a float; only integers are allowed")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ChaincodeError(f"key at {path} is not a string")
            _check(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")


def dumps(value: Any) -> bytes:
    """Serialise to canonical JSON bytes; refuses floats."""
    _check(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_float(text: str) -> Any:
    raise ChaincodeError("floating-point numbers are not accepted")


def loads(data: bytes | str, what: str = "value") -> Any:
    """Parse JSON, refusing floats, NaN and malformed input with an error naming ``what``."""
    try:
        return json.loads(data, parse_float=_no_float, parse_constant=_no_float)
    except ChaincodeError:
        raise ChaincodeError(f"{what} contains a floating-point number") from None
    except (ValueError, UnicodeDecodeError):
        raise ChaincodeError(f"{what} is not valid json") from None
