"""Against a real Kubo 0.39 daemon: round-trips, CID equality with the embedded store, daemon life.

Everything here needs the ``kubo_daemon`` session fixture, which installs Kubo when missing and
fails (does not skip) when it cannot run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ehrshare.network.kubo import (
    KUBO_VERSION,
    KuboDaemon,
    KuboDaemonError,
    install_kubo,
    installed_version,
)
from ehrshare.storage import (
    CHUNK_SIZE,
    MAX_LINKS,
    BlobStore,
    ContentNotFound,
    EmbeddedStore,
    KuboClient,
    KuboStore,
    StorageUnavailable,
    file_cid,
    get_verified,
    sha256_hex,
)

pytestmark = pytest.mark.ipfs

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "kubo_cids.json").read_text()
)["vectors"]


def test_installer_is_idempotent_without_go(kubo_binary: Path) -> None:
    # Already installed: must not need (or run) the go command at all.
    assert install_kubo(kubo_binary.parent, go="no-such-go-command") == kubo_binary
    assert installed_version(kubo_binary) == KUBO_VERSION


def test_daemon_runs_the_pinned_version_on_loopback(
    kubo_daemon: KuboDaemon, kubo_client: KuboClient
) -> None:
    assert kubo_client.version() == KUBO_VERSION
    assert kubo_daemon.api_url.startswith("http://127.0.0.1:")
    config = json.loads((kubo_daemon.repo / "config").read_text())
    assert config["Bootstrap"] == []
    assert all("/127.0.0.1/" in a for a in config["Addresses"]["Swarm"])
    assert config["Addresses"]["Gateway"].startswith("/ip4/127.0.0.1/")


def test_store_implements_the_protocol(kubo_store: KuboStore) -> None:
    assert isinstance(kubo_store, BlobStore)


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 10_000_000],
    ids=["0B", "1B", "256KiB", "256KiB+1", "10MB"],
)
def test_same_cid_as_the_embedded_store(
    kubo_store: KuboStore, store: EmbeddedStore, size: int
) -> None:
    data = os.urandom(size)
    cid = kubo_store.put(data)
    assert cid == store.put(data)
    assert kubo_store.get(cid) == data
    assert get_verified(kubo_store, cid, sha256_hex(data)) == data


@pytest.mark.parametrize(
    "size",
    [MAX_LINKS * CHUNK_SIZE, MAX_LINKS * CHUNK_SIZE + 1],
    ids=["174-chunks-one-level", "175-chunks-two-levels"],
)
def test_same_cid_for_two_level_trees(
    kubo_store: KuboStore, store: EmbeddedStore, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    cid = kubo_store.put(iter([data[i : i + 65536] for i in range(0, size, 65536)]))
    assert cid == store.put(data)
    assert sum(len(piece) for piece in kubo_store.iter(cid)) == size


# The multi-megabyte vectors are exercised by the CID-equality tests above.
SMALL_VECTORS = [v for v in VECTORS if v["size"] <= 1_000_000]


@pytest.mark.parametrize("vector", SMALL_VECTORS, ids=lambda v: f"{v['size']}B-{v['chunk_size']}")
def test_recorded_vectors_still_match_live_kubo(
    kubo_client: KuboClient, vector: dict[str, Any]
) -> None:
    data = random.Random(vector["size"]).randbytes(vector["size"])
    # add() raises IntegrityError itself if Kubo's CID differs from the local computation
    cid = kubo_client.add(
        data, pin=False, chunk_size=vector["chunk_size"], max_links=vector["max_links"]
    )
    assert cid == vector["cid"]


def test_deep_trees_match_for_random_sizes(kubo_client: KuboClient) -> None:
    rng = random.Random(7)
    for _ in range(15):
        size = rng.randrange(0, 5000)
        data = rng.randbytes(size)
        cid = kubo_client.add(data, pin=False, chunk_size=16, max_links=3)
        assert cid == str(file_cid(data, chunk_size=16, max_links=3))


def test_pin_unpin_has(kubo_store: KuboStore) -> None:
    cid = kubo_store.put(os.urandom(1000))
    assert kubo_store.has(cid)
    kubo_store.unpin(cid)
    assert not kubo_store.has(cid)
    with pytest.raises(ContentNotFound, match=cid):
        kubo_store.unpin(cid)
    kubo_store.pin(cid)  # the blocks are still there until GC
    assert kubo_store.has(cid)


def test_missing_content_is_content_not_found(kubo_store: KuboStore) -> None:
    cid = str(file_cid(os.urandom(64)))
    assert not kubo_store.has(cid)
    with pytest.raises(ContentNotFound, match=cid):
        kubo_store.get(cid)


def test_bad_cid_never_reaches_the_daemon(kubo_store: KuboStore) -> None:
    with pytest.raises(ValueError, match="not a valid CID"):
        kubo_store.get("bafy&arg=evil")


def test_stopped_daemon_is_unavailable_and_leaves_no_process(
    kubo_binary: Path, tmp_path: Path, pid_alive: Callable[[int], bool]
) -> None:
    daemon = KuboDaemon(tmp_path / "second", binary=kubo_binary, name="second")
    with daemon:
        pid = daemon.pid
        assert pid is not None and pid_alive(pid)
        url = daemon.api_url
        with KuboClient(url, offline=True) as client:
            cid = KuboStore(client).put(b"before stop")
    assert daemon.pid is None
    assert not pid_alive(pid)
    client = KuboClient(url, offline=True, timeout=5)
    with client, pytest.raises(StorageUnavailable) as info:
        KuboStore(client).get(cid)
    message = str(info.value)
    assert url in message
    assert "Start the daemon" in message
    # The repository survives a restart, with the content still pinned.
    with daemon, KuboClient(daemon.api_url, offline=True) as client:
        assert KuboStore(client).get(cid) == b"before stop"
        second_pid = daemon.pid
    assert second_pid is not None and not pid_alive(second_pid)


def test_start_failure_names_the_daemon_and_its_log(kubo_binary: Path, tmp_path: Path) -> None:
    first = KuboDaemon(tmp_path / "shared", binary=kubo_binary, name="first")
    second = KuboDaemon(tmp_path / "shared", binary=kubo_binary, name="second")
    with first:
        with pytest.raises(KuboDaemonError) as info:
            second.start()
        assert second.pid is None
    message = str(info.value)
    assert "'second'" in message
    assert str(second.log_path) in message


def test_daemon_that_exits_at_start_is_reported_with_its_log(
    kubo_binary: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = KuboDaemon(tmp_path / "r", binary=kubo_binary, name="clash", api_port=port)
        with pytest.raises(KuboDaemonError, match="exited with code") as info:
            daemon.start()
    assert daemon.pid is None
    assert f"tcp/{port}" in str(info.value)  # the log tail names the address it could not bind


def test_fixed_ports_are_used(kubo_binary: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with KuboDaemon(tmp_path / "r", binary=kubo_binary, api_port=port) as daemon:
        assert daemon.api_url == f"http://127.0.0.1:{port}"


def test_missing_binary_is_reported(tmp_path: Path) -> None:
    daemon = KuboDaemon(tmp_path / "r", binary=tmp_path / "no-ipfs")
    with pytest.raises(KuboDaemonError, match="make tools"):
        daemon.start()


def test_upload_and_read_stream_without_holding_the_content(
    kubo_store: KuboStore,
    random_pieces: Callable[[int], Iterator[bytes]],
    traced_peak: Callable[[Callable[[], object]], tuple[object, int]],
) -> None:
    size = 24 * 1024 * 1024

    def put_and_read() -> int:
        cid = kubo_store.put(random_pieces(size))
        return sum(len(p) for p in kubo_store.iter(cid))

    total, peak = traced_peak(put_and_read)
    assert total == size
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while moving {size}"


def test_die_with_parent_stops_the_daemon_when_its_starter_dies(
    kubo_binary: Path, tmp_path: Path, pid_alive: Callable[[int], bool]
) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ehrshare.network.kubo import KuboDaemon\n"
        "d = KuboDaemon(sys.argv[1], binary=Path(sys.argv[2]), die_with_parent=True).start()\n"
        "print(d.pid, flush=True)\n"
        "os._exit(0)  # no stop(): the kernel must take the daemon down\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "orphan"), str(kubo_binary)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = pid_alive(pid)
    if alive:  # never leave it behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"orphaned kubo daemon pid {pid} survived its parent"
