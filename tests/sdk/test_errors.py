"""One error root carrying the exit code: every family and module error maps to the table."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ehrshare import errors
from ehrshare.cli import app
from ehrshare.fabricnet import FabricNetError
from ehrshare.fhir import FhirValidationError, UnknownRecordType
from ehrshare.ledger.errors import CommitError, EndorseError, LedgerCorrupt, LedgerError
from ehrshare.netctl import NetworkControlError
from ehrshare.processes import ServiceProcessError
from ehrshare.profile import BackendUnavailable, ProfileError
from ehrshare.provisioning import InvalidName
from ehrshare.runtime import ConsortiumError
from ehrshare.services import kgc, proxy
from ehrshare.session import (
    AccessDenied,
    EnrollmentError,
    LedgerUnreachable,
    NoSuchMember,
    NotEnrolledError,
    ProxyError,
    ProxyNotInProfile,
    ProxyUnreachable,
    RecordIntegrityError,
    RecordStorageError,
    RecordTooLarge,
    RequestRejected,
    SdkError,
    UnknownProxy,
)
from ehrshare.storage import ContentNotFound, IntegrityError, StorageError, StorageUnavailable
from ehrshare.wallet import WalletError

CODES: list[tuple[type[errors.EhrshareError], int]] = [
    (SdkError, 1),
    (RequestRejected, 1),
    (AccessDenied, 1),
    (NoSuchMember, 1),
    (LedgerError, 1),
    (EndorseError, 1),
    (CommitError, 1),
    (proxy.NotAuthorised, 1),
    (kgc.NotAuthorised, 1),
    (UnknownProxy, 2),
    (InvalidName, 2),
    (ProfileError, 3),
    (BackendUnavailable, 3),
    (WalletError, 3),
    (ConsortiumError, 3),
    (NotEnrolledError, 3),
    (ProxyNotInProfile, 3),
    (LedgerCorrupt, 3),
    (LedgerUnreachable, 4),
    (EnrollmentError, 4),
    (RecordStorageError, 4),
    (ProxyError, 4),
    (ProxyUnreachable, 4),
    (StorageError, 4),
    (StorageUnavailable, 4),
    (FabricNetError, 4),
    (NetworkControlError, 4),
    (ServiceProcessError, 4),
    (proxy.ProxyUnavailable, 4),
    (kgc.KgcUnavailable, 4),
    (RecordIntegrityError, 5),
    (ContentNotFound, 5),
    (IntegrityError, 5),
    (FhirValidationError, 6),
    (UnknownRecordType, 6),
    (RecordTooLarge, 6),
]


@pytest.mark.parametrize(("cls", "code"), CODES, ids=[c.__name__ for c, _ in CODES])
def test_every_error_carries_its_exit_code(cls: type[errors.EhrshareError], code: int) -> None:
    assert issubclass(cls, errors.EhrshareError)
    assert cls.exit_code == code
    assert code in errors.EXIT_CODES


def test_module_families_keep_their_old_bases() -> None:
    # Code that caught ValueError or RuntimeError before still does.
    for cls in (ProfileError, WalletError, ConsortiumError, FhirValidationError, RecordTooLarge):
        assert issubclass(cls, ValueError)
    for cls in (FabricNetError, NetworkControlError, ServiceProcessError):
        assert issubclass(cls, RuntimeError)
    assert issubclass(RecordIntegrityError, RecordStorageError)
    assert issubclass(NoSuchMember, RequestRejected)
    assert issubclass(UnknownProxy, ProxyError)


def test_an_unreachable_ledger_error_exits_4() -> None:
    assert LedgerError("no peer answered", unreachable=True).exit_code == 4
    assert LedgerError("chaincode said no").exit_code == 1


def test_top_level_help_has_the_exit_code_table() -> None:
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "Exit codes:" in out
    for code in errors.EXIT_CODES:
        assert f"{code} " in out


def test_demo_and_records_use_the_same_table() -> None:
    from ehrshare.commands import demo

    # demo used to call "backend not available" EXIT_UNAVAILABLE = 3 while the records
    # commands meant "a service is down" by 4.
    assert not hasattr(demo, "EXIT_UNAVAILABLE")
    assert demo.EXIT_FAILED == errors.EXIT_REFUSED


def test_operations_doc_has_the_same_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text("utf-8")
    section = doc[doc.index("## 10. Exit codes") :]
    rows = {
        int(cells[0]): cells[1]
        for line in section.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
        if cells[0].isdigit()
    }
    assert rows == errors.EXIT_CODES


def test_the_root_is_importable_from_the_package() -> None:
    import ehrshare

    assert ehrshare.EhrshareError is errors.EhrshareError
    assert issubclass(ehrshare.SdkError, ehrshare.EhrshareError)
