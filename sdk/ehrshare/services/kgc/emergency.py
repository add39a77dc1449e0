"""The key centre's gate for emergency identities: a node extracts ``<patient>~emergency-<n>``
only on the chain's word (CheckEmergencyExtraction) and only for the certificate the chain has
registered for the requester.

The patient may have its own emergency identity's key (it makes that identity's type keys); a
clinician only while an emergency it requested for that identity is in force — the required
approvals committed and not expired. Each node asks the chain itself, so a clinician needs τ
nodes to agree that the chain says so.

What this module must not do: extract for an unauthenticated caller (the requester must be the
authenticated identity, not a field of the request), or answer when the chain cannot be asked.
"""

from __future__ import annotations

import hashlib

from ehrshare.contract import EhrContract
from ehrshare.hazmat.extract import SignedExtractionRequest
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc.errors import KgcError, NotAuthorised, UnregisteredCertificate

__all__ = ["EMERGENCY_MARK", "check_emergency_requester", "is_emergency_identity"]

EMERGENCY_MARK = "~emergency-"


def is_emergency_identity(identity: str) -> bool:
    """Whether an extraction request asks for a patient's emergency identity."""
    return EMERGENCY_MARK in identity


def check_emergency_requester(
    contract: Contract, request: SignedExtractionRequest, requester: str | None, node: int
) -> str:
    """Raise unless ``requester`` may have the key of ``request.identity`` now; returns the
    outcome to audit (``ok: owner`` or ``ok: emergency e-…``)."""
    identity = request.identity
    if requester is None:
        raise NotAuthorised(
            f"KGC node {node} extracts emergency identity {identity} only for an authenticated "
            "requester"
        )
    try:
        answer = EhrContract(contract).check_emergency_extraction(identity, requester)
    except LedgerError as exc:
        if exc.message and "may not" not in exc.message and "needs role" not in exc.message:
            # The chain's refusal: no emergency in force, too few approvals, expired, …
            raise NotAuthorised(
                f"KGC node {node} refuses the key of {identity} to {requester}: {exc.message}"
            ) from None
        raise KgcError(
            f"KGC node {node} could not check emergency identity {identity} on chain: {exc}"
        ) from None
    registered = str(answer.get("cert_sha256", ""))
    presented = hashlib.sha256(request.certificate).hexdigest()
    if presented != registered:
        raise UnregisteredCertificate(
            f"the certificate in the extraction request (sha256 {presented[:16]}…) is not the "
            f"one registered on chain for {requester} (sha256 {registered[:16]}…)"
        )
    if answer.get("owner"):
        return "ok: owner"
    return f"ok: emergency {answer.get('request_id', '?')}"
