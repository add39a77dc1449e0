"""Joint-Feldman (Pedersen) distributed key generation for the KGC master key.

Scheme: Joint-Feldman DKG (Pedersen 1991) with complaints and justifications, as drand runs it
(dedis/kyber ``share/dkg``). Setting: BLS12-381, commitments in G1. Each of the n KGC nodes deals a
random polynomial f_i of degree τ−1; the master secret is s = Σ_{i∈QUAL} f_i(0), node j's share is
s_j = Σ_{i∈QUAL} f_i(j), the public polynomial is A_k = Σ_{i∈QUAL} A_{i,k} with
A_{i,k} = a_{i,k}·P1, and ``mpk = A_0 = s·P1``. Reference: Gennaro, Jarecki, Krawczyk, Rabin,
"Secure distributed key generation for discrete-log based cryptosystems" (J. Cryptology 2007),
which also describes the known bias of Joint-Feldman's public key (see docs/security.md).

Protocol, one bundle per node per phase, every bundle signed (P-256, see
:mod:`ehrshare.hazmat.kgc_keys`) and bound to a 32-byte session nonce:

1. **deal**: commitments A_{i,0..τ−1} and, for every node j, f_i(j) sealed to j's X25519 key
   (AAD binds session nonce, dealer and recipient). Shares never appear in clear.
2. **response**: per dealer, ACCEPTED / COMPLAINT / ABSENT (no usable deal seen). A node that
   posts no response complains about nobody (drand's default), so an offline node does not force
   every dealer to publish its share.
3. **justification**: a dealer with complaints reveals the complained shares; everyone checks
   them against the commitments.
4. **finish**: QUAL = dealers with a valid deal, no equivocation, fewer than τ complaints, and
   every complaint justified. |QUAL| < τ aborts with :class:`DKGAborted`.

Every decision uses only what is on the board (signed, public), so all honest nodes that read the
same board compute the same QUAL, public polynomial and ``mpk``. That requires the board to close a
phase before it is read (the chaincode refuses late posts; the in-process driver sequences phases).

This module is a pure protocol object: it must not do I/O (network, files, clock), must not log
secret values, and never puts secret bytes into an exception. Driving it over a board is
:mod:`ehrshare.hazmat.board`'s job.
"""

from __future__ import annotations

from ehrshare.hazmat.dkg.bundles import (
    BundleKind,
    DealBundle,
    DealStatus,
    EquivocationEvidence,
    JustificationBundle,
    Rejection,
    ResponseBundle,
    open_share,
    parse_bundle,
    seal_share,
)
from ehrshare.hazmat.dkg.config import (
    NONCE_SIZE,
    BundleRules,
    DealerDisqualified,
    DKGAborted,
    DKGConfig,
    DKGError,
    DKGResult,
    InvalidNonce,
    InvalidSignature,
    KeyShare,
    PhaseError,
    PublicPolynomial,
    ShareUnavailable,
    ThresholdTooHigh,
    UnknownParticipant,
    new_session_nonce,
)
from ehrshare.hazmat.dkg.node import DKGNode, Phase

__all__ = [
    "NONCE_SIZE",
    "BundleKind",
    "BundleRules",
    "DKGAborted",
    "DKGConfig",
    "DKGError",
    "DKGNode",
    "DKGResult",
    "DealBundle",
    "DealStatus",
    "DealerDisqualified",
    "EquivocationEvidence",
    "InvalidNonce",
    "InvalidSignature",
    "JustificationBundle",
    "KeyShare",
    "Phase",
    "PhaseError",
    "PublicPolynomial",
    "Rejection",
    "ResponseBundle",
    "ShareUnavailable",
    "ThresholdTooHigh",
    "UnknownParticipant",
    "new_session_nonce",
    "open_share",
    "parse_bundle",
    "seal_share",
]
