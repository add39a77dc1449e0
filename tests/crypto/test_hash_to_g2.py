"""H1 is the standard hash: RFC 9380 BLS12381G2_XMD:SHA-256_SSWU_RO_, loaded into mcl exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pymcl
import pytest

from ehrshare.hazmat import tipre
from ehrshare.hazmat.pairing import G2, Scalar, _mcl_g2_bytes, hash_to_g2

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "rfc9380_g2.json").read_text("utf-8")
)

# The standard generator of G2 (IETF pairing-friendly-curves draft, ZCash spec), big-endian hex.
P2_X = (
    0x024AA2B2F08F0A91260805272DC51051C6E47AD4FA403B02B4510B647AE3D1770BAC0326A805BBEFD48056C8C121BDB8,
    0x13E02B6052719F607DACD3A088274F65596BD0D09920B61AB5DA61BBDC7F5049334CF11213945D57E5AC7D055D042B7E,
)
P2_Y = (
    0x0CE5D527727D6E118CC9CDC6DA2E351AADFD9BAA8CBDD3A76D429A695160D12C923AC9CC3BACA289E193548608B82801,
    0x0606C4A02EA734CC32ACD2B02BC28B99CB3E287E85A763AF267492AB572E99AB3F370D275CEC1DA1AAA9075FF05F79BE,
)
FP = int(
    "1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB",
    16,
)


def test_the_rfc_lists_all_five_messages() -> None:
    assert VECTORS["dst"] == "QUUX-V01-CS02-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
    assert [len(v["msg"]) for v in VECTORS["vectors"]] == [0, 3, 16, 133, 517]


@pytest.mark.parametrize("vec", VECTORS["vectors"], ids=lambda v: f"len{len(v['msg'])}")
def test_hash_to_g2_matches_the_rfc_9380_vectors(vec: dict[str, str]) -> None:
    x = (int(vec["x_c0"], 16), int(vec["x_c1"], 16))
    y = (int(vec["y_c0"], 16), int(vec["y_c1"], 16))
    got = hash_to_g2(vec["msg"].encode("ascii"), VECTORS["dst"].encode("ascii"))
    assert got.to_bytes() == _mcl_g2_bytes(x, y)
    # and the negated point is a different element: the y sign really is encoded
    assert (-got).to_bytes() == _mcl_g2_bytes(x, (FP - y[0], FP - y[1]))


def test_mcl_g2_encoding_of_the_standard_generator() -> None:
    # Pins the mapping between affine coordinates and mcl's compressed bytes (x.c0 ‖ x.c1
    # little-endian, flag = y.c0 odd) that docs/crypto-format.md specifies.
    assert _mcl_g2_bytes(P2_X, P2_Y) == G2.generator().to_bytes()
    assert _mcl_g2_bytes(P2_X, (FP - P2_Y[0], FP - P2_Y[1])) == (-G2.generator()).to_bytes()


def test_h1_is_the_rfc_hash_with_the_project_dst_not_mcls_legacy_map() -> None:
    dst = b"EHRSHARE-V02-CS01-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
    q = tipre.identity_point("patient:alice")
    assert q == hash_to_g2(b"patient:alice", dst)
    assert q.to_bytes() != bytes(pymcl.G2.hash(b"patient:alice").serialize())


def test_hash_to_g2_is_domain_separated_and_deterministic() -> None:
    a = hash_to_g2(b"x", b"DST-A")
    assert a == hash_to_g2(b"x", b"DST-A")
    assert a != hash_to_g2(b"x", b"DST-B")
    assert a != hash_to_g2(b"y", b"DST-A")
    assert not (Scalar.from_int(2) * a).is_identity()


@pytest.mark.parametrize("dst", [b"", b"x" * 256])
def test_hash_to_g2_refuses_a_bad_dst(dst: bytes) -> None:
    with pytest.raises(ValueError, match="DST"):
        hash_to_g2(b"m", dst)


def test_hash_to_g2_refuses_text() -> None:
    with pytest.raises(TypeError):
        hash_to_g2("m", b"dst")  # type: ignore[arg-type]
