"""The chaincode server process ``ehrshare bench chaincode`` measures (run as ``python -m``).

It serves the ehrshare contract plus one benchmark-only function, ``BenchPut(key, value)`` (a
trivial write: one ``PUT_STATE``, no log, no event), through the real
:class:`~ehrshare_chaincode.ccaas.ChaincodeServer` on loopback, writes the bound port to the file
named by its first argument and runs until SIGTERM. ``BenchPut`` exists only here: the EHR contract
and the ``ehrshare chaincode serve`` command never have it. Whichever ``ehrshare_chaincode`` comes
first on ``sys.path`` is served, so a benchmark may put an earlier commit's chaincode first
(``PYTHONPATH``) to compare it with the current one in one run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from ehrshare_chaincode import invoke
from ehrshare_chaincode.ccaas import ChaincodeServer
from ehrshare_chaincode.stub import ChaincodeStub

__all__ = ["TRIVIAL_FUNCTION", "bench_chaincode", "main"]

PACKAGE_ID = "ehrshare-bench_1.0:" + "be" * 32
TRIVIAL_FUNCTION = "BenchPut"


def bench_chaincode(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    """The contract's :func:`invoke`, plus ``BenchPut`` (a trivial write) for comparison."""
    if function == TRIVIAL_FUNCTION:
        stub.put_state(args[0].decode(), args[1])
        return b""
    return invoke(stub, function, args)


async def _serve(port_file: Path, workers: int) -> None:
    server = ChaincodeServer(
        PACKAGE_ID, "127.0.0.1:0", chaincode=bench_chaincode, max_workers=workers
    )
    port = await server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str]) -> int:
    """``python -m ehrshare.bench.chaincode_server PORT_FILE [WORKERS]``."""
    port_file = Path(argv[0])
    workers = int(argv[1]) if len(argv) > 1 else 16
    asyncio.run(_serve(port_file, workers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
