"""Grants as FHIR ``Consent`` resources, and a Consent as the grant it asks for.

The mapping (docs/fhir-api.md has the table):

- ``Consent.id`` is the grant id; ``status`` is ``active`` while the grant is active and
  unexpired, else ``inactive``; ``scope`` patient-privacy, ``category`` LOINC 59284-0.
- ``patient`` is the record owner, ``performer`` the grantor (the patient, or the clinician
  who forwarded it), ``provision.actor`` (role IRCP, information recipient) the grantee.
- ``provision.period.end`` is the expiry; ``provision.code`` (system :data:`RECORD_TYPE_SYSTEM`)
  the record type; the extension :data:`MAX_HOPS_URL` the number of further referrals.
- Not mapped: purpose of use (the ledger stores none, so a Consent naming one is refused
  rather than silently stripped), provision.data (a grant covers a type, not records).

This module must not call the ledger: it only converts.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Final

from ehrshare.contract import Grant
from ehrshare.fhirapi.members import member_from_reference, member_reference
from ehrshare.fhirapi.outcome import FhirError

__all__ = ["MAX_HOPS_URL", "RECORD_TYPE_SYSTEM", "ConsentRequest", "grant_to_consent", "parse"]

RECORD_TYPE_SYSTEM: Final = "urn:ehrshare:record-type"
MAX_HOPS_URL: Final = "urn:ehrshare:fhir:extension:max-hops"
_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
_LOINC: Final = "http://loinc.org"
_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _instant(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat().replace("+00:00", "Z")


def grant_to_consent(grant: Grant, *, now: int) -> dict[str, Any]:
    """The Consent (FHIR R4 JSON) of a grant as committed."""
    active = grant.state == "active" and grant.expiry > now
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"end": _instant(grant.expiry)},
        "actor": [
            {
                "role": {"coding": [{"system": _PARTICIPATION, "code": "IRCP"}]},
                "reference": member_reference(grant.grantee),
            }
        ],
        "code": [
            {
                "coding": [
                    {"system": RECORD_TYPE_SYSTEM, "code": grant.type or grant.label},
                ]
            }
        ],
    }
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": grant.grant_id,
        "status": "active" if active else "inactive",
        "scope": {"coding": [{"system": _SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": _LOINC, "code": "59284-0"}]}],
        "patient": member_reference(grant.owner, "Patient"),
        "performer": [member_reference(grant.grantor)],
        "policyRule": {"coding": [{"system": _ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
        "extension": [{"url": MAX_HOPS_URL, "valueUnsignedInt": grant.max_hops}],
    }
    if grant.parent_grant_id:
        consent["extension"].append(
            {"url": "urn:ehrshare:fhir:extension:parent-grant", "valueId": grant.parent_grant_id}
        )
    return consent


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """What an incoming active Consent asks for: a grant by ``patient`` to ``grantee``."""

    patient: str
    grantee: str
    record_type: str
    expiry: _dt.datetime
    max_hops: int


def _record_type(provision: dict[str, Any]) -> str:
    found: list[str] = []
    for concept in provision.get("code") or []:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("system") == RECORD_TYPE_SYSTEM and isinstance(coding.get("code"), str):
                found.append(coding["code"])
    for coding in provision.get("class") or []:
        if coding.get("system") == RECORD_TYPE_SYSTEM and isinstance(coding.get("code"), str):
            found.append(coding["code"])
    if len(set(found)) != 1:
        raise FhirError(
            422,
            f"Consent.provision must name exactly one record type as code (or class) of system "
            f"{RECORD_TYPE_SYSTEM}; found {len(set(found))}",
        )
    return found[0]


def parse(consent: dict[str, Any]) -> ConsentRequest:
    """The grant an active Consent (already validated as FHIR R4) asks for."""
    if consent.get("status") != "active":
        raise FhirError(422, "a new Consent must have status 'active' (that is what grants)")
    provision = consent.get("provision")
    if not isinstance(provision, dict):
        raise FhirError(422, "Consent.provision is required: it names grantee, type and expiry")
    if provision.get("type", "permit") != "permit":
        raise FhirError(422, "only provision.type 'permit' maps to a grant")
    if provision.get("purpose"):
        raise FhirError(
            422,
            "Consent.provision.purpose is not supported: the ledger records no purpose of use, "
            "and the server will not drop it silently",
        )
    if provision.get("provision") or provision.get("data"):
        raise FhirError(422, "nested provisions and provision.data are not supported")
    actors = provision.get("actor") or []
    if len(actors) != 1:
        raise FhirError(422, f"Consent.provision.actor must name one grantee, not {len(actors)}")
    grantee = member_from_reference(actors[0].get("reference"), "provision.actor.reference")
    end = (provision.get("period") or {}).get("end")
    if not isinstance(end, str):
        raise FhirError(422, "Consent.provision.period.end (the grant's expiry) is required")
    try:
        expiry = _dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(422, f"provision.period.end {end!r} is not a date/time") from None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=_dt.UTC)
    hops = 0
    for ext in consent.get("extension") or []:
        if ext.get("url") == MAX_HOPS_URL:
            value = ext.get("valueUnsignedInt")
            if not isinstance(value, int) or value < 0:
                raise FhirError(422, f"extension {MAX_HOPS_URL} needs valueUnsignedInt")
            hops = value
    return ConsentRequest(
        patient=member_from_reference(consent.get("patient"), "Consent.patient"),
        grantee=grantee,
        record_type=_record_type(provision),
        expiry=expiry,
        max_hops=hops,
    )
