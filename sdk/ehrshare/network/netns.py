"""Several hosts on one machine: one Linux network namespace per hospital, each with its own IP.

:class:`HostLayout` makes, for hosts ``A, B, ...``, a bridge in the root namespace holding the
subnet's first address (so clients in the root namespace reach every host), and per host a
namespace with ``lo`` up and one end of a veth pair carrying the host's address, the other end
on the bridge. Every name it makes starts with ``ehr<tag>`` (``tag``: 4 hex digits, unique per
layout), and a state file (``<state dir>/<tag>.json``, written *before* each step) records what
it made and which process owns it, so :func:`sweep_stale` — called by every :meth:`create` —
removes what a crashed run left behind. :meth:`HostLayout.cut` / :meth:`HostLayout.heal` take a
host's link down and up; :meth:`HostLayout.delay` adds ``tc netem`` delay to every link.

With ``links="relay"`` (for kernels without ``sch_netem``: :func:`delay_links` picks) there is no
bridge and no veth: each host's link is a TAP device served by one user-space switch,
:mod:`ehrshare.network.linkrelay`, which delays frames into each host; the root namespace's
port carries the gateway address under the bridge's name. The relay is started through the
supervisor and stopped by pid on teardown (its TAP devices go with it).

Processes run inside a host through :meth:`HostLayout.argv` (``ip netns exec NS ...``, which
execs: the pid is the program's) and are started and stopped by
:mod:`ehrshare.network.supervisor`. Needs root (CAP_NET_ADMIN) and iproute2.

This module must not touch a namespace, link or process it did not make or start: teardown
removes only names recorded in its own state file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self

from ehrshare.faults import fault_point
from ehrshare.network.iproute import (
    _TAG,
    NAME_PREFIX,
    NetnsError,
    NetnsUnavailable,
    _free_subnet,
    _kill_inside,
    _link_exists,
    _namespaces,
    _new_tag,
    _no_bridge_filtering,
    _run,
    netns_problem,
    our_links,
    our_namespaces,
)
from ehrshare.network.linkrelay import netem_available
from ehrshare.network.relayhosts import RelayedLinks
from ehrshare.network.supervisor import Child, pid_alive, start_ticks
from ehrshare.services.vault import atomic_write

__all__ = [
    "DEFAULT_STATE_DIR",
    "NAME_PREFIX",
    "Host",
    "HostLayout",
    "Links",
    "NetnsError",
    "NetnsUnavailable",
    "NodeHost",
    "delay_links",
    "netns_problem",
    "our_links",
    "our_namespaces",
    "sweep_stale",
]

_log = logging.getLogger(__name__)

DEFAULT_STATE_DIR: Final = Path("/run/ehrshare/netns")
"""Where layouts record what they made (``EHRSHARE_NETNS_STATE`` overrides it)."""

_FIRST_HOST: Final = 10  # host i gets .10+i; .1 is the bridge
_LABEL: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")
_STATE_VERSION: Final = 1

Links = Literal["bridge", "relay"]
"""How hosts are linked: veth pairs on a kernel bridge, or TAP devices on the user-space relay."""


def delay_links() -> Links:
    """The links to make when hosts need a delay: ``bridge`` (delayed by ``tc netem``) if the
    kernel has netem, else ``relay`` (:mod:`ehrshare.network.linkrelay`)."""
    return "bridge" if netem_available() else "relay"


def _state_dir() -> Path:
    return Path(os.environ.get("EHRSHARE_NETNS_STATE", str(DEFAULT_STATE_DIR)))


@dataclass(frozen=True)
class NodeHost:
    """Where an organisation's nodes run: the address they bind (and their certificates name)
    and the network namespace they run in (None: this process's)."""

    address: str
    netns: str | None = None


@dataclass(frozen=True)
class Host:
    """One host of a layout: its label (a hospital's MSP id, ``orderers``), namespace, address
    and the two ends of its link (``outside`` on the bridge, ``inside`` in the namespace)."""

    label: str
    netns: str
    address: str
    outside: str
    inside: str

    @property
    def placement(self) -> NodeHost:
        """What the launchers need of this host: its address and namespace."""
        return NodeHost(self.address, self.netns)

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {
            "label": self.label,
            "netns": self.netns,
            "address": self.address,
            "outside": self.outside,
            "inside": self.inside,
        }


class HostLayout(RelayedLinks):
    """Hosts in network namespaces around one bridge (or the link relay, whose part is
    :class:`~ehrshare.network.relayhosts.RelayedLinks`): :meth:`create`, use, :meth:`teardown`.

    Use as a context manager (teardown on exit, also when the body fails).
    """

    def __init__(
        self,
        tag: str,
        subnet: str,
        hosts: Sequence[Host],
        state_file: Path,
        links: Links = "bridge",
    ) -> None:
        self.tag = tag
        self.links: Links = links
        self.kept = False  # True: no owner process; only an explicit teardown removes it
        self.relay: Child | None = None
        self.relay_detached = False  # its relay outlives the process that started it
        self.subnet = ipaddress.ip_network(subnet)
        self.hosts = {h.label: h for h in hosts}
        self.state_file = state_file
        self.bridge = f"{NAME_PREFIX}{tag}br"
        self.gateway = str(self.subnet.network_address + 1)
        self.made: list[list[str]] = []  # ["netns"|"link", name], in the order they were made

    # --- state -------------------------------------------------------------------------------

    def _save(self) -> None:
        data = {
            "version": _STATE_VERSION,
            "tag": self.tag,
            "subnet": str(self.subnet),
            "owner": None if self.kept else {"pid": os.getpid(), "ticks": start_ticks(os.getpid())},
            "hosts": [h.as_dict() for h in self.hosts.values()],
            "made": self.made,
            "links": self.links,
            "relay": None
            if self.relay is None
            else {
                "pid": self.relay.pid,
                "ticks": self.relay.ticks,
                "log": str(self.relay.log),
                "detached": self.relay_detached,
            },
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, json.dumps(data, indent=2).encode(), mode=0o644)

    @classmethod
    def load(cls, state_file: Path) -> Self:
        """The layout a state file records (to heal, cut or tear it down from elsewhere)."""
        try:
            data = json.loads(state_file.read_text(encoding="utf-8"))
            if data.get("version") != _STATE_VERSION or not _TAG.match(str(data["tag"])):
                raise ValueError(f"version {data.get('version')!r}, tag {data.get('tag')!r}")
            hosts = [Host(**h) for h in data["hosts"]]
            links = data.get("links", "bridge")
            if links not in ("bridge", "relay"):
                raise ValueError(f"links {links!r}")
            layout = cls(str(data["tag"]), str(data["subnet"]), hosts, state_file, links)
            layout.made = [[str(kind), str(name)] for kind, name in data["made"]]
            layout.kept = data.get("owner", {}) is None
            relay = data.get("relay")
            if relay is not None:
                layout.relay = Child(
                    "linkrelay", int(relay["pid"]), relay["ticks"], Path(str(relay["log"]))
                )
                layout.relay_detached = bool(relay.get("detached", False))
        except FileNotFoundError:
            raise NetnsError(f"{state_file} does not exist: no such host layout") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise NetnsError(f"{state_file} is not a host layout state file: {exc}") from None
        for kind, name in layout.made:
            if kind not in ("netns", "link", "relay") or not name.startswith(
                NAME_PREFIX + layout.tag
            ):
                raise NetnsError(f"{state_file} records {kind} {name!r}, not one of its own")
        return layout

    def _record(self, kind: str, name: str) -> None:
        # Written before the step: a crash right after it still leaves the name on record.
        if [kind, name] not in self.made:
            self.made.append([kind, name])
            self._save()

    # --- making and removing -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        labels: Sequence[str],
        *,
        state_dir: Path | None = None,
        tag: str | None = None,
        links: Links = "bridge",
        delay_ms: float = 0.0,
        subnet: str | None = None,
        detached_relay: bool = False,
    ) -> Self:
        """Make a bridge and one namespace per label (in order: addresses ``.10``, ``.11``, ...).

        ``links="relay"``: link the hosts through :mod:`ehrshare.network.linkrelay` instead of
        veth pairs and a bridge, delaying every frame into a host by ``delay_ms`` (changed
        later with :meth:`delay`; ``detached_relay``: the relay outlives this process, so the
        layout can be kept). ``subnet`` (with ``tag``): make it again on that /24, so
        every host gets the address it had (refused if something else uses it now).

        Removes first what crashed runs left (:func:`sweep_stale`). With the ``tag`` of a
        layout this process already made, completes it (idempotent). On failure, everything
        made here is removed again.
        """
        problem = netns_problem()
        if problem is not None:
            raise NetnsUnavailable(f"cannot make host namespaces: {problem}")
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"need distinct host labels, got {list(labels)}")
        bad = [label for label in labels if not _LABEL.match(label)]
        if bad:
            raise ValueError(f"host labels must be letters, digits, '-' or '_': {bad}")
        if len(labels) > 200:
            raise ValueError(f"at most 200 hosts per layout, got {len(labels)}")
        if links not in ("bridge", "relay"):
            raise ValueError(f"links must be bridge or relay, got {links!r}")
        if delay_ms < 0 or (delay_ms and links != "relay"):
            raise ValueError(f"delay_ms {delay_ms}: >= 0, and only with links='relay'")
        directory = state_dir or _state_dir()
        sweep_stale(directory)
        if tag is not None and (directory / f"{tag}.json").exists():
            layout = cls.load(directory / f"{tag}.json")
            known = list(layout.hosts)
            if known != list(labels)[: len(known)] or layout.links != links:
                raise NetnsError(
                    f"layout {tag} has hosts {list(layout.hosts)} on {layout.links} links, "
                    f"not {labels} on {links}"
                )
            for label in list(labels)[len(known) :]:  # hosts added since (a hospital joined)
                layout._append(label)
        else:
            tag = tag or _new_tag()
            net = _free_subnet(subnet)
            hosts = []
            for i, label in enumerate(labels):
                hosts.append(
                    Host(
                        label=label,
                        netns=f"{NAME_PREFIX}{tag}-{label.lower()}"[:48],
                        address=str(net.network_address + _FIRST_HOST + i),
                        outside=f"{NAME_PREFIX}{tag}h{i}",
                        inside=f"{NAME_PREFIX}{tag}n{i}",
                    )
                )
            layout = cls(tag, str(net), hosts, directory / f"{tag}.json", links)
            layout._save()
        try:
            if links == "relay":
                if layout.relay is None or not layout.relay.alive():
                    layout.relay_detached = detached_relay
                layout._make_relayed(delay_ms)
            else:
                layout._make()
        except BaseException:
            layout.teardown()
            raise
        return layout

    def _host(self, label: str, i: int) -> Host:
        return Host(
            label=label,
            netns=f"{NAME_PREFIX}{self.tag}-{label.lower()}"[:48],
            address=str(self.subnet.network_address + _FIRST_HOST + i),
            outside=f"{NAME_PREFIX}{self.tag}h{i}",
            inside=f"{NAME_PREFIX}{self.tag}n{i}",
        )

    def next_host(self, label: str) -> Host:
        """The host ``label`` has, or would get from :meth:`add_host` (the next address)."""
        if label in self.hosts:
            return self.hosts[label]
        if not _LABEL.match(label):
            raise ValueError(f"host label {label!r}: letters, digits, '-' or '_'")
        if _FIRST_HOST + len(self.hosts) > 250:
            raise NetnsError(f"host layout {self.tag} has no address left for {label}")
        return self._host(label, len(self.hosts))

    def _append(self, label: str) -> Host:
        host = self.next_host(label)
        self.hosts[label] = host
        self._save()
        return host

    def add_host(self, label: str) -> Host:
        """Give the layout one more host (the next address; a hospital that joins): recorded
        in the state file, then made like the others. Idempotent. On relayed links the running
        relay opens a port for it and every other port goes on as it was (a relay that is gone
        is started again with every host, as :meth:`create` with this tag does), with the
        delay it was last given."""
        host = self._append(label) if label not in self.hosts else self.hosts[label]
        fault_point("netns.add_host.after_record")
        if self.links == "relay":
            self._make_relayed()
        else:
            self._make()
        return host

    def _make(self) -> None:
        br, prefix = self.bridge, self.subnet.prefixlen
        self._record("link", br)
        if not _link_exists(br):
            _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "replace", f"{self.gateway}/{prefix}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        _no_bridge_filtering(br)
        fault_point("netns.create.after_bridge")
        for host in self.hosts.values():
            self._record("netns", host.netns)
            if host.netns not in _namespaces():
                _run(["ip", "netns", "add", host.netns])
            _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
            self._record("link", host.outside)
            if not _link_exists(host.outside):
                if _link_exists(host.inside, host.netns):
                    _run(["ip", "-n", host.netns, "link", "del", host.inside])
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        host.outside,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        host.inside,
                        "netns",
                        host.netns,
                    ]
                )
            _run(["ip", "link", "set", host.outside, "master", br])
            _run(["ip", "link", "set", host.outside, "up"])
            ns = ["ip", "-n", host.netns]
            _run([*ns, "addr", "replace", f"{host.address}/{prefix}", "dev", host.inside])
            _run([*ns, "link", "set", host.inside, "up"])
            fault_point("netns.create.after_host")
        _log.info(
            "host layout %s: %s on %s",
            self.tag,
            ", ".join(f"{h.label}={h.address}" for h in self.hosts.values()),
            self.subnet,
        )

    def _link_cmd(self, label: str) -> list[str]:
        host = self.host(label)
        if self.links == "relay":
            return ["ip", "-n", host.netns, "link", "set", host.inside]
        return ["ip", "link", "set", host.outside]

    def teardown(self) -> list[str]:
        """Remove everything this layout made (processes still inside its namespaces are
        killed: only this layout's programs run there), then its state file. Idempotent;
        returns the names removed."""
        removed = []
        for netns in [name for kind, name in self.made if kind == "netns"]:
            _kill_inside(netns)
        if self.relay is not None and self.relay.alive():
            self.relay.stop(grace=5)  # its TAP devices go with it
            removed.append(f"linkrelay pid {self.relay.pid}")
        # Links first (a veth's other end goes with it), then namespaces, then the bridge.
        order = sorted(self.made, key=lambda m: (m[1] == self.bridge, m[0] == "netns"))
        for kind, name in order:
            if kind == "link" and _link_exists(name):
                _run(["ip", "link", "del", name], check=False)
                removed.append(name)
                fault_point("netns.teardown.after_link")
            elif kind == "netns" and name in _namespaces():
                _run(["ip", "netns", "del", name], check=False)
                removed.append(name)
        left = [
            n for k, n in self.made if (n in _namespaces() if k == "netns" else _link_exists(n))
        ]
        if self.relay is not None and self.relay.alive():
            left.append(f"linkrelay pid {self.relay.pid}")
        if left:
            raise NetnsError(f"host layout {self.tag}: could not remove {left}")
        self.state_file.unlink(missing_ok=True)
        for extra in (
            self._relay_config_path(),
            self._relay_stats_path(),
            self.state_file.with_name(f"{self.tag}.relay.log"),
        ):
            extra.unlink(missing_ok=True)
        self.made = []
        self.relay = None
        _log.info("host layout %s removed: %s", self.tag, ", ".join(removed) or "nothing left")
        return removed

    def keep(self) -> None:
        """Let this layout outlive the process that made it: it is no longer swept when that
        process is gone; only :meth:`teardown` (e.g. ``ehrshare network down``) removes it.
        Refused for relayed links unless their relay was started detached (otherwise it dies
        with its owner)."""
        if self.links == "relay" and not self.relay_detached:
            raise NetnsError(f"host layout {self.tag}: relayed links cannot outlive their owner")
        self.kept = True
        self._save()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # --- using -------------------------------------------------------------------------------

    def host(self, label: str) -> Host:
        """A host by label (ValueError naming the known ones)."""
        try:
            return self.hosts[label]
        except KeyError:
            raise ValueError(
                f"no host {label!r} in layout {self.tag}: {list(self.hosts)}"
            ) from None

    def address(self, label: str) -> str:
        """A host's IP address."""
        return self.host(label).address

    def netns_by_address(self) -> dict[str, str | None]:
        """Each host's namespace by its address (``ServiceProcesses(netns=...)``)."""
        return {h.address: h.netns for h in self.hosts.values()}

    def placements(self) -> dict[str, NodeHost]:
        """Every host's :class:`NodeHost`, by label (``hosts=`` of the launchers)."""
        return {label: h.placement for label, h in self.hosts.items()}

    def argv(self, label: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside a host's namespace (``ip netns exec`` execs: same pid)."""
        return ["ip", "netns", "exec", self.host(label).netns, *argv]

    def cut(self, label: str) -> None:
        """Take a host's link down: nothing reaches it or leaves it until :meth:`heal`."""
        _run([*self._link_cmd(label), "down"])
        _log.warning("host %s (%s) cut off", label, self.address(label))

    def heal(self, label: str) -> None:
        """Bring a host's link up again."""
        _run([*self._link_cmd(label), "up"])
        _log.warning("host %s (%s) back", label, self.address(label))

    def is_cut(self, label: str) -> bool:
        """Whether a host's link is down."""
        host = self.host(label)
        if self.links == "relay":
            out = _run(["ip", "-n", host.netns, "-o", "link", "show", host.inside]).stdout
        else:
            out = _run(["ip", "-o", "link", "show", host.outside]).stdout
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
        return "UP" not in flags

    def delay(self, ms: float) -> None:
        """Delay every packet into each host by ``ms`` milliseconds (``tc netem`` on the bridge
        end of its link; with relayed links, the relay's per-port delay, changed live): host to
        host one way is ``ms``, a round trip ``2 * ms``; 0 removes it."""
        if ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {ms}")
        if self.links == "relay":
            self._relay_delay(ms)
            return
        for host in self.hosts.values():
            if ms == 0:
                _run(["tc", "qdisc", "del", "dev", host.outside, "root"], check=False)
                continue
            argv = ["tc", "qdisc", "replace", "dev", host.outside, "root", "netem", "delay"]
            done = _run([*argv, f"{ms:g}ms"], check=False)
            if done.returncode != 0 and "kind is unknown" in done.stderr:
                error = NetnsUnavailable(
                    "cannot delay links: this kernel has no netem queueing discipline (sch_netem)"
                )
                error.hint = (
                    "run on a kernel with sch_netem (CONFIG_NET_SCH_NETEM), or make the layout "
                    "with links='relay'"
                )
                raise error
            if done.returncode != 0:
                raise NetnsError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def as_dict(self) -> dict[str, Any]:
        """JSON form (what ``--json`` outputs show)."""
        return {
            "tag": self.tag,
            "subnet": str(self.subnet),
            "bridge": self.bridge,
            "links": self.links,
            "hosts": {h.label: h.address for h in self.hosts.values()},
        }

    def __repr__(self) -> str:
        return f"HostLayout({self.tag}, {self.as_dict()['hosts']})"


def sweep_stale(state_dir: Path | None = None) -> list[str]:
    """Tear down the layouts recorded in ``state_dir`` whose owning process is gone (a crashed
    or killed run); returns their tags. Layouts of live processes are left alone."""
    directory = state_dir or _state_dir()
    swept = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "owner" in data and data["owner"] is None:
                continue  # kept (HostLayout.keep): removed only on request
            pid, ticks = int(data["owner"]["pid"]), data["owner"]["ticks"]
        except (OSError, ValueError, KeyError, TypeError):
            _log.warning("ignoring %s: not a host layout state file", path)
            continue
        if pid_alive(pid) and (ticks is None or start_ticks(pid) == ticks):
            continue
        try:
            layout = HostLayout.load(path)
        except NetnsError as exc:
            _log.warning("ignoring %s: %s", path, exc)
            continue
        _log.warning("removing host layout %s left by pid %d (gone)", path.stem, pid)
        layout.teardown()
        swept.append(path.stem)
    return swept
