"""Hybrid record encryption: round trips, streaming, and every kind of tampering is refused."""

from __future__ import annotations

import io
import itertools
import tracemalloc
from pathlib import Path

import pytest
from _keyring import IDENTITIES, TYPES, Keyring
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare import crypto
from ehrshare.hazmat import hybrid
from ehrshare.hazmat.errors import DecryptionError, WrongIdentityError, WrongTypeError
from ehrshare.hazmat.hybrid import (
    HEADER_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    RecordContext,
    decrypt_stream,
    derive_record_key,
    encrypt_stream,
    sealed_size,
)
from ehrshare.hazmat.pairing import GT
from ehrshare.hazmat.tipre import TypeSecretKey, generate_rekey, reencrypt

ALICE, BOB, CAROL, DAVE, _ = IDENTITIES
LAB, IMAGING, _ = TYPES
CS = MIN_CHUNK_SIZE
CTX = RecordContext("rec-1", ALICE, LAB)
KEY = bytes(range(32))


def _seal(data: bytes, context: RecordContext = CTX, chunk_size: int = CS) -> bytes:
    out = io.BytesIO()
    n = encrypt_stream(data, out, key=KEY, context=context, chunk_size=chunk_size)
    assert n == len(out.getvalue())
    return out.getvalue()


def _open(sealed: bytes, key: bytes = KEY, context: RecordContext = CTX) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(sealed), out, key=key, context=context)
    return out.getvalue()


@pytest.fixture(scope="module")
def three_chunks() -> tuple[bytes, bytes]:
    data = bytes(i % 251 for i in range(3 * CS - 5))
    return data, _seal(data)


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 7])
def test_stream_round_trip_at_chunk_boundaries(size: int) -> None:
    data = bytes(i % 256 for i in range(size))
    sealed = _seal(data)
    assert len(sealed) == sealed_size(size, CS)
    assert _open(sealed) == data


def test_stream_reads_and_writes_one_chunk_at_a_time() -> None:
    class Reader(io.BytesIO):
        biggest = 0

        def read(self, n: int | None = -1, /) -> bytes:
            assert n is not None and n >= 0, "the whole input must never be read at once"
            Reader.biggest = max(Reader.biggest, n)
            return super().read(n)

    class Writer(io.BytesIO):
        biggest = 0

        def write(self, b: bytes, /) -> int:  # type: ignore[override]
            Writer.biggest = max(Writer.biggest, len(b))
            return super().write(b)

    data = bytes(10 * CS)
    sealed = Writer()
    encrypt_stream(Reader(data), sealed, key=KEY, context=CTX, chunk_size=CS)
    assert Reader.biggest == CS
    assert Writer.biggest == CS + TAG_SIZE
    Reader.biggest = Writer.biggest = 0
    plain = Writer()
    decrypt_stream(Reader(sealed.getvalue()), plain, key=KEY, context=CTX)
    assert plain.getvalue() == data
    assert Reader.biggest == CS + TAG_SIZE
    assert Writer.biggest == CS


def test_stream_accepts_iterables_and_short_reads() -> None:
    data = bytes(range(256)) * 20
    parts = [data[i : i + 100] for i in range(0, len(data), 100)]
    out = io.BytesIO()
    encrypt_stream(parts, out, key=KEY, context=CTX, chunk_size=CS)

    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1, /) -> bytes:
            return super().read(min(n or 0, 300))

    plain = io.BytesIO()
    decrypt_stream(Trickle(out.getvalue()), plain, key=KEY, context=CTX)
    assert plain.getvalue() == data


def test_bad_parameters_are_refused_precisely() -> None:
    with pytest.raises(ValueError, match="chunk size must be between"):
        encrypt_stream(b"x", io.BytesIO(), key=KEY, context=CTX, chunk_size=100)
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_stream(b"x", io.BytesIO(), key=KEY[:16], context=CTX)
    with pytest.raises(ValueError, match="record_id must be a non-empty str"):
        RecordContext("", ALICE, LAB)


def test_the_key_is_bound_to_record_owner_and_type() -> None:
    m = GT.random()
    keys = {
        derive_record_key(m, c)
        for c in (
            CTX,
            RecordContext("rec-2", ALICE, LAB),
            RecordContext("rec-1", BOB, LAB),
            RecordContext("rec-1", ALICE, IMAGING),
        )
    }
    assert len(keys) == 4
    assert derive_record_key(m, CTX) == derive_record_key(m, RecordContext("rec-1", ALICE, LAB))


