"""Generate the MH-TIPRE and record-encryption known-answer vectors (tests/vectors/tipre_v2.json).

Everything random comes from a seeded deterministic generator injected through the ``rng``
parameters, so the same code always produces the same bytes. A change to hashing, domain
separation, serialisation or the KDF changes the vectors; tests/crypto/test_vectors.py recomputes
them and fails on any difference. Regenerate only for a deliberate format change (and bump the
version byte):

    .venv/bin/python tests/vectors/generate.py
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from ehrshare.hazmat import hybrid, tipre
from ehrshare.hazmat.pairing import G1, G2, GT, Scalar

OUTPUT = Path(__file__).with_name("tipre_v2.json")
SEED = b"ehrshare known-answer vectors v1"


class SeededRng:
    """A deterministic byte stream: SHA-256(seed ‖ counter) blocks. For vectors only."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._buf += block
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def compute() -> dict[str, Any]:
    """All vectors as a JSON-ready dict (hex strings)."""
    rng = SeededRng(SEED)
    ids = ["patient:alice", "doctor:bob", "doctor:carol", "doctor:dave"]
    t = "lab-result"
    master = tipre.MasterSecret.generate(rng)
    mpk = master.public_key()
    sks = {i: master.extract(i) for i in ids}
    tsks = {i: sks[i].type_secret(t) for i in ids}
    tpks = {i: tsks[i].public_key(mpk) for i in ids}

    m = GT.random(rng)
    c0 = tipre.encrypt(m, tpks[ids[0]], rng=rng)
    rk01 = tipre.generate_rekey(tsks[ids[0]], tpks[ids[1]], rng=rng)
    c1 = tipre.reencrypt(c0, rk01)
    rk12 = tipre.generate_rekey(tsks[ids[1]], tpks[ids[2]], rng=rng)
    c2 = tipre.reencrypt(c1, rk12)
    if not (
        tipre.decrypt(c0, tsks[ids[0]]) == m
        and tipre.decrypt(c1, tsks[ids[1]]) == m
        and tipre.decrypt(c2, tsks[ids[2]]) == m
    ):
        raise AssertionError("vectors do not decrypt")

    plaintext = bytes(i % 256 for i in range(2500))
    sealed = io.BytesIO()
    rec_capsule = hybrid.encrypt_record(
        plaintext,
        sealed,
        owner_key=tpks[ids[0]],
        record_id="record-0001",
        chunk_size=hybrid.MIN_CHUNK_SIZE,
        rng=rng,
    )
    rec_m = tipre.decrypt(rec_capsule, tsks[ids[0]])
    rec_key = hybrid.derive_record_key(rec_m, hybrid.RecordContext("record-0001", ids[0], t))

    # A third hop, made after the record so the earlier vectors keep their bytes.
    rk23 = tipre.generate_rekey(tsks[ids[2]], tpks[ids[3]], rng=rng)
    c3 = tipre.reencrypt(c2, rk23)
    if tipre.decrypt(c3, tsks[ids[3]]) != m:
        raise AssertionError("vectors do not decrypt")

    return {
        "description": "ehrshare MH-TIPRE v2 (RFC 9380 H1) and record-encryption vectors",
        "seed": SEED.hex(),
        "hashes": {
            "scalar_hash(dst='test', 'abc')": Scalar.hash(b"test", b"abc").to_bytes().hex(),
            "g1_hash(dst='test', 'abc')": G1.hash(b"test", b"abc").to_bytes().hex(),
            "g2_hash(dst='test', 'abc')": G2.hash(b"test", b"abc").to_bytes().hex(),
            "identity_tag(patient:alice)": tipre.identity_tag(ids[0]).hex(),
            "type_tag(lab-result)": tipre.type_tag(t).hex(),
            "H1(patient:alice)": tipre.identity_point(ids[0]).to_bytes().hex(),
        },
        "master_secret": master.to_secret_bytes().hex(),
        "mpk": mpk.to_bytes().hex(),
        "type": t,
        "identities": {
            i: {
                "sk": sks[i].to_secret_bytes().hex(),
                "type_public_key": tpks[i].to_bytes().hex(),
            }
            for i in ids
        },
        "m": m.to_bytes().hex(),
        "capsule_hops_0": c0.to_bytes().hex(),
        "rekey_alice_bob": rk01.to_secret_bytes().hex(),
        "capsule_hops_1": c1.to_bytes().hex(),
        "rekey_bob_carol": rk12.to_secret_bytes().hex(),
        "capsule_hops_2": c2.to_bytes().hex(),
        "rekey_carol_dave": rk23.to_secret_bytes().hex(),
        "capsule_hops_3": c3.to_bytes().hex(),
        "record": {
            "record_id": "record-0001",
            "owner": ids[0],
            "chunk_size": hybrid.MIN_CHUNK_SIZE,
            "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
            "capsule": rec_capsule.to_bytes().hex(),
            "aes_key": rec_key.hex(),
            "sealed": sealed.getvalue().hex(),
        },
    }


def main() -> int:
    OUTPUT.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    sys.stderr.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
