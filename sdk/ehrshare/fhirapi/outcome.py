"""FHIR errors: an HTTP status and an ``OperationOutcome``, mapped from the SDK's error families.

:class:`FhirError` is what a handler raises to answer with a status of its own choosing;
:func:`status_for` maps every other :class:`~ehrshare.errors.EhrshareError` by its family, in one
table, so the server never answers a refusal with a 500 or an outage with a 403. This module
must not log or echo resource contents: diagnostics are the SDK's messages, which name ids only.
"""

from __future__ import annotations

from typing import Any, Final

from ehrshare.errors import (
    EXIT_INTEGRITY,
    ConfigurationError,
    EhrshareError,
    IntegrityFailure,
    InvalidInput,
    Refused,
    Unavailable,
    UsageError,
)

__all__ = ["FhirError", "operation_outcome", "outcome_for", "status_for"]

# FHIR's issue-type codes (http://hl7.org/fhir/issue-type) for each status we answer with.
_ISSUE_CODE: Final[dict[int, str]] = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    412: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    500: "exception",
    502: "exception",
    503: "transient",
}


class FhirError(Exception):
    """Answer the request with ``status`` and an OperationOutcome saying ``message``."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _ISSUE_CODE.get(status, "processing")


def status_for(exc: EhrshareError) -> int:
    """The HTTP status of an SDK error, by its family (see :mod:`ehrshare.errors`)."""
    from ehrshare.session import NoSuchMember, RecordTooLarge, RequestRejected, VersionConflict

    if isinstance(exc, RecordTooLarge):
        return 413
    if isinstance(exc, NoSuchMember):
        return 404
    if isinstance(exc, InvalidInput | UsageError):
        return 422
    if isinstance(exc, Unavailable | IntegrityFailure):
        # By the family an error lists first, as the CLI's exit code: a ciphertext missing or
        # altered (RecordIntegrityError, also a RecordStorageError) is 502, not "transient".
        return 502 if exc.exit_code == EXIT_INTEGRITY else 503
    if isinstance(exc, ConfigurationError):
        return 500
    if isinstance(exc, VersionConflict):
        return 412  # If-Match named a version the record has moved on from
    if isinstance(exc, RequestRejected) and "does not exist" in exc.reason:
        return 404  # the chaincode's sentence for an unknown record or grant
    if isinstance(exc, Refused | RequestRejected):
        return 403
    return 500


def operation_outcome(status: int, message: str, code: str = "") -> dict[str, Any]:
    """An OperationOutcome (FHIR R4 JSON) with one issue."""
    severity = "error" if status < 500 else "fatal"
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": code or _ISSUE_CODE.get(status, "processing"),
                "diagnostics": message,
            }
        ],
    }


def outcome_for(exc: Exception) -> tuple[int, dict[str, Any]]:
    """Status and OperationOutcome for an error a handler raised (a bug answers 500 with its
    class name only: no internals leak to the client)."""
    if isinstance(exc, FhirError):
        return exc.status, operation_outcome(exc.status, str(exc), exc.code)
    if isinstance(exc, EhrshareError):
        status = status_for(exc)
        return status, operation_outcome(status, str(exc))
    if isinstance(exc, ConnectionError | TimeoutError):
        return 503, operation_outcome(503, f"a service did not answer: {exc}")
    return 500, operation_outcome(500, f"internal error ({type(exc).__name__}); see the log")
