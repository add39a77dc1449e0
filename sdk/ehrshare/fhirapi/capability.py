"""The server's ``CapabilityStatement`` (``GET [base]/metadata``): what it does, no more.

Kept next to the routes it describes (:mod:`ehrshare.fhirapi.gateway`); a test checks that each
interaction listed here answers and that nothing unlisted does. Must not do I/O.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RECORD_INTERACTIONS", "capability_statement"]

FHIR_VERSION: Final = "4.0.1"
RECORD_INTERACTIONS: Final = (
    "create",
    "read",
    "vread",
    "update",
    "history-instance",
    "search-type",
)
_SECURITY: Final = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def capability_statement(
    software_version: str, date: str, *, mutual_tls: bool = False
) -> dict[str, Any]:
    """The CapabilityStatement (FHIR R4 JSON) of this server (``mutual_tls``: callers are
    authenticated by client certificate, else by bearer token)."""
    if mutual_tls:
        security = {
            "service": [{"coding": [{"system": _SECURITY, "code": "Certificates"}]}],
            "description": (
                "Mutual TLS: the member's wallet TLS client certificate, issued by a "
                "consortium CA. SMART Backend Services is not offered."
            ),
        }
    else:
        security = {
            "service": [{"coding": [{"system": _SECURITY, "code": "OAuth"}]}],
            "description": (
                "Bearer tokens issued per member by 'ehrshare fhir token' (not OAuth "
                "flows: the token is bound to a member's wallet on the server). SMART "
                "Backend Services is not offered."
            ),
        }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {
            "name": "ehrshare",
            **({"version": software_version} if software_version else {}),
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Any FHIR R4 resource type is stored as an encrypted record (create, read "
                    "by the owner or a grantee, update as a new version by its owner or "
                    "creator, history: every version for the owner, the current one for a "
                    "grantee; search by patient, category and _lastUpdated). A search decrypts "
                    "only records whose pointers on chain can match, but the chain does not "
                    "know a record's resourceType or FHIR categories: records of the same "
                    "record type but another resourceType or category are decrypted, a logged "
                    "read each, and left out. Consent maps grants, AuditEvent the "
                    "hash-chained operation log. A transaction Bundle holds record creates "
                    "and updates: every entry is checked before any is written, then all are "
                    "written in one ledger transaction. Conditional creates (If-None-Exist, a "
                    "transaction entry's ifNoneExist) take identifier and _id, within the new "
                    "resource's patient, over the records the caller may read. Not supported: "
                    "delete of records, update-as-create, other conditional interactions, batch "
                    "Bundles, search parameters other than those listed."
                ),
                "security": security,
                "interaction": [{"code": "transaction"}],
                "operation": [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    }
                ],
                "resource": [
                    {
                        "type": "Resource",
                        "documentation": (
                            "Any other resource type: stored as a record. Updates honour "
                            'If-Match: W/"versionId" (412 when stale). A create honours '
                            "If-None-Exist with identifier (system|value, |value, value) and "
                            "_id, evaluated over the records of the resource's patient that the "
                            "caller may read: one match is answered 200 with it, several 412."
                        ),
                        "versioning": "versioned-update",
                        "conditionalCreate": True,
                        "interaction": [{"code": c} for c in RECORD_INTERACTIONS],
                        "searchParam": [
                            {"name": "patient", "type": "reference"},
                            {
                                "name": "category",
                                "type": "token",
                                "documentation": (
                                    "FHIR category codes, checked on the decrypted resource "
                                    "among records of the types the mapping allows; or the "
                                    "record type as urn:ehrshare:record-type|TYPE, decided on "
                                    "the chain's pointers"
                                ),
                            },
                            {
                                "name": "_lastUpdated",
                                "type": "date",
                                "documentation": (
                                    "prefixes eq ne gt lt ge le; decided on the chain's "
                                    "pointers (when the version was registered)"
                                ),
                            },
                        ],
                    },
                    {
                        "type": "Consent",
                        "interaction": [
                            {"code": c}
                            for c in ("create", "read", "update", "delete", "search-type")
                        ],
                        "searchParam": [{"name": "patient", "type": "reference"}],
                    },
                    {
                        "type": "Provenance",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [
                            {"name": "target", "type": "reference"},
                            {"name": "patient", "type": "reference"},
                        ],
                    },
                    {
                        "type": "AuditEvent",
                        "interaction": [{"code": "search-type"}],
                        "searchParam": [{"name": "patient", "type": "reference"}],
                    },
                ],
            }
        ],
    }
