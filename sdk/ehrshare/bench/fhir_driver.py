"""The client side of ``ehrshare bench fhir``, run as its own process (a hospital system is one).

Standard library only, so that the process starts fast and measures nothing of ours: one
:class:`http.client.HTTPConnection` (HTTP/1.1, kept alive for the whole run) to the server.
The benchmark starts it with ``python -I fhir_driver.py``, writes one JSON line naming the
requests it may ask for, then one request name per line; for each the driver sends that request,
reads the whole answer, and writes back one JSON line ``{"ms": ..., "status": ...}`` timed here,
around the request and answer only (the pipe to the benchmark is outside the timing). End of
input ends the process; an exception ends it with a non-zero exit and a line on stderr.

It imports nothing from ehrshare: the benchmark runs this file by path.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from typing import Any


def _request(conn: http.client.HTTPConnection, spec: dict[str, Any]) -> tuple[float, int]:
    body = spec["body"].encode("utf-8") if spec.get("body") is not None else None
    t0 = time.perf_counter()
    conn.request(spec["method"], spec["path"], body=body, headers=spec["headers"])
    answer = conn.getresponse()
    answer.read()
    ms = (time.perf_counter() - t0) * 1000.0
    return ms, answer.status


def main() -> int:
    setup = json.loads(sys.stdin.readline())
    requests: dict[str, dict[str, Any]] = setup["requests"]
    conn = http.client.HTTPConnection(setup["host"], setup["port"], timeout=setup["timeout"])
    try:
        conn.connect()
        # As the server does: without TCP_NODELAY a body sent after the headers waits for the
        # peer's delayed ACK.
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        for line in sys.stdin:
            name = line.strip()
            if not name:
                continue
            ms, status = _request(conn, requests[name])
            sys.stdout.write(json.dumps({"ms": ms, "status": status}) + "\n")
            sys.stdout.flush()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
