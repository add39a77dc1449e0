"""The Fabric messages the Gateway client builds and checks: a chaincode call's signed
proposal, and the prepared transaction envelope the Gateway returns (is it ours; what did the
chaincode answer).

Pure functions over protobufs: this module must not open a connection or hold a key beyond the
:class:`~ehrshare.identity.Signer` a caller passes in.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.peer import chaincode_pb2 as _chaincode_pb2
from fabric_protos.peer import proposal_pb2 as _proposal_pb2
from fabric_protos.peer import proposal_response_pb2 as _response_pb2
from fabric_protos.peer import transaction_pb2 as _transaction_pb2

from ehrshare.identity import Signer
from ehrshare.ledger.envelope import NONCE_SIZE, transaction_id
from ehrshare.ledger.errors import EndorseError

__all__ = ["chaincode_action_of", "signed_proposal"]

common: Any = _common_pb2
ccpb: Any = _chaincode_pb2
proposalpb: Any = _proposal_pb2
responsepb: Any = _response_pb2
txpb: Any = _transaction_pb2

_log = logging.getLogger(__name__)


def _as_bytes(arg: str | bytes) -> bytes:
    return arg if isinstance(arg, bytes) else arg.encode("utf-8")


def signed_proposal(
    creator: bytes,
    signer: Signer,
    *,
    channel: str,
    chaincode: str,
    function: str,
    args: tuple[bytes, ...],
    timestamp_ns: int,
    nonce: bytes | None = None,
) -> tuple[str, Any]:
    """Fabric's ``SignedProposal`` for a chaincode call, and its transaction id.

    Built as the official client builds it: ``ChannelHeader`` (ENDORSER_TRANSACTION, channel,
    transaction id, timestamp, ``ChaincodeHeaderExtension``), ``SignatureHeader`` (serialized
    creator, 24-byte nonce), ``ChaincodeProposalPayload`` whose input's first argument is the
    function name; the signature is low-S ECDSA-SHA256 over the proposal bytes. ``nonce`` is for
    tests that need a known transaction id; leave it None otherwise.
    """
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
    tx_id = transaction_id(nonce, creator)
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    chaincode_id = ccpb.ChaincodeID(name=chaincode)
    channel_header = common.ChannelHeader(
        type=common.HeaderType.Value("ENDORSER_TRANSACTION"),
        channel_id=channel,
        tx_id=tx_id,
        epoch=0,
        extension=proposalpb.ChaincodeHeaderExtension(
            chaincode_id=chaincode_id
        ).SerializeToString(),
    )
    channel_header.timestamp.seconds = seconds
    channel_header.timestamp.nanos = nanos
    header = common.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common.SignatureHeader(creator=creator, nonce=nonce).SerializeToString(),
    )
    spec = ccpb.ChaincodeInvocationSpec(
        chaincode_spec=ccpb.ChaincodeSpec(
            chaincode_id=chaincode_id,
            input=ccpb.ChaincodeInput(args=[function.encode("utf-8"), *args]),
        )
    )
    payload = proposalpb.ChaincodeProposalPayload(input=spec.SerializeToString())
    proposal_bytes = proposalpb.Proposal(
        header=header.SerializeToString(), payload=payload.SerializeToString()
    ).SerializeToString()
    return tx_id, proposalpb.SignedProposal(
        proposal_bytes=proposal_bytes, signature=signer.sign(proposal_bytes)
    )


def chaincode_action_of(action: Any) -> Any:
    """The ``ChaincodeAction`` (result, events, response) endorsed in a ``TransactionAction``:
    ChaincodeActionPayload → ProposalResponsePayload → its extension. Raises if one does not
    parse."""
    action_payload = txpb.ChaincodeActionPayload.FromString(action.payload)
    response_payload = responsepb.ProposalResponsePayload.FromString(
        action_payload.action.proposal_response_payload
    )
    return proposalpb.ChaincodeAction.FromString(response_payload.extension)


def _check_prepared(envelope: Any, tx_id: str, channel: str, creator: bytes) -> bytes:
    """The chaincode result in a prepared envelope, after checking it is this transaction.

    The client signs whatever envelope the Gateway returns, so it first makes sure the envelope is
    the transaction it proposed (id, channel, creator); EndorseError naming the mismatch otherwise.
    """

    def bad(why: str) -> EndorseError:
        return EndorseError(
            f"the Gateway returned an unusable transaction: {why}", transaction_id=tx_id
        )

    try:
        payload = common.Payload.FromString(envelope.payload)
        channel_header = common.ChannelHeader.FromString(payload.header.channel_header)
        signature_header = common.SignatureHeader.FromString(payload.header.signature_header)
        transaction = txpb.Transaction.FromString(payload.data)
    except Exception:
        raise bad("the envelope does not parse") from None
    if channel_header.tx_id != tx_id:
        raise bad(f"its transaction id is {channel_header.tx_id!r}")
    if channel_header.channel_id != channel:
        raise bad(f"its channel is {channel_header.channel_id!r}, not {channel!r}")
    if bytes(signature_header.creator) != creator:
        raise bad("its creator is not this gateway's identity")
    for action in transaction.actions:
        try:
            chaincode_action = chaincode_action_of(action)
        except Exception:
            _log.debug("skipping a transaction action that does not parse")
            continue
        return bytes(chaincode_action.response.payload)
    raise bad("it holds no proposal response")
