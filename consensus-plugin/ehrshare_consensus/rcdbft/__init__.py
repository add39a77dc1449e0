"""RC-DBFT (reputation-clustered dynamic BFT, docs/consensus.md) on the simulation core.

`build_rcdbft` creates the replicas (`RcNode`) and the committed data they share (`RcLedger`).
"""

from __future__ import annotations

from .ledger import RcLedger
from .node import HANDLERS, RcNode, build_rcdbft
from .wire import Kind

__all__ = ["HANDLERS", "Kind", "RcLedger", "RcNode", "build_rcdbft"]
