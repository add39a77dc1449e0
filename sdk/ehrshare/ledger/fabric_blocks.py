"""Verifying a Fabric channel's blocks as delivered by peers of different organisations.

A Fabric peer validates each block when it commits it, but a peer's operator can edit its own
block files and state database. What a client can check without trusting one peer: every
block's header hash chain (``BlockHeaderBytes`` is the DER of (number, previous hash, data
hash), as ``protoutil`` encodes it), every block's data hash (sha256 of its concatenated
envelopes), every block after the genesis block signed by an orderer whose certificate its
orderer organisation's root CA (from the channel's genesis configuration) issued — over
``metadata value ‖ signature header ‖ header bytes``, as the orderer's block writer signs — and
that peers of two organisations deliver byte-identical headers and the same validation codes
for each block's transactions (block metadata each peer writes itself, which no signature or
hash covers: with one organisation's copy alone a flipped code cannot be seen).
:func:`verify_copies` does the checks; :func:`fetch_blocks` pulls a channel's blocks from one
peer over Deliver.

Config blocks after the genesis block are checked as the orderer checks them
(:mod:`ehrshare.ledger.fabric_config`: the signed update satisfies the modified elements'
policies under the configuration in force, and the new configuration is exactly that update
applied); each one's orderer roots sign the blocks after it, and a witnessed head is checked
against the members of the configuration in force at its height.

Not done here: intermediate CAs, replaying transactions (the peers' validation does that). This
module must not trust a block before its checks and must not log block contents.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.orderer import ab_pb2 as _ab_pb2
from fabric_protos.peer import events_pb2_grpc as _events_pb2_grpc

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.envelope import deserialize_identity, serialize_identity
from ehrshare.ledger.errors import LedgerError, LedgerIntegrityError
from ehrshare.ledger.fabric_config import (
    ConfigBlockError,
    ConfigChange,
    check_config_block,
    config_of,
    is_config_block,
    issued_by,
    members_at,
    organisations,
)

__all__ = [
    "block_hash",
    "data_hash",
    "fetch_blocks",
    "header_bytes",
    "orderer_fingerprint",
    "orderer_roots",
    "signed_bytes",
    "verify_copies",
]

common: Any = _common_pb2
ab: Any = _ab_pb2
_events_grpc: Any = _events_pb2_grpc
_SIGNATURES = int(common.BlockMetadataIndex.Value("SIGNATURES"))
_TRANSACTIONS_FILTER = int(common.BlockMetadataIndex.Value("TRANSACTIONS_FILTER"))


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def header_bytes(number: int, previous_hash: bytes, data_hash: bytes) -> bytes:
    """``protoutil.BlockHeaderBytes``: DER SEQUENCE { INTEGER, OCTET STRING, OCTET STRING }."""
    integer = number.to_bytes(number.bit_length() // 8 + 1, "big")  # non-negative, minimal
    return _der(0x30, _der(0x02, integer) + _der(0x04, previous_hash) + _der(0x04, data_hash))


def block_hash(block: Any) -> bytes:
    """sha256 of the block's header bytes: what the next block names as its previous hash."""
    h = block.header
    return hashlib.sha256(header_bytes(h.number, h.previous_hash, h.data_hash)).digest()


def data_hash(block: Any) -> bytes:
    """sha256 of the block's envelopes concatenated (``protoutil.BlockDataHash``)."""
    return hashlib.sha256(b"".join(block.data.data)).digest()


def signed_bytes(block: Any, metadata_value: bytes, signature_header: bytes) -> bytes:
    """What the orderer signs for ``block``."""
    h = block.header
    return metadata_value + signature_header + header_bytes(h.number, h.previous_hash, h.data_hash)


def orderer_roots(genesis: Any) -> dict[str, list[bytes]]:
    """MSP id → root CA certificates (PEM) of each orderer organisation in a genesis block."""
    return organisations(config_of(genesis), "Orderer")


def orderer_fingerprint(roots: Mapping[str, Sequence[bytes]]) -> str:
    """What a witnessed head pins on Fabric: sha256 over the orderer organisations' roots."""
    h = hashlib.sha256()
    for msp in sorted(roots):
        for pem in sorted(roots[msp]):
            h.update(msp.encode() + b"\x00" + pem + b"\x00")
    return h.hexdigest()


