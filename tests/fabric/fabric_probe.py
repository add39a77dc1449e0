"""Paths and the run record of the Fabric v2.1.1 probe network (tests/fabric/conftest.py)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "network" / "fabric-2.1-probe"
FAB = ROOT / "network" / "build" / "fabric21"
PORTS = (7050, 7051, 7052, 9443, 9444, 9998, 9999)  # fixed in the probe's configs


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Run:
    """A started probe network: its state directory, run-all.sh's output and the pids."""

    net: Path
    stdout: str
    output: str
    pids: list[int]
