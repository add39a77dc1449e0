"""Record versions as FHIR ``Provenance``: who created which version of a record, and when.

One Provenance per version on chain: ``target`` the record (by identifier: the chain does not
know the resourceType without decrypting), ``recorded`` the version's commit time, ``activity``
CREATE for version 1 and UPDATE after, ``agent`` the member who registered it (author). Read
from the record's pointers only: nothing is decrypted. This module must not call the ledger.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

from ehrshare.contract import RecordRef
from ehrshare.fhirapi.auditevent import RECORD_SYSTEM
from ehrshare.fhirapi.members import member_reference

__all__ = ["version_to_provenance"]

_DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def version_to_provenance(ref: RecordRef) -> dict[str, Any]:
    """The Provenance (FHIR R4 JSON) of one version of a record."""
    recorded = _dt.datetime.fromtimestamp(ref.created_at, _dt.UTC)
    return {
        "resourceType": "Provenance",
        "id": f"{ref.record_id}-v{ref.version}",
        "target": [
            {
                "identifier": {"system": RECORD_SYSTEM, "value": ref.record_id},
                "display": f"record {ref.record_id}, version {ref.version}",
            }
        ],
        "recorded": recorded.isoformat().replace("+00:00", "Z"),
        "activity": {
            "coding": [
                {"system": _DATA_OPERATION, "code": "CREATE" if ref.version == 1 else "UPDATE"}
            ]
        },
        "agent": [
            {
                "type": {"coding": [{"system": _PARTICIPANT, "code": "author"}]},
                "who": member_reference(ref.creator),
            }
        ],
    }
