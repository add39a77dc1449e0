"""A stand-in for a Fabric peer's side of ``protos.Chaincode/Connect``, for benchmarks only.

It plays what ``core/chaincode/handler.go`` does for one chaincode stream: answer ``REGISTER`` with
``REGISTERED`` then ``READY``, send ``TRANSACTION`` messages keyed by (channel, txid), answer the
chaincode's state requests from an in-memory world state (range results in batches, fetched on with
``QUERY_STATE_NEXT``; paginated ranges with a bookmark; history newest first) and, when asked,
apply a successful transaction's writes. Given a ``ready_payload`` (:func:`ready_params`) it
plays a Fabric 3.1 peer that offers write batches and multiple-key reads, and answers
``WRITE_BATCH_STATE`` and ``GET_STATE_MULTIPLE``; it counts every state request by type
(``request_counts``). It validates nothing (no MVCC, no endorsement policy, no
signature check): it exists so that ``ehrshare bench chaincode`` can drive the real chaincode
server over real gRPC without a Fabric build, and the protocol unit tests
(``tests/fabric_unit/test_ccaas_fake_peer.py``) subclass it to add their instrumentation through the
hooks ``_observe``, ``_serve`` and ``_answer``. Never use it as a ledger.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from fabric_protos.ledger.queryresult import kv_query_result_pb2 as _kv_pb2
from fabric_protos.peer import chaincode_pb2 as _chaincode_pb2
from fabric_protos.peer import chaincode_shim_pb2 as _shim_pb2
from fabric_protos.peer import proposal_response_pb2 as _response_pb2

__all__ = ["FakePeer", "TxContext", "TxOutcome", "ready_params", "request_name"]

kvpb: Any = _kv_pb2
ccpb: Any = _chaincode_pb2
shim: Any = _shim_pb2
responsepb: Any = _response_pb2
MSG: Any = shim.ChaincodeMessage

CONNECT_METHOD = "/protos.Chaincode/Connect"
# The peer's handler returns range results in batches of this many (ledger's maxResultLimit).
DEFAULT_BATCH = 100


def request_name(kind: int) -> str:
    """A chaincode message type's name."""
    return str(MSG.Type.Name(kind)) if kind in MSG.Type.values() else f"type {kind}"


def ready_params(write_batch: int = 1000, get_multiple: int = 1000) -> bytes:
    """``READY``'s payload as a Fabric 3.1 peer sends it (``ChaincodeAdditionalParams``, its
    core.yaml defaults: both offered, 1000 each); 0 leaves one out."""
    return bytes(
        ccpb.ChaincodeAdditionalParams(
            use_write_batch=write_batch > 0,
            max_size_write_batch=write_batch,
            use_get_multiple_keys=get_multiple > 0,
            max_size_get_multiple_keys=get_multiple,
        ).SerializeToString()
    )


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What the chaincode answered: COMPLETED's status, message, payload and event (if any)."""

    status: int
    message: str
    payload: bytes
    event: tuple[str, bytes] | None


@dataclass
class TxContext:
    """The fake peer's simulation context for one transaction."""

    writes: dict[str, bytes | None] = field(default_factory=dict)
    reads: set[str] = field(default_factory=set)  # keys read (the peer's read set, less ranges)
    iterators: dict[str, list[bytes]] = field(default_factory=dict)
    done: asyncio.Future[Any] | None = None


