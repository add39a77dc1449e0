"""The part of :class:`~ehrshare.network.netns.HostLayout` that links hosts through the link
relay (``links="relay"``): the relay's config, starting it, its delay and counters, and hosts
added while it runs.

A host added to a layout whose relay runs (:meth:`HostLayout.add_host`, a hospital that joins)
is on record in the layout's state file first; then its namespace is made, the relay's config
rewritten with one more port and the relay told (SIGHUP: it opens the new TAP device inside the
namespace and keeps every other port as it was, see :mod:`ehrshare.network.linkrelay`), and the
host's address and link configured as at start. A kill -9 between any two steps is completed
by the next ``add_host`` or ``create`` with the layout's tag, or swept with the layout.

This module must not touch a namespace, link or process its layout did not make or start.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrshare.faults import fault_point
from ehrshare.network.iproute import NetnsError, _link_exists, _namespaces, _run
from ehrshare.network.linkrelay import (
    Port,
    RelayConfig,
    add_relay_ports,
    relay_stats,
    set_relay_delay,
    start_relay,
)

if TYPE_CHECKING:
    import ipaddress

    from ehrshare.network.netns import Host, Links
    from ehrshare.network.supervisor import Child

__all__ = ["RelayedLinks"]

_log = logging.getLogger(__name__)


class RelayedLinks:
    """Relay-linked hosts, mixed into :class:`~ehrshare.network.netns.HostLayout`."""

    tag: str
    links: Links
    relay: Child | None
    relay_detached: bool
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    hosts: dict[str, Host]
    state_file: Path
    bridge: str
    gateway: str

    def _record(self, kind: str, name: str) -> None:
        raise NotImplementedError

    def _save(self) -> None:
        raise NotImplementedError

    def _relay_config_path(self) -> Path:
        return self.state_file.with_name(f"{self.tag}.relay.json")

    def _relay_stats_path(self) -> Path:
        return self.state_file.with_name(f"{self.tag}.relay-stats.json")

    def _relay_config(self, delay_ms: float) -> RelayConfig:
        ports = [Port(self.bridge, None, delayed=False)]
        ports += [Port(h.inside, h.netns, delayed=True) for h in self.hosts.values()]
        return RelayConfig(tuple(ports), delay_ms, self._relay_stats_path())

    def _relay_delay_asked(self) -> float:
        """The delay the relay was last given (its config file; 0 if there is none)."""
        try:
            data = json.loads(self._relay_config_path().read_text(encoding="utf-8"))
            return float(data["delay_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def _make_relayed(self, delay_ms: float | None = None) -> None:
        """Make every host's namespace, start the relay (or, running, have it open the ports
        of hosts added since), then give each host its address. ``delay_ms`` None: keep the
        delay the relay was last given."""
        delay = self._relay_delay_asked() if delay_ms is None else delay_ms
        # Namespaces first: the relay opens a TAP inside each.
        for host in self.hosts.values():
            self._record("netns", host.netns)
            if host.netns not in _namespaces():
                _run(["ip", "netns", "add", host.netns])
            _run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        fault_point("netns.create.after_namespaces")
        self._record("relay", self.bridge)
        if self.relay is None or not self.relay.alive():
            self._start_relay(delay)
        else:
            add_relay_ports(self.relay, self._relay_config(delay), self._relay_config_path())
            fault_point("netns.add_host.after_ports")
        prefix = self.subnet.prefixlen
        _run(["ip", "addr", "replace", f"{self.gateway}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for host in self.hosts.values():
            if not _link_exists(host.inside, host.netns):
                raise NetnsError(
                    f"host layout {self.tag}: the link relay has no port {host.inside} in "
                    f"{host.netns} (see {self.state_file.with_name(f'{self.tag}.relay.log')})"
                )
            ns = ["ip", "-n", host.netns]
            _run([*ns, "addr", "replace", f"{host.address}/{prefix}", "dev", host.inside])
            _run([*ns, "link", "set", host.inside, "up"])
            fault_point("netns.create.after_host")
        _log.info(
            "host layout %s (relayed, %g ms): %s on %s",
            self.tag,
            delay,
            ", ".join(f"{h.label}={h.address}" for h in self.hosts.values()),
            self.subnet,
        )

    def _start_relay(self, delay_ms: float) -> None:
        log = self.state_file.with_name(f"{self.tag}.relay.log")
        config, path = self._relay_config(delay_ms), self._relay_config_path()

        def on_record(child: Child) -> None:
            # On record before the wait: a kill -9 meanwhile leaves it to be stopped by pid.
            self.relay = child
            self._save()

        self.relay = start_relay(
            config, path, log, on_started=on_record, detached=self.relay_detached
        )
        fault_point("netns.create.after_relay")

    def _relay_delay(self, ms: float) -> None:
        if self.relay is None or not self.relay.alive():
            raise NetnsError(f"host layout {self.tag}: its link relay is not running")
        set_relay_delay(self.relay, self._relay_config(ms), self._relay_config_path())

    def relay_stats(self) -> dict[str, Any] | None:
        """The relay's counters (frames in/out, drops, CPU seconds, per open port) as of now;
        None with bridge links."""
        if self.links != "relay":
            return None
        return relay_stats(self.relay, self._relay_stats_path())
