"""Partial writes across processes: a SIGKILLed writer's .part file is swept when the store is
next opened; a live writer's .part file in another process is left alone.

The writer is a real child process stopped in the middle of ``put`` (its source generator
blocks on stdin after the first piece), so its .part file exists and is locked by a live
process — or, once killed, by nobody.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ehrshare
from ehrshare.storage import EmbeddedStore, file_cid

PIECE = b"x" * 4096

WRITER = textwrap.dedent(
    """
    import sys
    from ehrshare.storage import EmbeddedStore

    def source():
        yield b"x" * 4096
        print("mid-write", flush=True)
        sys.stdin.readline()  # parked here, .part open and locked, until told to go on
        yield b"x" * 4096

    print(EmbeddedStore(sys.argv[1]).put(source()), flush=True)
    """
)


def _parts(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "tmp").iterdir() if p.name.endswith(".part"))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A writer process parked mid-put on the store at ``tmp_path / 'store'``."""
    env = dict(os.environ, PYTHONPATH=str(Path(ehrshare.__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "store")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "mid-write"
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def test_a_sigkilled_writers_part_file_is_removed_at_open(
    tmp_path: Path, writer: subprocess.Popen[str]
) -> None:
    root = tmp_path / "store"
    [part] = _parts(root)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert _parts(root) == [part]  # the kill itself leaves it behind
    store = EmbeddedStore(root)
    assert _parts(root) == []
    cid = store.put(PIECE)
    assert store.get(cid) == PIECE and _parts(root) == []


def test_a_live_writers_part_file_survives_another_process_opening_the_store(
    tmp_path: Path, writer: subprocess.Popen[str]
) -> None:
    root = tmp_path / "store"
    [part] = _parts(root)
    store = EmbeddedStore(root)  # this process opens the store while the writer is mid-put
    assert _parts(root) == [part]
    # A stale .part of a dead writer next to it goes; the live one stays.
    (root / "tmp" / "put-stale.part").write_bytes(b"half")
    EmbeddedStore(root)
    assert _parts(root) == [part]
    # The writer finishes its put: same CID as Kubo's for the bytes, readable here.
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    cid = writer.stdout.readline().strip()
    assert writer.wait(timeout=30) == 0
    assert cid == str(file_cid(PIECE * 2))
    assert store.get(cid) == PIECE * 2
    assert _parts(root) == []
