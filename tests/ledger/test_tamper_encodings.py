"""Property tests of the encodings the tamper checks rest on: head files, stored write sets and
Fabric's block header bytes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare.ledger.fabric_blocks import header_bytes
from ehrshare.ledger.records import EndorsedTransaction, parse_writes
from ehrshare.ledger.witness import HeadFileError, SignedHead

heads = st.builds(
    SignedHead,
    channel=st.text(min_size=1, max_size=20),
    height=st.integers(min_value=1, max_value=2**62),
    head=st.binary(min_size=32, max_size=32).map(bytes.hex),
    orderer=st.binary(min_size=32, max_size=32).map(bytes.hex),
    signed_at=st.integers(min_value=0, max_value=2**40),
    witness_msp=st.text(min_size=1, max_size=20),
    witness_cert=st.text(min_size=1, max_size=200).map(str.encode),
    signature=st.binary(max_size=80),
)


@given(heads)
def test_a_head_file_reads_back_as_written(head: SignedHead) -> None:
    again = SignedHead.from_json(head.to_json())
    assert again == head
    assert again.body() == head.body()


@given(heads, st.sampled_from(["format", "height", "head", "witness", "signature", "channel"]))
def test_a_head_file_missing_a_field_is_a_head_file_error(head: SignedHead, field: str) -> None:
    raw = json.loads(head.to_json())
    del raw[field]
    with pytest.raises(HeadFileError):
        SignedHead.from_json(json.dumps(raw).encode())


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_head_or_a_head_file_error(data: bytes) -> None:
    with contextlib.suppress(HeadFileError):  # anything else escaping fails the test
        SignedHead.from_json(data)


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["ehrshare", "other"]), st.binary(min_size=1, max_size=40)),
        st.none() | st.binary(min_size=1, max_size=60),
        max_size=8,
    )
)
def test_a_stored_write_set_parses_back(writes: dict[tuple[str, bytes], bytes | None]) -> None:
    tx = EndorsedTransaction.__new__(EndorsedTransaction)
    tx.writes = writes
    assert parse_writes(tx.writes_json()) == writes


def _der(data: bytes, at: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, next offset) of one DER element (test-local reader)."""
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        length = int.from_bytes(data[at : at + n], "big")
        assert n == (length.bit_length() + 7) // 8 and length >= 0x80  # minimal
        at += n
    return tag, data[at : at + length], at + length


@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=300),
    st.binary(max_size=300),
)
def test_block_header_bytes_are_the_der_of_number_and_hashes(
    number: int, previous: bytes, data_hash: bytes
) -> None:
    encoded = header_bytes(number, previous, data_hash)
    tag, body, end = _der(encoded)
    assert (tag, end) == (0x30, len(encoded))
    tag, integer, at = _der(body)
    assert tag == 0x02 and int.from_bytes(integer, "big", signed=True) == number
    assert len(integer) == 1 or not (integer[0] == 0 and integer[1] < 0x80)  # minimal
    tag, prev, at = _der(body, at)
    assert (tag, prev) == (0x04, previous)
    tag, got, at = _der(body, at)
    assert (tag, got, at) == (0x04, data_hash, len(body))
