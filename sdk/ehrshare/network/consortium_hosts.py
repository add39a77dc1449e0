"""A consortium's hosts between commands: which :class:`~ehrshare.network.netns.HostLayout` its
nodes live on, recorded next to its profile (``hosts.json``).

``ehrshare consortium init --hosts netns`` makes the layout, builds the consortium on it and
records it here; ``network up`` makes it again if it is gone (same tag, subnet and so the same
addresses its certificates name) before starting anything; ``network down`` removes it after
stopping everything. A recorded layout is *kept* (:meth:`HostLayout.keep`): it is not swept
when the command that made it exits.

This module must not remove a layout the profile does not record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from ehrshare.errors import ConfigurationError, UsageError
from ehrshare.faults import fault_point
from ehrshare.network.linkrelay import netem_available
from ehrshare.network.netns import Host, HostLayout, Links, NetnsError, NodeHost, our_namespaces
from ehrshare.services.vault import atomic_write

__all__ = [
    "HOSTS_FILE",
    "ConsortiumHosts",
    "HostsDelayError",
    "HostsRecordError",
    "add_host",
    "ensure_hosts",
    "hosts_netns",
    "hosts_status",
    "load_hosts",
    "next_host",
    "record_hosts",
    "remove_hosts",
    "set_delay",
]

_log = logging.getLogger(__name__)

HOSTS_FILE: Final = "hosts.json"
"""Next to ``profile.yaml``: the host layout a consortium's nodes run on."""

_VERSION: Final = 1


class HostsRecordError(ConfigurationError, ValueError):
    """``hosts.json`` is unreadable or names what no layout made (exit 3)."""

    hint = "restore hosts.json from a backup, or make the consortium again"


@dataclass(frozen=True)
class ConsortiumHosts:
    """What ``hosts.json`` records: the layout's tag, subnet, state file and hosts."""

    kind: str
    tag: str
    subnet: str
    state_file: Path
    hosts: dict[str, dict[str, str]]
    links: Links = "bridge"
    """How the hosts are linked when made: a bridge (delayed by netem where the kernel has it)
    or the user-space relay (chosen by the first delay asked for on a kernel without netem)."""
    delay_ms: float = 0.0
    """The one-way delay into each host (``network delay``, ``network up --delay-ms``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "version": _VERSION,
            "kind": self.kind,
            "tag": self.tag,
            "subnet": self.subnet,
            "state_file": str(self.state_file),
            "hosts": self.hosts,
            "links": self.links,
            "delay_ms": self.delay_ms,
        }

    def netns_by_address(self) -> dict[str, str | None]:
        """Each host's namespace by its address (``ServiceProcesses(netns=...)``)."""
        return {h["address"]: h["netns"] for h in self.hosts.values()}


def record_hosts(directory: Path, layout: HostLayout) -> ConsortiumHosts:
    """Record ``layout`` as the consortium's hosts and keep it past this process."""
    record = ConsortiumHosts(
        "netns",
        layout.tag,
        str(layout.subnet),
        layout.state_file,
        {label: h.as_dict() for label, h in layout.hosts.items()},
        layout.links,
    )
    atomic_write(directory / HOSTS_FILE, json.dumps(record.as_dict(), indent=2).encode())
    layout.keep()
    return record


