"""The demo across hosts (``ehrshare demo --backend fabric --hosts netns``): what it adds to
:func:`ehrshare.demo.run_demo`.

:class:`DemoHosts` puts the three hospitals and the orderer organisation each on a host of its
own (:class:`~ehrshare.network.netns.HostLayout`: a network namespace and an address), so every
peer, Kubo node, KGC node and proxy binds its hospital's address and the clients reach them
over the bridge. Its two steps show what hosts make visible: a record read while its origin
hospital's IPFS node is stopped (the reader's own hospital holds a replica), and hospital C cut
off mid-run (link down: the others keep committing, C's clinician gets a clear error) and back
(its peer catches up with the blocks it missed).

This module must not print, and removes every namespace and link it made (:meth:`close`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ehrshare.errors import EhrshareError, Unavailable
from ehrshare.network.fabric import ORDERER_MSP, FabricNet
from ehrshare.network.netns import HostLayout, NodeHost
from ehrshare.network.swarm import KuboSwarm
from ehrshare.session import Session

__all__ = ["HOST_MODES", "DemoHosts"]

_log = logging.getLogger(__name__)

HOST_MODES = ("local", "netns")
"""``local``: every node on 127.0.0.1; ``netns``: each hospital on a host of its own."""

_CATCH_UP_SECONDS = 60.0


class _Step(Protocol):
    lines: list[str]


Check = Callable[[str, bool, Any], None]


class DemoHosts:
    """The hosts of a demo run: made for ``msps`` (plus the orderer organisation's)."""

    def __init__(self, msps: list[str]) -> None:
        self.msps = msps
        self.layout = HostLayout.create([*msps, ORDERER_MSP])

    def placements(self) -> dict[str, NodeHost]:
        """``Consortium.init(hosts=...)``."""
        return self.layout.placements()

    def netns_by_address(self) -> dict[str, str | None]:
        """``ServiceProcesses(netns=...)``: each host's namespace by its address."""
        return self.layout.netns_by_address()

    def describe(self) -> str:
        """One line: which hospital is where."""
        return ", ".join(
            f"{label.removesuffix('MSP')} {h.address}" for label, h in self.layout.hosts.items()
        )

    def close(self) -> list[str]:
        """Remove every namespace and link made (processes must be stopped first)."""
        return self.layout.teardown()

    # --- the steps ---------------------------------------------------------------------------

    def origin_node_stopped(
        self, swarm: KuboSwarm, reader: Session, ref: Any, s: _Step, check: Check
    ) -> None:
        """Stop the origin hospital's (the first's) IPFS node, read ``ref`` as ``reader``
        (another hospital's member: its client asks its own node), start the node again."""
        origin = self.msps[0]
        swarm.stop([origin])
        try:
            s.lines.append(f"{origin}'s IPFS node stopped (the record's origin)")
            obs = reader.read_record(ref)
            value = float(obs.valueQuantity.value)  # type: ignore[attr-defined]
            s.lines.append(
                f"record read with its origin hospital's IPFS node stopped: {value} g/dL, "
                f"from the replica at {reader.identity.msp_id}'s node"
            )
            check("read_with_origin_ipfs_stopped", value == 13.2, s)
        finally:
            swarm.start([origin])
            swarm.wait_connected()

    def cut_and_back(
        self,
        network: FabricNet,
        writer: Session,
        patient: str,
        cut_reader: Session,
        ref: Any,
        record: dict[str, Any],
        s: _Step,
        check: Check,
    ) -> None:
        """Cut the last hospital's host off; ``writer`` (another hospital) stores ``record``
        meanwhile and ``cut_reader`` (at the cut hospital) gets a clear error reading ``ref``;
        bring it back and wait until its peer has every block the others have."""
        cut = self.msps[-1]
        others = [m for m in self.msps if m != cut]
        before = network.height(others[0])
        self.layout.cut(cut)
        try:
            s.lines.append(f"{cut}'s host cut off (link down: {self.layout.address(cut)})")
            put = writer.put_record(record, patient=patient)
            heights = {m: network.height(m) for m in others}
            s.lines.append(
                f"{writer.identity.msp_id} stored record {put.record_id[:14]}… meanwhile; "
                f"peer heights {heights} (from {before})"
            )
            check("others_commit_while_cut", min(heights.values()) > before, s)
            started = time.monotonic()
            try:
                cut_reader.read_record(ref)
                check("cut_reader_clear_error", False, s)
            except EhrshareError as exc:
                waited = time.monotonic() - started
                s.lines.append(
                    f"{cut_reader.ibe_id} cannot read while cut off (exit {exc.exit_code} after "
                    f"{waited:.1f} s): {str(exc)[:160]}"
                )
                check("cut_reader_clear_error", isinstance(exc, Unavailable), s)
        finally:
            self.layout.heal(cut)
        target = max(heights.values())
        started = time.monotonic()
        caught = False
        while time.monotonic() - started < _CATCH_UP_SECONDS:
            try:
                if network.height(cut) >= target:
                    caught = True
                    break
            except EhrshareError:
                pass  # the peer CLI may still fail while links come up
            time.sleep(0.2)
        s.lines.append(
            f"hospital C cut off and back: its peer caught up (height {target} in "
            f"{time.monotonic() - started:.1f} s)"
            if caught
            else f"hospital C's peer did not reach height {target} in {_CATCH_UP_SECONDS:.0f} s"
        )
        check("cut_host_caught_up", caught, s)
        # Its clients' channels to C's proxy and KGC node back off after the failures of the
        # cut: a read is refused as unavailable (exit 4, "read again once that proxy is back")
        # until they reconnect.
        started, tries = time.monotonic(), 1
        while True:
            try:
                obs = cut_reader.read_record(ref)
                break
            except Unavailable as exc:
                if time.monotonic() - started > _CATCH_UP_SECONDS:
                    raise
                _log.info("read after the cut, try %d: %s", tries, exc)
                tries += 1
                time.sleep(1.0)
        value = float(obs.valueQuantity.value)  # type: ignore[attr-defined]
        s.lines.append(
            f"{cut_reader.ibe_id} reads again: {value} g/dL (try {tries}, "
            f"{time.monotonic() - started:.1f} s after the catch-up)"
        )
        check("cut_reader_reads_after_heal", value == 13.2, s)