@pytest.mark.parametrize(
    "context",
    [
        RecordContext("rec-2", ALICE, LAB),
        RecordContext("rec-1", BOB, LAB),
        RecordContext("rec-1", ALICE, IMAGING),
    ],
)
def test_wrong_associated_data_is_a_decryption_error(
    three_chunks: tuple[bytes, bytes], context: RecordContext
) -> None:
    with pytest.raises(DecryptionError):
        _open(three_chunks[1], context=context)


def test_wrong_key_is_a_decryption_error(three_chunks: tuple[bytes, bytes]) -> None:
    with pytest.raises(DecryptionError):
        _open(three_chunks[1], key=bytes(32))


def test_truncation_at_a_chunk_boundary_is_detected(three_chunks: tuple[bytes, bytes]) -> None:
    sealed = three_chunks[1]
    for chunks in (0, 1, 2):
        with pytest.raises(DecryptionError):
            _open(sealed[: HEADER_SIZE + chunks * (CS + TAG_SIZE)])


def test_reordered_duplicated_and_extended_chunks_are_detected(
    three_chunks: tuple[bytes, bytes],
) -> None:
    sealed = three_chunks[1]
    head, body = sealed[:HEADER_SIZE], sealed[HEADER_SIZE:]
    c0, c1, c2 = body[: CS + 16], body[CS + 16 : 2 * (CS + 16)], body[2 * (CS + 16) :]
    for bad in (
        head + c1 + c0 + c2,
        head + c0 + c0 + c1 + c2,
        head + c0 + c1 + c2 + c2,
        sealed + b"\x00",
        sealed + bytes(CS + 16),
    ):
        with pytest.raises(DecryptionError):
            _open(bad)


@settings(max_examples=60)
@given(data=st.data())
def test_any_flipped_bit_is_a_decryption_error(
    three_chunks: tuple[bytes, bytes], data: st.DataObject
) -> None:
    sealed = three_chunks[1]
    bit = data.draw(st.integers(min_value=0, max_value=len(sealed) * 8 - 1))
    bad = bytearray(sealed)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionError):
        _open(bytes(bad))


@settings(max_examples=40)
@given(data=st.data())
def test_any_truncation_is_a_decryption_error(
    three_chunks: tuple[bytes, bytes], data: st.DataObject
) -> None:
    sealed = three_chunks[1]
    cut = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    with pytest.raises(DecryptionError):
        _open(sealed[:cut])


@settings(max_examples=25)
@given(st.binary(max_size=3 * CS))
def test_stream_round_trip_property(data: bytes) -> None:
    assert _open(_seal(data)) == data


# --- records: capsule + stream ----------------------------------------------------------------


def test_record_round_trip_for_the_owner(keys: Keyring) -> None:
    capsule, sealed = crypto.encrypt_record(
        b"FHIR Observation", owner_key=keys.tpk[ALICE, LAB], record_id="r-1"
    )
    plain = crypto.decrypt_record(
        sealed,
        capsule=capsule,
        owner=ALICE,
        type_label=LAB,
        record_id="r-1",
        receiving_sk=keys.tsk[ALICE, LAB],
    )
    assert plain == b"FHIR Observation"


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_record_decrypts_after_multi_hop_sharing(keys: Keyring, hops: int) -> None:
    out = io.BytesIO()
    capsule = hybrid.encrypt_record(
        b"x" * 5000, out, owner_key=keys.tpk[ALICE, LAB], record_id="r-2"
    )
    for src, dst in itertools.pairwise(IDENTITIES[: hops + 1]):
        capsule = reencrypt(capsule, generate_rekey(keys.tsk[src, LAB], keys.tpk[dst, LAB]))
    plain = crypto.decrypt_record(
        out.getvalue(),
        capsule=capsule.to_bytes(),
        owner=ALICE,
        type_label=LAB,
        record_id="r-2",
        receiving_sk=keys.tsk[IDENTITIES[hops], LAB],
    )
    assert plain == b"x" * 5000


@pytest.fixture(scope="module")
def record(keys: Keyring) -> tuple[bytes, bytes]:
    return crypto.encrypt_record(b"secret lab value", owner_key=keys.tpk[ALICE, LAB], record_id="r")


