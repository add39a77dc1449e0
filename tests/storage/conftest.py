"""Fixtures for the storage tests: an embedded store per test and one real Kubo daemon per session.

The Kubo fixtures install the pinned Kubo when it is missing (CI starts from a fresh machine) and
fail — never skip — when it cannot be installed or started: tests marked ``ipfs`` are part of
the suite. Deselect them with ``-m "not ipfs"`` to run without Go.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from ehrshare.network.kubo import KuboDaemon, KuboDaemonError, KuboInstallError, install_kubo
from ehrshare.network.supervisor import pid_alive
from ehrshare.storage import EmbeddedStore, KuboClient, KuboStore


@pytest.fixture(name="pid_alive")
def pid_alive_fixture() -> Callable[[int], bool]:
    return pid_alive


_T = TypeVar("_T")


def random_pieces(size: int, piece: int = 65536) -> Iterator[bytes]:
    """``size`` random bytes (a multiple of ``piece``) yielded piece by piece, never held whole."""
    for _ in range(size // piece):
        yield os.urandom(piece)


def traced_peak(fn: Callable[[], _T]) -> tuple[_T, int]:
    """Run ``fn`` under tracemalloc; return its result and the peak traced memory in bytes."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture(name="random_pieces")
def random_pieces_fixture() -> Callable[[int], Iterator[bytes]]:
    return random_pieces


@pytest.fixture(name="traced_peak")
def traced_peak_fixture() -> Callable[[Callable[[], object]], tuple[object, int]]:
    return traced_peak


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(tmp_path / "store")


@pytest.fixture(scope="session")
def kubo_binary() -> Path:
    try:
        return install_kubo()
    except KuboInstallError as exc:
        pytest.fail(f"Kubo is required for the ipfs tests and could not be installed: {exc}")


@pytest.fixture(scope="session")
def kubo_daemon(
    kubo_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KuboDaemon]:
    repo = tmp_path_factory.mktemp("kubo")
    daemon = KuboDaemon(repo, binary=kubo_binary, name="test-session", die_with_parent=True)
    try:
        daemon.start()
    except KuboDaemonError as exc:
        pytest.fail(f"the session's Kubo daemon did not start: {exc}")
    pid = daemon.pid
    assert pid is not None
    yield daemon
    daemon.stop()
    assert not pid_alive(pid), f"kubo daemon pid {pid} still running after stop()"


@pytest.fixture(scope="session")
def kubo_client(kubo_daemon: KuboDaemon) -> Iterator[KuboClient]:
    # offline: a missing CID must fail at once, not after searching a network we do not have
    with KuboClient(kubo_daemon.api_url, offline=True, timeout=120) as client:
        yield client


@pytest.fixture
def kubo_store(kubo_client: KuboClient) -> KuboStore:
    return KuboStore(kubo_client)
