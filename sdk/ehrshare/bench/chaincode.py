"""``ehrshare bench chaincode``: the chaincode server alone, over real gRPC on loopback.

The server (:mod:`ehrshare.bench.chaincode_server`, the real
:class:`~ehrshare_chaincode.ccaas.ChaincodeServer`) runs as a child process; this process plays
the peer (:class:`~ehrshare.bench.fake_peer.FakePeer`) and the clients, whose signed proposals
(ECDSA P-256, as a Fabric client signs them) it sends as ``TRANSACTION`` messages one at a time.
Measured per operation: endorsements per second, the server's CPU per endorsement (its process
CPU time from ``/proc``, all threads — not wall time), this process's CPU per call (proposal
signing and the peer's side) and p50/p99 latency. Rounds repeat and alternate between servers, so
a baseline (an earlier commit's ``chaincode/`` directory) and the current code are compared in one
run on one machine. The world state starts from an embedded-ledger sandbox (one patient with one
record granted to one clinician through one proxy). This module only measures; it never prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric_protos.msp import identities_pb2 as _identities_pb2

from ehrshare.bench.chaincode_server import TRIVIAL_FUNCTION
from ehrshare.bench.fake_peer import FakePeer, TxOutcome, ready_params
from ehrshare.benchutil import machine_metadata, percentile
from ehrshare.contract.client import (
    grant_access_args,
    register_record_args,
    request_access_args,
)
from ehrshare.identity import Signer
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.fabric import signed_proposal
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare.network.supervisor import Child, start_child, stop_process, wait_ready
from ehrshare_chaincode import (
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    invoke,
    partial_composite_range,
    split_composite_key,
)

identities: Any = _identities_pb2

__all__ = [
    "OPERATIONS",
    "PEERS",
    "REQUEST_CALLS",
    "TARGET_RATIO",
    "ServerSpec",
    "process_cpu_seconds",
    "run_benchmark",
]

REQUEST_CALLS = {
    "RequestAccess": (False, False),
    "RequestAccess hinted": (False, True),
    "RequestAccess named": (True, False),
    "RequestAccess named hinted": (True, True),
}
"""RequestAccess as the SDK sends it (:func:`~ehrshare.contract.client.request_access_args`),
by (grant named, owner and label hinted): a bare record id (``read_record("r-1")``, the CLI
without ``--grant``) gives the first valid grant without hints; a ``RecordRef`` (the FHIR
gateway, a pointer from ``list_records`` / ``granted_records``) adds the hints; ``--grant`` names
the grant, and the SDK's retry under another covering grant and an emergency read name it with
the owner known."""
OPERATIONS = (
    "trivial write",
    "RegisterRecord",
    "GrantAccess",
    *REQUEST_CALLS,
    "CheckApproval",
)
"""What is measured, in order; "trivial write" is the harness-only ``BenchPut``. A baseline
server is sent every RequestAccess without hints (what its own SDK sent)."""
PEERS = {"2.x": b"", "3.1": ready_params()}
"""What the peer stand-in offers in ``READY``: nothing (Fabric 2.x), or write batches and
multiple-key reads of up to 1000 (Fabric 3.1's defaults)."""
TARGET_RATIO = 3.0
"""Issue 20: server CPU per RequestAccess endorsement at most a third of the baseline's."""

CHANNEL = "ehrshare"
T0 = 1_900_000_000
_TX_TIME_NS = (T0 + 1000) * 1_000_000_000
_FAR = T0 + 10 * 365 * 86400
_CAPSULE = bytes(range(256))
_SHA = "5" * 64
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A chaincode server to measure: a label and, for a baseline, the directory holding the
    ``ehrshare_chaincode`` package to serve instead of the installed one."""

    label: str
    chaincode_dir: Path | None = None


@dataclass
class _Party:
    creator: bytes
    signer: Signer
    ibe_id: str


@dataclass(frozen=True, slots=True)
class _World:
    """The seeded record and grant RequestAccess asks under."""

    record_id: str
    owner: str
    label: str
    grant_id: str


class _Target:
    """One running server and the fake peer connected to it."""

    def __init__(self, spec: ServerSpec, child: Child, peer: FakePeer) -> None:
        self.spec = spec
        self.child = child
        self.peer = peer
        self.counter = 0
        self.last_access_id = ""


def _start_server(spec: ServerSpec, workdir: Path, workers: int) -> tuple[Child, int]:
    name = spec.label.replace(" ", "-")
    port_file = workdir / f"{name}.port"
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    if spec.chaincode_dir is not None:
        if not (spec.chaincode_dir / "ehrshare_chaincode" / "__init__.py").is_file():
            raise FileNotFoundError(
                f"{spec.chaincode_dir} holds no ehrshare_chaincode package (give the directory "
                "that contains it, e.g. an exported commit's chaincode/)"
            )
        env["PYTHONPATH"] = os.pathsep.join(
            [str(spec.chaincode_dir.resolve()), os.environ.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
    argv = [
        sys.executable,
        "-m",
        "ehrshare.bench.chaincode_server",
        str(port_file),
        str(workers),
    ]
    child = start_child(
        f"bench-chaincode-{name}", argv, workdir / f"{name}.log", env=env, die_with_parent=True
    )
    outcome = wait_ready(
        port_file.exists, child.alive, time.monotonic() + 60, interval=0.1, backoff_from=0.01
    )
    if outcome != "ready":
        stop_process(child, grace=2, kill=True)
        raise RuntimeError(f"chaincode server {spec.label} did not start: {child.tail()}")
    return child, int(port_file.read_text())


def _seed(workdir: Path) -> tuple[dict[str, bytes], dict[str, _Party], _World]:
    """World state with a patient, a clinician and a proxy; one record, granted to the clinician."""
    sb = Sandbox.open(workdir / "seed", clock=ManualClock(T0))
    try:
        members: dict[str, Member] = {
            "patient": sb.member("Org1MSP", "bench-patient", "patient"),
            "clinician": sb.member("Org2MSP", "bench-clinician", "clinician"),
            "proxy": sb.member("Org2MSP", "bench-proxy", "proxy"),
        }
        patient = members["patient"]
        patient.ehr.register_record(
            record_id="r-0",
            owner=patient.ibe_id,
            label="lab",
            cid="bafybench0000001",
            sha256=_SHA,
            capsule=_CAPSULE,
            format_version="1",
        )
        grant = patient.ehr.grant_access(
            label="lab",
            grantee=members["clinician"].ibe_id,
            expiry=_FAR,
            max_hops=1,
            allowed_next=(),
            parent_grant_id="",
            proxy=members["proxy"].ibe_id,
        )
        state = {k.decode(): v for k, v in sb.ledger.state_items("ehrshare")}
        record = patient.ehr.get_record("r-0")
        world = _World("r-0", record.ref.owner, record.ref.label, grant.grant_id)
        parties = {
            name: _Party(serialize_identity(m.identity), m.signer, m.ibe_id)
            for name, m in members.items()
        }
    finally:
        sb.close()
    return state, parties, world


@dataclass(frozen=True, slots=True)
class _Call:
    party: str
    function: str
    args: tuple[bytes, ...]
    commit: bool


def _call_for(
    op: str, target: _Target, parties: dict[str, _Party], world: _World, tag: str
) -> _Call:
    target.counter += 1
    i = target.counter
    if op == "trivial write":
        return _Call("patient", TRIVIAL_FUNCTION, (f"bench-{tag}-{i}".encode(), b"v" * 64), True)
    if op == "RegisterRecord":
        args = register_record_args(
            record_id=f"rec-{tag}-{i}",
            owner=parties["patient"].ibe_id,
            label="lab",
            cid="bafybench0000001",
            sha256=_SHA,
            capsule=_CAPSULE,
            format_version="1",
        )
        return _Call("patient", "RegisterRecord", tuple(a.encode() for a in args), True)
    if op == "GrantAccess":
        # Another label than the record's, so RequestAccess's grant scan stays one grant long.
        args = grant_access_args(
            label="imaging",
            grantee=parties["clinician"].ibe_id,
            expiry=_FAR,
            max_hops=0,
            allowed_next=(),
            parent_grant_id="",
            proxy=parties["proxy"].ibe_id,
        )
        return _Call("patient", "GrantAccess", tuple(a.encode() for a in args), True)
    if op in REQUEST_CALLS:
        named, hinted = REQUEST_CALLS[op]
        hinted = hinted and target.spec.chaincode_dir is None  # a baseline's SDK sent none
        args = request_access_args(
            world.record_id,
            world.grant_id if named else "",
            owner=world.owner if hinted else "",
            label=world.label if hinted else "",
        )
        return _Call("clinician", "RequestAccess", tuple(a.encode() for a in args), True)
    if op == "CheckApproval":
        return _Call("proxy", "CheckApproval", (target.last_access_id.encode(),), False)
    raise ValueError(f"unknown operation {op!r}")


class _DictStub:
    """The contract's stub over a dict, in this process: the contract's own CPU, no transport."""

    def __init__(self, state: dict[str, bytes], creator: tuple[str, bytes], txid: str) -> None:
        self._state = state
        self._creator = creator
        self._txid = txid
        self.writes: dict[str, bytes | None] = {}
        self.event: tuple[str, bytes] | None = None

    def prefetch(self, keys: Sequence[str]) -> None:
        """Reads here are local: nothing to fetch ahead."""

    def get_state(self, key: str) -> bytes | None:
        return self.writes[key] if key in self.writes else self._state.get(key)

    def put_state(self, key: str, value: bytes) -> None:
        self.writes[key] = bytes(value) or None

    def del_state(self, key: str) -> None:
        self.writes[key] = None

    def get_state_by_range(self, start_key: str, end_key: str) -> list[KeyValue]:
        merged = {k: v for k, v in self._state.items() if start_key <= k < end_key}
        for k, v in self.writes.items():
            if start_key <= k < end_key:
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        return [KeyValue(k, v) for k, v in sorted(merged.items())]

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: Sequence[str]
    ) -> list[KeyValue]:
        return self.get_state_by_range(*partial_composite_range(object_type, attributes))

    def get_state_by_partial_composite_key_with_pagination(
        self, object_type: str, attributes: Sequence[str], page_size: int, bookmark: str
    ) -> tuple[list[KeyValue], str]:
        start, end = partial_composite_range(object_type, attributes)
        rows = [
            KeyValue(k, v) for k, v in sorted(self._state.items()) if (bookmark or start) <= k < end
        ]
        return rows[:page_size], rows[page_size].key if len(rows) > page_size else ""

    def get_history_for_key(self, key: str) -> list[KeyModification]:
        return []

    def create_composite_key(self, object_type: str, attributes: Sequence[str]) -> str:
        return create_composite_key(object_type, attributes)

    def split_composite_key(self, key: str) -> tuple[str, list[str]]:
        return split_composite_key(key)

    def get_creator(self) -> tuple[str, bytes]:
        return self._creator

    def get_tx_timestamp(self) -> TxTimestamp:
        return TxTimestamp(_TX_TIME_NS // 1_000_000_000, 0)

    def get_tx_id(self) -> str:
        return self._txid

    def get_channel_id(self) -> str:
        return CHANNEL

    def set_event(self, name: str, payload: bytes) -> None:
        self.event = (name, payload)


def _contract_only(
    state: dict[str, bytes], parties: dict[str, _Party], world: _World, n: int
) -> dict[str, float]:
    """CPU ms per call of the contract itself (this process, a dict stub, no gRPC, no signing)."""
    creators = {name: _creator_pair(p.creator) for name, p in parties.items()}
    kv = dict(state)
    target = _Target(ServerSpec("in-process"), None, None)  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for op in OPERATIONS[1:]:
        calls = [_call_for(op, target, parties, world, "c") for _ in range(n)]
        c0 = time.process_time()
        for i, call in enumerate(calls):
            stub = _DictStub(kv, creators[call.party], f"{op[:4]}{i:060d}")
            payload = invoke(stub, call.function, list(call.args))
            if op in REQUEST_CALLS:
                target.last_access_id = json.loads(payload)["access_id"]
            if call.commit:
                for k, v in stub.writes.items():
                    if v is None:
                        kv.pop(k, None)
                    else:
                        kv[k] = v
        out[op] = (time.process_time() - c0) * 1000.0 / n
    return out


def _creator_pair(serialized: bytes) -> tuple[str, bytes]:
    ident = identities.SerializedIdentity.FromString(serialized)
    return str(ident.mspid), bytes(ident.id_bytes)


@dataclass
class _Round:
    latencies_ms: list[float]
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    proposal_cpu_s: float
    requests: dict[str, int]


async def _round(
    target: _Target, op: str, parties: dict[str, _Party], world: _World, n: int, tag: str
) -> _Round:
    calls = [_call_for(op, target, parties, world, tag) for _ in range(n)]
    lat: list[float] = []
    proposal_cpu = 0.0
    pid = target.child.pid
    requests0 = dict(target.peer.request_counts)
    server0 = process_cpu_seconds(pid)
    client0 = time.process_time()
    t_start = time.perf_counter()
    for call in calls:
        party = parties[call.party]
        c0 = time.process_time()
        txid, signed = signed_proposal(
            party.creator,
            party.signer,
            channel=CHANNEL,
            chaincode="ehrshare",
            function=call.function,
            args=call.args,
            timestamp_ns=_TX_TIME_NS,
        )
        proposal_cpu += time.process_time() - c0
        t0 = time.perf_counter()
        out = await target.peer.execute(
            signed, txid, call.function, list(call.args), channel=CHANNEL, commit=call.commit
        )
        lat.append((time.perf_counter() - t0) * 1000.0)
        _check(out, op)
        if op in REQUEST_CALLS:
            target.last_access_id = _access_id(out)
    wall = time.perf_counter() - t_start
    return _Round(
        lat,
        wall,
        process_cpu_seconds(pid) - server0,
        time.process_time() - client0,
        proposal_cpu,
        {
            kind: count - requests0.get(kind, 0)
            for kind, count in target.peer.request_counts.items()
            if count > requests0.get(kind, 0)
        },
    )


def _check(out: TxOutcome, op: str) -> None:
    if out.status >= 400:
        raise RuntimeError(f"{op} failed in the benchmark: {out.status} {out.message}")


def _access_id(out: TxOutcome) -> str:
    answer = json.loads(out.payload)
    if answer.get("decision") != "allow":
        raise RuntimeError(f"benchmark access was denied: {answer.get('reason')}")
    return str(answer["access_id"])


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _summarise(rounds: list[_Round], n: int) -> dict[str, Any]:
    lat = [x for r in rounds for x in r.latencies_ms]
    server = [r.server_cpu_s * 1000.0 / n for r in rounds]
    client = [r.client_cpu_s * 1000.0 / n for r in rounds]
    proposal = [r.proposal_cpu_s * 1000.0 / n for r in rounds]
    rate = [n / r.wall_s for r in rounds]
    kinds = sorted({k for r in rounds for k in r.requests})
    requests = {k: statistics.median(r.requests.get(k, 0) / n for r in rounds) for k in kinds}
    return {
        "state_requests_per_call": requests,
        "state_requests_per_call_total": sum(requests.values()),
        "endorsements_per_s": _spread(rate),
        "server_cpu_ms_per_endorsement": _spread(server),
        "client_cpu_ms_per_call": _spread(client),
        "client_proposal_cpu_ms_per_call": _spread(proposal),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "rounds": len(rounds),
        "calls_per_round": n,
    }


async def _measure(
    targets: list[_Target],
    parties: dict[str, _Party],
    world: _World,
    state: dict[str, bytes],
    n: int,
    repeat: int,
    warmup: int,
    progress: Callable[[str], None],
) -> dict[str, dict[str, list[_Round]]]:
    for t in targets:
        t.peer.state = dict(state)
        await t.peer.open()
    results: dict[str, dict[str, list[_Round]]] = {t.spec.label: {} for t in targets}
    for op in OPERATIONS:
        for t in targets:
            progress(f"{op}: warm-up on {t.spec.label}")
            if op == "CheckApproval" and not t.last_access_id:
                await _round(t, "RequestAccess", parties, world, 1, "warm")
            await _round(t, op, parties, world, warmup, "warm")
        for r in range(repeat):
            # Alternate servers within each repetition: load from others hits both alike.
            for t in targets:
                progress(f"{op}: round {r + 1}/{repeat} on {t.spec.label}")
                done = await _round(t, op, parties, world, n, f"r{r}")
                results[t.spec.label].setdefault(op, []).append(done)
    for t in targets:
        await t.peer.close()
    return results


def run_benchmark(
    *,
    n: int = 200,
    repeat: int = 3,
    warmup: int = 20,
    baseline: Path | None = None,
    workers: int = 16,
    peer: str = "2.x",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result (see the module doc). ``peer``: what
    the peer stand-in offers the server (:data:`PEERS`)."""
    say = progress or (lambda _msg: None)
    if n < 1 or repeat < 1 or warmup < 0:
        raise ValueError("n and repeat must be at least 1, warmup at least 0")
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}")
    specs = [ServerSpec("current")]
    if baseline is not None:
        specs.insert(0, ServerSpec("baseline", baseline))
    workdir = Path(tempfile.mkdtemp(prefix="ehrshare-bench-chaincode-"))
    children: list[Child] = []
    try:
        say("seeding the world state")
        state, parties, world = _seed(workdir)
        targets = []
        for spec in specs:
            say(f"starting the {spec.label} chaincode server")
            child, port = _start_server(spec, workdir, workers)
            children.append(child)
            stand_in = FakePeer(f"127.0.0.1:{port}", ready_payload=PEERS[peer])
            targets.append(_Target(spec, child, stand_in))
        raw = asyncio.run(_measure(targets, parties, world, state, n, repeat, warmup, say))
        say("the contract alone, in this process")
        contract_only = _contract_only(state, parties, world, n)
    finally:
        for child in children:
            stop_process(child, grace=5)
        shutil.rmtree(workdir, ignore_errors=True)
    servers = {
        label: {op: _summarise(rounds, n) for op, rounds in ops.items()}
        for label, ops in raw.items()
    }
    result: dict[str, Any] = {
        "benchmark": "chaincode",
        "method": (
            "the chaincode server (ehrshare_chaincode.ccaas) in a child process, driven over "
            "insecure gRPC on loopback by an in-process stand-in for the peer; one transaction "
            "at a time; server CPU is the child's user+system time from /proc (all threads); "
            "client CPU is this process's (proposal signing, the peer stand-in, gRPC); rounds "
            "alternate between servers; medians, min and max over rounds; RequestAccess as the "
            "SDK sends it (first valid grant or a named one, with or without the owner and "
            "label hints of a RecordRef); a baseline is sent no hints"
        ),
        "operations": list(OPERATIONS),
        "calls_per_round": n,
        "rounds": repeat,
        "warmup_calls": warmup,
        "workers": workers,
        "peer": peer,
        "servers": servers,
        "contract_only_cpu_ms_per_call": contract_only,
        "machine": machine_metadata(),
    }
    if baseline is not None:
        result["baseline_dir"] = str(baseline)
        ratios = {}
        for op in OPERATIONS:
            before = servers["baseline"][op]["server_cpu_ms_per_endorsement"]["median"]
            after = servers["current"][op]["server_cpu_ms_per_endorsement"]["median"]
            ratios[op] = before / after if after > 0 else None
        result["baseline_over_current_server_cpu"] = ratios
        got = ratios["RequestAccess"]
        result["target"] = {
            "operation": "RequestAccess",
            "baseline_over_current_min": TARGET_RATIO,
            "measured": got,
            "met": got is not None and got >= TARGET_RATIO,
            "measured_by_call": {op: ratios[op] for op in REQUEST_CALLS},
        }
    return result
