"""The embedded store: round-trips, real CIDs, atomic writes, tamper detection, verified reads."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrshare.storage import (
    CHUNK_SIZE,
    BlobStore,
    ContentNotFound,
    EmbeddedStore,
    IntegrityError,
    StorageError,
    file_cid,
    get_verified,
    sha256_hex,
)

fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def blob_path(store: EmbeddedStore, cid: str) -> Path:
    [path] = [p for p in (store.root / "blobs").rglob(cid)]
    return path


def test_implements_the_blob_store_protocol(store: EmbeddedStore) -> None:
    assert isinstance(store, BlobStore)


@fixture_ok
@given(st.binary(max_size=3 * CHUNK_SIZE // 2))
def test_round_trip_and_cid_is_kubos(store: EmbeddedStore, data: bytes) -> None:
    cid = store.put(data)
    assert cid == str(file_cid(data))
    assert store.has(cid)
    assert store.get(cid) == data
    assert b"".join(store.iter(cid)) == data
    assert get_verified(store, cid, sha256_hex(data)) == data


@fixture_ok
@given(st.binary(max_size=2000))
def test_same_bytes_same_cid_one_file(store: EmbeddedStore, data: bytes) -> None:
    first = store.put(data)
    assert store.put(io.BytesIO(data)) == first
    assert store.put(iter([data])) == first
    assert len(list((store.root / "blobs").rglob(first))) == 1
    assert list((store.root / "tmp").iterdir()) == []


def test_large_stream_round_trip_in_pieces(store: EmbeddedStore) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 123)
    cid = store.put(iter([data[i : i + 1000] for i in range(0, len(data), 1000)]))
    pieces = list(store.iter(cid, chunk_size=100_000))
    assert b"".join(pieces) == data
    assert all(len(p) <= 100_000 for p in pieces)


@pytest.mark.parametrize("where", [0, CHUNK_SIZE, -1])
def test_tampered_blob_is_reported_on_every_read(store: EmbeddedStore, where: int) -> None:
    data = os.urandom(CHUNK_SIZE + 10)
    cid = store.put(data)
    path = blob_path(store, cid)
    tampered = bytearray(data)
    tampered[where] ^= 0x01
    path.write_bytes(bytes(tampered))
    with pytest.raises(IntegrityError, match=cid):
        store.get(cid)
    with pytest.raises(IntegrityError, match=cid):
        list(store.iter(cid))
    with pytest.raises(IntegrityError):
        get_verified(store, cid, sha256_hex(data))


def test_streamed_read_withholds_the_last_piece_of_tampered_content(store: EmbeddedStore) -> None:
    data = b"a" * 1000
    cid = store.put(data)
    blob_path(store, cid).write_bytes(b"b" * 1000)
    received: list[bytes] = []
    with pytest.raises(IntegrityError):
        for piece in store.iter(cid, chunk_size=100):
            received.append(piece)
    assert len(received) == 9  # the tenth (last) piece is never handed out


def test_truncated_blob_is_reported(store: EmbeddedStore) -> None:
    cid = store.put(b"complete content")
    blob_path(store, cid).write_bytes(b"complete")
    with pytest.raises(IntegrityError, match="stored bytes hash to"):
        store.get(cid)


def test_verified_read_rejects_a_wrong_recorded_hash(store: EmbeddedStore) -> None:
    cid = store.put(b"ciphertext")
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        get_verified(store, cid, sha256_hex(b"other"))


@pytest.mark.parametrize("bad", ["", "ab", "A" * 64, "g" * 64, "0" * 63])
def test_verified_read_rejects_malformed_hashes(store: EmbeddedStore, bad: str) -> None:
    cid = store.put(b"x")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        get_verified(store, cid, bad)


def test_missing_content(store: EmbeddedStore) -> None:
    cid = str(file_cid(b"never stored"))
    assert not store.has(cid)
    for call in (store.get, store.pin, store.unpin, store.iter):
        with pytest.raises(ContentNotFound, match=cid):
            call(cid)


def test_unpin_deletes(store: EmbeddedStore) -> None:
    cid = store.put(b"temporary")
    store.pin(cid)
    store.unpin(cid)
    assert not store.has(cid)
    with pytest.raises(ContentNotFound):
        store.get(cid)


def test_bad_cid_text_is_a_value_error(store: EmbeddedStore) -> None:
    with pytest.raises(ValueError, match="not a valid CID"):
        store.get("../../etc/passwd")


def test_cidv0_names_the_same_dag_pb_content(store: EmbeddedStore) -> None:
    from ehrshare.storage import CID

    data = os.urandom(CHUNK_SIZE + 1)
    cid = CID.parse(store.put(data))
    v0 = str(CID(0, cid.codec, cid.multihash))
    assert store.get(v0) == data


def test_failed_write_leaves_no_temporary_file(store: EmbeddedStore) -> None:
    def source() -> Iterator[bytes]:
        yield b"first part"
        raise OSError("disk on fire")

    with pytest.raises(StorageError, match="disk on fire"):
        store.put(source())
    with pytest.raises(TypeError):
        store.put("text")  # type: ignore[arg-type]
    assert list((store.root / "tmp").iterdir()) == []
    assert list((store.root / "blobs").rglob("*.part")) == []
    assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == []


def test_unusable_root_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create the embedded store"):
        EmbeddedStore(blocker / "store")


def test_put_streams_without_holding_the_content(
    store: EmbeddedStore,
    random_pieces: Callable[[int], Iterator[bytes]],
    traced_peak: Callable[[Callable[[], object]], tuple[object, int]],
) -> None:
    size = 24 * 1024 * 1024
    cid, peak = traced_peak(lambda: store.put(random_pieces(size)))
    assert isinstance(cid, str)
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while storing {size}"
    assert sum(len(p) for p in store.iter(cid)) == size
