"""Chaincode-as-a-service: serve the contract to Fabric peers over ``protos.Chaincode/Connect``.

A Fabric peer whose ``ccaas`` package points at this server dials it and opens one bidirectional
``Connect`` stream. This module speaks the peer's chaincode message protocol on that stream (read
from the peer's side, ``core/chaincode/handler.go``) and adapts it to the contract's existing
:class:`~ehrshare_chaincode.stub.ChaincodeStub`, then runs the *same*
:func:`~ehrshare_chaincode.invoke` that the embedded ledger runs — there is no second
implementation of the contract.

Protocol, as the peer expects it:

* The server sends ``REGISTER`` carrying ``ChaincodeID{name: <package id>}`` (``label:sha256``, the
  id the peer's lifecycle knows); the peer answers ``REGISTERED`` then ``READY``.
* ``TRANSACTION`` / ``INIT`` messages arrive keyed by ``(channel_id, txid)``; each runs in its own
  greenlet on the event loop's thread, switched out while it waits for the peer, so different
  transactions run concurrently on one stream. A transaction has at most one
  outstanding request to the peer at a time (the peer drops a second one for the same txid).
* State requests: ``GET_STATE``, ``PUT_STATE``, ``DEL_STATE``, ``GET_STATE_BY_RANGE`` (paged by the
  peer; ``QUERY_STATE_NEXT`` fetches the next batch, ``QUERY_STATE_CLOSE`` releases an iterator left
  early), ``GET_HISTORY_FOR_KEY`` (the peer returns newest first; the stub returns oldest
  first). The peer answers ``RESPONSE`` or ``ERROR``.
* A Fabric >= 3.1 peer offers batched messages in ``READY`` (``ChaincodeAdditionalParams``):
  ``WRITE_BATCH_STATE`` takes a transaction's writes in one message, ``GET_STATE_MULTIPLE``
  answers several keys in one, each up to the size offered. The server uses what is offered and
  nothing else; a 2.x peer's empty ``READY`` leaves the one-key messages above.
* The transaction ends with ``COMPLETED`` carrying ``Response{status, message, payload}`` and
  the one chaincode event; a status of 400 or more is a failure (the contract's errors use 500).
  A request the shim cannot even parse is answered with ``ERROR``.
* Creator and timestamp come from the ``SignedProposal`` in the message (the peer has already
  checked its signature). ``KEEPALIVE`` from the peer is echoed back, as Fabric's Go shim does.

Reads see committed state plus the transaction's own earlier writes, exactly like the embedded
ledger's simulation stub, so the contract behaves the same on both backends (the contract does not
rely on it: it never reads back what it wrote).

Every state request is a round trip the transaction waits for, and the round trips are most of
the server's CPU (docs/benchmarks.md). So a transaction asks the peer for a key at most once
(the simulator reads one snapshot: a second ``GET_STATE`` could only return the same value) and
sends its writes after the contract has returned, one ``PUT_STATE``/``DEL_STATE`` per key with
its last value — the write set the peer would have kept — and none when the contract fails. On
a peer that offers them, the writes go in one ``WRITE_BATCH_STATE`` and the keys a transaction
declares it reads (the stub's ``prefetch`` hints) go with its next read in one
``GET_STATE_MULTIPLE``: RequestAccess's 12 round trips become 4, or 3 and 2 with the owner and
type hints the SDK sends from a record pointer (docs/benchmarks.md).

Status: this module is exercised in CI by protocol-level unit tests against an in-test fake peer
(``tests/fabric_unit/``). The pinned Fabric (3.1) cannot be built on the development machine (see
docs/status.md); a real Fabric 2.3 peer, built from the module proxy by ``make tools``, drives
it in CI (mutual TLS, on the networks ``ehrshare.network.fabric`` builds; ``tests/fabric/``).

What this module must not do: contain contract logic, verify client signatures (the peer does),
log arguments or state values (they may be personal data), or import the SDK (``ehrshare``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.ledger.queryresult import kv_query_result_pb2 as _kv_pb2
from fabric_protos.msp import identities_pb2 as _identities_pb2
from fabric_protos.peer import chaincode_event_pb2 as _event_pb2
from fabric_protos.peer import chaincode_pb2 as _chaincode_pb2
from fabric_protos.peer import chaincode_shim_pb2 as _shim_pb2
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import proposal_response_pb2 as _response_pb2
from greenlet import getcurrent, greenlet

from .contract import invoke
from .stub import (
    ChaincodeError,
    ChaincodeFunction,
    ChaincodeStub,
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    partial_composite_range,
    split_composite_key,
)

__all__ = [
    "CONNECT_METHOD",
    "ChaincodeFunction",
    "ChaincodeServer",
    "ChaincodeTls",
    "check_package_id",
]

# The protobuf modules have no type stubs; bind them as Any once instead of silencing every use.
common: Any = _common_pb2
kvpb: Any = _kv_pb2
identities: Any = _identities_pb2
eventpb: Any = _event_pb2
ccpb: Any = _chaincode_pb2
shim: Any = _shim_pb2
proposalpb: Any = _proposal_pb2
responsepb: Any = _response_pb2

_log = logging.getLogger(__name__)

CONNECT_METHOD = "/protos.Chaincode/Connect"
"""The gRPC method a peer calls on a chaincode server."""

_MSG = shim.ChaincodeMessage
_PACKAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*:[0-9a-f]{64}$")
# Fabric's shim replaces an empty range start with this key (an empty key is not a valid key).
_EMPTY_START = "\x01"
_ERROR_THRESHOLD = 400
_OK = 200
# The peer's gRPC client pings every 60 s even without calls (comm.DefaultKeepaliveOptions,
# PermitWithoutStream); gRPC's server default would answer that with GOAWAY "too_many_pings".
_SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 100 * 1024 * 1024),
    ("grpc.max_send_message_length", 100 * 1024 * 1024),
)


def check_package_id(package_id: str) -> str:
    """Return ``package_id`` if it has Fabric's ``label:sha256`` form, else raise ValueError."""
    if not _PACKAGE_ID.match(package_id):
        raise ValueError(
            f"package id {package_id!r} is not <label>:<64 hex sha256> "
            "(use the id printed by 'peer lifecycle chaincode calculatepackageid')"
        )
    return package_id


