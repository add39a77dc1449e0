"""What the netns tests share: the CLI run as a process, a Fabric consortium made on hosts by
the CLI and removed whatever happens, and what such a consortium left behind, told apart from
other runs' layouts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cliproc import run_ehrshare
from ehrshare.network.consortium_hosts import HOSTS_FILE, load_hosts, remove_hosts
from ehrshare.network.iproute import NAME_PREFIX, our_namespaces


def run_cli(
    *args: str, env: dict[str, str], fault: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``python -m ehrshare ARGS`` as :func:`cliproc.run_ehrshare` runs it, with ``env`` added
    (a consortium's hosts take minutes to make, hence the longer default timeout)."""
    return run_ehrshare(*args, fault=fault, env=env, timeout=timeout)


def consortium_leftovers(before: set[str], tag: str | None) -> list[str]:
    """Namespaces a consortium made with ``--hosts netns`` left behind: those of its layout
    (``tag``, read from its ``hosts.json`` while it existed), or with no tag known every
    namespace of ours that was not there ``before``. Another run's layouts on the same machine,
    made or removed meanwhile, do not count."""
    now = set(our_namespaces())
    if tag is None:
        return sorted(now - before)
    return sorted(n for n in now if n.startswith(NAME_PREFIX + tag))


@contextmanager
def fabric_consortium_on_hosts(tmp: Path, *, up: bool) -> Iterator[tuple[Path, dict[str, str]]]:
    """``consortium init DIR --ledger fabric --hosts netns --json`` in ``tmp`` (its answer
    naming the layout hosts.json records) (then ``network up``
    when ``up``), yielding its directory and the CLI's environment. Whatever happens, its
    network is stopped, its hosts removed, and none of its namespaces is left."""
    before = set(our_namespaces())
    tag: str | None = None
    env = {"EHRSHARE_NETNS_STATE": str(tmp / "netns-state")}
    directory = tmp / "c"
    try:
        init = ["consortium", "init", str(directory), "--ledger", "fabric", "--hosts", "netns"]
        done = run_cli(*init, "--json", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        hosts = load_hosts(directory)
        tag = hosts.tag if hosts is not None else None
        assert tag and json.loads(done.stdout)["hosts"]["tag"] == tag
        if up:
            started = run_cli("network", "up", "-p", str(directory), env=env)
            assert started.returncode == 0, started.stderr[-3000:]
        yield directory, env
    finally:
        if (directory / "profile.yaml").exists():
            run_cli("network", "down", "-p", str(directory), env=env)
        if (directory / HOSTS_FILE).exists():
            remove_hosts(directory)
    left = consortium_leftovers(before, tag)
    assert not left, f"the consortium's hosts were left behind: {left}"
