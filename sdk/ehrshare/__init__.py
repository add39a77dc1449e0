"""ehrshare: patient-controlled sharing of electronic health records.

Encrypted records live in a content-addressed store (IPFS, or an embedded
store by default); their pointers, the patients' access grants and an
operation log live on a Hyperledger Fabric channel (or an embedded ledger
running the same chaincode). The cryptography — identity-based, type-
conditional, multi-hop proxy re-encryption on BLS12-381 with a distributed
key generation centre — runs client-side in :mod:`ehrshare.hazmat`.

Hospital apps start with :func:`connect` (a profile and a wallet → :class:`Session`);
:class:`Consortium` sets up a local embedded consortium for development and demos.
Every error a :class:`Session` raises on purpose is importable from here and derives from
:class:`EhrshareError`, whose ``exit_code`` places it in one of six families.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The one list of public names. Type checkers read these imports (``X as X``: an explicit
# re-export); at run time none of them runs, so that ``import ehrshare`` stays cheap for the CLI:
# ``__getattr__`` below imports a name, on first use, from the module this block names for it.
if TYPE_CHECKING:
    from ehrshare.errors import ConfigurationError as ConfigurationError
    from ehrshare.errors import EhrshareError as EhrshareError
    from ehrshare.errors import IntegrityFailure as IntegrityFailure
    from ehrshare.errors import InvalidInput as InvalidInput
    from ehrshare.errors import Refused as Refused
    from ehrshare.errors import Unavailable as Unavailable
    from ehrshare.errors import UsageError as UsageError
    from ehrshare.fhir import FhirValidationError as FhirValidationError
    from ehrshare.fhir import UnknownRecordType as UnknownRecordType
    from ehrshare.ledger.errors import LedgerCorrupt as LedgerCorrupt
    from ehrshare.ledger.errors import LedgerError as LedgerError
    from ehrshare.ledger.errors import LedgerIntegrityError as LedgerIntegrityError
    from ehrshare.ledger.errors import OrderingKeyError as OrderingKeyError
    from ehrshare.profile import BackendUnavailable as BackendUnavailable
    from ehrshare.profile import Profile as Profile
    from ehrshare.profile import ProfileError as ProfileError
    from ehrshare.provisioning import Consortium as Consortium
    from ehrshare.provisioning import InvalidName as InvalidName
    from ehrshare.runtime import ConsortiumError as ConsortiumError
    from ehrshare.runtime import connect as connect
    from ehrshare.session import AccessDenied as AccessDenied
    from ehrshare.session import AuditTrail as AuditTrail
    from ehrshare.session import AuditVerification as AuditVerification
    from ehrshare.session import ClaimHeld as ClaimHeld
    from ehrshare.session import EmergencyKeyRefused as EmergencyKeyRefused
    from ehrshare.session import EnrollmentError as EnrollmentError
    from ehrshare.session import ForeignIdentity as ForeignIdentity
    from ehrshare.session import Grant as Grant
    from ehrshare.session import GrantNotServed as GrantNotServed
    from ehrshare.session import InvalidWrites as InvalidWrites
    from ehrshare.session import LedgerUnreachable as LedgerUnreachable
    from ehrshare.session import NoSuchMember as NoSuchMember
    from ehrshare.session import NotEnrolledError as NotEnrolledError
    from ehrshare.session import NotInEmergency as NotInEmergency
    from ehrshare.session import ProxyError as ProxyError
    from ehrshare.session import ProxyNotInProfile as ProxyNotInProfile
    from ehrshare.session import ProxyUnreachable as ProxyUnreachable
    from ehrshare.session import RecordIntegrityError as RecordIntegrityError
    from ehrshare.session import RecordRef as RecordRef
    from ehrshare.session import RecordStorageError as RecordStorageError
    from ehrshare.session import RecordTooLarge as RecordTooLarge
    from ehrshare.session import RecordTypeChanged as RecordTypeChanged
    from ehrshare.session import RecordWrite as RecordWrite
    from ehrshare.session import RequestRejected as RequestRejected
    from ehrshare.session import RotationUnfinished as RotationUnfinished
    from ehrshare.session import SdkError as SdkError
    from ehrshare.session import Session as Session
    from ehrshare.session import UnknownProxy as UnknownProxy
    from ehrshare.session import VersionConflict as VersionConflict
    from ehrshare.session import VersionNotReadable as VersionNotReadable
    from ehrshare.storage import ContentNotFound as ContentNotFound
    from ehrshare.storage import IntegrityError as IntegrityError
    from ehrshare.storage import StorageError as StorageError
    from ehrshare.storage import StorageUnavailable as StorageUnavailable
    from ehrshare.volumes import VolumeError as VolumeError
    from ehrshare.wallet import Wallet as Wallet
    from ehrshare.wallet import WalletError as WalletError


@functools.cache
def _origins() -> dict[str, str]:
    """Each public name → its module, read from the ``TYPE_CHECKING`` block of this file."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module is not None
        for alias in node.names
    }


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return ["__version__", *sorted(_origins())]
    module = _origins().get(name)
    if module is None:
        raise AttributeError(f"module 'ehrshare' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_origins()})
