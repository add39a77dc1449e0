"""Hospital-run services: the KGC node and the re-encryption proxy.

In the embedded backend both run in-process (:mod:`ehrshare.services.kgc`,
:mod:`ehrshare.services.proxy`); as real processes they serve gRPC over mutually authenticated TLS
(:mod:`ehrshare.services.rpc`, started by ``ehrshare kgc serve`` / ``ehrshare proxy serve``).
The client classes of both transports implement the same protocols.
"""

from __future__ import annotations

__all__: list[str] = []
