"""The user side of key extraction: get an identity key from τ KGC nodes.

:func:`extract_identity_key` asks τ of n nodes through any
:class:`~ehrshare.services.protocols.KgcClient` (in process, or gRPC in
:mod:`ehrshare.services.rpc`), tolerates nodes that are down, names and excludes nodes whose
partial key fails the pairing check or whose signature does not verify under the roster of the
chain's final DKG result (:func:`~ehrshare.contract.dkg.roster_from_chain`), and asks further
nodes until τ shares verify. It sees the nodes only through the protocol; it must not log or
raise with a partial key, a reply key or the combined key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ehrshare.contract.dkg import RosterKeys
from ehrshare.hazmat.dkg import PublicPolynomial
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.extract import (
    InvalidPartialKey,
    NotEnoughPartialKeys,
    PartialKey,
    SignedExtractionRequest,
    combine_partial_keys,
    open_partial_key,
    verify_partial_keys,
)
from ehrshare.hazmat.kgc_keys import X25519KeyPair
from ehrshare.hazmat.pairing import RngFn
from ehrshare.hazmat.tipre import IdentitySecretKey
from ehrshare.identity import Identity, Signer
from ehrshare.services.extract_auth import certificate_der, sign_extraction_request
from ehrshare.services.kgc.errors import KgcError
from ehrshare.services.protocols import KgcClient

__all__ = ["ExtractionFailed", "ExtractionOutcome", "extract_identity_key"]

# Warnings keep the logger name they always had (operators filter on it).
_log = logging.getLogger("ehrshare.services.kgc")


class ExtractionFailed(NotEnoughPartialKeys, KgcError):
    """Fewer than τ KGC nodes gave a valid partial key; names the unreachable and bad nodes."""

    def __init__(
        self, have: int, need: int, invalid: Sequence[int], unavailable: dict[int, str]
    ) -> None:
        super().__init__(have, need, invalid)
        self.unavailable = dict(unavailable)
        down = "; ".join(f"node {j}: {why}" for j, why in sorted(unavailable.items()))
        message = f"{self.args[0]}" + (f"; unavailable: {down}" if down else "")
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ExtractionOutcome:
    """The user's key, and which nodes were skipped (to report them to the consortium)."""

    secret_key: IdentitySecretKey
    invalid: tuple[int, ...]
    unavailable: dict[int, str]


def extract_identity_key(
    clients: Sequence[KgcClient],
    member: Identity,
    signer: Signer,
    *,
    public: PublicPolynomial,
    roster: RosterKeys,
    timeout: float = 10.0,
    rng: RngFn | None = None,
    clock: Callable[[], int] = time.time_ns,
    for_identity: str | None = None,
) -> ExtractionOutcome:
    """Get ``sk_id`` of ``member`` from τ of the KGC nodes behind ``clients`` (in that order).

    ``member`` and ``signer`` are the member's *ledger* certificate and key (registered on
    chain): each node gets its own request, signed with them, naming the node, the mpk, a fresh
    nonce and the time from ``clock`` (nanoseconds). One reply key serves every node.
    A node that cannot be reached or refuses is skipped and reported; a node whose answer does
    not open, is signed by another node, or fails the pairing check is named in ``invalid`` and
    never combined. Raises :class:`ExtractionFailed` when fewer than τ valid shares came back.
    ``for_identity`` asks, signed by ``member``, for the key of a patient's emergency identity
    (the nodes give it only to the patient or to the requester of an emergency in force).
    """
    need = public.threshold
    identity = member.ibe_id if for_identity is None else for_identity
    reply = X25519KeyPair.generate(rng)
    mpk = public.mpk.to_bytes()
    certificate_der(member)  # a malformed certificate fails here, before any node is asked
    verified: list[PartialKey] = []
    invalid: list[int] = []
    unavailable: dict[int, str] = {}
    pending = list(clients)
    while len(verified) < need and pending:
        batch: list[PartialKey] = []
        while pending and len(verified) + len(batch) < need:
            client = pending.pop(0)
            request = sign_extraction_request(
                member,
                signer,
                reply_key=reply.public_bytes,
                node_index=client.index,
                mpk=mpk,
                timestamp=clock() // 1_000_000_000,
                rng=rng,
                for_identity=for_identity,
            )
            partial = _ask(client, request, reply, roster, timeout, invalid)
            if isinstance(partial, str):
                unavailable[client.index] = partial
            elif partial is not None:
                batch.append(partial)
        check = verify_partial_keys(batch, public, rng=rng)
        invalid.extend(check.invalid)
        good = {v.index for v in check.verified}
        verified.extend(p for p in batch if p.index in good)
    if len(verified) < need:
        raise ExtractionFailed(len(verified), need, invalid, unavailable)
    final = verify_partial_keys(verified, public, rng=rng)
    key = combine_partial_keys(final.verified, public)
    if invalid or unavailable:
        _log.warning(
            "extraction of %s: invalid shares from nodes %s, unavailable nodes %s",
            identity,
            sorted(invalid),
            sorted(unavailable),
        )
    return ExtractionOutcome(key, tuple(sorted(invalid)), unavailable)


def _ask(
    client: KgcClient,
    request: SignedExtractionRequest,
    reply: X25519KeyPair,
    roster: RosterKeys,
    timeout: float,
    invalid: list[int],
) -> PartialKey | str | None:
    """One node's partial key; a str says why the node is unavailable; None means invalid."""
    try:
        answer = client.extract(request.to_bytes(), timeout=timeout)
    except KgcError as exc:
        return str(exc)
    try:
        partial = open_partial_key(answer, request=request, reply_key=reply, roster=roster)
    except (VerificationError, DecryptionError, EncodingError, InvalidPartialKey) as exc:
        _log.warning("KGC node %d sent an unusable answer: %s", client.index, exc)
        invalid.append(client.index)
        return None
    if partial.index != client.index:
        _log.warning("KGC node %d answered as node %d", client.index, partial.index)
        invalid.append(client.index)
        return None
    return partial
