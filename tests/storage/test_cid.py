"""CID, multihash and varint encoding: known answers, strict parsing, property round-trips."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.storage.cid import (
    CID,
    DAG_PB,
    RAW,
    SHA2_256,
    decode_varint,
    encode_varint,
    sha256_multihash,
)

# The CIDv1 (raw, sha2-256) of zero bytes, as every IPFS implementation prints it.
EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_known_varints() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint(2**63 - 1) == b"\xff" * 8 + b"\x7f"


@given(st.integers(min_value=0, max_value=2**63 - 1), st.binary(max_size=4))
def test_varint_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + tail) == (value, len(encoded))


@pytest.mark.parametrize("value", [-1, 2**63])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="varint out of range"):
        encode_varint(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\x80\x00", "non-minimal"),
        (b"\xff" * 9 + b"\x01", "longer than 9"),
    ],
)
def test_varint_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_varint(data)


def test_empty_raw_cid_known_answer() -> None:
    cid = CID.v1(RAW, b"")
    assert str(cid) == EMPTY_RAW
    assert cid.digest == hashlib.sha256(b"").digest()
    assert cid.codec_name == "raw"
    assert cid.hash_code == SHA2_256
    assert CID.parse(EMPTY_RAW) == cid


def test_cidv0_parses_and_prints_base58() -> None:
    # The well-known empty UnixFS directory.
    text = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    cid = CID.parse(text)
    assert cid.version == 0
    assert cid.codec == DAG_PB
    assert str(cid) == text
    assert str(CID(1, DAG_PB, cid.multihash)) == (
        "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    )


@given(
    st.sampled_from([RAW, DAG_PB, 0x71, 0x300]),
    st.binary(min_size=32, max_size=32),
)
def test_cid_text_and_bytes_round_trip(codec: int, digest: bytes) -> None:
    cid = CID(1, codec, bytes([SHA2_256, 32]) + digest)
    assert CID.parse(str(cid)) == cid
    assert CID.from_bytes(cid.to_bytes()) == cid
    assert CID.parse("B" + str(cid)[1:].upper()) == cid  # upper-case base32 multibase
    assert str(cid).startswith("b")


@given(st.binary(min_size=32, max_size=32))
def test_cidv0_round_trip(digest: bytes) -> None:
    cid = CID(0, DAG_PB, bytes([SHA2_256, 32]) + digest)
    assert CID.parse(str(cid)) == cid
    assert CID.from_bytes(cid.to_bytes()) == cid


@given(st.text(max_size=80))
def test_parse_arbitrary_text_raises_only_value_error(text: str) -> None:
    try:
        cid = CID.parse(text)
    except ValueError as exc:
        assert "not a valid CID" in str(exc)
    else:
        assert CID.parse(str(cid)) == cid


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("x" + EMPTY_RAW[1:], "multibase prefix"),
        (EMPTY_RAW[:-1], "impossible base32 length"),
        (EMPTY_RAW[:-1] + "v", "trailing bits"),
        ("b" + EMPTY_RAW[1:].upper(), "case"),
        (EMPTY_RAW + "a", "base32"),
        ("bafkrei!", "base32 character"),
        ("zzzz", "version"),
    ],
)
def test_parse_rejects_malformed(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CID.parse(text)


def test_parse_rejects_truncated_digest() -> None:
    truncated = CID.v1(RAW, b"").to_bytes()[:-1]
    text = "b" + base64.b32encode(truncated).decode().rstrip("=").lower()
    with pytest.raises(ValueError, match="declares a 32-byte digest but carries 31"):
        CID.parse(text)


def test_parse_error_truncates_long_input() -> None:
    with pytest.raises(ValueError) as info:
        CID.parse("b" + "a" * 500)
    assert len(str(info.value)) < 200


def test_constructor_rejects_inconsistent_cids() -> None:
    with pytest.raises(ValueError, match="version"):
        CID(2, RAW, sha256_multihash(b""))
    with pytest.raises(ValueError, match="CIDv0 must use the dag-pb"):
        CID(0, RAW, sha256_multihash(b""))
    with pytest.raises(ValueError, match="32 bytes"):
        CID(1, RAW, bytes([SHA2_256, 3]) + b"abc")
