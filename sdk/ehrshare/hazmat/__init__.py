"""hazmat: the cryptographic primitives of ehrshare. Dangerous to use directly.

Scheme: MH-TIPRE — identity-based, type-conditional, multi-hop proxy re-encryption
(:mod:`ehrshare.hazmat.tipre`), used as a KEM for AES-256-GCM record encryption
(:mod:`ehrshare.hazmat.hybrid`); DKG and threshold key extraction for the key-generation centre.

Properties: unidirectional, non-interactive, multi-hop (one G1+GT layer per hop), type-conditional
(a re-key of one record type neither applies to nor decrypts another), IND-CPA only — the capsule
is malleable; integrity of the payload comes from AES-GCM, not from the PRE.
Setting: asymmetric (type-3) pairing e: G1×G2→GT on BLS12-381 (~128-bit security), via pymcl;
mpk = s·P1 ∈ G1, Q_id = H1(id) ∈ G2, sk_id = s·Q_id ∈ G2.
Assumptions: co-BDH-type (bilinear Diffie–Hellman in the type-3 setting) in the random-oracle
model for H1, H2, H3 and the KDF; H3 maps to a scalar times P2 rather than onto G2 (one pairing
per hop; argued in :mod:`ehrshare.hazmat.tipre`).
References: Ibraimi, Tang, Hartel, Jonker, "A type-and-identity-based proxy re-encryption scheme
and its application in healthcare" (SDM 2008); Green, Ateniese, "Identity-based proxy
re-encryption" (ACNS 2007, IBP1 multi-use); Hoang, Rogaway, Reyhanitabar, Vizár, "Online
authenticated-encryption and its nonce-reuse misuse-resistance" (CRYPTO 2015, STREAM).

Use the recipes in :mod:`ehrshare.crypto` unless you are building a protocol. This package
must not log secrets or put secret bytes into exceptions; only :mod:`ehrshare.hazmat.pairing`
imports the pairing library, and importing this package imports nothing heavy.
"""

from __future__ import annotations

__all__: list[str] = []
