"""One error root carrying the exit code: every family and module error maps to the table."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ehrshare import errors
from ehrshare.cli import app
from ehrshare.fhir import FhirValidationError, UnknownRecordType
from ehrshare.ledger.errors import CommitError, EndorseError, LedgerCorrupt, LedgerError
from ehrshare.network.control import NetworkControlError
from ehrshare.network.fabric import FabricNetError
from ehrshare.network.services import ServiceProcessError
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


def _sdk_sources() -> list[Path]:
    root = Path(errors.__file__).resolve().parent
    return sorted(p for p in root.rglob("*.py") if p.name != "errors.py" or p.parent != root)


def test_no_module_defines_its_own_exit_codes() -> None:
    # demo once called "backend not available" EXIT_UNAVAILABLE = 3 while the records commands
    # meant "a service is down" by 4: every code comes from ehrshare.errors, by name.
    found = []
    for path in _sdk_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            found += [
                f"{path.name}: {t.id}"
                for t in targets
                if isinstance(t, ast.Name) and t.id.startswith("EXIT_")
            ]
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Exit"
            ):
                args = [*node.args, *(k.value for k in node.keywords if k.arg == "code")]
                found += [
                    f"{path.name}:{node.lineno}: Exit({a.value})"
                    for a in args
                    if isinstance(a, ast.Constant)
                ]
    assert found == []


def test_operations_doc_has_the_same_table() -> None:
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


# The modules whose errors an app meets through connect() and Session: each of their errors is
# importable from the package itself, so an app catches them without reaching into modules.
_APP_FACING = (
    "ehrshare.session",
    "ehrshare.errors",
    "ehrshare.profile",
    "ehrshare.identity",
    "ehrshare.storage",
)


def _errors_defined_in(names: tuple[str, ...]) -> set[type[errors.EhrshareError]]:
    modules = [importlib.import_module(n) for n in names]
    for package in [m for m in modules if hasattr(m, "__path__")]:
        prefix = package.__name__ + "."
        modules += [
            importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, prefix)
        ]
    return {
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, errors.EhrshareError)
        and any(obj.__module__ == n or obj.__module__.startswith(n + ".") for n in names)
    }


def test_every_error_of_the_app_facing_modules_is_importable_from_the_package() -> None:
    import ehrshare

    found = _errors_defined_in(_APP_FACING)
    assert len(found) > 25
    missing = sorted(
        f"{cls.__module__}.{cls.__name__}"
        for cls in found
        if getattr(ehrshare, cls.__name__, None) is not cls
    )
    assert missing == []


def test_errors_a_session_lets_through_are_importable_from_the_package() -> None:
    import ehrshare

    for cls in (
        FhirValidationError,
        UnknownRecordType,
        LedgerError,
        LedgerCorrupt,
        ConsortiumError,
        InvalidName,
        LedgerUnreachable,
        ProxyUnreachable,
    ):
        assert getattr(ehrshare, cls.__name__) is cls


def test_each_public_name_is_listed_once_and_resolves() -> None:
    import ehrshare

    public = ehrshare.__all__
    assert len(public) == len(set(public))
    for name in public:
        assert getattr(ehrshare, name) is not None, name
    assert set(public) <= set(dir(ehrshare))
    star: dict[str, object] = {}
    exec("from ehrshare import *", star)
    assert set(public) <= set(star)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ehrshare.nope


def test_importing_the_package_imports_none_of_its_modules() -> None:
    # `ehrshare --help` and every `ehrshare.x` import pay for the package's __init__ first.
    code = (
        "import sys, ehrshare; print(sorted(m for m in sys.modules if m.startswith('ehrshare.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