def _read(keys: Keyring, record: tuple[bytes, bytes], **overrides: object) -> bytes:
    args: dict[str, object] = {
        "capsule": record[0],
        "owner": ALICE,
        "type_label": LAB,
        "record_id": "r",
        "receiving_sk": keys.tsk[ALICE, LAB],
    }
    args.update(overrides)
    return crypto.decrypt_record(record[1], **args)  # type: ignore[arg-type]


def test_record_with_wrong_identity_or_type_key_is_refused_precisely(
    keys: Keyring, record: tuple[bytes, bytes]
) -> None:
    with pytest.raises(WrongIdentityError):
        _read(keys, record, receiving_sk=keys.tsk[BOB, LAB])
    with pytest.raises(WrongTypeError):
        _read(keys, record, receiving_sk=keys.tsk[ALICE, IMAGING])


def test_record_with_a_wrong_key_that_passes_the_tag_checks_is_a_decryption_error(
    keys: Keyring, record: tuple[bytes, bytes]
) -> None:
    bob = keys.tsk[BOB, LAB]
    impostor = TypeSecretKey(ALICE, LAB, bob._h, bob._d)
    with pytest.raises(DecryptionError):
        _read(keys, record, receiving_sk=impostor)


def test_record_with_wrong_record_id_is_a_decryption_error(
    keys: Keyring, record: tuple[bytes, bytes]
) -> None:
    with pytest.raises(DecryptionError):
        _read(keys, record, record_id="r-other")


def test_garbled_capsule_is_a_decryption_error(keys: Keyring, record: tuple[bytes, bytes]) -> None:
    with pytest.raises(DecryptionError):
        _read(keys, record, capsule=record[0][:-1])
    with pytest.raises(DecryptionError):
        _read(keys, record, capsule=b"")


@settings(max_examples=30)
@given(data=st.data())
def test_any_flipped_capsule_bit_is_refused_never_a_wrong_plaintext(
    keys: Keyring, record: tuple[bytes, bytes], data: st.DataObject
) -> None:
    bit = data.draw(st.integers(min_value=0, max_value=len(record[0]) * 8 - 1))
    bad = bytearray(record[0])
    bad[bit // 8] ^= 1 << (bit % 8)
    # tags travel in clear, so a flipped tag bit is reported as the wrong identity or type
    with pytest.raises((DecryptionError, WrongIdentityError, WrongTypeError)):
        _read(keys, record, capsule=bytes(bad))


def test_file_round_trip_and_no_partial_output_on_failure(keys: Keyring, tmp_path: Path) -> None:
    src = tmp_path / "scan.dcm"
    src.write_bytes(bytes(i % 256 for i in range(3 * 1024 * 1024 + 11)))
    sealed = tmp_path / "scan.sealed"
    capsule = crypto.encrypt_file(
        src, sealed, owner_key=keys.tpk[ALICE, IMAGING], record_id="img-1"
    )
    out = tmp_path / "out.dcm"
    args = {
        "capsule": capsule,
        "owner": ALICE,
        "type_label": IMAGING,
        "receiving_sk": keys.tsk[ALICE, IMAGING],
    }
    assert crypto.decrypt_file(sealed, out, record_id="img-1", **args) == src.stat().st_size  # type: ignore[arg-type]
    assert out.read_bytes() == src.read_bytes()
    # truncate the last chunk: the first chunks authenticate, the stream does not
    raw = sealed.read_bytes()
    sealed.write_bytes(raw[:-100])
    failed = tmp_path / "failed.dcm"
    with pytest.raises(DecryptionError):
        crypto.decrypt_file(sealed, failed, record_id="img-1", **args)  # type: ignore[arg-type]
    assert not failed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dcm", "scan.dcm", "scan.sealed"]


def test_a_large_record_streams_in_bounded_memory() -> None:
    class Sink:
        def __init__(self) -> None:
            self.size = 0

        def write(self, b: bytes, /) -> int:
            self.size += len(b)
            return len(b)

    data = bytes(32 << 20)
    sealed = io.BytesIO()
    encrypt_stream(data, sealed, key=KEY, context=CTX)  # default 1 MiB chunks
    raw = sealed.getvalue()
    del sealed
    tracemalloc.start()
    try:
        sink = Sink()
        encrypt_stream(data, sink, key=KEY, context=CTX)
        enc_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        plain = Sink()
        decrypt_stream(io.BytesIO(raw), plain, key=KEY, context=CTX)
        dec_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.size == len(raw)
    assert plain.size == len(data)
    # a few chunks at a time, never a copy of the 32 MiB record
    assert enc_peak < 6 << 20
    assert dec_peak < 6 << 20
