"""The Fabric messages the client-side gateway builds and reads: Deliver seek envelopes, the
transaction envelope of endorsed responses, and the chaincode events of a block.

Pure functions over protobufs: this module must not open a connection or hold a key beyond the
:class:`~ehrshare.identity.Signer` a caller passes in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.peer import chaincode_event_pb2 as _event_pb2
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import transaction_pb2 as _transaction_pb2

from ehrshare.identity import Signer
from ehrshare.ledger.envelope import NONCE_SIZE
from ehrshare.ledger.fabric import chaincode_action_of

__all__ = ["assemble_transaction", "block_chaincode_events", "seek_envelope", "skip_through"]

common: Any = _common_pb2
ab: Any = _ab_pb2
eventpb: Any = _event_pb2
proposalpb: Any = _proposal_pb2
txpb: Any = _transaction_pb2

_log = logging.getLogger(__name__)

_MAX_BLOCK = 2**64 - 1
_VALID = int(txpb.TxValidationCode.Value("VALID"))
_ENDORSER_TRANSACTION = int(common.HeaderType.Value("ENDORSER_TRANSACTION"))
_TRANSACTIONS_FILTER = int(common.BlockMetadataIndex.Value("TRANSACTIONS_FILTER"))


def seek_envelope(
    creator: bytes,
    signer: Signer,
    *,
    channel: str,
    start: Any,
    timestamp_ns: int,
    stop: Any = None,
    tls_cert_hash: bytes = b"",
) -> Any:
    """A signed ``DELIVER_SEEK_INFO`` envelope (protoutil.CreateSignedEnvelopeWithTLSBinding).

    Seeks from ``start`` to ``stop`` (default: no end), blocking until blocks are ready. The
    peer checks the signature against the channel's Readers policy, the timestamp against its
    time window, and under mutual TLS that ``tls_cert_hash`` is sha256 of the client TLS cert.
    """
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    channel_header = common.ChannelHeader(
        type=common.HeaderType.Value("DELIVER_SEEK_INFO"),
        channel_id=channel,
        epoch=0,
        tls_cert_hash=tls_cert_hash,
    )
    channel_header.timestamp.seconds = seconds
    channel_header.timestamp.nanos = nanos
    stop = stop or ab.SeekPosition(specified=ab.SeekSpecified(number=_MAX_BLOCK))
    seek = ab.SeekInfo(
        start=start, stop=stop, behavior=ab.SeekInfo.SeekBehavior.Value("BLOCK_UNTIL_READY")
    )
    payload = common.Payload(
        header=common.Header(
            channel_header=channel_header.SerializeToString(),
            signature_header=common.SignatureHeader(
                creator=creator, nonce=os.urandom(NONCE_SIZE)
            ).SerializeToString(),
        ),
        data=seek.SerializeToString(),
    ).SerializeToString()
    return common.Envelope(payload=payload, signature=signer.sign(payload))


def assemble_transaction(proposal_bytes: bytes, responses: Sequence[Any]) -> Any:
    """The unsigned transaction envelope for endorsed ``responses`` (protoutil.CreateSignedTx).

    ``Payload{header = the proposal's header, data = Transaction{actions = [TransactionAction{
    header = its signature header, payload = ChaincodeActionPayload{chaincode_proposal_payload
    = the proposal's payload without its transient map, action = ChaincodeEndorsedAction{
    proposal_response_payload, endorsements}}}]}}``. The caller has checked that the responses
    succeeded and agree (:meth:`LocalGateway.endorse`); the signature is the submitter's.
    """
    if not responses:
        raise ValueError("a transaction needs at least one endorsement")
    proposal = proposalpb.Proposal.FromString(proposal_bytes)
    header = common.Header.FromString(proposal.header)
    proposal_payload = proposalpb.ChaincodeProposalPayload.FromString(proposal.payload)
    # The transient map carries private inputs for the endorsers only; never into the block.
    proposal_payload.ClearField("TransientMap")
    action_payload = txpb.ChaincodeActionPayload(
        chaincode_proposal_payload=proposal_payload.SerializeToString(),
        action=txpb.ChaincodeEndorsedAction(
            proposal_response_payload=responses[0].payload,
            endorsements=[r.endorsement for r in responses],
        ),
    )
    transaction = txpb.Transaction(
        actions=[
            txpb.TransactionAction(
                header=header.signature_header, payload=action_payload.SerializeToString()
            )
        ]
    )
    payload = common.Payload(header=header, data=transaction.SerializeToString())
    return common.Envelope(payload=payload.SerializeToString())


def block_chaincode_events(block: Any, chaincode: str) -> list[Any]:
    """The chaincode events (``peer.ChaincodeEvent``) of ``chaincode`` in a block, in order.

    Only transactions the peer validated as VALID count (block metadata TRANSACTIONS_FILTER);
    entries that are not endorser transactions or do not parse are skipped.
    """
    metadata = block.metadata.metadata
    flags = bytes(metadata[_TRANSACTIONS_FILTER]) if len(metadata) > _TRANSACTIONS_FILTER else b""
    events: list[Any] = []
    for index, raw in enumerate(block.data.data):
        if index >= len(flags) or flags[index] != _VALID:
            continue
        try:
            payload = common.Payload.FromString(common.Envelope.FromString(raw).payload)
            channel_header = common.ChannelHeader.FromString(payload.header.channel_header)
            if channel_header.type != _ENDORSER_TRANSACTION:
                continue
            transaction = txpb.Transaction.FromString(payload.data)
            for action in transaction.actions:
                chaincode_action = chaincode_action_of(action)
                if not chaincode_action.events:
                    continue
                event = eventpb.ChaincodeEvent.FromString(chaincode_action.events)
                if event.chaincode_id == chaincode:
                    events.append(event)
        except Exception:  # one odd transaction must not stop the stream
            _log.debug("skipping a block entry that does not parse")
    return events


def skip_through(events: list[Any], transaction_id: str) -> list[Any]:
    """The events after the last one of ``transaction_id`` (a checkpoint's resume point).

    If the transaction is not among them, every event is kept: repeating events a consumer has
    seen is recoverable (they carry transaction ids), losing them is not.
    """
    for index in range(len(events) - 1, -1, -1):
        if events[index].tx_id == transaction_id:
            return events[index + 1 :]
    _log.warning("checkpoint transaction %s is not in its block; replaying it", transaction_id)
    return events
