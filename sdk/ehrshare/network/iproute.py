"""Thin wrappers over iproute2 for :mod:`ehrshare.network.netns`: run ``ip``/``tc``, list the
namespaces and links this package made (names ``ehr<tag>...``), pick a free subnet, kill what
still runs in a namespace. Must not touch a name without the ``ehr<tag>`` prefix."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ehrshare.errors import ConfigurationError, Unavailable

__all__ = [
    "NAME_PREFIX",
    "NetnsError",
    "NetnsUnavailable",
    "netns_problem",
    "our_links",
    "our_namespaces",
]

_log = logging.getLogger(__name__)

NAME_PREFIX: Final = "ehr"
"""Every namespace and link this module makes is named ``ehr<tag>...`` (tag: 4 hex digits)."""

# 10.231.0.0/16: private, and not a range Docker, libvirt or this machine uses; one /24 per
# layout, picked among those no address of the root namespace is in.
_SUPERNET: Final = ipaddress.IPv4Network("10.231.0.0/16")
_TAG: Final = re.compile(r"^[0-9a-f]{4}$")


class NetnsError(Unavailable, RuntimeError):
    """An ``ip``/``tc`` step failed (exit 4); the message carries the command and its stderr."""


class NetnsUnavailable(ConfigurationError, RuntimeError):
    """Namespaces cannot be made here: not root, or iproute2 missing (exit 3)."""

    hint = "run as root on Linux with iproute2 installed (apt-get install -y iproute2)"


def netns_problem() -> str | None:
    """Why this machine cannot make a :class:`HostLayout`, or None if it can."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    return None


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(  # noqa: S603 - ip/tc with names this module made
        list(argv), capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def our_namespaces() -> list[str]:
    """Names of the network namespaces on this machine made by this module (any layout)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(NAME_PREFIX) and _TAG.match(n[3:7]))


def our_links() -> list[str]:
    """Names of the links of the root namespace made by this module (any layout)."""
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            name = parts[1].split("@", 1)[0]
            if name.startswith(NAME_PREFIX) and _TAG.match(name[3:7]):
                names.append(name)
    return sorted(names)


def _new_tag() -> str:
    while True:
        tag = secrets.token_hex(2)
        if not any(n.startswith(NAME_PREFIX + tag) for n in our_namespaces() + our_links()):
            return tag


def _free_subnet(wanted: str | None = None) -> ipaddress.IPv4Network:
    out = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = {ipaddress.ip_interface(m.group(1)).network for m in re.finditer(r"inet (\S+)", out)}
    if wanted is not None:
        net = ipaddress.ip_network(wanted)
        if not isinstance(net, ipaddress.IPv4Network) or not net.subnet_of(_SUPERNET):
            raise ValueError(f"subnet {wanted} is not a /24 of {_SUPERNET}")
        taken = [str(u) for u in used if net.overlaps(u)]
        if taken:
            raise NetnsError(f"subnet {net} is in use on this machine now ({', '.join(taken)})")
        return net
    for subnet in _SUPERNET.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            assert isinstance(subnet, ipaddress.IPv4Network)
            return subnet
    raise NetnsError(f"every /24 of {_SUPERNET} is in use on this machine")


def _namespaces() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_exists(name: str, netns: str | None = None) -> bool:
    ns = ["-n", netns] if netns else []
    return _run(["ip", *ns, "link", "show", name], check=False).returncode == 0


def _no_bridge_filtering(bridge: str) -> None:
    # With br_netfilter loaded, bridged frames pass iptables' FORWARD chain, whose policy may
    # drop them; hosts on one bridge are one LAN segment, so turn that off for this bridge only.
    knob = Path(f"/sys/class/net/{bridge}/bridge/nf_call_iptables")
    if knob.exists():
        knob.write_text("0", encoding="ascii")


def _kill_inside(netns: str) -> None:
    if netns not in _namespaces():
        return
    out = _run(["ip", "netns", "pids", netns], check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        _log.warning("killing pid %d still running in %s", pid, netns)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
