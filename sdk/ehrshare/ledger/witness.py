"""Witnessed chain heads: a member's signed statement "block H-1 of this channel had hash X".

A hash chain proves nothing about its own length, and whoever holds the ordering key can
re-sign a rewritten chain. A head signed by someone else and kept elsewhere catches both: a
ledger shorter than a witnessed height lost its tail; a ledger whose block at that height has
another hash was rewritten. Each hospital's admin (or an auditor) saves one now and then
(``ehrshare ledger head --out FILE``); ``ehrshare ledger verify --against FILE`` checks the
ledger against it. The file is JSON with the witness's certificate and an ECDSA signature over
a domain-tagged canonical body; it is checked against the organisation CAs on the channel.

This module reads and writes head files only; it must not trust one before its signature.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrshare.errors import InvalidInput
from ehrshare.identity import Identity, Signer, verify_signature
from ehrshare.jsontext import loads_untrusted
from ehrshare.ledger.errors import LedgerIntegrityError

__all__ = ["HeadFileError", "SignedHead", "check_head", "read_head", "sign_head"]

_FORMAT = 1
_TAG = b"ehrshare/witnessed-ledger-head/v1\x00"


class HeadFileError(InvalidInput):
    """A head file cannot be read or is not a head file (what is wrong is in the message)."""


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A witness's signed (channel, height, head hash, ordering certificate fingerprint)."""

    channel: str
    height: int
    head: str
    orderer: str
    signed_at: int
    witness_msp: str
    witness_cert: bytes
    signature: bytes
    source: str = ""

    def body(self) -> bytes:
        """The signed bytes: a tag and canonical JSON of everything but the signature."""
        return (
            _TAG
            + json.dumps(
                {
                    "channel": self.channel,
                    "format": _FORMAT,
                    "head": self.head,
                    "height": self.height,
                    "orderer": self.orderer,
                    "signed_at": self.signed_at,
                    "witness": {"cert": self.witness_cert.decode(), "msp": self.witness_msp},
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        )

    @property
    def witness(self) -> Identity:
        """The signer's identity."""
        return Identity(self.witness_msp, self.witness_cert)

    def to_json(self) -> bytes:
        """The file content."""
        return (
            json.dumps(
                {
                    "format": _FORMAT,
                    "channel": self.channel,
                    "height": self.height,
                    "head": self.head,
                    "orderer": self.orderer,
                    "signed_at": self.signed_at,
                    "witness": {"msp": self.witness_msp, "cert": self.witness_cert.decode()},
                    "signature": base64.b64encode(self.signature).decode(),
                },
                indent=2,
            )
            + "\n"
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "") -> SignedHead:
        """Parse :meth:`to_json` output; :class:`HeadFileError` naming the problem otherwise."""
        try:
            raw = loads_untrusted(data)
            if raw.get("format") != _FORMAT:
                raise ValueError(f"format {raw.get('format')!r} is not {_FORMAT}")
            head = cls(
                channel=str(raw["channel"]),
                height=int(raw["height"]),
                head=str(raw["head"]),
                orderer=str(raw["orderer"]),
                signed_at=int(raw["signed_at"]),
                witness_msp=str(raw["witness"]["msp"]),
                witness_cert=str(raw["witness"]["cert"]).encode(),
                signature=base64.b64decode(raw["signature"], validate=True),
                source=source,
            )
            bytes.fromhex(head.head)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            name = source or "head file"
            raise HeadFileError(f"{name} is not a signed ledger head: {exc}") from None
        if head.height < 1:
            raise HeadFileError(f"{source or 'head file'}: height {head.height} is below 1")
        return head


def read_head(path: Path | str) -> SignedHead:
    """Read a head file; :class:`HeadFileError` when it is missing or malformed."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise HeadFileError(f"head file {path} cannot be read ({exc.strerror})") from None
    return SignedHead.from_json(data, str(path))


def sign_head(
    *,
    channel: str,
    height: int,
    head: bytes,
    orderer: str,
    identity: Identity,
    signer: Signer,
    signed_at: int,
) -> SignedHead:
    """A head signed by ``identity`` (its signer), stamped ``signed_at`` (epoch seconds)."""
    unsigned = SignedHead(
        channel, height, head.hex(), orderer, signed_at, identity.msp_id, identity.credentials, b""
    )
    return SignedHead(
        channel,
        height,
        head.hex(),
        orderer,
        signed_at,
        identity.msp_id,
        identity.credentials,
        signer.sign(unsigned.body()),
    )


def check_head(
    head: SignedHead,
    *,
    channel: str,
    height: int,
    block_hash: Callable[[int], bytes | None],
    orderer: str,
    organizations: Mapping[str, bytes],
) -> dict[str, Any]:
    """Check a ledger of ``height`` blocks against a witnessed head; raise
    :class:`LedgerIntegrityError` naming the first block that cannot be the witnessed one."""
    from ehrshare.ledger.simulation import _chains_to  # the ledger's own membership rule

    name = head.source or "the witnessed head"
    ca = organizations.get(head.witness_msp)
    problem = (
        f"organisation {head.witness_msp} is not a channel member"
        if ca is None
        else _chains_to(head.witness_cert, ca)
    )
    if problem is None and not verify_signature(head.witness, head.body(), head.signature):
        problem = "its signature does not verify"
    if problem is not None:
        raise LedgerIntegrityError(f"{name} cannot be trusted: {problem}")
    if head.channel != channel:
        raise LedgerIntegrityError(f"{name} is for channel {head.channel}, not {channel}")
    who = head.witness.ibe_id
    if height < head.height:
        raise LedgerIntegrityError(
            f"the ledger has {height} blocks but {who} witnessed {head.height} ({name}): "
            f"blocks {height}..{head.height - 1} were removed",
            block=height,
        )
    if head.orderer != orderer:
        raise LedgerIntegrityError(
            f"the ordering certificate differs from the one {who} witnessed ({name}): "
            "the chain was re-signed",
            block=0,
        )
    stored = block_hash(head.height - 1)
    if stored is None or stored.hex() != head.head:
        raise LedgerIntegrityError(
            f"block {head.height - 1} differs from the one {who} witnessed ({name}): "
            "the chain was rewritten",
            block=head.height - 1,
        )
    return {"witness": who, "height": head.height, "head": head.head, "file": head.source}
