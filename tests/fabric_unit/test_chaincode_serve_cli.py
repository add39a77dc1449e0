"""``ehrshare chaincode serve`` as a real process, reached by a minimal fake peer.

A protocol-level check against a FAKE peer (the registration handshake and a keepalive over the
process's gRPC port); no real Fabric peer is involved (none can be built here, docs/status.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from fabric_protos.peer import chaincode_pb2 as ccpb
from fabric_protos.peer import chaincode_shim_pb2 as shim

from ehrshare_chaincode.ccaas import CONNECT_METHOD

MSG = shim.ChaincodeMessage
PACKAGE_ID = "ehrshare_1.0:" + "cd" * 32


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


async def handshake(target: str) -> tuple[str, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            CONNECT_METHOD,
            request_serializer=MSG.SerializeToString,
            response_deserializer=MSG.FromString,
        )()
        first = await asyncio.wait_for(call.read(), 30)
        await call.write(MSG(type=MSG.REGISTERED))
        await call.write(MSG(type=MSG.READY))
        await call.write(MSG(type=MSG.KEEPALIVE))
        echoed = await asyncio.wait_for(call.read(), 30)
        await call.done_writing()
        return ccpb.ChaincodeID.FromString(first.payload).name, echoed.type


def test_serve_registers_with_the_package_id_answers_keepalive_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "port"
    cmd = [sys.executable, "-m", "ehrshare", "chaincode", "serve", "--package-id", PACKAGE_ID]
    cmd += ["--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60  # start-up guard, not a timing assertion
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not start listening"
            time.sleep(0.05)
        name, echoed = asyncio.run(handshake(f"127.0.0.1:{port_file.read_text().strip()}"))
        assert name == PACKAGE_ID
        assert echoed == MSG.KEEPALIVE
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert f"chaincode {PACKAGE_ID} listening on port" in err.decode()


def test_serve_refuses_a_malformed_package_id() -> None:
    cmd = [sys.executable, "-m", "ehrshare", "chaincode", "serve", "--package-id", "ehrshare"]
    done = subprocess.run(cmd, capture_output=True, env=_env(), timeout=60, check=False)
    assert done.returncode == 2
    assert "is not <label>:<64 hex sha256>" in done.stderr.decode()
