"""Records: put a record (store first, then register), list them, and read one (request
access, the proxies of the grant chain in order, decrypt)."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fhir_core.fhirabstractmodel import FHIRAbstractModel

from ehrshare import crypto
from ehrshare.contract import Access, Grant, Page, RecordRef, StoredRecord
from ehrshare.contract.client import register_record_args
from ehrshare.faults import fault_point
from ehrshare.fhir import FhirValidationError, parse_resource, resource_bytes
from ehrshare.hazmat import tipre
from ehrshare.hazmat.errors import DecryptionError
from ehrshare.services.protocols import NoReKey, ProxyError, ProxyUnavailable
from ehrshare.session.core import _MAX_FALLBACK_GRANTS, _MAX_POINTERS, _PAGE, FORMAT_VERSION
from ehrshare.session.errors import (
    AccessDenied,
    ClaimHeld,
    GrantNotServed,
    InvalidWrites,
    ProxyUnreachable,
    RecordIntegrityError,
    RecordStorageError,
    RecordTooLarge,
    RecordTypeChanged,
    RequestRejected,
    SdkError,
    VersionConflict,
    VersionNotReadable,
)
from ehrshare.session.rotation import TypeKeyRotation
from ehrshare.storage import ContentNotFound, IntegrityError, StorageError, get_verified, sha256_hex

_log = logging.getLogger(__name__)

MAX_WRITES: Final = 100  # writes per write_records call: the chaincode's WriteRecords limit


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One write of :meth:`Records.write_records`: a new record of ``resource`` for ``patient``
    (yourself if you are the patient) when ``record_id`` is empty, else a new version of
    ``record_id`` (based on version ``if_version``, when given). ``type`` as for
    :meth:`Records.put_record`."""

    resource: FHIRAbstractModel | dict[str, Any] | str | bytes
    record_id: str = ""
    patient: str | None = None
    type: str | None = None
    if_version: int | None = None
    claim: str = ""  # a new record's claim (put_record's)


@dataclass(frozen=True, slots=True)
class _Planned:
    """A write checked and sealed, not yet stored: what its WriteRecords entry needs."""

    record_id: str
    owner: str
    label: str
    kind: str
    amend: bool
    if_version: int | None
    plaintext: bytes
    claim: str = ""


