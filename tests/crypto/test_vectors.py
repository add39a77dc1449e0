"""Known-answer vectors: recomputing them from the seed gives exactly the stored bytes."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ehrshare.hazmat import hybrid, tipre
from ehrshare.hazmat.pairing import GT

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ehrshare_vectors", VECTORS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS_DIR / "tipre_v2.json").read_text("utf-8"))
    return data


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{path}/{key}")
        return out
    return [] if a == b else [path]


def test_recomputed_vectors_match_the_stored_ones(stored: dict[str, Any]) -> None:
    recomputed = json.loads(json.dumps(_generator().compute()))
    assert _diff(recomputed, stored) == []


def test_stored_vectors_decrypt_without_the_generator(stored: dict[str, Any]) -> None:
    t = stored["type"]
    ids = list(stored["identities"])
    assert len(ids) == 4
    carol = stored["identities"]["doctor:carol"]
    sk = tipre.IdentitySecretKey.from_secret_bytes(bytes.fromhex(carol["sk"]))
    mpk = tipre.MasterPublicKey.from_bytes(bytes.fromhex(stored["mpk"]))
    sk.check(mpk)
    capsule = tipre.Capsule.from_bytes(bytes.fromhex(stored["capsule_hops_2"]))
    verified = capsule.verify(owner="patient:alice", type_label=t)
    m = tipre.decrypt(verified, sk.type_secret(t))
    assert m == GT.from_bytes(bytes.fromhex(stored["m"]))

    rec = stored["record"]
    alice = tipre.IdentitySecretKey.from_secret_bytes(
        bytes.fromhex(stored["identities"]["patient:alice"]["sk"])
    )
    out = io.BytesIO()
    hybrid.decrypt_record(
        io.BytesIO(bytes.fromhex(rec["sealed"])),
        out,
        capsule=tipre.Capsule.from_bytes(bytes.fromhex(rec["capsule"])).verify(
            owner=rec["owner"], type_label=t
        ),
        receiving_sk=alice.type_secret(t),
        record_id=rec["record_id"],
    )
    assert hashlib.sha256(out.getvalue()).hexdigest() == rec["plaintext_sha256"]


def test_the_seeded_rng_is_deterministic_and_injected_everywhere() -> None:
    gen = _generator()
    assert gen.compute()["capsule_hops_1"] == gen.compute()["capsule_hops_1"]
    rng_a, rng_b = gen.SeededRng(b"a"), gen.SeededRng(b"b")
    assert rng_a(10) != rng_b(10)
