"""Property tests for the extraction wire formats: round trips, tampering, parse errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.hazmat.dkg import KeyShare
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.extract import (
    ExtractionRequest,
    InvalidPartialKey,
    PartialKeyResponse,
    extract_partial_key,
    open_partial_key,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import Scalar

NODE = KGCNodeKey.generate()
ROSTER = [KGCNodeKey.generate().public_key, NODE.public_key]
SHARE = KeyShare(2, Scalar.random())
REQUEST, REPLY = ExtractionRequest.create("patient:zoe")
ANSWER = extract_partial_key(SHARE, NODE, REQUEST).to_bytes()

identities = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode("utf-8")) <= 1024)


@given(identity=identities, reply=st.binary(min_size=32, max_size=32))
def test_request_round_trip(identity: str, reply: bytes) -> None:
    request = ExtractionRequest(identity, reply)
    data = request.to_bytes()
    assert ExtractionRequest.from_bytes(data) == request
    assert len(data) == 35 + len(identity.encode("utf-8"))


@given(identity=identities, data=st.data())
def test_request_truncated_or_extended_is_encoding_error(
    identity: str, data: st.DataObject
) -> None:
    raw = ExtractionRequest(identity, bytes(range(32))).to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EncodingError):
        ExtractionRequest.from_bytes(raw[:cut])
    with pytest.raises(EncodingError):
        ExtractionRequest.from_bytes(raw + data.draw(st.binary(min_size=1, max_size=8)))


def test_request_errors_name_the_problem() -> None:
    raw = REQUEST.to_bytes()
    with pytest.raises(EncodingError, match="version must be 1, got 3"):
        ExtractionRequest.from_bytes(b"\x03" + raw[1:])
    bad_utf8 = raw[:33] + (2).to_bytes(2, "big") + b"\xff\xfe"
    with pytest.raises(EncodingError, match="not valid UTF-8"):
        ExtractionRequest.from_bytes(bad_utf8)
    empty = raw[:33] + bytes(2)
    with pytest.raises(EncodingError, match="non-empty"):
        ExtractionRequest.from_bytes(empty)


@given(
    index=st.integers(1, 0xFFFF),
    digest=st.binary(min_size=32, max_size=32),
    sealed=st.binary(min_size=144, max_size=144),
    signature=st.binary(min_size=64, max_size=64),
)
def test_response_round_trip(index: int, digest: bytes, sealed: bytes, signature: bytes) -> None:
    response = PartialKeyResponse(index, digest, sealed, signature)
    data = response.to_bytes()
    assert len(data) == PartialKeyResponse.SIZE
    assert PartialKeyResponse.from_bytes(data) == response


@given(data=st.data())
def test_any_changed_byte_of_an_answer_is_refused(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(ANSWER) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = ANSWER[:pos] + bytes([ANSWER[pos] ^ flip]) + ANSWER[pos + 1 :]
    with pytest.raises((EncodingError, VerificationError, DecryptionError)):
        open_partial_key(tampered, request=REQUEST, reply_key=REPLY, roster=ROSTER)


def test_genuine_answer_opens() -> None:
    partial = open_partial_key(ANSWER, request=REQUEST, reply_key=REPLY, roster=ROSTER)
    assert partial.index == 2 and partial.identity == "patient:zoe"


def test_response_parse_errors() -> None:
    with pytest.raises(EncodingError, match=f"must be {PartialKeyResponse.SIZE} bytes, got 10"):
        PartialKeyResponse.from_bytes(bytes(10))
    with pytest.raises(EncodingError, match="version must be 1, got 0"):
        PartialKeyResponse.from_bytes(b"\x00" + ANSWER[1:])
    with pytest.raises(EncodingError, match="at least 1, got 0"):
        PartialKeyResponse.from_bytes(ANSWER[:1] + bytes(2) + ANSWER[3:])
    assert issubclass(InvalidPartialKey, VerificationError)