class Records(TypeKeyRotation):
    """A session's records: storing, listing and reading them."""

    def put_record(
        self,
        resource: FHIRAbstractModel | dict[str, Any] | str | bytes,
        *,
        patient: str | None = None,
        type: str | None = None,
        claim: str = "",
    ) -> RecordRef:
        """Encrypt a FHIR R4 resource for ``patient`` (yourself if you are the patient) and
        register it. The type comes from the resource's ``meta.security`` and category (see
        :class:`~ehrshare.fhir.TypeMapping`); ``type=`` names it for resources no rule covers.
        ``claim`` (:meth:`~ehrshare.fhir.TypeLabels.claim`, a conditional create's) is taken
        for the patient in the same transaction: if a record of hers holds it,
        :class:`ClaimHeld` and nothing is registered.

        Raises FhirValidationError, UnknownRecordType, RecordTooLarge, RecordStorageError (then
        nothing is on chain) or RequestRejected.
        """
        model, plaintext = self._plaintext(resource)
        type_name = self.mapping.resolve(model, type)
        label = self.labels.opaque(type_name)
        kind = self.labels.kind(model.get_resource_type())
        owner = patient or self.ibe_id
        record_id = "r-" + secrets.token_hex(16)

        def register(cid: str, digest: str, capsule: bytes, type_epoch: int) -> StoredRecord:
            try:
                return self.chain.register_record(
                    record_id=record_id,
                    owner=owner,
                    label=label,
                    cid=cid,
                    sha256=digest,
                    capsule=capsule,
                    format_version=FORMAT_VERSION,
                    type_epoch=type_epoch,
                    kind=kind,
                    claim=claim,
                )
            except RequestRejected as exc:
                raise _claim_held(exc, "", owner, claim) from None

        record = self._seal_and_register(
            "put",
            record_id=record_id,
            owner=owner,
            label=label,
            plaintext=plaintext,
            store_failed=lambda exc: (
                f"could not store the encrypted record ({exc}); nothing was registered on chain"
                " — check that the content store (Kubo daemon) is running and retry"
            ),
            register=register,
        )
        _log.info("registered record %s (%s) for %s", record_id, type_name, owner)
        return record.ref

    def amend_record(
        self,
        record_id: str,
        resource: FHIRAbstractModel | dict[str, Any] | str | bytes,
        *,
        type: str | None = None,
        if_version: int | None = None,
    ) -> RecordRef:
        """Store ``resource`` as a new version of a record (its owner or creator may): encrypted
        as :meth:`put_record` does, for the record's owner, and registered with AmendRecord;
        older versions stay. The record type must stay the record's (else
        :class:`RecordTypeChanged`, nothing stored). ``if_version``: the version this one is
        based on; if the record is at another (checked before storing, and again by the
        chaincode in the same transaction as the write), :class:`VersionConflict`, nothing
        registered.

        Raises as :meth:`put_record` does; a crash between the store and the ledger leaves an
        unreferenced ciphertext ('ehrshare store gc') and the previous version current.
        """
        model, plaintext = self._plaintext(resource)
        current = self.get_record(record_id)
        if if_version is not None and current.version != if_version:
            raise VersionConflict(
                "AmendRecord",
                f"record {record_id} is at version {current.version}, not {if_version}",
            )
        type_name = self.mapping.resolve(model, type)
        label = self.labels.opaque(type_name)
        if label != current.label:
            raise RecordTypeChanged(
                f"record {record_id} is of type {current.type or 'unknown'}; a new version of "
                f"type {type_name} would change it (store it as a new record instead)"
            )
        self._check_kind(current, model)

        def register(cid: str, digest: str, capsule: bytes, type_epoch: int) -> StoredRecord:
            try:
                return self.chain.amend_record(
                    record_id=record_id,
                    cid=cid,
                    sha256=digest,
                    capsule=capsule,
                    format_version=FORMAT_VERSION,
                    type_epoch=type_epoch,
                    expected_version=if_version,
                )
            except RequestRejected as exc:  # the chaincode's own version check, same tx
                if if_version is not None and exc.reason.startswith(f"record {record_id} is at "):
                    raise VersionConflict(exc.function, exc.reason, exc.transaction_id) from None
                raise

        record = self._seal_and_register(
            "amend",
            record_id=record_id,
            owner=current.owner,
            label=label,
            plaintext=plaintext,
            store_failed=lambda exc: (
                f"could not store the new version of record {record_id} ({exc}); nothing was "
                "registered on chain — check that the content store is running and retry"
            ),
            register=register,
        )
        _log.info("registered version %d of record %s", record.ref.version, record_id)
        return record.ref

    def write_records(self, writes: Sequence[RecordWrite]) -> list[RecordRef]:
        """Store several new records and new versions in ONE ledger transaction (the
        chaincode's WriteRecords): every one is registered, or none is.

        First each write is checked as :meth:`put_record` and :meth:`amend_record` check it
        (valid FHIR, the record type, the size; for a version the record, its type and
        ``if_version``), nothing stored yet; then every ciphertext is stored and read back;
        then one transaction registers them all, with the chaincode checking each again. A
        refused transaction releases the ciphertexts (:class:`VersionConflict` if a version
        moved on meanwhile); a crash before it commits leaves ciphertexts that no pointer
        names, unreadable by anyone and removed by ``ehrshare store gc``. Returns the new
        pointers in the order of ``writes``.
        """
        if not writes:
            raise InvalidWrites("write_records needs at least one write")
        if len(writes) > MAX_WRITES:
            raise InvalidWrites(f"at most {MAX_WRITES} writes per transaction, got {len(writes)}")
        planned: list[_Planned] = []
        for w in writes:
            model, plaintext = self._plaintext(w.resource)
            type_name = self.mapping.resolve(model, w.type)
            label = self.labels.opaque(type_name)
            kind = self.labels.kind(model.get_resource_type())
            if not w.record_id:
                record_id = "r-" + secrets.token_hex(16)
                owner = w.patient or self.ibe_id
                planned.append(
                    _Planned(record_id, owner, label, kind, False, None, plaintext, w.claim)
                )
                continue
            current = self.get_record(w.record_id)
            if w.if_version is not None and current.version != w.if_version:
                raise VersionConflict(
                    "WriteRecords",
                    f"record {w.record_id} is at version {current.version}, not {w.if_version}",
                )
            if label != current.label:
                raise RecordTypeChanged(
                    f"record {w.record_id} is of type {current.type or 'unknown'}; a new "
                    f"version of type {type_name} would change it (store it as a new record "
                    "instead)"
                )
            self._check_kind(current, model)
            planned.append(
                _Planned(w.record_id, current.owner, label, kind, True, w.if_version, plaintext)
            )
        if len({p.record_id for p in planned}) != len(planned):
            raise InvalidWrites("write_records writes each record at most once")
        # Every sealing key before anything is stored: a missing key stores nothing.
        keys = [self._sealing_key(p.owner, p.label, finish=self._finish_pending) for p in planned]
        calls: list[tuple[str, ...]] = []
        stored: list[str] = []
        try:
            for p, (owner_key, type_epoch) in zip(planned, keys, strict=True):
                capsule, sealed = crypto.encrypt_record(
                    p.plaintext, owner_key=owner_key, record_id=p.record_id
                )
                digest = sha256_hex(sealed)
                try:
                    cid = self.store.put(sealed)
                    stored.append(cid)
                    get_verified(self.store, cid, digest)
                except StorageError as exc:
                    raise RecordStorageError(
                        f"could not store the encrypted record {p.record_id} ({exc}); nothing "
                        "was registered on chain — check that the content store (Kubo daemon) "
                        "is running and retry"
                    ) from None
                if p.amend:
                    calls.append(
                        (
                            "AmendRecord",
                            p.record_id,
                            cid,
                            digest,
                            base64.b64encode(capsule).decode(),
                            FORMAT_VERSION,
                            str(type_epoch),
                            "" if p.if_version is None else str(p.if_version),
                        )
                    )
                else:
                    calls.append(
                        (
                            "RegisterRecord",
                            *register_record_args(
                                record_id=p.record_id,
                                owner=p.owner,
                                label=p.label,
                                cid=cid,
                                sha256=digest,
                                capsule=capsule,
                                format_version=FORMAT_VERSION,
                                type_epoch=type_epoch,
                                kind=p.kind,
                                claim=p.claim,
                            ),
                        )
                    )
            # A crash here leaves ciphertexts no pointer names: 'ehrshare store gc' removes them.
            fault_point("write_records.after_store")
            try:
                records = self.chain.write_records(calls)
            except RequestRejected as exc:
                raise self._write_conflict(exc, planned) from None
        except (RequestRejected, RecordStorageError):
            for cid in stored:
                try:
                    self.store.unpin(cid)
                except StorageError:
                    _log.warning("could not release unregistered ciphertext %s", cid)
            raise
        fault_point("write_records.after_register")
        _log.info("registered %d records and versions in one transaction", len(records))
        return [r.ref for r in records]

    @staticmethod
    def _write_conflict(exc: RequestRejected, planned: Sequence[_Planned]) -> RequestRejected:
        """The chaincode's own If-Match refusal of write N as :class:`VersionConflict`, its
        refusal of a held claim as :class:`ClaimHeld`."""
        for i, p in enumerate(planned):
            if p.claim:
                held = _claim_held(exc, f"write {i}: ", p.owner, p.claim)
                if held is not exc:
                    return held
            if p.if_version is not None and exc.reason.startswith(
                f"write {i}: record {p.record_id} is at "
            ):
                return VersionConflict(exc.function, exc.reason, exc.transaction_id)
        return exc

    def find_claim(self, owner: str, claim: str) -> tuple[str, RecordRef | None]:
        """Which record of ``owner`` holds ``claim`` (``""``: none), and its pointer if you
        may read it (None: you may not, or none holds it). The patient and clinicians ask."""
        record_id, stored = self.chain.find_claim(owner, claim)
        return record_id, None if stored is None else stored.ref

    def _check_kind(self, current: RecordRef, model: FHIRAbstractModel) -> None:
        """A new version keeps the record's resourceType (where its pointer names one)."""
        rtype = model.get_resource_type()
        if current.kind and current.kind != self.labels.kind(rtype):
            raise RecordTypeChanged(
                f"record {current.record_id} is not a {rtype}; a new version must be of the "
                "record's own resource type (store it as a new record instead)"
            )

    def _plaintext(
        self, resource: FHIRAbstractModel | dict[str, Any] | str | bytes
    ) -> tuple[FHIRAbstractModel, bytes]:
        """The parsed resource and the bytes a record of it seals, within the size limit."""
        model = parse_resource(resource)
        plaintext = resource_bytes(model)
        if len(plaintext) > self.max_record_bytes:
            raise RecordTooLarge(
                f"record is {len(plaintext)} bytes; this profile's limit is "
                f"{self.max_record_bytes} (limits.max_record_bytes)"
            )
        return model, plaintext

    def _seal_and_register(
        self,
        step: str,
        *,
        record_id: str,
        owner: str,
        label: str,
        plaintext: bytes,
        store_failed: Callable[[StorageError], str],
        register: Callable[[str, str, bytes, int], StoredRecord],
    ) -> StoredRecord:
        """Seal ``plaintext`` to the owner's current type key, store it and read it back, then
        ``register(cid, sha256, capsule, type_epoch)`` on chain; a refused registration
        releases the ciphertext. ``step`` names the fault points (``<step>.after_store``,
        ``<step>.after_register``); ``store_failed`` words a storage failure."""
        owner_key, type_epoch = self._sealing_key(owner, label, finish=self._finish_pending)
        capsule, sealed = crypto.encrypt_record(plaintext, owner_key=owner_key, record_id=record_id)
        digest = sha256_hex(sealed)
        try:
            cid = self.store.put(sealed)
            get_verified(self.store, cid, digest)
        except StorageError as exc:
            raise RecordStorageError(store_failed(exc)) from None
        # A crash here leaves an unreferenced ciphertext: 'ehrshare store gc' removes it.
        fault_point(f"{step}.after_store")
        try:
            record = register(cid, digest, capsule, type_epoch)
        except RequestRejected:
            try:
                self.store.unpin(cid)
            except StorageError:
                _log.warning("could not release unregistered ciphertext %s", cid)
            raise
        fault_point(f"{step}.after_register")
        return record

    def _finish_pending(self, label: str) -> None:
        """Finish the rotation of ``label`` a revocation began and could not finish (killed
        between its commit and the new key): the owner's write holds the keys, so it heals
        that state instead of being refused."""
        rotation = self._finish_rotation(label)
        _log.info("finished type %s's rotation to epoch %d", rotation.type, rotation.type_epoch)
        for grant_id, why in rotation.failed.items():
            _log.warning("grant %s not re-keyed yet ('ehrshare grant repair'): %s", grant_id, why)

    def list_records(self, patient: str | None = None) -> list[RecordRef]:
        """Every record of a patient (yourself by default; others need the auditor role)."""
        owner = patient or self.ibe_id
        pages = self._pages(
            lambda bookmark: self.chain.list_records(owner, page_size=_PAGE, bookmark=bookmark)
        )
        return [record.ref for record in pages]

    def granted_records(self) -> list[tuple[RecordRef, Grant]]:
        """The records you may read now under grants you hold (as a clinician), each with the
        grant that lets you: every active, unexpired grant whose chain is still valid, and the
        owner's records of its type. A record two grants cover is listed once."""
        now = self._now()
        seen: set[str] = set()
        out: list[tuple[RecordRef, Grant]] = []
        for grant in self.grants("grantee"):
            if grant.state != "active" or grant.expiry <= now:
                continue
            try:
                pages = self._pages(functools.partial(self._granted, grant.grant_id), sparse=True)
                for record in pages:
                    if record.ref.record_id not in seen:
                        seen.add(record.ref.record_id)
                        out.append((record.ref, grant))
            except RequestRejected:
                continue  # a grant up its chain was revoked or expired since it was listed
        return out

    def _granted(self, grant_id: str, bookmark: str) -> Page[StoredRecord]:
        return self.chain.list_granted_records(grant_id, page_size=_PAGE, bookmark=bookmark)

    def read_record(
        self,
        ref: RecordRef | str,
        *,
        grant: Grant | str | None = None,
    ) -> FHIRAbstractModel:
        """Read and decrypt a record you own or were granted.

        Raises as :meth:`open_record` does, which also returns the version's pointer.
        """
        return self.open_record(ref, grant=grant)[1]

    def open_record(
        self,
        ref: RecordRef | str,
        *,
        grant: Grant | str | None = None,
        version: int | None = None,
    ) -> tuple[RecordRef, FHIRAbstractModel]:
        """Read and decrypt a record you own or were granted; returns the pointer of the
        version read (its version, creator, time) with the resource.

        ``version`` reads an older version: its owner may (the access is decided and logged
        for the record as any read); a grantee may read only the current version
        (:class:`VersionNotReadable` otherwise, after the logged decision), since the proxies
        re-encrypt only the capsule the decision approved.

        Submits RequestAccess (logged either way); only after an allow decision has committed
        do the proxies of the grant chain re-encrypt the capsule, in chain order. ``grant``
        names the grant to read under when you hold several (their re-keys may sit at
        different proxies). Raises :class:`AccessDenied` on a denial, and
        :class:`RecordIntegrityError` when the ciphertext is missing, altered or does not
        decrypt.
        """
        ref_read, plaintext = self._open_plain(ref, grant, version)
        return ref_read, self._validated(ref_read, plaintext)

    def open_record_json(
        self,
        ref: RecordRef | str,
        *,
        grant: Grant | str | None = None,
        version: int | None = None,
    ) -> tuple[RecordRef, dict[str, Any]]:
        """:meth:`open_record` for callers that answer JSON (the FHIR server): the resource is
        validated exactly as there, and returned as the stored canonical JSON, parsed, rather
        than as a model — dumping a model again costs more than the rest of an owner's read.
        """
        ref_read, plaintext = self._open_plain(ref, grant, version)
        self._validated(ref_read, plaintext)
        data: dict[str, Any] = json.loads(plaintext)
        return ref_read, data

    def _open_plain(
        self, ref: RecordRef | str, grant: Grant | str | None, version: int | None
    ) -> tuple[RecordRef, bytes]:
        record_id = ref.record_id if isinstance(ref, RecordRef) else ref
        grant_id = "" if grant is None else grant.grant_id if isinstance(grant, Grant) else grant
        # A pointer names the record's owner and label: hints that save the chaincode round
        # trips on a Fabric >= 3.1 peer (request_access_args); a bare id sends those of a
        # pointer this session saw before, or none.
        if isinstance(ref, RecordRef):
            self._remember_pointer(ref)
        hints = self._pointers.get(record_id, ("", ""))
        try:
            return self._read_plain(record_id, grant_id, version, hints=hints)
        except GrantNotServed as first:
            if grant_id:
                raise
            # The chaincode picked a grant whose proxy cannot serve it; another grant of
            # yours covering the record may be fine (e.g. the patient granted again).
            tried = set(first.grant_ids)
            for other in self._covering_grants(record_id):
                if other.grant_id in tried:
                    continue
                tried.add(other.grant_id)
                try:
                    return self._read_plain(
                        record_id, other.grant_id, version, hints=(other.owner, other.label)
                    )
                except (GrantNotServed, AccessDenied):
                    continue
            raise

    def _remember_pointer(self, ref: RecordRef) -> None:
        """Keep ``ref``'s owner and label for RequestAccess's hints (at most
        :data:`_MAX_POINTERS`, the oldest dropped first)."""
        if ref.record_id not in self._pointers and len(self._pointers) >= _MAX_POINTERS:
            with contextlib.suppress(RuntimeError, StopIteration, KeyError):  # another thread
                del self._pointers[next(iter(self._pointers))]
        self._pointers[ref.record_id] = (ref.owner, ref.label)

    def _validated(self, ref: RecordRef, plaintext: bytes) -> FHIRAbstractModel:
        """The decrypted resource, checked as FHIR and against the pointer's kind."""
        try:
            model = parse_resource(plaintext)
        except FhirValidationError as exc:
            raise SdkError(f"record {ref.record_id} decrypted to invalid FHIR: {exc}") from None
        self._check_read_kind(ref, model.get_resource_type())
        return model

    def _covering_grants(self, record_id: str) -> list[Grant]:
        """Your active, unexpired grants that cover ``record_id`` (at most a few)."""
        record = self.get_record(record_id)
        now = self._now()
        return [
            g
            for g in self.grants("grantee")
            if g.owner == record.owner
            and g.label == record.label
            and g.state == "active"
            and g.expiry > now
        ][:_MAX_FALLBACK_GRANTS]

    def _read(
        self,
        record_id: str,
        grant_id: str,
        version: int | None = None,
        with_keys: Callable[[], Sequence[tipre.IdentitySecretKey]] | None = None,
        hints: tuple[str, str] = ("", ""),
    ) -> tuple[RecordRef, FHIRAbstractModel]:
        ref, plaintext = self._read_plain(record_id, grant_id, version, with_keys, hints)
        return ref, self._validated(ref, plaintext)

    def _check_read_kind(self, ref: RecordRef, resource_type: str) -> None:
        """A pointer's kind must name the resourceType it decrypted to (every version is
        registered with it): else the pointer was edited, an integrity failure as an edited
        type label (no capsule opens) or cid (no such content) is."""
        if ref.kind and ref.kind != self.labels.kind(resource_type):
            raise RecordIntegrityError(
                f"record {ref.record_id} version {ref.version}: its pointer's kind "
                f"{ref.kind} does not name the resourceType its content decrypted to "
                f"({resource_type}); the pointer was edited: run 'ehrshare ledger verify'"
            )

    def _read_plain(
        self,
        record_id: str,
        grant_id: str,
        version: int | None = None,
        with_keys: Callable[[], Sequence[tipre.IdentitySecretKey]] | None = None,
        hints: tuple[str, str] = ("", ""),
    ) -> tuple[RecordRef, bytes]:
        """The decrypted bytes of a version, not yet validated as FHIR. ``hints``: the
        record's owner and label when known (RequestAccess's hints), else empty."""
        # ``with_keys``: after an allow, the keys to open the re-encrypted capsule with instead
        # of the member's own (an emergency read: the emergency identity's key, emergency.py).
        # No per-record serialisation: each RequestAccess commits its own approval, keyed by
        # its access id, so concurrent reads of one record do not supersede each other.
        if self._sk is None:
            self._secret_key()  # says how to enrol
        access = self.chain.request_access(record_id, grant_id, owner=hints[0], label=hints[1])
        if not access.allowed:
            raise AccessDenied(record_id, self._humanise(access.reason), access.access_id)
        wanted = access.record_version if version is None else version
        if wanted != access.record_version and access.grant_id != "owner":
            raise VersionNotReadable(
                f"version {wanted} of record {record_id} is not its current version "
                f"({access.record_version}); a grant lets its grantee read the current version "
                "only"
            )
        record = access.record
        if record is not None:
            self._remember_pointer(record.ref)
        if record is None or record.ref.version != wanted:
            record = self.chain.get_record(record_id, wanted)
        owner, label = record.ref.owner, record.ref.label
        # Opened with the key of the record's master key (a grant's chain is of that epoch
        # too: the chain refuses grants of another); a record from before epochs has none and
        # is of the current key (the chain refused new DKGs once records existed).
        keys = (
            list(with_keys())
            if with_keys is not None
            else self._keys_for(record_id, self.epoch if record.epoch is None else record.epoch)
        )
        capsule = record.capsule
        # The owner opens with the key of the record's type-key epoch; a grantee's layer is
        # sealed to its epoch-0 type key, whatever the owner's epoch (docs/security.md §3.2).
        type_epoch = record.type_epoch if access.grant_id == "owner" else 0
        if access.grant_id != "owner":
            capsule = self._reencrypt_along(access, capsule)
        try:
            sealed = get_verified(self.store, record.ref.cid, record.ref.sha256)
        except (ContentNotFound, IntegrityError) as exc:
            raise RecordIntegrityError(f"could not read record {record_id}: {exc}") from None
        except StorageError as exc:
            raise RecordStorageError(f"could not read record {record_id}: {exc}") from None
        plaintext = b""
        for i, sk in enumerate(keys):
            receiving = (
                self._type_secret(sk, label, type_epoch)
                if sk is self._sk
                else sk.type_secret(label, type_epoch)
            )
            try:
                plaintext = crypto.decrypt_record(
                    sealed,
                    capsule=capsule,
                    owner=owner,
                    type_label=label,
                    record_id=record_id,
                    receiving_sk=receiving,
                )
                break
            except (DecryptionError, ValueError) as exc:
                if i == len(keys) - 1:
                    raise RecordIntegrityError(
                        f"record {record_id} could not be decrypted: {exc}"
                    ) from None
        return record.ref, plaintext

    def _reencrypt_along(self, access: Access, capsule: bytes) -> bytes:
        """Visit each run of consecutive hops' proxy in chain order with the capsule so far
        (hops in a row at one proxy are one visit: that proxy applies them all)."""
        record_id, access_id = access.record_id, access.access_id
        runs: list[tuple[str, list[str]]] = []  # (proxy, grant ids of its hops), chain order
        for hop in access.chain:
            proxy, grant_id = hop.proxy, hop.grant_id
            if runs and runs[-1][0] == proxy:
                runs[-1][1].append(grant_id)
            else:
                runs.append((proxy, [grant_id]))
        for proxy, grant_ids in runs:
            route = self._route(proxy)
            held = f"grant{'s' if len(grant_ids) > 1 else ''} {', '.join(grant_ids)}"
            try:
                # The capsule is sent along for proxies that may not read record pointers; a
                # proxy that can read them refuses a capsule that is not the record's own, and a
                # later hop's proxy refuses one the previous proxy did not report on chain.
                capsule = route.client.reencrypt(
                    record_id=record_id,
                    requester=self.ibe_id,
                    approval_id=access_id,
                    grant_id=access.grant_id,
                    capsule=capsule,
                )
            except SdkError:
                raise
            except NoReKey as exc:
                raise GrantNotServed(
                    f"the re-encryption proxy of hospital {route.msp_id} ({proxy}) holds no "
                    f"re-key for {held}, so record {record_id} cannot be read under it ({exc}); "
                    "this does not heal by waiting: the grantor can deliver it again with "
                    f"'ehrshare grant repair {grant_ids[-1]}', or revoke the grant",
                    grant_ids=grant_ids,
                    proxy=proxy,
                ) from None
            except (ProxyUnavailable, ConnectionError) as exc:
                raise ProxyUnreachable(
                    f"the re-encryption proxy of hospital {route.msp_id} ({proxy}) is "
                    f"unreachable; it holds the re-key of {held}, so record {record_id} cannot "
                    f"be read under access {access_id} ({exc}); the request is logged — read "
                    "again once that proxy is back",
                    proxy=proxy,
                    msp_id=route.msp_id,
                    grant_ids=grant_ids,
                    access_id=access_id,
                ) from None
            except Exception as exc:
                raise ProxyError(
                    f"the re-encryption proxy of hospital {route.msp_id} ({proxy}, holding "
                    f"{held}) could not serve record {record_id}: {exc}"
                ) from None
        return capsule


def _claim_held(exc: RequestRejected, prefix: str, owner: str, claim: str) -> RequestRejected:
    """The chaincode's refusal of ``claim`` (held by another record) as :class:`ClaimHeld`;
    any other refusal as it is. ``prefix``: ``write N: `` for one write of WriteRecords."""
    held = f"{prefix}claim {claim} of {owner} is held by record "
    if not claim or not exc.reason.startswith(held):
        return exc
    return ClaimHeld(exc.function, exc.reason, exc.transaction_id, exc.reason[len(held) :])
