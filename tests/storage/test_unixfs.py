"""The local UnixFS import reproduces Kubo's CIDs (recorded vectors) for any way bytes arrive."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.storage.cid import CID, DAG_PB, RAW
from ehrshare.storage.unixfs import CHUNK_SIZE, FileDagBuilder, file_cid, iter_source

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "kubo_cids.json").read_text()
)["vectors"]


def vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['size']}B-chunk{vector['chunk_size']}-links{vector['max_links']}"


def vector_data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_matches_cids_recorded_from_kubo(vector: dict[str, Any]) -> None:
    cid = file_cid(
        vector_data(vector["size"]),
        chunk_size=vector["chunk_size"],
        max_links=vector["max_links"],
    )
    assert str(cid) == vector["cid"]


def test_single_chunk_is_a_raw_leaf_and_more_is_dag_pb() -> None:
    assert file_cid(b"x" * CHUNK_SIZE) == CID.v1(RAW, b"x" * CHUNK_SIZE)
    assert file_cid(b"x" * (CHUNK_SIZE + 1)).codec == DAG_PB


@given(
    data=st.binary(max_size=4000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    chunk_size=st.integers(min_value=1, max_value=64),
    max_links=st.integers(min_value=2, max_value=6),
)
def test_cid_does_not_depend_on_how_bytes_are_split(
    data: bytes, cuts: list[int], chunk_size: int, max_links: int
) -> None:
    whole = file_cid(data, chunk_size=chunk_size, max_links=max_links)
    builder = FileDagBuilder(chunk_size=chunk_size, max_links=max_links)
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(edges):
        builder.write(data[start:end])
    assert builder.finish() == whole
    assert builder.size == len(data)


@given(st.binary(max_size=300), st.binary(min_size=1, max_size=300))
def test_different_content_gives_different_cids(a: bytes, extra: bytes) -> None:
    assert file_cid(a, chunk_size=16, max_links=3) != file_cid(
        a + extra, chunk_size=16, max_links=3
    )


def test_builder_is_single_use() -> None:
    builder = FileDagBuilder()
    builder.write(b"abc")
    builder.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        builder.write(b"more")
    with pytest.raises(RuntimeError, match="twice"):
        builder.finish()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"chunk_size": 0}, "chunk_size must be at least 1"), ({"max_links": 1}, "max_links")],
)
def test_builder_rejects_bad_layouts(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FileDagBuilder(**kwargs)


def test_sources_of_every_kind_give_the_same_cid() -> None:
    data = vector_data(CHUNK_SIZE * 2 + 5)
    expected = file_cid(data)
    assert file_cid(bytearray(data)) == expected
    assert file_cid(memoryview(data)) == expected
    assert file_cid(io.BytesIO(data)) == expected
    assert file_cid(iter([data[:7], data[7 : CHUNK_SIZE + 3], data[CHUNK_SIZE + 3 :]])) == expected


def test_sources_refuse_text_and_non_bytes() -> None:
    with pytest.raises(TypeError, match="not str"):
        list(iter_source("text"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stream yielded int"):
        list(iter_source([b"ok", 3]))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not int"):
        list(iter_source(42))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="file object returned str"):
        list(iter_source(io.StringIO("text")))  # type: ignore[arg-type]
