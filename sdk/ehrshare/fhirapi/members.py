"""Members as FHIR references, and back.

A member's identity (``HospitalAMSP/alice``) contains a ``/``, which a FHIR logical id may not,
so references name members by identifier: ``{"identifier": {"system": MEMBER_SYSTEM,
"value": "HospitalAMSP/alice"}}``. Incoming references may also be written
``Patient/HospitalAMSP.alice`` (the id with ``/`` as ``.``; member names never hold a ``.``
before the MSP id's end, see :func:`member_from_id`) or as the bare identity in a search
parameter. This module must not call the ledger.
"""

from __future__ import annotations

from typing import Any, Final

from ehrshare.fhirapi.outcome import FhirError

__all__ = ["MEMBER_SYSTEM", "member_from_id", "member_from_reference", "member_reference"]

MEMBER_SYSTEM: Final = "urn:ehrshare:member"


def member_reference(ibe_id: str, resource_type: str = "") -> dict[str, Any]:
    """A FHIR Reference naming a member by identifier (``type`` set when given)."""
    ref: dict[str, Any] = {
        "identifier": {"system": MEMBER_SYSTEM, "value": ibe_id},
        "display": ibe_id,
    }
    if resource_type:
        ref["type"] = resource_type
    return ref


def member_from_id(value: str) -> str:
    """A member's identity from a search value or a logical id: ``MSP/name`` as it is, or
    ``MSP.name`` (split at the first ``.``: MSP ids end in ``MSP`` and hold no dot)."""
    value = value.strip()
    if "/" not in value and "." in value:
        msp, _, name = value.partition(".")
        value = f"{msp}/{name}"
    if value.count("/") != 1 or not all(value.split("/")):
        raise FhirError(
            400,
            f"{value!r} does not name a member: give its identity (HospitalAMSP/alice, "
            "URL-encoded) or HospitalAMSP.alice",
        )
    return value


def member_from_reference(ref: Any, what: str) -> str:
    """A member's identity from a Reference (identifier of :data:`MEMBER_SYSTEM`, or
    ``Type/MSP.name``); ``what`` names the field for the error."""
    if not isinstance(ref, dict):
        raise FhirError(422, f"{what} must be a Reference naming a member")
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("system") == MEMBER_SYSTEM:
        value = ident.get("value")
        if isinstance(value, str) and value:
            return member_from_id(value)
    literal = ref.get("reference")
    if isinstance(literal, str) and literal.count("/") == 1:
        return member_from_id(literal.split("/", 1)[1])
    raise FhirError(
        422,
        f"{what} names no member: use identifier {{system: {MEMBER_SYSTEM}, value: "
        "HospitalAMSP/alice}} or reference Patient/HospitalAMSP.alice",
    )