@dataclass(frozen=True, slots=True)
class ChaincodeTls:
    """The server's TLS material, as the peer's ccaas builder (``connection.json``) needs it.

    ``key_pem`` / ``cert_pem``: the chaincode server's key and certificate; the peer checks the
    certificate against ``root_cert`` from ``connection.json``. ``client_ca_pem``: when given,
    clients must present a certificate issued by it (``client_auth_required: true``, the peer then
    uses ``client_cert`` / ``client_key`` from ``connection.json``).
    """

    key_pem: bytes
    cert_pem: bytes
    client_ca_pem: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials for this material."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.client_ca_pem is not None,
        )


class ChaincodeServer:
    """A chaincode server for one package id; peers connect to it (possibly several at once).

    Use ``await start()`` then ``await wait_for_termination()`` (or ``await stop()``); the bound
    port is :attr:`port`. ``chaincode`` defaults to the ehrshare contract's :func:`invoke`; tests
    may pass another function with the same signature.
    """

    def __init__(
        self,
        package_id: str,
        address: str,
        *,
        chaincode: ChaincodeFunction = invoke,
        tls: ChaincodeTls | None = None,
        max_workers: int = 16,
        request_timeout: float = 60.0,
    ) -> None:
        self.package_id = check_package_id(package_id)
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self.address = address
        self._chaincode = chaincode
        self._tls = tls
        self._request_timeout = request_timeout
        # At most this many transactions in progress; they share the loop's thread (greenlets).
        self._slots = asyncio.Semaphore(max_workers)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with ``127.0.0.1:0``)."""
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        handler = grpc.stream_stream_rpc_method_handler(
            self._connect,
            request_deserializer=_MSG.FromString,
            response_serializer=_MSG.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("protos.Chaincode", {"Connect": handler}),)
        )
        if self._tls is None:
            port = int(server.add_insecure_port(self.address))
        else:
            port = int(server.add_secure_port(self.address, self._tls.credentials()))
        if port == 0:
            raise OSError(f"could not listen on {self.address}")
        await server.start()
        self._server = server
        self.port = port
        _log.info("chaincode %s listening on port %d", self.package_id, port)
        return port

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting streams; running transactions get ``grace`` seconds."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _connect(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        session = _PeerSession(self, asyncio.get_running_loop())
        reader = asyncio.create_task(session.read(requests))
        try:
            async for msg in session.outgoing():
                yield msg
        finally:
            reader.cancel()
            session.close("chaincode stream closed")


class _PeerSession:
    """One ``Connect`` stream: the registration handshake, then transactions and their requests."""

    def __init__(self, server: ChaincodeServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._state = "created"
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batching = _Batching()
        self._out.put_nowait(
            _MSG(
                type=_MSG.REGISTER,
                payload=ccpb.ChaincodeID(name=server.package_id).SerializeToString(),
            )
        )

    async def outgoing(self) -> AsyncIterator[Any]:
        while True:
            msg = await self._out.get()
            if msg is None:
                return
            yield msg

    def send(self, msg: Any) -> None:
        if not self._closed:
            self._out.put_nowait(msg)

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.put_nowait(None)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChaincodeError(reason))
        self._pending.clear()

    async def read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for msg in requests:
                if not self._handle(msg):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream ends the session, whatever gRPC raised
            _log.warning("chaincode stream from the peer failed: %s", exc)
        self.close("the peer closed the chaincode stream")

    def _handle(self, msg: Any) -> bool:
        """Process one message from the peer; False ends the stream."""
        kind = msg.type
        if kind == _MSG.KEEPALIVE:
            self.send(_MSG(type=_MSG.KEEPALIVE))
            return True
        if self._state == "created":
            if kind == _MSG.REGISTERED:
                self._state = "established"
                return True
        elif self._state == "established":
            if kind == _MSG.READY:
                self._state = "ready"
                self.batching = _Batching.offered(bytes(msg.payload))
                _log.info(
                    "chaincode %s registered and ready (%s)",
                    self._server.package_id,
                    self.batching.describe(),
                )
                return True
        elif kind in (_MSG.TRANSACTION, _MSG.INIT):
            self._start_transaction(msg)
            return True
        elif kind in (_MSG.RESPONSE, _MSG.ERROR):
            fut = self._pending.pop((msg.channel_id, msg.txid), None)
            if fut is None or fut.done():
                _log.warning("%s from the peer answers no pending request", _type_name(kind))
            else:
                fut.set_result(msg)
            return True
        _log.error(
            "peer sent %s while the chaincode is %s; ending the stream",
            _type_name(kind),
            self._state,
        )
        return False

    def _start_transaction(self, msg: Any) -> None:
        key = (msg.channel_id, msg.txid)
        if key in self._running:
            self.send(_error_msg(msg, f"transaction {msg.txid} is already running"))
            return
        self._running.add(key)
        task = asyncio.create_task(self._run_transaction(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_transaction(self, msg: Any) -> None:
        key = (msg.channel_id, msg.txid)
        try:
            try:
                stub, function, args = _PeerStub.from_message(self, msg)
            except ValueError as exc:
                self.send(_error_msg(msg, str(exc)))
                return
            async with self._server._slots:
                reply = await self._drive(stub, function, args)
            self.send(reply)
        finally:
            self._running.discard(key)

    async def _drive(self, stub: _PeerStub, function: str, args: list[bytes]) -> Any:
        """Run one transaction in its own greenlet on the loop's thread; returns COMPLETED.

        The contract is synchronous code. Each state request it makes switches back here
        (:meth:`call`), the request goes to the peer and the answer is switched back in: no
        thread hand-off per request, which is most of a request's cost (docs/benchmarks.md).
        Transactions interleave at their requests, as they did on worker threads.
        """
        channel, txid = stub.get_channel_id(), stub.get_tx_id()
        runner = greenlet(_execute)
        step = runner.switch(self._server._chaincode, stub, function, args)
        try:
            while not runner.dead:
                kind, payload = step
                try:
                    reply = await self._request(channel, txid, kind, payload)
                except ChaincodeError as exc:
                    step = runner.throw(exc)
                else:
                    step = runner.switch(reply)
        finally:
            if not runner.dead:  # cancelled while the peer had not answered: end it there
                runner.throw(ChaincodeError("the chaincode stream is closed"))
        return step

    async def _request(self, channel: str, txid: str, kind: int, payload: bytes) -> Any:
        """Send one state request and wait for the peer's answer (RESPONSE or ERROR)."""
        key = (channel, txid)
        if self._closed:
            raise ChaincodeError("the chaincode stream is closed")
        if key in self._pending:
            # One outstanding request per transaction: the peer would drop the second one.
            raise ChaincodeError(f"transaction {txid} already has a request pending")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[key] = fut
        self.send(_MSG(type=kind, payload=payload, txid=txid, channel_id=channel))
        timeout = self._server._request_timeout
        # A timer on the future itself, not asyncio.wait_for: that adds a second future and a
        # loop iteration to every answer, and every state request waits for one.
        timer = self._loop.call_later(timeout, _expire, fut, kind, timeout)
        try:
            return await fut
        finally:
            timer.cancel()
            if self._pending.get(key) is fut:
                del self._pending[key]

    def call(self, kind: int, payload: bytes) -> bytes:
        """From inside a transaction's greenlet: one state request, the peer's answer."""
        hub = getcurrent().parent
        if hub is None:
            raise ChaincodeError("a state request outside a transaction")
        reply = hub.switch((kind, payload))
        if reply.type == _MSG.ERROR:
            text = bytes(reply.payload).decode("utf-8", "replace")
            raise ChaincodeError(f"the peer refused {_type_name(kind)}: {text}")
        return bytes(reply.payload)