def _signature_problem(block: Any, roots: Mapping[str, Sequence[bytes]]) -> str | None:
    """None when an orderer of an orderer organisation signed the block, else why not."""
    raw = block.metadata.metadata[_SIGNATURES] if len(block.metadata.metadata) else b""
    metadata = common.Metadata.FromString(raw)
    if not metadata.signatures:
        return "it carries no orderer signature"
    problems = []
    for sig in metadata.signatures:
        header = common.SignatureHeader.FromString(sig.signature_header)
        try:
            creator = deserialize_identity(header.creator)
            cert = x509.load_pem_x509_certificate(creator.credentials)
        except ValueError:
            problems.append("its signer is not a certificate")
            continue
        issuers = roots.get(creator.msp_id)
        if not issuers:
            problems.append(f"its signer's organisation {creator.msp_id} is not an orderer's")
            continue
        if not any(issued_by(cert, root) for root in issuers):
            problems.append(f"its signer's certificate was not issued by {creator.msp_id}'s ca")
            continue
        public = cert.public_key()
        message = signed_bytes(block, bytes(metadata.value), bytes(sig.signature_header))
        try:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(bytes(sig.signature), message, ec.ECDSA(hashes.SHA256()))
        except (AssertionError, InvalidSignature, ValueError):
            problems.append("its orderer signature does not verify")
            continue
        return None
    return "; ".join(dict.fromkeys(problems))


def _check_chain(label: str, blocks: Sequence[Any]) -> tuple[dict[int, Any], list[ConfigChange]]:
    """One copy's hash chain, data hashes, orderer signatures and config history: block number
    → the configuration its config block set (0 included), and each change after block 0."""
    prev = b""
    history: dict[int, Any] = {}
    changes: list[ConfigChange] = []
    config: Any = None
    channel = ""
    roots: dict[str, list[bytes]] = {}
    for expected, block in enumerate(blocks):
        n = int(block.header.number)
        if n != expected:
            raise LedgerIntegrityError(f"{label}: block {expected} is missing", block=expected)
        if n > 0 and bytes(block.header.previous_hash) != prev:
            raise LedgerIntegrityError(
                f"{label}: block {n} does not link to block {n - 1}", block=n
            )
        if bytes(block.header.data_hash) != data_hash(block):
            raise LedgerIntegrityError(f"{label}: block {n} data does not match its hash", block=n)
        if n == 0:
            try:
                config = config_of(block)
            except ConfigBlockError as exc:
                raise LedgerIntegrityError(f"{label}: block 0: {exc}", block=0) from exc
            channel = _channel_of(block)
        else:
            problem = _signature_problem(block, roots)
            if problem is not None:
                raise LedgerIntegrityError(f"{label}: block {n}: {problem}", block=n)
            if not is_config_block(block):
                prev = block_hash(block)
                continue
            try:
                config, change = check_config_block(config, block, channel=channel)
            except ConfigBlockError as exc:
                raise LedgerIntegrityError(f"{label}: config block {n}: {exc}", block=n) from exc
            changes.append(change)
        history[n] = config  # block 0 or a config block: the configuration from here on
        roots = organisations(config, "Orderer")
        prev = block_hash(block)
    return history, changes


def verify_copies(
    copies: Mapping[str, Sequence[Any]], *, against: Sequence[Any] = ()
) -> dict[str, Any]:
    """Check each peer's copy (label → blocks from 0) and that the copies agree.

    Every copy must hold the same genesis block; its orderer roots, then each later config
    block's (checked by :func:`ehrshare.ledger.fabric_config.check_config_block`), sign the
    blocks after it. One copy is checked on its own (a channel of one organisation has nothing
    to compare). ``against``: witnessed heads (:class:`~ehrshare.ledger.witness.SignedHead`),
    signed by a member of an application organisation of the configuration in force at the
    head's height; the agreed chain must still hold each. Raises
    :class:`LedgerIntegrityError` naming the first bad block; returns a summary.
    """
    from ehrshare.ledger.witness import check_head

    if not copies:
        raise ValueError("verifying a Fabric channel needs at least one peer's copy")
    labels = sorted(copies)
    for label in labels:
        if not copies[label]:
            raise LedgerIntegrityError(f"{label} delivered no blocks", block=0)
    genesis = {label: copies[label][0].SerializeToString() for label in labels}
    if len(set(genesis.values())) != 1:
        raise LedgerIntegrityError(
            f"the peers deliver different genesis blocks ({', '.join(labels)})", block=0
        )
    roots = orderer_roots(copies[labels[0]][0])
    checked = {label: _check_chain(label, copies[label]) for label in labels}
    common_height = min(len(copies[label]) for label in labels)
    for n in range(common_height):
        hashes_at = {label: block_hash(copies[label][n]) for label in labels}
        if len(set(hashes_at.values())) != 1:
            raise LedgerIntegrityError(f"block {n} differs between {' and '.join(labels)}", block=n)
    for n in range(common_height):
        # Each peer writes its transactions' validation codes into the block's metadata after
        # the orderer signed it: neither the header nor the signature covers them, so the
        # copies are all there is to compare them with.
        codes = {label: _validation_codes(copies[label][n]) for label in labels}
        if len(set(codes.values())) != 1:
            raise LedgerIntegrityError(_codes_differ(n, codes), block=n)
    heights = {label: len(copies[label]) for label in labels}
    agreed = copies[labels[0]][:common_height]
    fingerprint = orderer_fingerprint(roots)
    history, changes = checked[labels[0]]
    agreed_history = {n: c for n, c in history.items() if n < common_height}

    def members(height: int) -> dict[str, bytes]:
        config = members_at(agreed_history, height)
        return {msp: pems[0] for msp, pems in organisations(config).items() if pems}

    witnessed = [
        check_head(
            head,
            channel=_channel_of(agreed[0]),
            height=common_height,
            block_hash=lambda n: block_hash(agreed[n]) if 0 <= n < common_height else None,
            orderer=fingerprint,
            organizations=members(min(head.height, common_height)),
        )
        for head in against
    ]
    return {
        "peers": heights,
        "height": common_height,
        "head": block_hash(agreed[-1]).hex(),
        "orderer_organisations": sorted(roots),
        "orderer": fingerprint,
        "blocks": common_height,
        "organisations": sorted(organisations(members_at(agreed_history, common_height))),
        "config_updates": [c.to_json() for c in changes if c.block < common_height],
        "witnesses": witnessed,
    }


