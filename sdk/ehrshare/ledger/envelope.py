"""Signed transaction proposals for the embedded ledger, built the way Fabric builds them.

The creator is Fabric's ``SerializedIdentity`` protobuf (MSP id + certificate PEM) and the
transaction id is ``hex(sha256(nonce ‖ creator))``, so ids are computed exactly as a Fabric peer
would. The proposal body is canonical JSON (not Fabric's protobuf ``Proposal``): the embedded ledger
is the only reader of it. This module must not trust anything it parses: :func:`open_proposal`
checks the signature before returning the content.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from fabric_protos.msp import identities_pb2

from ehrshare.identity import Identity, Signer, verify_signature
from ehrshare.jsontext import loads_untrusted

__all__ = [
    "NONCE_SIZE",
    "Proposal",
    "SignedProposal",
    "deserialize_identity",
    "new_proposal",
    "open_proposal",
    "serialize_identity",
    "sign_proposal",
    "transaction_id",
]

NONCE_SIZE = 24
_FORMAT = 1


def serialize_identity(identity: Identity) -> bytes:
    """Fabric's SerializedIdentity bytes for identity."""
    msg = identities_pb2.SerializedIdentity(  # type: ignore[attr-defined]
        mspid=identity.msp_id, id_bytes=identity.credentials
    )
    return bytes(msg.SerializeToString())


def deserialize_identity(creator: bytes) -> Identity:
    """Inverse of :func:`serialize_identity`; raises ValueError on malformed bytes."""
    msg = identities_pb2.SerializedIdentity()  # type: ignore[attr-defined]
    try:
        msg.ParseFromString(creator)
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise ValueError("creator is not a serialized identity") from exc
    if not msg.mspid or not msg.id_bytes:
        raise ValueError("creator has no msp id or no certificate")
    return Identity(str(msg.mspid), bytes(msg.id_bytes))


def transaction_id(nonce: bytes, creator: bytes) -> str:
    """Fabric's transaction id: hex sha256 of nonce followed by the serialized creator."""
    return hashlib.sha256(nonce + creator).hexdigest()


@dataclass(frozen=True, slots=True)
class Proposal:
    """What a client asks the ledger to run. Built by :func:`new_proposal`."""

    channel: str
    chaincode: str
    function: str
    args: tuple[bytes, ...]
    creator: bytes
    nonce: bytes
    timestamp_seconds: int
    timestamp_nanos: int
    tx_id: str

    def to_bytes(self) -> bytes:
        """The exact bytes that are signed."""
        body = {
            "format": _FORMAT,
            "channel": self.channel,
            "chaincode": self.chaincode,
            "function": self.function,
            "args": [base64.b64encode(a).decode() for a in self.args],
            "creator": base64.b64encode(self.creator).decode(),
            "nonce": base64.b64encode(self.nonce).decode(),
            "timestamp": [self.timestamp_seconds, self.timestamp_nanos],
            "tx_id": self.tx_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Proposal:
        """Parse :meth:`to_bytes` output; ValueError naming the problem otherwise."""
        try:
            body = loads_untrusted(data)
            if body.get("format") != _FORMAT:
                raise ValueError(f"proposal format {body.get('format')!r} is not {_FORMAT}")
            ts = body["timestamp"]
            proposal = cls(
                channel=str(body["channel"]),
                chaincode=str(body["chaincode"]),
                function=str(body["function"]),
                args=tuple(base64.b64decode(a, validate=True) for a in body["args"]),
                creator=base64.b64decode(body["creator"], validate=True),
                nonce=base64.b64decode(body["nonce"], validate=True),
                timestamp_seconds=int(ts[0]),
                timestamp_nanos=int(ts[1]),
                tx_id=str(body["tx_id"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"proposal is malformed: {exc}") from None
        if len(proposal.nonce) != NONCE_SIZE:
            raise ValueError(f"proposal nonce is {len(proposal.nonce)} bytes, not {NONCE_SIZE}")
        if proposal.tx_id != transaction_id(proposal.nonce, proposal.creator):
            raise ValueError("proposal transaction id does not match sha256(nonce ‖ creator)")
        return proposal


@dataclass(frozen=True, slots=True)
class SignedProposal:
    """Proposal bytes and the creator's signature over them."""

    proposal_bytes: bytes
    signature: bytes


def new_proposal(
    identity: Identity,
    *,
    channel: str,
    chaincode: str,
    function: str,
    args: tuple[bytes, ...],
    timestamp_ns: int,
    nonce: bytes | None = None,
) -> Proposal:
    """A fresh proposal with a random nonce and Fabric's transaction id."""
    creator = serialize_identity(identity)
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    return Proposal(
        channel=channel,
        chaincode=chaincode,
        function=function,
        args=args,
        creator=creator,
        nonce=nonce,
        timestamp_seconds=seconds,
        timestamp_nanos=nanos,
        tx_id=transaction_id(nonce, creator),
    )


def sign_proposal(proposal: Proposal, signer: Signer) -> SignedProposal:
    """Sign a proposal."""
    data = proposal.to_bytes()
    return SignedProposal(data, signer.sign(data))


def open_proposal(signed: SignedProposal) -> tuple[Proposal, Identity]:
    """Parse a signed proposal and check its signature; ValueError when either is bad.

    The certificate's chain to a trusted MSP root is *not* checked here (the ledger does that).
    """
    proposal = Proposal.from_bytes(signed.proposal_bytes)
    identity = deserialize_identity(proposal.creator)
    try:
        ok = verify_signature(identity, signed.proposal_bytes, signed.signature)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("proposal signature does not verify against the creator's certificate")
    return proposal, identity
