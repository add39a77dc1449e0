"""The FHIR status of an SDK error follows the family it lists first, as the CLI's exit code
does: a ciphertext missing or altered, or an edited pointer (RecordIntegrityError, also a
RecordStorageError) is 502 as docs/fhir-api.md's table says, a store that did not answer 503."""

from __future__ import annotations

import pytest

from ehrshare.errors import EXIT_INTEGRITY, EXIT_UNAVAILABLE, EhrshareError
from ehrshare.fhirapi.outcome import status_for
from ehrshare.ledger import LedgerIntegrityError
from ehrshare.session import RecordIntegrityError, RecordStorageError


@pytest.mark.parametrize(
    ("exc", "status", "exit_code"),
    [
        (RecordIntegrityError("record r-1 could not be decrypted"), 502, EXIT_INTEGRITY),
        (
            LedgerIntegrityError("world state key x does not hold what block 3 wrote"),
            502,
            EXIT_INTEGRITY,
        ),
        (
            RecordStorageError("could not read record r-1: the store did not answer"),
            503,
            EXIT_UNAVAILABLE,
        ),
    ],
)
def test_integrity_failures_are_502_and_outages_503(
    exc: EhrshareError, status: int, exit_code: int
) -> None:
    assert exc.exit_code == exit_code
    assert status_for(exc) == status
