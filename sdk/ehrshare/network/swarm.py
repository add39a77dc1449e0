"""A private IPFS swarm: one Kubo node per hospital, created, started and stopped together.

A consortium made with ``--storage swarm`` keeps ``ipfs/`` in its directory: ``swarm.key`` (the
consortium's pre-shared key, mode 0600), ``swarm.json`` (each hospital's node: repository, peer
id, API/gateway/swarm ports) and one Kubo repository per hospital. Every node runs with
``LIBP2P_FORCE_PNET=1`` and the key copied into its repository, so it refuses any peer without
the key; it has no bootstrap peers, no mDNS, no content routing, API, gateway and swarm on
its hospital's address (127.0.0.1, or its host's: :mod:`ehrshare.network.netns`) on ports fixed
at creation, and ``Peering.Peers`` naming every other hospital's node, so
the nodes stay connected and fetch each other's blocks over bitswap.

A node is started only from a repository this swarm created: a missing repository, a different
peer id or a foreign ``swarm.key`` is a :class:`SwarmVolumeError` (exit 3), never a silently
re-created, empty node; :meth:`KuboSwarm.recreate` makes a lost node anew on purpose (same
ports, same key, a new identity), after which ``ehrshare store repair`` restores its pins.

Processes start only through :mod:`ehrshare.network.supervisor`, detached (they outlive the
command that started them); their pids and kernel start times are kept in ``run.json`` and they
are stopped by pid after checking it is still the same process. This module must not read or
write content (that is :mod:`ehrshare.storage`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ehrshare.errors import ConfigurationError, Unavailable
from ehrshare.network.kubo import kubo_binary
from ehrshare.network.netns import NodeHost
from ehrshare.network.supervisor import (
    Child,
    free_loopback_ports,
    log_tail,
    start_child,
    start_ticks,
    stop_process,
    wait_ready,
)

__all__ = [
    "SWARM_DIR",
    "KuboSwarm",
    "SwarmError",
    "SwarmNode",
    "SwarmVolumeError",
    "swarm_key_text",
]

_log = logging.getLogger(__name__)

SWARM_DIR = "ipfs"
_KEY_FILE = "swarm.key"
_LAYOUT_FILE = "swarm.json"
_RUN_FILE = "run.json"
_HOST = "127.0.0.1"


class SwarmError(Unavailable, RuntimeError):
    """A swarm node could not be started or stopped (exit 4: try again when it can)."""


class SwarmVolumeError(ConfigurationError, ValueError):
    """A node's repository is missing, another node's or keyed for another swarm (exit 3)."""

    hint = (
        "restore the node's repository from backup, or make it anew with "
        "'ehrshare store recreate-node HOSPITAL' and then run 'ehrshare store repair'"
    )


def _port(multiaddr: str) -> int:
    """The TCP port of ``/ip4/<host>/tcp/<port>``."""
    parts = str(multiaddr).split("/")
    return int(parts[parts.index("tcp") + 1])


def swarm_key_text(key: bytes) -> str:
    """A 32-byte pre-shared key in the ``swarm.key`` format libp2p reads."""
    if len(key) != 32:
        raise ValueError(f"a swarm key is 32 bytes, got {len(key)}")
    return f"/key/swarm/psk/1.0.0/\n/base16/\n{key.hex()}\n"


@dataclass(frozen=True)
class SwarmNode:
    """One hospital's node as ``swarm.json`` records it."""

    msp: str
    peer_id: str
    api_port: int
    gateway_port: int
    swarm_port: int
    host: str = _HOST
    """The address it binds: its hospital's host (see :mod:`ehrshare.network.netns`)."""
    netns: str | None = None
    """The network namespace it runs in (None: the starting process's)."""
    repo: str = ""
    """The repository's directory when it is not ``<swarm>/<msp>`` (a hospital that joined
    keeps its node's identity key in its own directory)."""

    @property
    def api_url(self) -> str:
        """The node's RPC base URL."""
        return f"http://{self.host}:{self.api_port}"

    @property
    def swarm_addr(self) -> str:
        """The multiaddr other nodes dial."""
        return f"/ip4/{self.host}/tcp/{self.swarm_port}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        hosted = {} if self.host == _HOST else {"host": self.host, "netns": self.netns}
        return {
            "msp": self.msp,
            "peer_id": self.peer_id,
            "api_port": self.api_port,
            "gateway_port": self.gateway_port,
            "swarm_port": self.swarm_port,
            **hosted,
        } | ({"repo": self.repo} if self.repo else {})