class FakePeer:
    """One chaincode stream to ``target``, played from the peer's side (see the module doc).

    ``await open()``, then ``await execute(...)`` per transaction (several may run concurrently),
    then ``await close()``. ``state`` is the committed world state (key -> value).
    """

    def __init__(
        self,
        target: str,
        *,
        namespace: str = "ehrshare",
        batch: int = DEFAULT_BATCH,
        credentials: grpc.ChannelCredentials | None = None,
        ready_payload: bytes = b"",
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.batch = batch
        self.credentials = credentials
        self.ready_payload = ready_payload
        self._state: dict[str, bytes] = {}
        self._keys: list[str] = []  # the state's keys in order, for range scans
        self.history: dict[str, list[Any]] = {}  # key -> KeyModification protos, oldest first
        self.registered_as = ""
        self.contexts: dict[tuple[str, str], TxContext] = {}
        self._iter_seq = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.request_counts: Counter[str] = Counter()
        """State requests received, by message type name (what ``bench chaincode`` counts)."""

    @property
    def state(self) -> dict[str, bytes]:
        """The committed world state (a copy; assign to replace it)."""
        return dict(self._state)

    @state.setter
    def state(self, value: dict[str, bytes]) -> None:
        self._state = dict(value)
        self._keys = sorted(self._state)

    def _keys_in(self, start: str, end: str) -> list[str]:
        lo = bisect.bisect_left(self._keys, start)
        return self._keys[lo : bisect.bisect_left(self._keys, end, lo)]

    async def open(self) -> None:
        """Dial the chaincode server and complete the registration handshake."""
        if self.credentials is None:
            self.channel = grpc.aio.insecure_channel(self.target)
        else:
            self.channel = grpc.aio.secure_channel(self.target, self.credentials)
        self._call = self.channel.stream_stream(
            CONNECT_METHOD,
            request_serializer=MSG.SerializeToString,
            response_deserializer=MSG.FromString,
        )()
        first = await self._call.read()
        if first is grpc.aio.EOF or first.type != MSG.REGISTER:
            raise ConnectionError("the chaincode server did not send REGISTER first")
        self.registered_as = str(ccpb.ChaincodeID.FromString(first.payload).name)
        await self.write(MSG(type=MSG.REGISTERED))
        await self.write(MSG(type=MSG.READY, payload=self.ready_payload))
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        """End the stream and wait for the server to close its side."""
        await self._call.done_writing()
        await asyncio.wait_for(self._reader, 30)
        await self.channel.close()

    async def write(self, msg: Any) -> None:
        """Send one message on the stream (one writer at a time)."""
        async with self._lock:  # one writer at a time, like the handler's serialLock
            await self._call.write(msg)

    async def _read(self) -> None:
        while True:
            msg = await self._call.read()
            if msg is grpc.aio.EOF:
                return
            self._observe(msg)
            if msg.type not in (MSG.COMPLETED, MSG.ERROR, MSG.KEEPALIVE):
                self.request_counts[request_name(msg.type)] += 1
            if msg.type in (MSG.COMPLETED, MSG.ERROR):
                tx = self.contexts.get((msg.channel_id, msg.txid))
                if tx is not None and tx.done is not None and not tx.done.done():
                    tx.done.set_result(msg)
            elif msg.type != MSG.KEEPALIVE:
                task = asyncio.create_task(self._serve(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _observe(self, msg: Any) -> None:
        """Called for every message the chaincode sends (a hook for instrumentation)."""

    async def _serve(self, msg: Any) -> None:
        """Answer one state request (``go h.HandleTransaction(...)`` in the real handler)."""
        await self.write(self._answer(msg))

    def _answer(self, msg: Any) -> Any:
        def response(payload: bytes = b"") -> Any:
            return MSG(type=MSG.RESPONSE, payload=payload, txid=msg.txid, channel_id=msg.channel_id)

        tx = self.contexts.get((msg.channel_id, msg.txid))
        if tx is None:
            return MSG(
                type=MSG.ERROR,
                payload=b"no ledger context",
                txid=msg.txid,
                channel_id=msg.channel_id,
            )
        kind = msg.type
        if kind == MSG.GET_STATE:
            key = str(shim.GetState.FromString(msg.payload).key)
            tx.reads.add(key)
            return response(self._state.get(key, b""))
        if kind == MSG.PUT_STATE:
            req = shim.PutState.FromString(msg.payload)
            tx.writes[str(req.key)] = bytes(req.value)
            return response()
        if kind == MSG.DEL_STATE:
            tx.writes[str(shim.DelState.FromString(msg.payload).key)] = None
            return response()
        if kind == MSG.GET_STATE_MULTIPLE:
            keys = shim.GetStateMultiple.FromString(msg.payload).keys
            tx.reads.update(str(k) for k in keys)
            values = [self._state.get(str(k), b"") for k in keys]
            return response(shim.GetStateMultipleResult(values=values).SerializeToString())
        if kind == MSG.WRITE_BATCH_STATE:
            for rec in shim.WriteBatchState.FromString(msg.payload).rec:
                if rec.type == shim.WriteRecord.PUT_STATE:
                    tx.writes[str(rec.key)] = bytes(rec.value)
                elif rec.type == shim.WriteRecord.DEL_STATE:
                    tx.writes[str(rec.key)] = None
                else:
                    return MSG(
                        type=MSG.ERROR,
                        payload=b"unknown operation type",
                        txid=msg.txid,
                        channel_id=msg.channel_id,
                    )
            return response()
        if kind == MSG.GET_STATE_BY_RANGE:
            return response(self._range(tx, shim.GetStateByRange.FromString(msg.payload)))
        if kind == MSG.GET_HISTORY_FOR_KEY:
            key = str(shim.GetHistoryForKey.FromString(msg.payload).key)
            newest_first = [m.SerializeToString() for m in reversed(self.history.get(key, []))]
            return response(self._first_batch(tx, newest_first))
        if kind == MSG.QUERY_STATE_NEXT:
            ident = str(shim.QueryStateNext.FromString(msg.payload).id)
            if ident not in tx.iterators:
                return MSG(
                    type=MSG.ERROR,
                    payload=b"query iterator not found",
                    txid=msg.txid,
                    channel_id=msg.channel_id,
                )
            return response(self._next_batch(tx, ident))
        if kind == MSG.QUERY_STATE_CLOSE:
            ident = str(shim.QueryStateClose.FromString(msg.payload).id)
            tx.iterators.pop(ident, None)
            return response(shim.QueryResponse(has_more=False, id=ident).SerializeToString())
        text = f"{request_name(kind)} is not handled by the fake peer".encode()
        return MSG(type=MSG.ERROR, payload=text, txid=msg.txid, channel_id=msg.channel_id)

    def _kv(self, key: str) -> bytes:
        kv = kvpb.KV(namespace=self.namespace, key=key, value=self._state[key])
        return bytes(kv.SerializeToString())

    def _range(self, tx: TxContext, req: Any) -> bytes:
        meta = shim.QueryMetadata.FromString(req.metadata) if req.metadata else None
        if meta is not None and (meta.pageSize or meta.bookmark):
            start = meta.bookmark or req.startKey
            keys = self._keys_in(start, req.endKey)
            page, rest = keys[: meta.pageSize], keys[meta.pageSize :]
            return bytes(
                shim.QueryResponse(
                    results=[shim.QueryResultBytes(resultBytes=self._kv(k)) for k in page],
                    has_more=False,
                    id="paged",
                    metadata=shim.QueryResponseMetadata(
                        fetched_records_count=len(page), bookmark=rest[0] if rest else ""
                    ).SerializeToString(),
                ).SerializeToString()
            )
        keys = self._keys_in(req.startKey, req.endKey)
        return self._first_batch(tx, [self._kv(k) for k in keys])

    def _first_batch(self, tx: TxContext, rows: list[bytes]) -> bytes:
        self._iter_seq += 1
        ident = f"iter-{self._iter_seq}"
        tx.iterators[ident] = rows
        return self._next_batch(tx, ident)

    def _next_batch(self, tx: TxContext, ident: str) -> bytes:
        rows = tx.iterators[ident]
        batch, rest = rows[: self.batch], rows[self.batch :]
        if rest:
            tx.iterators[ident] = rest
        else:
            del tx.iterators[ident]
        return bytes(
            shim.QueryResponse(
                results=[shim.QueryResultBytes(resultBytes=r) for r in batch],
                has_more=bool(rest),
                id=ident,
            ).SerializeToString()
        )

    async def exchange(
        self,
        signed: Any,
        txid: str,
        function: str,
        args: list[bytes],
        *,
        channel: str,
        kind: int | None = None,
        timeout: float = 60.0,
    ) -> tuple[Any, TxContext]:
        """Send one TRANSACTION (or ``kind``) and return the chaincode's final message (COMPLETED
        or ERROR) with the transaction's simulation context; commits nothing."""
        key = (channel, txid)
        tx = TxContext(done=asyncio.get_running_loop().create_future())
        self.contexts[key] = tx
        try:
            cc_input = ccpb.ChaincodeInput(args=[function.encode(), *args])
            msg = MSG(
                type=MSG.TRANSACTION if kind is None else kind,
                payload=cc_input.SerializeToString(),
                txid=txid,
                channel_id=channel,
            )
            if signed is not None:
                msg.proposal.CopyFrom(signed)
            await self.write(msg)
            assert tx.done is not None
            reply = await asyncio.wait_for(tx.done, timeout)
        finally:
            del self.contexts[key]
        return reply, tx

    def commit_writes(self, txid: str, tx: TxContext, timestamp: tuple[int, int] = (0, 0)) -> None:
        """Apply a transaction's writes to the world state and record them in the key history."""
        for k, v in tx.writes.items():
            mod = kvpb.KeyModification(tx_id=txid, value=v or b"", is_delete=v is None)
            mod.timestamp.seconds, mod.timestamp.nanos = timestamp
            self.history.setdefault(k, []).append(mod)
            if v is None:
                if self._state.pop(k, None) is not None:
                    self._keys.remove(k)
            else:
                if k not in self._state:
                    bisect.insort(self._keys, k)
                self._state[k] = v

    async def execute(
        self,
        signed: Any,
        txid: str,
        function: str,
        args: list[bytes],
        *,
        channel: str,
        commit: bool,
        timeout: float = 60.0,
    ) -> TxOutcome:
        """Send one TRANSACTION with its ``SignedProposal``; on success with ``commit`` apply its
        writes to :attr:`state`. Raises ``ConnectionError`` when the server answers ERROR."""
        reply, tx = await self.exchange(
            signed, txid, function, args, channel=channel, timeout=timeout
        )
        if reply.type != MSG.COMPLETED:
            raise ConnectionError(bytes(reply.payload).decode("utf-8", "replace"))
        resp = responsepb.Response.FromString(reply.payload)
        event = None
        if reply.HasField("chaincode_event"):
            event = (str(reply.chaincode_event.event_name), bytes(reply.chaincode_event.payload))
        if commit and resp.status < 400:
            self.commit_writes(txid, tx)
        return TxOutcome(int(resp.status), str(resp.message), bytes(resp.payload), event)
