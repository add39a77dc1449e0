"""The trivial key-value chaincode (:mod:`ehrshare_chaincode.kv`) deployed beside the contract
on a running network: the yardstick of ``ehrshare bench fabric``.

:func:`deploy_kv_chaincode` writes a second ccaas package (its own server certificate from the
network's chaincode TLS CA), starts ``ehrshare chaincode serve --contract kv`` through the
supervisor and installs, approves and commits it on the channel (:meth:`deploy_chaincode`). The
server is a process of the returned :class:`KvChaincode`, not of the network: ``FabricNet``'s
process table, health and restarts are unchanged, and a network restarted later has the
definition but no server (benchmarks build their own network). The package and the server are
made as the contract's are (:func:`~ehrshare.network.fabric.material.write_ccaas_package`, on the
orderers' host: its address and network namespace). Must not signal a process it did not start.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ehrshare.closing import Closing
from ehrshare.identity import LocalCA
from ehrshare.network.fabric.material import write_ccaas_package
from ehrshare.network.fabric.spec import ORDERER_MSP, FabricNetError, Progress
from ehrshare.network.supervisor import (
    Child,
    free_loopback_ports,
    start_child,
    stop_process,
    wait_ready,
)

if TYPE_CHECKING:
    from ehrshare.network.fabric.launcher import FabricNet

__all__ = ["KV_CHAINCODE", "KvChaincode", "deploy_kv_chaincode"]

KV_CHAINCODE = "ehrshare-kv"
"""The name the trivial chaincode is deployed under."""


class KvChaincode(Closing):
    """The deployed trivial chaincode: its name, package id and server process(es)."""

    def __init__(self, name: str, package_id: str, servers: list[Child]) -> None:
        self.name = name
        self.package_id = package_id
        self.servers = servers

    @property
    def pids(self) -> list[int]:
        """The server processes' pids (for CPU accounting)."""
        return [c.pid for c in self.servers]

    def close(self) -> None:
        """Stop the server process(es) by pid (the definition stays on the channel)."""
        for child in self.servers:
            stop_process(child, grace=5)
        self.servers = []


def start_chaincode_servers(
    net: FabricNet,
    *,
    contract: str,
    package_id: str,
    port: int,
    tls_dir: Path,
    processes: int,
    tag: str,
    deadline: float,
) -> list[Child]:
    """``processes`` × ``ehrshare chaincode serve --contract <contract>`` on one loopback
    port (gRPC binds with SO_REUSEPORT, so the kernel spreads the peers' connections over
    them); each has written its port file when this returns. Stops them on failure."""
    exe = Path(sys.executable).parent / "ehrshare"
    if not exe.is_file():
        raise FabricNetError(f"the ehrshare command is not at {exe} (next to {sys.executable})")
    children: list[Child] = []
    try:
        for i in range(processes):
            port_file = tls_dir / f"server-{i}.port"
            port_file.unlink(missing_ok=True)
            argv = [str(exe), "chaincode", "serve", "--contract", contract]
            # Where the launcher runs the contract's server: the orderers' host (its network
            # namespace on a netns network), at that host's address.
            listen = f"{net.host(ORDERER_MSP)}:{port}"
            argv += ["--package-id", package_id, "--listen", listen]
            argv += ["--tls-cert", str(tls_dir / "server.crt")]
            argv += ["--tls-key", str(tls_dir / "server.key")]
            argv += ["--client-ca", str(net.dir / "chaincode" / "tls-ca" / "ca-cert.pem")]
            argv += ["--port-file", str(port_file)]
            log = net.dir / "logs" / f"{tag}-{i}.log"
            child = start_child(f"{tag}-{i}", argv, log, cwd=net.dir, netns=net.netns(ORDERER_MSP))
            children.append(child)
            outcome = wait_ready(port_file.exists, child.alive, deadline, backoff_from=0.02)
            if outcome != "ready":
                raise FabricNetError(f"{tag}-{i} did not start ({outcome}): {child.tail()}")
    except BaseException:
        for child in children:
            stop_process(child, grace=5)
        raise
    return children


def deploy_kv_chaincode(
    net: FabricNet,
    *,
    name: str = KV_CHAINCODE,
    processes: int = 1,
    progress: Progress | None = None,
    timeout: float = 120.0,
) -> KvChaincode:
    """Write, serve and deploy the trivial chaincode on ``net`` (running, deployed) under
    ``name``; close the result to stop its server(s)."""
    if not net.deployed:
        raise FabricNetError("deploy the network (start it once) before adding a chaincode")
    if processes < 1:
        raise FabricNetError("processes must be at least 1")
    say = progress or (lambda _msg: None)
    deadline = time.monotonic() + timeout
    (port,) = free_loopback_ports(1)
    tls_dir = net.dir / f"chaincode-{name}"
    package_id, package = write_ccaas_package(
        tls_dir,
        LocalCA.load(net.dir / "chaincode" / "tls-ca"),
        label=f"{name}_1",
        address=f"{net.host(ORDERER_MSP)}:{port}",
    )
    say(f"{name}: starting {processes} server process(es)")
    servers = start_chaincode_servers(
        net,
        contract="kv",
        package_id=package_id,
        port=port,
        tls_dir=tls_dir,
        processes=processes,
        tag=f"ccaas-{name}",
        deadline=deadline,
    )
    try:
        net.deploy_chaincode(
            name, package_id, package, say, timeout=max(1.0, deadline - time.monotonic())
        )
    except BaseException:
        for child in servers:
            stop_process(child, grace=5)
        raise
    return KvChaincode(name, package_id, servers)
