"""The contract does not depend on the embedded backend.

Replaying every committed proposal of an embedded-ledger run through a stub with Fabric's semantics
(reads see only committed state, never the transaction's own writes) reproduces the same world
state byte for byte, and the chaincode package imports nothing backend-specific.
"""

from __future__ import annotations

import ast
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from chaincode_world import PROXY, World

from ehrshare.ledger.envelope import Proposal, deserialize_identity
from ehrshare_chaincode.contract import invoke
from ehrshare_chaincode.stub import (
    ChaincodeError,
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    partial_composite_range,
    split_composite_key,
)

PACKAGE = Path(__file__).resolve().parents[2] / "chaincode" / "ehrshare_chaincode"


class FabricSemanticsStub:
    """A dict-backed stub that, like a Fabric peer, hides a transaction's own writes from it."""

    def __init__(self, committed: dict[str, bytes], proposal: Proposal) -> None:
        self.committed = committed
        self.proposal = proposal
        self.creator = deserialize_identity(proposal.creator)
        self.writes: dict[str, bytes | None] = {}
        self.event: tuple[str, bytes] | None = None

    def prefetch(self, keys: Sequence[str]) -> None:
        """Reads here are local: nothing to fetch ahead."""

    def get_state(self, key: str) -> bytes | None:
        return self.committed.get(key)

    def put_state(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def del_state(self, key: str) -> None:
        self.writes[key] = None

    def get_state_by_range(self, start_key: str, end_key: str) -> list[KeyValue]:
        return [
            KeyValue(k, v) for k, v in sorted(self.committed.items()) if start_key <= k < end_key
        ]

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: Sequence[str]
    ) -> list[KeyValue]:
        return self.get_state_by_range(*partial_composite_range(object_type, attributes))

    def get_state_by_partial_composite_key_with_pagination(
        self, object_type: str, attributes: Sequence[str], page_size: int, bookmark: str
    ) -> tuple[list[KeyValue], str]:
        start, end = partial_composite_range(object_type, attributes)
        rows = self.get_state_by_range(bookmark or start, end)
        if len(rows) > page_size:
            return rows[:page_size], rows[page_size].key
        return rows, ""

    def get_history_for_key(self, key: str) -> list[KeyModification]:
        raise ChaincodeError("history is not kept by this stub")

    def create_composite_key(self, object_type: str, attributes: Sequence[str]) -> str:
        return create_composite_key(object_type, attributes)

    def split_composite_key(self, key: str) -> tuple[str, list[str]]:
        return split_composite_key(key)

    def get_creator(self) -> tuple[str, bytes]:
        return self.creator.msp_id, self.creator.credentials

    def get_tx_timestamp(self) -> TxTimestamp:
        return TxTimestamp(self.proposal.timestamp_seconds, self.proposal.timestamp_nanos)

    def get_tx_id(self) -> str:
        return self.proposal.tx_id

    def get_channel_id(self) -> str:
        return self.proposal.channel

    def set_event(self, name: str, payload: bytes) -> None:
        self.event = (name, payload)


def test_replay_under_fabric_semantics_reproduces_the_state(fresh_world: World) -> None:
    w = fresh_world
    # Add forwarding and amendments so the replay covers more paths.
    dave, zed = w.m["grantee"], w.m["other_hospital_clinician"]
    dave.submit(
        "GrantAccess",
        "lab",
        zed.ibe_id,
        str(w.clock.seconds + 500),
        "0",
        "",
        w.grants["grantee"],
        PROXY,
    )
    zed.submit("RequestAccess", "r-1")
    w.m["owner"].submit("AmendRecord", "r-1", "bafyrecord0002", "1" * 64, "AAAA", "1")
    # Several writes in one transaction: none may read back another's keys.
    w.m["owner"].submit(
        "WriteRecords",
        json.dumps(
            [
                ["RegisterRecord", *w.record_args("r-w1")],
                ["AmendRecord", "r-1", "bafyrecord0003", "2" * 64, "AAAA", "1", "", "2"],
                ["RegisterRecord", *w.record_args("r-w2")],
            ]
        ),
    )
    w.m["proxy"].submit("ReportReencryption", w.access_id, "ok")

    db = sqlite3.connect(w.sandbox.ledger.directory / "ledger.sqlite")
    rows = db.execute(
        "SELECT proposal, response, event_payload FROM transactions "
        "WHERE code = 'VALID' AND chaincode = 'ehrshare' ORDER BY blk, txn"
    ).fetchall()
    db.close()
    assert len(rows) > 20
    committed: dict[str, bytes] = {}
    for proposal_bytes, response, event_payload in rows:
        proposal = Proposal.from_bytes(bytes(proposal_bytes))
        stub = FabricSemanticsStub(committed, proposal)
        result = invoke(stub, proposal.function, list(proposal.args))
        assert result == bytes(response)
        assert (stub.event[1] if stub.event else None) == (
            bytes(event_payload) if event_payload is not None else None
        )
        for k, v in stub.writes.items():
            if v is None:
                committed.pop(k, None)
            else:
                committed[k] = v
    embedded = {k.decode(): v for k, v in w.sandbox.ledger.state_items("ehrshare")}
    assert committed == embedded


# The chaincode-as-a-service server is the Fabric runtime adapter (gRPC, asyncio, threads), not
# contract code: it is exempt here, and no contract module may import it.
RUNTIME_ADAPTERS = {"ccaas.py"}


def test_chaincode_imports_nothing_backend_specific() -> None:
    forbidden = {
        "sqlite3",
        "ehrshare",
        "grpc",
        "time",
        "random",
        "datetime",
        "os",
        "secrets",
        "threading",
        "asyncio",
    }
    for path in PACKAGE.rglob("*.py"):
        if path.name in RUNTIME_ADAPTERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                assert not any(n.split(".")[-1] == "ccaas" for n in names), path.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or "", *(a.name for a in node.names)]
                assert not any(n.split(".")[-1] == "ccaas" for n in imported), (
                    f"{path.name} imports the runtime adapter"
                )
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
            if isinstance(node, ast.Constant):
                assert not isinstance(node.value, float), f"{path.name} has a float literal"
