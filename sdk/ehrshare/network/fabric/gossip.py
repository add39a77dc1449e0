"""Who each peer sees in the channel's gossip, from the peers' own logs: what a Fabric Gateway
needs before its first submit (it plans endorsements across organisations from that view;
without the other organisations it answers "no combination of peers can be derived which
satisfy the endorsement policy").

A peer logs its channel membership view whenever it changes (``Membership view has changed.
peers went online: … , current view: [[host:port …] …]``, Fabric 2.x and 3.x). Pure functions
over log text; the launcher's wait polls them. This module must not run or signal anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

__all__ = ["current_view", "missing_members"]

_VIEW: Final = re.compile(r"Membership view has changed\..*current view: +(.*)")
_ADDRESS: Final = re.compile(r"\b[\w.-]+:\d+\b")


def current_view(log_text: str) -> set[str] | None:
    """The ``host:port`` endpoints of the last membership view a peer logged in ``log_text``
    (None: it logged none yet)."""
    views = _VIEW.findall(log_text)
    if not views:
        return None
    return set(_ADDRESS.findall(views[-1]))


def missing_members(logs: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, set[str]]:
    """For each organisation whose peer's log is in ``logs`` (by MSP id), the other
    organisations' peer addresses (``addresses``, by MSP id) not in its current view; empty
    when every peer sees every other organisation's peer."""
    missing: dict[str, set[str]] = {}
    for msp, text in logs.items():
        others = {address for org, address in addresses.items() if org != msp}
        seen = current_view(text) or set()
        if others - seen:
            missing[msp] = others - seen
    return missing