def _expire(fut: asyncio.Future[Any], kind: int, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(
            ChaincodeError(f"the peer did not answer {_type_name(kind)} within {timeout:g} s")
        )


def _type_name(kind: int) -> str:
    if kind in _MSG.Type.values():
        return str(_MSG.Type.Name(kind))
    return f"type {kind}"


@dataclass(frozen=True, slots=True)
class _Batching:
    """What the peer offered in ``READY``: messages per write batch and keys per multiple get,
    0 when it does not take them (Fabric before 3.1 sends an empty ``READY``)."""

    write_batch: int = 0
    get_multiple: int = 0

    @classmethod
    def offered(cls, ready_payload: bytes) -> _Batching:
        """Parse ``ChaincodeAdditionalParams``; empty or unparsable means nothing offered (as
        Fabric's Go shim treats it)."""
        if not ready_payload:
            return cls()
        try:
            params = ccpb.ChaincodeAdditionalParams.FromString(ready_payload)
        except Exception:
            _log.warning("READY carries a payload that is not ChaincodeAdditionalParams")
            return cls()
        # A peer that offers a batch but states no size gets one record or key per message.
        write = max(1, int(params.max_size_write_batch)) if params.use_write_batch else 0
        get = max(1, int(params.max_size_get_multiple_keys)) if params.use_get_multiple_keys else 0
        return cls(write, get)

    def describe(self) -> str:
        parts = []
        if self.write_batch:
            parts.append(f"write batches of up to {self.write_batch}")
        if self.get_multiple:
            parts.append(f"multiple gets of up to {self.get_multiple} keys")
        return "the peer offers " + " and ".join(parts) if parts else "no batched messages"


def _error_msg(msg: Any, text: str) -> Any:
    return _MSG(type=_MSG.ERROR, payload=text.encode(), txid=msg.txid, channel_id=msg.channel_id)


def _execute(
    chaincode: ChaincodeFunction, stub: _PeerStub, function: str, args: list[bytes]
) -> Any:
    """Run one transaction (in its greenlet); returns the COMPLETED message."""
    event = None
    try:
        payload = chaincode(stub, function, args)
        stub.flush()
        response = responsepb.Response(status=_OK, payload=payload)
        event = stub.event
    except ChaincodeError as exc:
        status = exc.status if exc.status >= _ERROR_THRESHOLD else 500
        response = responsepb.Response(status=status, message=exc.message)
    except Exception:
        # Not a contract decision: log the trace here, tell the client nothing internal.
        _log.exception("transaction %s failed inside the chaincode", stub.get_tx_id())
        response = responsepb.Response(status=500, message="internal chaincode error")
    completed = _MSG(
        type=_MSG.COMPLETED,
        payload=response.SerializeToString(),
        txid=stub.get_tx_id(),
        channel_id=stub.get_channel_id(),
    )
    if event is not None:
        completed.chaincode_event.CopyFrom(
            eventpb.ChaincodeEvent(event_name=event[0], payload=event[1])
        )
    return completed


class _PeerStub:
    """The contract's stub for one transaction, answered by the peer over the stream."""

    def __init__(
        self,
        session: _PeerSession,
        *,
        channel: str,
        txid: str,
        creator: tuple[str, bytes],
        timestamp: TxTimestamp,
    ) -> None:
        self._session = session
        self._channel = channel
        self._txid = txid
        self._creator = creator
        self._timestamp = timestamp
        self._writes: dict[str, bytes | None] = {}  # sent by flush(), after the contract
        self._reads: dict[str, bytes | None] = {}
        self._hints: list[str] = []  # keys to fetch with the next read (Fabric >= 3.1)
        self.event: tuple[str, bytes] | None = None

    @classmethod
    def from_message(cls, session: _PeerSession, msg: Any) -> tuple[_PeerStub, str, list[bytes]]:
        """Parse a TRANSACTION/INIT message; ValueError naming what is malformed."""
        try:
            cc_input = ccpb.ChaincodeInput.FromString(msg.payload)
        except Exception:
            raise ValueError("transaction payload is not a ChaincodeInput") from None
        if not cc_input.args:
            raise ValueError("transaction has no function name")
        try:
            function = bytes(cc_input.args[0]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("transaction function name is not valid utf-8") from None
        if not msg.HasField("proposal") or not msg.proposal.proposal_bytes:
            raise ValueError("transaction carries no signed proposal")
        try:
            proposal = proposalpb.Proposal.FromString(msg.proposal.proposal_bytes)
            header = common.Header.FromString(proposal.header)
            channel_header = common.ChannelHeader.FromString(header.channel_header)
            signature_header = common.SignatureHeader.FromString(header.signature_header)
            creator = identities.SerializedIdentity.FromString(signature_header.creator)
        except Exception:
            raise ValueError("transaction's signed proposal is malformed") from None
        if channel_header.tx_id != msg.txid:
            raise ValueError(
                f"proposal transaction id {channel_header.tx_id} does not match {msg.txid}"
            )
        if not creator.mspid or not creator.id_bytes:
            raise ValueError("proposal creator has no msp id or no certificate")
        ts = channel_header.timestamp
        stub = cls(
            session,
            channel=msg.channel_id,
            txid=msg.txid,
            creator=(str(creator.mspid), bytes(creator.id_bytes)),
            timestamp=TxTimestamp(int(ts.seconds), int(ts.nanos)),
        )
        return stub, function, [bytes(a) for a in cc_input.args[1:]]

    def _call(self, kind: int, request: Any) -> bytes:
        return self._session.call(kind, request.SerializeToString())

    @staticmethod
    def _check_key(key: str) -> None:
        if not key:
            raise ChaincodeError("key must not be empty")

    # --- state ---------------------------------------------------------------------------------

    def get_state(self, key: str) -> bytes | None:
        self._check_key(key)
        if key in self._writes:
            return self._writes[key]
        if key in self._reads:
            # The peer's simulator reads one snapshot and records a key's version once, so a
            # second request for the same key could only return the same value: skip it.
            return self._reads[key]
        if self._hints:
            self._read_with_hints(key)
            return self._reads[key]
        value = self._call(_MSG.GET_STATE, shim.GetState(key=key)) or None
        self._reads[key] = value  # Fabric has no empty values: absent and deleted read empty
        return value

    def _read_with_hints(self, key: str) -> None:
        size = self._session.batching.get_multiple
        wanted = [key]
        for hint in dict.fromkeys(self._hints):
            if len(wanted) == size:
                break
            if hint and hint != key and hint not in self._writes and hint not in self._reads:
                wanted.append(hint)
        self._hints.clear()  # the rest (beyond the size) are read one by one when asked for
        if len(wanted) == 1:
            value = self._call(_MSG.GET_STATE, shim.GetState(key=key)) or None
            self._reads[key] = value
            return
        answer = shim.GetStateMultipleResult.FromString(
            self._call(_MSG.GET_STATE_MULTIPLE, shim.GetStateMultiple(keys=wanted))
        )
        if len(answer.values) != len(wanted):
            raise ChaincodeError(
                f"the peer answered GET_STATE_MULTIPLE for {len(wanted)} keys with "
                f"{len(answer.values)} values"
            )
        for k, value in zip(wanted, answer.values, strict=True):
            self._reads[k] = bytes(value) or None  # empty: absent, as for GET_STATE

    def prefetch(self, keys: Sequence[str]) -> None:
        """Remember keys the transaction will read: the next key it asks the peer for goes in
        one ``GET_STATE_MULTIPLE`` with them (at most the size the peer offered), so a hint
        costs no round trip of its own. Without the offer (Fabric before 3.1) nothing
        changes: every key is read with its own ``GET_STATE`` when asked for."""
        if self._session.batching.get_multiple:
            self._hints.extend(keys)

    def put_state(self, key: str, value: bytes) -> None:
        self._check_key(key)
        # Empty is a delete on Fabric; it is sent as an explicit DEL_STATE by flush().
        self._writes[key] = bytes(value) or None

    def del_state(self, key: str) -> None:
        self._check_key(key)
        self._writes[key] = None

    def flush(self) -> None:
        """Send the transaction's writes to the peer, each key once with its last value.

        Writes are kept until the contract has returned: the peer's write set keeps only a
        key's last value in key order anyway, so the result is the same write set with fewer
        requests (one per state request is the server's main cost), and a transaction that
        fails sends no writes at all. A peer that offered write batches (Fabric >= 3.1) gets
        them in ``WRITE_BATCH_STATE`` messages of at most the size it named.
        """
        size = self._session.batching.write_batch
        if size:
            records = [
                shim.WriteRecord(key=key, type=shim.WriteRecord.DEL_STATE)
                if value is None
                else shim.WriteRecord(key=key, value=value, type=shim.WriteRecord.PUT_STATE)
                for key, value in self._writes.items()
            ]
            for i in range(0, len(records), size):
                batch = shim.WriteBatchState(rec=records[i : i + size])
                self._call(_MSG.WRITE_BATCH_STATE, batch)
            return
        for key, value in self._writes.items():
            if value is None:
                self._call(_MSG.DEL_STATE, shim.DelState(key=key))
            else:
                self._call(_MSG.PUT_STATE, shim.PutState(key=key, value=value))

    def _query(self, kind: int, request: Any) -> tuple[list[bytes], bytes]:
        """All result rows of a peer-side iterator and the last batch's metadata."""
        response = shim.QueryResponse.FromString(self._call(kind, request))
        rows = [bytes(r.resultBytes) for r in response.results]
        try:
            while response.has_more:
                response = shim.QueryResponse.FromString(
                    self._call(_MSG.QUERY_STATE_NEXT, shim.QueryStateNext(id=response.id))
                )
                rows.extend(bytes(r.resultBytes) for r in response.results)
        except BaseException:
            if response.has_more:  # leave the peer no open iterator behind
                with contextlib.suppress(ChaincodeError):
                    self._call(_MSG.QUERY_STATE_CLOSE, shim.QueryStateClose(id=response.id))
            raise
        return rows, bytes(response.metadata)

    def _range(self, start: str, end: str, metadata: Any = None) -> tuple[list[KeyValue], bytes]:
        request = shim.GetStateByRange(startKey=start or _EMPTY_START, endKey=end)
        if metadata is not None:
            request.metadata = metadata.SerializeToString()
        rows, meta = self._query(_MSG.GET_STATE_BY_RANGE, request)
        out = []
        for raw in rows:
            kv = kvpb.KV.FromString(raw)
            out.append(KeyValue(str(kv.key), bytes(kv.value)))
        return out, meta

    def _merged(self, rows: list[KeyValue], start: str, end: str) -> list[KeyValue]:
        # Same view as the embedded ledger: committed rows overlaid with this transaction's writes.
        # Python orders str by code point, which is the byte order of their UTF-8 encoding.
        if not self._writes:
            return rows
        merged = {kv.key: kv.value for kv in rows}
        for key, value in self._writes.items():
            if start <= key < end:
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        return [KeyValue(k, v) for k, v in sorted(merged.items())]

    def get_state_by_range(self, start_key: str, end_key: str) -> list[KeyValue]:
        rows, _ = self._range(start_key, end_key)
        return self._merged(rows, start_key, end_key)

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: Sequence[str]
    ) -> list[KeyValue]:
        start, end = partial_composite_range(object_type, attributes)
        rows, _ = self._range(start, end)
        return self._merged(rows, start, end)

    def get_state_by_partial_composite_key_with_pagination(
        self, object_type: str, attributes: Sequence[str], page_size: int, bookmark: str
    ) -> tuple[list[KeyValue], str]:
        if page_size < 1:
            raise ChaincodeError("page size must be at least 1")
        start, end = partial_composite_range(object_type, attributes)
        if bookmark and not start <= bookmark < end:
            raise ChaincodeError("bookmark does not belong to this query")
        # The peer starts at the bookmark when one is given and returns the next page's first key
        # (or "") as the new bookmark. Paginated queries are read-only on Fabric: no overlay.
        rows, meta = self._range(
            start, end, shim.QueryMetadata(pageSize=page_size, bookmark=bookmark)
        )
        next_bookmark = str(shim.QueryResponseMetadata.FromString(meta).bookmark) if meta else ""
        return rows, next_bookmark

    def get_history_for_key(self, key: str) -> list[KeyModification]:
        self._check_key(key)
        rows, _ = self._query(_MSG.GET_HISTORY_FOR_KEY, shim.GetHistoryForKey(key=key))
        history = []
        for raw in rows:
            mod = kvpb.KeyModification.FromString(raw)
            history.append(
                KeyModification(
                    str(mod.tx_id),
                    bytes(mod.value),
                    TxTimestamp(int(mod.timestamp.seconds), int(mod.timestamp.nanos)),
                    bool(mod.is_delete),
                )
            )
        history.reverse()  # the peer returns newest first; the stub promises oldest first
        return history

    # --- keys, transaction context, events -----------------------------------------------------

    def create_composite_key(self, object_type: str, attributes: Sequence[str]) -> str:
        return create_composite_key(object_type, attributes)

    def split_composite_key(self, key: str) -> tuple[str, list[str]]:
        return split_composite_key(key)

    def get_creator(self) -> tuple[str, bytes]:
        return self._creator

    def get_tx_timestamp(self) -> TxTimestamp:
        return self._timestamp

    def get_tx_id(self) -> str:
        return self._txid

    def get_channel_id(self) -> str:
        return self._channel

    def set_event(self, name: str, payload: bytes) -> None:
        if not name:
            raise ChaincodeError("event name must not be empty")
        self.event = (name, bytes(payload))


def _satisfies_stub(stub: _PeerStub) -> ChaincodeStub:
    # Never called: mypy checks here that the peer stub satisfies the contract's stub protocol.
    return stub