def load_hosts(directory: Path) -> ConsortiumHosts | None:
    """The hosts a consortium directory records (None: its nodes run on this host)."""
    path = directory / HOSTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HostsRecordError(f"{path} is not readable JSON: {exc}") from None
    try:
        if data["version"] != _VERSION or data["kind"] != "netns":
            raise ValueError(f"version {data['version']!r}, kind {data['kind']!r}")
        hosts = {
            str(label): {k: str(h[k]) for k in ("label", "netns", "address", "outside", "inside")}
            for label, h in dict(data["hosts"]).items()
        }
        links = data.get("links", "bridge")
        delay = float(data.get("delay_ms", 0.0))
        if links not in ("bridge", "relay") or not 0 <= delay <= MAX_DELAY_MS:
            raise ValueError(f"links {links!r}, delay_ms {delay!r}")
        record = ConsortiumHosts(
            "netns",
            str(data["tag"]),
            str(data["subnet"]),
            Path(data["state_file"]),
            hosts,
            links,
            delay,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HostsRecordError(f"{path} is not a hosts record: {exc!r}") from None
    prefix = f"ehr{record.tag}"
    if not hosts or any(not h["netns"].startswith(prefix) for h in hosts.values()):
        raise HostsRecordError(f"{path} names namespaces that are not layout {record.tag}'s")
    return record


def _save(directory: Path, record: ConsortiumHosts) -> None:
    atomic_write(directory / HOSTS_FILE, json.dumps(record.as_dict(), indent=2).encode())


def _links_for(record: ConsortiumHosts, delay_ms: float) -> Links:
    """Bridge links unless a delay is wanted on a kernel without netem (then the relay, kept
    once chosen)."""
    if record.links == "relay" or (delay_ms > 0 and not netem_available()):
        return "relay"
    return "bridge"


def ensure_hosts(directory: Path, delay_ms: float | None = None) -> HostLayout | None:
    """The consortium's host layout, made again if it is gone (same tag and subnet, so every
    host has its recorded address), with the recorded link delay or ``delay_ms`` (then
    recorded); None if the consortium has no hosts.

    A delay on a kernel without netem needs relayed links: if the hosts are up on a bridge,
    that is refused (:class:`HostsDelayError`, nothing changed) — ``network down`` first."""
    record = load_hosts(directory)
    if record is None:
        if delay_ms is not None:
            raise HostsDelayError(
                "this consortium has no hosts of its own (made without --hosts netns): there "
                "are no links to delay"
            )
        return None
    want = record.delay_ms if delay_ms is None else _checked_delay(delay_ms)
    links = _links_for(record, want)
    if record.state_file.exists():
        current = HostLayout.load(record.state_file)
        if current.links == "relay":
            links = "relay"  # made so by a run killed before it recorded that
        elif links == "relay":
            raise HostsDelayError(
                f"the hosts are up on bridge links and this kernel has no netem to delay them: "
                f"run 'ehrshare network down' first, then 'network up --delay-ms {want:g}' "
                "(the hosts are then made on the user-space link relay)"
            )
    if (links, want) != (record.links, record.delay_ms):
        # Recorded first: a run killed after this makes the next 'up' finish the job.
        _save(directory, replace(record, links=links, delay_ms=want))
        fault_point("hosts.after_record")
    layout = HostLayout.create(
        list(record.hosts),
        state_dir=record.state_file.parent,
        tag=record.tag,
        subnet=record.subnet,
        links=links,
        delay_ms=want if links == "relay" else 0.0,
        detached_relay=True,
    )
    moved = [
        label for label, h in layout.hosts.items() if h.address != record.hosts[label]["address"]
    ]
    if moved:
        layout.teardown()
        raise NetnsError(f"layout {record.tag} came back with other addresses for {moved}")
    layout.keep()
    if want or links == "relay":
        layout.delay(want)  # a relay already running, or netem on the bridge
    return layout


class HostsDelayError(ConfigurationError):
    """A link delay that cannot be set on this consortium's hosts as they are (exit 3)."""


MAX_DELAY_MS: Final = 10_000.0


def _checked_delay(ms: float) -> float:
    if not 0 <= ms <= MAX_DELAY_MS:
        raise UsageError(f"a link delay is between 0 and {MAX_DELAY_MS:g} ms, not {ms:g}")
    return float(ms)


def set_delay(directory: Path, ms: float) -> dict[str, Any]:
    """``network delay``: the one-way delay into each host, changed live if the hosts are up
    (netem on a bridge, or the relay), recorded for the next ``network up`` otherwise. Refused
    with nothing changed when the hosts are up on a bridge on a kernel without netem."""
    ms = _checked_delay(ms)
    record = load_hosts(directory)
    if record is None:
        raise HostsDelayError(
            "this consortium has no hosts of its own (made without --hosts netns): there are "
            "no links to delay"
        )
    if not record.state_file.exists():
        links = _links_for(record, ms)
        _save(directory, replace(record, links=links, delay_ms=ms))
        return {"delay_ms": ms, "links": links, "applied": False}
    layout = ensure_hosts(directory, ms)
    assert layout is not None
    return {"delay_ms": ms, "links": layout.links, "applied": True}


def hosts_status(directory: Path) -> dict[str, Any] | None:
    """What ``network status`` shows of the consortium's hosts: the layout's tag, subnet,
    links and delay, and per host its namespace, address and link (``up``, ``cut``, or
    ``absent`` when the hosts are not made); None without hosts."""
    record = load_hosts(directory)
    if record is None:
        return None
    layout = HostLayout.load(record.state_file) if record.state_file.exists() else None
    present = set(our_namespaces())
    hosts: dict[str, dict[str, Any]] = {}
    for label, h in record.hosts.items():
        if layout is None or h["netns"] not in present:
            link = "absent"
        else:
            try:
                link = "cut" if layout.is_cut(label) else "up"
            except (NetnsError, ValueError):
                link = "absent"
        hosts[label] = {"netns": h["netns"], "address": h["address"], "link": link}
    out: dict[str, Any] = {
        "tag": record.tag,
        "subnet": record.subnet,
        "links": layout.links if layout is not None else record.links,
        "delay_ms": record.delay_ms,
        "up": layout is not None and all(h["link"] != "absent" for h in hosts.values()),
        "hosts": hosts,
    }
    if layout is not None and layout.links == "relay":
        relay = layout.relay
        out["relay_pid"] = relay.pid if relay is not None and relay.alive() else None
    return out


def remove_hosts(directory: Path) -> list[str]:
    """Remove the consortium's host layout (every namespace and link it made, and what still
    runs inside); the record stays, so ``network up`` makes it again. Returns what was
    removed."""
    record = load_hosts(directory)
    if record is None or not record.state_file.exists():
        return []
    layout = HostLayout.load(record.state_file)
    if layout.tag != record.tag:
        raise HostsRecordError(f"{record.state_file} is layout {layout.tag}, not {record.tag}")
    return layout.teardown()


def hosts_netns(directory: Path) -> dict[str, str | None] | None:
    """Namespaces by address for the consortium's services (None: no hosts)."""
    record = load_hosts(directory)
    return None if record is None else record.netns_by_address()


def _layout(directory: Path, label: str) -> tuple[ConsortiumHosts, HostLayout | None]:
    record = load_hosts(directory)
    if record is None:
        raise HostsRecordError(f"{directory} has no hosts of its own (no {HOSTS_FILE})")
    layout = HostLayout.load(record.state_file) if record.state_file.exists() else None
    return record, layout


def _planned(record: ConsortiumHosts, layout: HostLayout | None) -> HostLayout:
    """The layout, or (hosts down) one standing for it: names and addresses come from it."""
    if layout is not None:
        return layout
    hosts = [Host(**h) for h in record.hosts.values()]
    return HostLayout(record.tag, record.subnet, hosts, record.state_file)


def next_host(directory: Path, label: str) -> NodeHost:
    """The host ``label`` has, or the one :func:`add_host` would give it (the layout's next
    address): what a joining hospital's peer is announced at before its host is made."""
    record, layout = _layout(directory, label)
    if label in record.hosts:
        h = record.hosts[label]
        return NodeHost(h["address"], h["netns"])
    return _planned(record, layout).next_host(label).placement


def add_host(directory: Path, label: str) -> NodeHost:
    """Give the consortium one more host (a joining hospital's): recorded in ``hosts.json``
    first, then made (its namespace and link) if the hosts are up — on bridge links, or on the
    link relay, which opens a port for it while the others go on — otherwise the next
    ``network up`` makes it with the others. Idempotent."""
    record, layout = _layout(directory, label)
    if label not in record.hosts:
        host = _planned(record, layout).next_host(label)
        _save(directory, replace(record, hosts={**record.hosts, label: host.as_dict()}))
        fault_point("hosts.add.after_record")
    if layout is not None:
        layout.add_host(label)
    return next_host(directory, label)
