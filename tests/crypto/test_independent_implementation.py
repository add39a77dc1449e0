"""Another implementation, written from docs/crypto-format.md on py_ecc (a different BLS12-381
library with its own RFC 9380 hash), decrypts the stored vectors: capsules after 0, 1, 2 and 3
hops and a whole record. It imports nothing of ehrshare (tests/crypto/_independent_mhtipre.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import _independent_mhtipre as ind
import pytest

pytestmark = pytest.mark.slow

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "tipre_v2.json"
HOLDERS = ["patient:alice", "doctor:bob", "doctor:carol", "doctor:dave"]


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text("utf-8"))
    return data


def _type_secret(vec: dict[str, Any], who: str) -> Any:
    name, sk = ind.identity_key(bytes.fromhex(vec["identities"][who]["sk"]))
    assert name == who
    return ind.type_secret(sk, vec["type"])


def test_identity_points_and_keys_agree_with_the_documented_h1(vec: dict[str, Any]) -> None:
    assert ind.encode_g2(ind.h1("patient:alice")).hex() == vec["hashes"]["H1(patient:alice)"]
    name, sk = ind.identity_key(bytes.fromhex(vec["identities"]["doctor:carol"]["sk"]))
    assert ind.key_matches(name, sk, bytes.fromhex(vec["mpk"]))
    assert (
        ind.tag(ind.DST_ID_TAG, "patient:alice").hex()
        == vec["hashes"]["identity_tag(patient:alice)"]
    )


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_a_capsule_after_hops_decrypts(vec: dict[str, Any], hops: int) -> None:
    d = _type_secret(vec, HOLDERS[hops])
    m = ind.decrypt_capsule(bytes.fromhex(vec[f"capsule_hops_{hops}"]), d)
    assert m.hex() == vec["m"]


def test_a_record_decrypts(vec: dict[str, Any]) -> None:
    rec = vec["record"]
    m = ind.decrypt_capsule(bytes.fromhex(rec["capsule"]), _type_secret(vec, rec["owner"]))
    plain = ind.decrypt_record(
        bytes.fromhex(rec["sealed"]),
        m,
        record_id=rec["record_id"],
        owner=rec["owner"],
        type_label=vec["type"],
    )
    assert hashlib.sha256(plain).hexdigest() == rec["plaintext_sha256"]
