"""The operation log as FHIR ``AuditEvent`` resources (IHE BALP-style), and back.

Each log entry becomes one AuditEvent: ``type`` rest (or a DICOM security event for grants),
``subtype`` the FHIR interaction where one fits plus the chaincode's own action,
``action`` C/R/U/E, ``recorded`` the transaction's time, ``outcome`` 0 (success) or 4 (the
operation was refused or denied), ``agent`` the calling member (requestor), ``source`` the
ledger, ``entity`` the patient, the record and the grant. No purpose of use: the ledger stores
none.

The entry itself rides along, canonical JSON in the extension :data:`ENTRY_URL`, so an auditor
can recompute the hash chain from an exported Bundle with the chaincode's own rule
(:func:`entries_from_bundle`, then :func:`ehrshare_chaincode.auditlog.verify_entries`) and check
that the visible fields say what the entry says. This module must not call the ledger.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ehrshare.errors import IntegrityFailure
from ehrshare.fhirapi.members import MEMBER_SYSTEM, member_reference
from ehrshare_chaincode import canonical

__all__ = [
    "ENTRY_URL",
    "RECORD_SYSTEM",
    "AuditExportError",
    "entries_from_bundle",
    "entry_to_auditevent",
]

ENTRY_URL: Final = "urn:ehrshare:fhir:extension:audit-entry"
RECORD_SYSTEM: Final = "urn:ehrshare:record"
GRANT_SYSTEM: Final = "urn:ehrshare:grant"
ACTION_SYSTEM: Final = "urn:ehrshare:audit-action"
_REST: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
_DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"

# chaincode action -> (FHIR action, rest interaction or "" for a security event)
_ACTIONS: Final[dict[str, tuple[str, str]]] = {
    "RegisterRecord": ("C", "create"),
    "AmendRecord": ("U", "update"),
    "RequestAccess": ("R", "read"),
    "AccessDecision": ("R", "read"),
    "ReportReencryption": ("E", ""),
    "GrantAccess": ("C", ""),
    "RevokeAccess": ("D", ""),
}
_REFUSED: Final = frozenset({"deny", "denied", "failed", "rejected", "refused"})


def _instant(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat().replace("+00:00", "Z")


def entry_to_auditevent(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One operation-log entry as an AuditEvent (FHIR R4 JSON)."""
    action_name = str(entry.get("action", ""))
    action, interaction = _ACTIONS.get(action_name, ("E", ""))
    subtype = [{"system": ACTION_SYSTEM, "code": action_name}]
    if interaction:
        event_type = {"system": _REST, "code": "rest", "display": "RESTful Operation"}
        subtype.insert(0, {"system": _INTERACTION, "code": interaction})
    else:
        # DICOM 110113 Security Alert covers grants and revocations of access rights.
        event_type = {"system": _DCM, "code": "110113", "display": "Security Alert"}
    outcome = str(entry.get("outcome", ""))
    detail = entry.get("detail") or {}
    reason = detail.get("reason") if isinstance(detail, Mapping) else None
    desc = outcome + (f": {reason}" if isinstance(reason, str) and reason else "")
    entities: list[dict[str, Any]] = []
    chain = str(entry.get("chain", ""))
    if "/" in chain:  # a patient's chain (the system chain's name holds no "/")
        entities.append(
            {
                "what": member_reference(chain, "Patient"),
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for system, key in ((RECORD_SYSTEM, "record_id"), (GRANT_SYSTEM, "grant_id")):
        value = entry.get(key)
        if value:
            entities.append(
                {
                    "what": {"identifier": {"system": system, "value": str(value)}},
                    "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                }
            )
    body = base64.b64encode(canonical.dumps(dict(entry))).decode("ascii")
    return {
        "resourceType": "AuditEvent",
        "id": f"{entry.get('seq')}-{str(entry.get('hash', ''))[:16]}",
        "type": event_type,
        "subtype": subtype,
        "action": action,
        "recorded": _instant(int(entry.get("timestamp", 0))),
        "outcome": "4" if outcome in _REFUSED else "0",
        "outcomeDesc": desc,
        "agent": [
            {
                "who": {
                    "identifier": {"system": MEMBER_SYSTEM, "value": str(entry.get("actor", ""))},
                    "display": f"{entry.get('actor', '')} ({entry.get('actor_msp', '')})",
                },
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": "ehrshare ledger (hash-chained operation log)"},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
        "extension": [{"url": ENTRY_URL, "valueBase64Binary": body}],
    }


class AuditExportError(IntegrityFailure, ValueError):
    """An AuditEvent Bundle whose entries cannot be recovered, or whose visible fields do not
    say what its carried log entry says."""


def entries_from_bundle(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The log entries an exported AuditEvent Bundle carries, in its order, each checked
    against the AuditEvent it rides in (recorded time, action, outcome, agent): an edit of a
    visible field without the entry, or of the entry without the chain, is caught."""
    out: list[dict[str, Any]] = []
    items: Sequence[Any] = bundle.get("entry") or []
    for i, item in enumerate(items, start=1):
        event = (item or {}).get("resource") or {}
        carried = [e for e in event.get("extension") or [] if e.get("url") == ENTRY_URL]
        if len(carried) != 1:
            raise AuditExportError(f"bundle entry {i} carries no operation-log entry")
        try:
            entry = json.loads(base64.b64decode(carried[0]["valueBase64Binary"], validate=True))
        except (ValueError, KeyError, TypeError):
            raise AuditExportError(
                f"bundle entry {i}: the carried log entry is unreadable"
            ) from None
        if not isinstance(entry, dict):
            raise AuditExportError(f"bundle entry {i}: the carried log entry is not an object")
        expected = entry_to_auditevent(entry)
        for field in ("recorded", "action", "outcome", "outcomeDesc", "agent", "entity"):
            if event.get(field) != expected.get(field):
                raise AuditExportError(
                    f"bundle entry {i}: AuditEvent.{field} does not match its log entry"
                )
        out.append(entry)
    return out
