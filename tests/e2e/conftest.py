"""Fixtures for the end-to-end tests: real Kubo daemons for the ``ipfs`` tests.

Like the storage tests, these install the pinned Kubo when it is missing and fail — never skip —
when it cannot be installed or started. Deselect with ``-m "not ipfs"`` to run without Go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.network.kubo import KuboDaemon, KuboDaemonError, KuboInstallError, install_kubo


@pytest.fixture(scope="session")
def e2e_kubo_binary() -> Path:
    try:
        return install_kubo()
    except KuboInstallError as exc:
        pytest.fail(f"Kubo is required for the ipfs tests and could not be installed: {exc}")


def start_daemon(binary: Path, repo: Path, name: str) -> KuboDaemon:
    daemon = KuboDaemon(repo, binary=binary, name=name, die_with_parent=True)
    try:
        daemon.start()
    except KuboDaemonError as exc:
        pytest.fail(f"Kubo daemon {name} did not start: {exc}")
    return daemon


@pytest.fixture
def kubo(e2e_kubo_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboDaemon]:
    daemon = start_daemon(e2e_kubo_binary, tmp_path_factory.mktemp("kubo-e2e"), "e2e")
    yield daemon
    daemon.stop()
