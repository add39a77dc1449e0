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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ehrshare.errors import ConfigurationError
from ehrshare.network.netns import HostLayout, NetnsError
from ehrshare.services.vault import atomic_write

__all__ = [
    "HOSTS_FILE",
    "ConsortiumHosts",
    "HostsRecordError",
    "ensure_hosts",
    "hosts_netns",
    "load_hosts",
    "record_hosts",
    "remove_hosts",
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

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "version": _VERSION,
            "kind": self.kind,
            "tag": self.tag,
            "subnet": self.subnet,
            "state_file": str(self.state_file),
            "hosts": self.hosts,
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
        record = ConsortiumHosts(
            "netns", str(data["tag"]), str(data["subnet"]), Path(data["state_file"]), hosts
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HostsRecordError(f"{path} is not a hosts record: {exc!r}") from None
    prefix = f"ehr{record.tag}"
    if not hosts or any(not h["netns"].startswith(prefix) for h in hosts.values()):
        raise HostsRecordError(f"{path} names namespaces that are not layout {record.tag}'s")
    return record


def ensure_hosts(directory: Path) -> HostLayout | None:
    """The consortium's host layout, made again if it is gone (same tag and subnet, so every
    host has its recorded address); None if the consortium has no hosts."""
    record = load_hosts(directory)
    if record is None:
        return None
    layout = HostLayout.create(
        list(record.hosts),
        state_dir=record.state_file.parent,
        tag=record.tag,
        subnet=record.subnet,
    )
    moved = [
        label for label, h in layout.hosts.items() if h.address != record.hosts[label]["address"]
    ]
    if moved:
        layout.teardown()
        raise NetnsError(f"layout {record.tag} came back with other addresses for {moved}")
    layout.keep()
    return layout


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
