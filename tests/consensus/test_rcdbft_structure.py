"""RC-DBFT's shape: one handler per message kind, looked up in one table, and simulator
modules a reader can take in at once (issue 14)."""

from __future__ import annotations

from pathlib import Path

import ehrshare_consensus
from ehrshare_consensus.rcdbft import HANDLERS, Kind, RcNode

MAX_LINES = 700


def test_every_message_kind_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == set(Kind)
    for kind, handler in HANDLERS.items():
        assert handler.__name__ == "on_" + kind.lower()
        assert getattr(RcNode, handler.__name__) is handler


def test_message_kinds_read_as_their_wire_names() -> None:
    assert Kind.PV == "PV" and f"{Kind.TNVQ}" == "TNVQ"
    assert {Kind.CV: 1}["CV"] == 1


def test_no_simulator_module_is_longer_than_a_reader_can_follow() -> None:
    root = Path(ehrshare_consensus.__file__).parent
    lines = {
        str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(root.rglob("*.py"))
    }
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}
