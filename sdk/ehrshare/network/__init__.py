"""Everything that starts the real network's processes on 127.0.0.1 (or each hospital's on a
host of its own, :mod:`.netns`): Fabric, Kubo (IPFS), and the KGC nodes and proxies. Nothing
here is needed by the embedded backend.

- :mod:`.supervisor`: the one way a process is started (its log, parent-death signal), waited
  for, stopped by pid, restarted, and its death explained;
- :mod:`.binaries`: where the Fabric and Kubo binaries are found;
- :mod:`.fabric`: a multi-organisation Fabric network built from the consortium's CAs;
- :mod:`.kubo`: installing and running a Kubo daemon;
- :mod:`.services`: the KGC nodes and proxies of a profile as processes;
- :mod:`.netns`: hospitals as hosts in Linux network namespaces on one machine (tests, demo);
- :mod:`.control`: ``ehrshare network up|down|restart|status``.

Build scripts for the binaries live in the repository's ``network/`` folder.
"""

from __future__ import annotations

__all__: list[str] = []
