"""The UnixFS file DAG that Kubo builds on ``ipfs add``, computed locally to get the same CID.

ehrshare adds every blob to Kubo with ``cid-version=1, raw-leaves=true, hash=sha2-256,
chunker=size-262144`` and the default balanced layout (at most 174 links per node). This module
reproduces that import so the embedded store issues the *same* CIDs as a real IPFS node, and so
any store can check that bytes it returns really hash to the CID asked for:

- the input is cut into 256 KiB chunks; each chunk is a ``raw`` block (CIDv1, codec 0x55);
- one chunk (or none: the empty file is the empty raw block) is the whole DAG;
- otherwise chunks are grouped, left to right, into dag-pb nodes of up to 174 links carrying
  UnixFS ``Data{Type: File, filesize, blocksizes}``; those nodes are grouped the same way, level
  by level, until one node is left. This is exactly the tree boxo's balanced builder makes
  (it fills depth d before starting depth d+1), including one-child nodes on the right edge.

Encoding details that decide the hash: dag-pb writes Links (field 2) before Data (field 1); each
link carries Hash, an empty Name (present, zero length) and Tsize (child's block size plus its
children's Tsize); UnixFS ``blocksizes`` are unpacked repeated varints (proto2).

The builder is push-based and keeps only one partial chunk and the pending links per level, so
hashing 100 MB needs ~256 KiB of buffer. It must not do I/O: callers feed it bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .cid import CID, DAG_PB, RAW, SHA2_256, encode_varint

__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "BlobSource",
    "FileDagBuilder",
    "file_cid",
    "iter_source",
]

CHUNK_SIZE = 256 * 1024
"""Kubo's default fixed-size chunker (``size-262144``)."""

MAX_LINKS = 174
"""Kubo's default links per node in the balanced layout (boxo ``DefaultLinksPerBlock``)."""

BlobSource = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]
"""What a store accepts: bytes, a binary file object (read in chunks) or an iterable of bytes."""

_UNIXFS_FILE = 2


@dataclass(frozen=True, slots=True)
class _Link:
    cid: bytes  # binary CID
    tsize: int  # cumulative block size of the subtree, as dag-pb links record it
    filesize: int  # file bytes under the subtree, as UnixFS blocksizes record it


def _field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _encode_file_node(children: list[_Link]) -> bytes:
    unixfs = bytearray(_field_varint(1, _UNIXFS_FILE))
    unixfs += _field_varint(3, sum(c.filesize for c in children))
    for child in children:
        unixfs += _field_varint(4, child.filesize)
    node = bytearray()
    for child in children:
        link = _field_bytes(1, child.cid) + _field_bytes(2, b"") + _field_varint(3, child.tsize)
        node += _field_bytes(2, link)
    node += _field_bytes(1, bytes(unixfs))
    return bytes(node)


def _cid_bytes(codec: int, block: bytes | bytearray | memoryview) -> bytes:
    return b"\x01" + encode_varint(codec) + bytes([SHA2_256, 32]) + hashlib.sha256(block).digest()


class FileDagBuilder:
    """Incrementally compute the Kubo-compatible CID of a byte stream.

    Call :meth:`write` with pieces of any size, then :meth:`finish` once. Use it when you need
    the CID of content without storing it, or to verify bytes read back from a store. The
    keyword arguments mirror ``ipfs add --chunker=size-N --max-file-links=M``; keep the defaults
    for anything ehrshare stores.
    """

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if max_links < 2:
            raise ValueError(f"max_links must be at least 2, got {max_links}")
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._partial = bytearray()
        self._levels: list[list[_Link]] = [[]]
        self._size = 0
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, piece: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the file."""
        if self._finished:
            raise RuntimeError("FileDagBuilder.write after finish")
        view = memoryview(piece).cast("B")
        self._size += len(view)
        if self._partial:
            need = self._chunk_size - len(self._partial)
            self._partial += view[:need]
            view = view[need:]
            if len(self._partial) < self._chunk_size:
                return
            self._add_leaf(self._partial)
            self._partial = bytearray()
        size = self._chunk_size
        while len(view) >= size:
            self._add_leaf(view[:size])
            view = view[size:]
        self._partial += view

    def _add_leaf(self, chunk: bytes | bytearray | memoryview) -> None:
        self._push(0, _Link(_cid_bytes(RAW, chunk), len(chunk), len(chunk)))

    def _push(self, level: int, link: _Link) -> None:
        if level == len(self._levels):
            self._levels.append([])
        pending = self._levels[level]
        pending.append(link)
        if len(pending) == self._max_links:
            self._levels[level] = []
            self._push(level + 1, self._close(pending))

    @staticmethod
    def _close(children: list[_Link]) -> _Link:
        block = _encode_file_node(children)
        return _Link(
            _cid_bytes(DAG_PB, block),
            len(block) + sum(c.tsize for c in children),
            sum(c.filesize for c in children),
        )

    def finish(self) -> CID:
        """Return the root CID of everything written."""
        if self._finished:
            raise RuntimeError("FileDagBuilder.finish called twice")
        self._finished = True
        if self._partial or self._size == 0:
            # The empty file is one empty raw leaf, as Kubo makes it.
            self._add_leaf(bytes(self._partial))
            self._partial = bytearray()
        levels = self._levels
        level = 0
        while True:
            above = any(levels[j] for j in range(level + 1, len(levels)))
            if not above and len(levels[level]) == 1:
                return CID.from_bytes(levels[level][0].cid)
            if levels[level]:
                if level + 1 == len(levels):
                    levels.append([])
                levels[level + 1].append(self._close(levels[level]))
                levels[level] = []
            level += 1


def iter_source(
    source: BlobSource, piece_size: int = CHUNK_SIZE
) -> Iterator[bytes | bytearray | memoryview]:
    """Yield the bytes of ``source`` in pieces without copying bytes-like input.

    Raises :class:`TypeError` for text or anything that is not bytes, a binary file or an
    iterable of bytes — text must be encoded by the caller, on purpose.
    """
    if isinstance(source, str):
        raise TypeError("storage takes bytes, not str: encode the text first")
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), piece_size):
            yield view[start : start + piece_size]
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            piece = read(piece_size)
            if not piece:
                return
            if not isinstance(piece, bytes | bytearray):
                raise TypeError(f"file object returned {type(piece).__name__}, expected bytes")
            yield piece
    if not isinstance(source, Iterable):
        kind = type(source).__name__
        raise TypeError(f"storage takes bytes, a binary file or an iterable of bytes, not {kind}")
    for piece in source:
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise TypeError(f"stream yielded {type(piece).__name__}, expected bytes")
        yield piece


def file_cid(
    source: BlobSource, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS
) -> CID:
    """Return the CID Kubo would give ``source`` when added with ehrshare's import options.

    ``chunk_size`` and ``max_links`` mirror ``ipfs add --chunker=size-N --max-file-links=M``;
    leave the defaults except to test deep trees cheaply.
    """
    builder = FileDagBuilder(chunk_size=chunk_size, max_links=max_links)
    for piece in iter_source(source):
        builder.write(piece)
    return builder.finish()