class KuboSwarm:
    """The hospitals' Kubo nodes under ``<consortium>/ipfs``: :meth:`create` once at init, then
    :meth:`start`, :meth:`stop`, :meth:`running`, :meth:`pids` from any process."""

    def __init__(self, root: Path, nodes: Sequence[SwarmNode], *, binary: Path | None = None):
        self.root = root.resolve()
        self.nodes = {n.msp: n for n in nodes}
        self.binary = binary or kubo_binary()
        self.start_timeout = 60.0

    def __repr__(self) -> str:
        return f"KuboSwarm({str(self.root)!r}, {sorted(self.nodes)})"

    # --- layout --------------------------------------------------------------------------------

    def repo(self, msp: str) -> Path:
        """The repository directory (``IPFS_PATH``) of ``msp``'s node."""
        node = self.nodes.get(msp)
        return Path(node.repo) if node is not None and node.repo else self.root / msp

    def log_path(self, msp: str) -> Path:
        """Where ``msp``'s daemon logs."""
        return self.root / "logs" / f"{msp}.log"

    @property
    def key_file(self) -> Path:
        """The consortium's ``swarm.key``."""
        return self.root / _KEY_FILE

    def node(self, msp: str) -> SwarmNode:
        """The node of hospital ``msp``."""
        try:
            return self.nodes[msp]
        except KeyError:
            raise SwarmVolumeError(
                f"hospital {msp!r} has no IPFS node in {self.root} "
                f"(nodes: {', '.join(sorted(self.nodes))})"
            ) from None

    @classmethod
    def load(cls, root: Path, *, binary: Path | None = None) -> KuboSwarm:
        """Read ``swarm.json``; a missing or damaged one is a :class:`SwarmVolumeError`."""
        try:
            data = json.loads((root / _LAYOUT_FILE).read_text(encoding="utf-8"))
            nodes = [
                SwarmNode(
                    str(n["msp"]),
                    str(n["peer_id"]),
                    int(n["api_port"]),
                    int(n["gateway_port"]),
                    int(n["swarm_port"]),
                    str(n.get("host", _HOST)),
                    None if n.get("netns") is None else str(n["netns"]),
                    str(n.get("repo", "")),
                )
                for n in data["nodes"]
            ]
        except FileNotFoundError:
            raise SwarmVolumeError(
                f"no IPFS swarm in {root}: {root / _LAYOUT_FILE} is missing"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SwarmVolumeError(f"{root / _LAYOUT_FILE} is damaged: {exc}") from None
        return cls(root, nodes, binary=binary)

    def _save(self) -> None:
        data = {"nodes": [n.as_dict() for n in self.nodes.values()]}
        tmp = self.root / (_LAYOUT_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / _LAYOUT_FILE)

    # --- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        hospitals: Iterable[str],
        *,
        binary: Path | None = None,
        hosts: Mapping[str, NodeHost] | None = None,
    ) -> KuboSwarm:
        """Make the swarm key and one configured repository per hospital (nothing runs yet).

        ``hosts``: per hospital MSP, the address its node binds and the network namespace it
        runs in (default: 127.0.0.1 here). Refuses a directory that already holds a swarm (a
        second init must not replace keys).
        """
        root = root.resolve()
        if (root / _LAYOUT_FILE).exists() or (root / _KEY_FILE).exists():
            raise SwarmVolumeError(f"{root} already holds an IPFS swarm; not replacing it")
        msps = list(hospitals)
        if len(set(msps)) != len(msps) or not msps:
            raise ValueError(f"hospitals must be distinct and at least one: {msps}")
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / _KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(swarm_key_text(secrets.token_bytes(32)))
        swarm = cls(root, [], binary=binary)
        ports = free_loopback_ports(3 * len(msps))
        for i, msp in enumerate(msps):
            peer_id = swarm._init_repo(msp)
            place = (hosts or {}).get(msp, NodeHost(_HOST))
            api, gateway, swarm_port = ports[3 * i : 3 * i + 3]
            swarm.nodes[msp] = SwarmNode(
                msp, peer_id, api, gateway, swarm_port, place.address, place.netns
            )
        for msp in msps:
            swarm._configure(msp)
        swarm._save()
        return swarm

    def recreate(self, msp: str) -> SwarmNode:
        """Make ``msp``'s lost node anew: an empty repository with a new identity on the same
        ports and key; the other nodes' peering is updated (restart them to take it up). The
        old repository, if any is left, is moved aside, never deleted."""
        old = self.node(msp)
        repo = self.repo(msp)
        if self.pids():
            raise SwarmError(
                f"the IPFS nodes of {', '.join(sorted(self.pids()))} run; stop the swarm "
                "('ehrshare network down') before re-creating a node (every node's peering "
                "changes)"
            )
        if repo.exists():
            aside = repo.with_name(f"{repo.name}.lost-{int(time.time())}")
            repo.rename(aside)
            _log.warning("moved %s's old repository to %s", msp, aside)
        peer_id = self._init_repo(msp)
        self.nodes[msp] = dataclasses.replace(old, peer_id=peer_id)  # same ports, host, repo
        for other in self.nodes:
            if (self.repo(other) / "config").is_file():
                self._configure(other)
        self._save()
        return self.nodes[msp]

    def add_node(self, msp: str, repo: Path, host: NodeHost | None = None) -> SwarmNode:
        """Give a joining hospital a node whose repository is ``repo`` (in its own directory):
        a new identity, free ports, this swarm's key; every node's peering names it (a running
        node takes that up at its next start; :meth:`start` dials it now). Returns the existing
        node when ``msp`` has one (an interrupted join repeated). ``host``: the address it
        binds and the namespace it runs in (a hospital on a host of its own)."""
        if msp in self.nodes:
            return self.nodes[msp]
        repo = repo.resolve()
        if repo.exists() and any(repo.iterdir()):
            aside = repo.with_name(f"{repo.name}.partial-{int(time.time())}")
            repo.rename(aside)  # a join killed before swarm.json named the node
        api, gateway, swarm_port = free_loopback_ports(3)
        place = host or NodeHost(_HOST)
        node = SwarmNode(
            msp, "", api, gateway, swarm_port, place.address, place.netns, repo=str(repo)
        )
        self.nodes[msp] = node
        try:
            peer_id = self._init_repo(msp)
        except BaseException:
            del self.nodes[msp]
            raise
        self.nodes[msp] = dataclasses.replace(node, peer_id=peer_id)
        for other in self.nodes:
            if (self.repo(other) / "config").is_file():
                self._configure(other)
        self._save()
        return self.nodes[msp]

    def _env(self, msp: str) -> dict[str, str]:
        return {
            "IPFS_PATH": str(self.repo(msp)),
            "IPFS_TELEMETRY": "off",
            "LIBP2P_FORCE_PNET": "1",
        }

    def _ipfs(self, msp: str, *args: str) -> str:
        if not self.binary.is_file():
            raise SwarmVolumeError(
                f"kubo binary {self.binary} does not exist: run `make tools` or set "
                "EHRSHARE_BIN_DIR"
            )
        done = subprocess.run(  # noqa: S603 - our own binary, fixed argv
            [str(self.binary), *args],
            env={**os.environ, **self._env(msp)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise SwarmError(
                f"`ipfs {' '.join(args[:2])}` for {msp}'s node failed: {done.stderr.strip()[-300:]}"
            )
        return done.stdout

    def _init_repo(self, msp: str) -> str:
        repo = self.repo(msp)
        repo.mkdir(parents=True, exist_ok=True)
        self._ipfs(msp, "init", "--profile=test", "--empty-repo")
        return self._peer_id_in_repo(msp)

    def _peer_id_in_repo(self, msp: str) -> str:
        config = json.loads((self.repo(msp) / "config").read_text(encoding="utf-8"))
        return str(config["Identity"]["PeerID"])

    def _configure(self, msp: str) -> None:
        node = self.nodes[msp]
        peers = [
            {"ID": n.peer_id, "Addrs": [n.swarm_addr]} for n in self.nodes.values() if n.msp != msp
        ]
        settings: list[tuple[str, Any]] = [
            ("Addresses.API", f"/ip4/{node.host}/tcp/{node.api_port}"),
            ("Addresses.Gateway", f"/ip4/{node.host}/tcp/{node.gateway_port}"),
            ("Addresses.Swarm", [node.swarm_addr]),
            ("Bootstrap", []),
            ("Peering.Peers", peers),
            # Only TCP: libp2p private networks cannot run over QUIC or WebTransport.
            ("Swarm.Transports.Network.QUIC", False),
            ("Swarm.Transports.Network.WebTransport", False),
            ("Swarm.Transports.Network.WebRTCDirect", False),
            # Bitswap asks the connected (peered) nodes; nothing to announce to a DHT.
            ("Routing.Type", "none"),
        ]
        for key, value in settings:
            self._ipfs(msp, "config", "--json", key, json.dumps(value))
        shutil.copyfile(self.key_file, self.repo(msp) / _KEY_FILE)
        os.chmod(self.repo(msp) / _KEY_FILE, 0o600)

    # --- checks --------------------------------------------------------------------------------

    def check_volume(self, msp: str) -> None:
        """Refuse to start a node whose repository is missing, someone else's, or keyed for
        another swarm (:class:`SwarmVolumeError`)."""
        node = self.node(msp)
        repo = self.repo(msp)
        if not (repo / "config").is_file():
            raise SwarmVolumeError(
                f"the IPFS repository of {msp} ({repo}) is missing; not creating an empty node"
            )
        try:
            peer_id = self._peer_id_in_repo(msp)
        except (OSError, ValueError, KeyError) as exc:
            raise SwarmVolumeError(f"{repo}/config is damaged: {exc}") from None
        if peer_id != node.peer_id:
            raise SwarmVolumeError(
                f"the IPFS repository in {repo} is node {peer_id}, not {msp}'s node {node.peer_id}"
            )
        try:
            ours = self.key_file.read_bytes()
        except FileNotFoundError:
            raise SwarmVolumeError(
                f"the consortium's swarm key {self.key_file} is missing"
            ) from None
        try:
            theirs = (repo / _KEY_FILE).read_bytes()
        except FileNotFoundError:
            raise SwarmVolumeError(
                f"{msp}'s IPFS repository {repo} has no swarm.key: it would join the public network"
            ) from None
        if theirs != ours:
            raise SwarmVolumeError(
                f"{msp}'s IPFS repository {repo} holds a foreign swarm.key (not this consortium's)"
            )
        self._check_ports(msp)

    def _check_ports(self, msp: str) -> None:
        """The repository's API, gateway and swarm ports are those ``swarm.json`` records (a hand
        edit of either would start a node where nobody looks for it)."""
        node, repo = self.nodes[msp], self.repo(msp)
        try:
            addresses = json.loads((repo / "config").read_text(encoding="utf-8"))["Addresses"]
            swarm = addresses["Swarm"]
            found = {
                "API": _port(addresses["API"]),
                "Gateway": _port(addresses["Gateway"]),
                "Swarm": _port(swarm[0] if isinstance(swarm, list) and swarm else swarm),
            }
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise SwarmVolumeError(f"{repo}/config is damaged: {exc}") from None
        want = {"API": node.api_port, "Gateway": node.gateway_port, "Swarm": node.swarm_port}
        wrong = [
            f"{k} port {found[k]} (swarm.json: {want[k]})" for k in want if found[k] != want[k]
        ]
        if wrong:
            raise SwarmVolumeError(
                f"{msp}'s IPFS repository {repo} disagrees with {self.root / _LAYOUT_FILE}: "
                + ", ".join(wrong)
                + "; restore the edited file or make the node anew with `ehrshare store "
                "recreate-node`"
            )

    # --- processes -----------------------------------------------------------------------------

    def _run_state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / _RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def _write_run_state(self, state: dict[str, dict[str, Any]]) -> None:
        tmp = self.root / (_RUN_FILE + ".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.root / _RUN_FILE)

    def _ours(self, msp: str, record: dict[str, Any]) -> bool:
        pid, ticks = record.get("pid"), record.get("ticks")
        if not isinstance(pid, int) or start_ticks(pid) is None:
            return False
        if ticks is not None and start_ticks(pid) != ticks:
            return False
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"IPFS_PATH={self.repo(msp)}".encode() in environ

    def _running_pid(self, msp: str) -> int | None:
        state = self._run_state()
        record = state.get(msp)
        if record is not None and self._ours(msp, record):
            return int(record["pid"])
        # run.json lost, damaged or edited: a node of ours may still run on this repository.
        # Find it by its environment (never trust a recorded pid alone) and record it again, so
        # that `network down` stops it and `network up` does not start a second one.
        pid = self._untracked_pid(msp)
        if pid is None:
            return None
        _log.warning("%s's IPFS node (pid %d) was not recorded in run.json; adopted", msp, pid)
        state[msp] = {"pid": pid, "ticks": start_ticks(pid)}
        self._write_run_state(state)
        return pid

    def _untracked_pid(self, msp: str) -> int | None:
        want = f"IPFS_PATH={self.repo(msp)}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                len(argv) >= 2
                and Path(argv[0].decode(errors="replace")) == self.binary
                and argv[1] == b"daemon"
                and want in environ
            ):
                return int(entry.name)
        return None

    def pids(self) -> dict[str, int]:
        """The running nodes' pids by hospital."""
        out = {}
        for msp in self.nodes:
            pid = self._running_pid(msp)
            if pid is not None:
                out[msp] = pid
        return out

    def running(self) -> bool:
        """Whether every node runs."""
        return len(self.pids()) == len(self.nodes)

    def _answers(self, node: SwarmNode) -> bool:
        try:
            response = httpx.post(node.api_url + "/api/v0/id", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, only: Iterable[str] | None = None) -> list[str]:
        """Start the nodes that do not run (all, or those in ``only``); return those started.

        Every repository is checked first (:meth:`check_volume`), so a bad one starts none."""
        names = list(self.nodes if only is None else only)
        for msp in names:
            self.check_volume(msp)
        state = self._run_state()
        started: list[str] = []
        children: dict[str, Child] = {}
        try:
            for msp in names:
                if self._running_pid(msp) is not None:
                    continue
                (self.repo(msp) / "api").unlink(missing_ok=True)
                child = start_child(
                    f"{msp}'s IPFS node",
                    [str(self.binary), "daemon"],
                    self.log_path(msp),
                    env=self._env(msp),
                    new_session=True,
                    netns=self.nodes[msp].netns,
                )
                children[msp] = child
                state[msp] = {"pid": child.pid, "ticks": child.ticks}
                self._write_run_state(state)
                started.append(msp)
            deadline = time.monotonic() + self.start_timeout
            for msp, child in children.items():
                node = self.nodes[msp]
                outcome = wait_ready(
                    lambda node=node: self._answers(node),  # type: ignore[misc]
                    child.alive,
                    deadline,
                    interval=0.25,
                    backoff_from=0.02,
                )
                if outcome != "ready":
                    raise SwarmError(
                        f"{msp}'s IPFS node {'exited' if outcome == 'died' else 'did not answer'}"
                        f" while starting; log {self.log_path(msp)}: "
                        f"{log_tail(self.log_path(msp), child.offset)}"
                    )
        except BaseException:
            for child in children.values():
                stop_process(child, grace=10)
            raise
        self._dial(started)
        return started

    def _dial(self, started: Sequence[str]) -> None:
        """Connect each node just started to every other running node now: Peering would
        too, but only after its back-off (about 10 s when the other node came up later)."""
        running = self.pids()
        for msp in started:
            for other in running:
                if other == msp:
                    continue
                peer = self.nodes[other]
                try:
                    httpx.post(
                        self.nodes[msp].api_url + "/api/v0/swarm/connect",
                        params={"arg": f"{peer.swarm_addr}/p2p/{peer.peer_id}"},
                        timeout=5.0,
                    )
                except httpx.HTTPError as exc:  # Peering keeps trying
                    _log.info("%s could not dial %s yet: %s", msp, other, exc)

    def stop(self, only: Iterable[str] | None = None, *, kill: bool = False) -> list[str]:
        """Stop running nodes by pid (SIGTERM, or SIGKILL with ``kill``); return those stopped."""
        names = list(self.nodes if only is None else only)
        stopped = []
        for msp in names:
            pid = self._running_pid(msp)  # also a node run.json lost track of
            if pid is not None:
                child = Child(f"{msp}'s IPFS node", pid, start_ticks(pid), Path())
                stop_process(child, grace=15, kill=kill)
                stopped.append(msp)
        state = self._run_state()
        for msp in names:
            state.pop(msp, None)
        self._write_run_state(state)
        return stopped

    def peers(self, msp: str) -> list[str]:
        """The peer ids ``msp``'s node is connected to (``swarm/peers``)."""
        node = self.node(msp)
        try:
            response = httpx.post(node.api_url + "/api/v0/swarm/peers", timeout=5.0)
        except httpx.HTTPError as exc:
            raise SwarmError(f"{msp}'s IPFS node does not answer: {exc}") from None
        body = response.json()
        return sorted(str(p["Peer"]) for p in body.get("Peers") or [])

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until every running node is connected to every other running node."""
        deadline = time.monotonic() + timeout
        while True:
            up = self.pids()
            want = {self.nodes[m].peer_id for m in up}
            missing = {m: sorted(want - {self.nodes[m].peer_id} - set(self.peers(m))) for m in up}
            if not any(missing.values()):
                return
            if time.monotonic() > deadline:
                raise SwarmError(f"IPFS nodes not connected after {timeout:.0f} s: {missing}")
            time.sleep(0.2)
