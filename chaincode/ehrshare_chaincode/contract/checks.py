"""Argument checks shared by every part of the contract, and the general limits they enforce.

Each check returns the checked value or raises :class:`ChaincodeError` with a lower-case sentence
naming the argument; none reads the ledger.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from .. import canonical
from ..stub import ChaincodeError

__all__ = [
    "CID_RE",
    "DEFAULT_PAGE_SIZE",
    "GRANT_ID_RE",
    "MAX_CAPSULE_BYTES",
    "MAX_CERT_BYTES",
    "MAX_FORMAT_VERSION",
    "MAX_HOPS",
    "MAX_PAGE_SIZE",
    "MAX_TYPE_KEY_BYTES",
    "SHA256_RE",
    "cert_arg",
    "check_b64",
    "check_bookmark",
    "check_ibe",
    "check_id",
    "check_int",
    "check_page_size",
    "check_type",
    "check_version",
    "json_ints",
    "json_list",
    "master_key_epoch",
]

MAX_CAPSULE_BYTES = 64 * 1024
MAX_TYPE_KEY_BYTES = 4 * 1024
MAX_CERT_BYTES = 16 * 1024
MAX_FORMAT_VERSION = 255
MAX_HOPS = 16
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
CID_RE = re.compile(r"[A-Za-z0-9]{8,128}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
GRANT_ID_RE = re.compile(r"g-[0-9a-f]{32}")
_IBE_RE = re.compile(r"[^/\x00-\x1f]{1,64}/[^/\x00-\x1f]{1,64}")


def master_key_epoch(mpk_b64: str) -> str:
    """The epoch of a master key: the first 16 hex digits of SHA-256 over its encoding.

    Records, type keys and grants carry the epoch they were made under, so a member reads a
    record with the identity key of that epoch after a new DKG (a resharing keeps the epoch).
    """
    return hashlib.sha256(base64.b64decode(mpk_b64)).hexdigest()[:16]


def check_id(value: str, what: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise ChaincodeError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


def check_type(value: str, what: str = "record type") -> str:
    if not _TYPE_RE.fullmatch(value):
        raise ChaincodeError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '.', '_', ':' or '-'"
        )
    return value


def check_ibe(value: str, what: str = "identity") -> str:
    if not _IBE_RE.fullmatch(value):
        raise ChaincodeError(f"{what} {value!r} is not of the form <msp id>/<enrollment id>")
    return value


def check_b64(value: str, what: str, limit: int) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ChaincodeError(f"{what} is not valid base64") from None
    if not raw:
        raise ChaincodeError(f"{what} is empty")
    if len(raw) > limit:
        raise ChaincodeError(f"{what} is {len(raw)} bytes; the limit is {limit}")
    return value


def check_int(value: str, what: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"-?[0-9]{1,19}", value):
        raise ChaincodeError(f"{what} {value!r} is not an integer")
    n = int(value)
    if not lo <= n <= hi:
        raise ChaincodeError(f"{what} {n} is out of range [{lo}, {hi}]")
    return n


def check_version(value: str) -> int:
    return check_int(value, "format version", 1, MAX_FORMAT_VERSION)


def check_page_size(value: str) -> int:
    if value == "":
        return DEFAULT_PAGE_SIZE
    return check_int(value, "page size", 1, MAX_PAGE_SIZE)


def check_bookmark(value: str, object_type: str, *attrs: str) -> str:
    # A bookmark is a key; it must lie inside the queried range, or a caller could page through
    # another patient's entries.
    if value == "":
        return value
    prefix = "\x00" + object_type + "\x00" + "".join(a + "\x00" for a in attrs)
    if not value.startswith(prefix):
        raise ChaincodeError("bookmark does not belong to this query")
    return value


def cert_arg(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_CERT_BYTES:
        raise ChaincodeError(f"{what} is {len(raw)} bytes; the limit is {MAX_CERT_BYTES}")
    return raw


def json_list(value: str, what: str) -> list[str]:
    if value == "":
        return []
    parsed = canonical.loads(value, what)
    if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
        raise ChaincodeError(f"{what} must be a json list of strings")
    return list(parsed)


def json_ints(value: str, what: str) -> list[int]:
    parsed = canonical.loads(value, what) if value else []
    if not isinstance(parsed, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in parsed
    ):
        raise ChaincodeError(f"{what} must be a json list of integers")
    return list(parsed)