def _validation_codes(block: Any) -> bytes:
    metadata = block.metadata.metadata
    return bytes(metadata[_TRANSACTIONS_FILTER]) if len(metadata) > _TRANSACTIONS_FILTER else b""


def _codes_differ(n: int, codes: Mapping[str, bytes]) -> str:
    """Names the copies whose codes differ from those most copies hold, if most agree."""
    counts: dict[bytes, int] = {}
    for value in codes.values():
        counts[value] = counts.get(value, 0) + 1
    common_value, most = max(counts.items(), key=lambda kv: kv[1])
    if most * 2 > len(codes):
        odd = [label for label in sorted(codes) if codes[label] != common_value]
        return (
            f"{' and '.join(odd)}: block {n}: its transactions' validation codes differ from "
            "the other peers' copies"
        )
    between = " and ".join(sorted(codes))
    return f"block {n}: its transactions' validation codes differ between {between}"


def _channel_of(genesis: Any) -> str:
    envelope = common.Envelope.FromString(genesis.data.data[0])
    payload = common.Payload.FromString(envelope.payload)
    return str(common.ChannelHeader.FromString(payload.header.channel_header).channel_id)


def fetch_blocks(
    *,
    address: str,
    tls_ca_pem: bytes,
    server_name: str | None,
    channel: str,
    identity: Identity,
    signer: Signer,
    client_tls: tuple[bytes, bytes] | None,
    timeout: float = 30.0,
) -> list[Any]:
    """Every block of ``channel`` a peer has now, over ``protos.Deliver/Deliver``."""
    from ehrshare.ledger.fabric import dial
    from ehrshare.ledger.peer import seek_envelope
    from ehrshare.ledger.peer.transport import _tls_cert_hash

    cert_pem, key_pem = client_tls if client_tls is not None else (None, None)
    grpc_channel = dial(
        address,
        tls_ca_pem=tls_ca_pem,
        server_name=server_name,
        client_cert_pem=cert_pem,
        client_key_pem=key_pem,
    )
    try:
        envelope = seek_envelope(
            serialize_identity(identity),
            signer,
            channel=channel,
            start=ab.SeekPosition(oldest=ab.SeekOldest()),
            stop=ab.SeekPosition(newest=ab.SeekNewest()),
            timestamp_ns=time.time_ns(),
            tls_cert_hash=b"" if cert_pem is None else _tls_cert_hash(cert_pem),
        )
        blocks: list[Any] = []
        try:
            for response in _events_grpc.DeliverStub(grpc_channel).Deliver(
                iter([envelope]), timeout=timeout
            ):
                if response.HasField("block"):
                    blocks.append(response.block)
                    continue
                status = common.Status.Name(response.status)
                if status != "SUCCESS":
                    raise LedgerError(f"peer {address} refused to deliver blocks: {status}")
                break
        except LedgerError:
            raise
        except Exception as exc:  # grpc.RpcError: down, TLS refused, timed out
            raise LedgerError(
                f"peer {address} did not deliver blocks: {exc}", unreachable=True
            ) from None
        return blocks
    finally:
        grpc_channel.close()
