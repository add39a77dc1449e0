"""The FHIR gateway's record writes — create (conditional or not), update, ``transaction``
Bundles — and what they share with its reads: the base class of
:class:`~ehrshare.fhirapi.gateway.Gateway`, kept apart so that neither module grows past
the project's module size. Like the gateway, this module must not parse HTTP.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class

from ehrshare.contract import RecordRef
from ehrshare.errors import EhrshareError, InvalidInput
from ehrshare.fhir import MAX_DEPTH, FhirValidationError, parse_resource, resource_bytes
from ehrshare.fhirapi.conditional import Condition, parse_condition
from ehrshare.fhirapi.members import member_from_reference
from ehrshare.fhirapi.outcome import FhirError, outcome_for
from ehrshare.fhirapi.transaction import Entry, parse_transaction
from ehrshare.jsontext import too_deep
from ehrshare.session import (
    AccessDenied,
    ClaimHeld,
    NoSuchMember,
    RecordStorageError,
    RecordTooLarge,
    RecordWrite,
    RequestRejected,
    Session,
)

__all__ = ["NOT_RECORDS", "Answer", "RecordWrites", "instant", "resource_type", "with_validators"]

_log = logging.getLogger(__name__)

# Resource types the server answers itself: never stored as records.
NOT_RECORDS: Final = frozenset(
    {"Consent", "AuditEvent", "Provenance", "CapabilityStatement", "OperationOutcome", "Bundle"}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, FHIR JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def instant(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat().replace("+00:00", "Z")


def with_validators(answer: Answer) -> Answer:
    """``answer`` (a record version) with its ETag and Last-Modified headers, from meta."""
    meta = answer.body.get("meta") or {}
    headers = dict(answer.headers)
    headers["ETag"] = f'W/"{meta["versionId"]}"'
    when = _dt.datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    headers["Last-Modified"] = email.utils.format_datetime(when, usegmt=True)
    return Answer(answer.status, answer.body, headers)


def resource_type(name: str) -> str:
    """``name`` if it is a FHIR R4 resource type; else 404 (FHIR's answer for an unknown type)."""
    try:
        cls = get_fhir_model_class(name)
    except (ValueError, KeyError):
        cls = None
    if cls is None or name in ("Resource", "DomainResource") or not name[:1].isupper():
        raise FhirError(404, f"{name!r} is not a FHIR R4 resource type")
    return name


class RecordWrites:
    """Record writes and the record helpers the gateway's reads use too."""

    _roles: dict[str, str]  # the caller's role per member id (set by the gateway)

    # --- records ---------------------------------------------------------------------------

    @staticmethod
    def _load(body: bytes, expected: str) -> dict[str, Any]:
        """The body as a JSON object of resourceType ``expected`` (not yet validated as FHIR)."""
        data = _json_body(body)
        if not isinstance(data, dict):
            raise FhirError(400, "the request body must be a JSON object (a FHIR resource)")
        if data.get("resourceType") != expected:
            raise FhirError(
                400,
                f"the body's resourceType {data.get('resourceType')!r} does not match the URL's "
                f"{expected!r}",
            )
        return data

    @classmethod
    def _parse(cls, body: bytes, expected: str) -> dict[str, Any]:
        """The body validated as a FHIR R4 resource of type ``expected``, as JSON."""
        data = cls._load(body, expected)
        try:
            parsed = parse_resource(data)
        except FhirValidationError as exc:
            raise FhirError(400, str(exc)) from None
        out: dict[str, Any] = json.loads(parsed.model_dump_json(exclude_none=True))
        return out

    def _role(self, session: Session) -> str:
        """The caller's role on chain (fixed by its certificate: asked once per session)."""
        role = self._roles.get(session.ibe_id)
        if role is None:
            role = self._roles[session.ibe_id] = session.role()
        return role

    def _patient_of(self, session: Session, resource: dict[str, Any]) -> str:
        """Whose record a new resource is: its subject/patient when that names a member, else
        the caller if a patient."""
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict):
                try:
                    return member_from_reference(ref, key)
                except FhirError:
                    continue
        if self._role(session) == "patient":
            return session.ibe_id
        raise FhirError(
            422,
            "name the patient: subject (or patient) as identifier "
            "{system: urn:ehrshare:member, value: HospitalAMSP/alice}",
        )

    def _create(
        self, session: Session, rtype: str, body: bytes, base_url: str, if_none_exist: str | None
    ) -> Answer:
        condition = None
        if if_none_exist is not None:  # checked first: a bad one is 400 whatever the body
            condition = parse_condition(rtype, if_none_exist, "If-None-Exist")
        resource = self._load(body, rtype)
        patient = self._patient_of(session, resource)
        resource.pop("id", None)  # the server names records (FHIR create ignores a given id)
        claim = ""
        if condition is not None:
            try:
                parse_resource(resource)  # a bad body is 400 even when a match exists
            except FhirValidationError as exc:
                raise FhirError(400, str(exc)) from None
            claim = self._claim(session, condition, patient)
            where = "If-None-Exist"
            # The record holding the claim, and those without claims (older, unconditional)
            # found as before: one is the match, several 412.
            held = self._held(session, condition, patient, claim, where)
            found = self._existing(session, condition, patient, where, held)
            if found is not None:  # FHIR: nothing created, 200 with the match
                return self._matched(found, base_url)
        try:
            ref = session.put_record(resource, patient=patient, claim=claim)  # validates, once
        except FhirValidationError as exc:
            raise FhirError(400, str(exc)) from None
        except NoSuchMember as exc:
            raise FhirError(422, str(exc)) from None
        except ClaimHeld:  # created meanwhile (another gateway, another member): the winner
            assert condition is not None
            held = self._held(session, condition, patient, claim, "If-None-Exist")
            if held is None:
                raise
            found = self._existing(session, condition, patient, "If-None-Exist", held)
            return self._matched(found or held, base_url)
        out = self._with_meta(resource, ref)
        location = f"{base_url}/{rtype}/{ref.record_id}/_history/{ref.version}"
        return with_validators(Answer(201, out, {"Location": location}))

    @staticmethod
    def _matched(found: dict[str, Any], base_url: str) -> Answer:
        """A conditional create's answer when a record matched: 200 with it."""
        rtype, rid, version = found["resourceType"], found["id"], found["meta"]["versionId"]
        location = f"{base_url}/{rtype}/{rid}/_history/{version}"
        return with_validators(Answer(200, found, {"Location": location}))

    @staticmethod
    def _claim(session: Session, condition: Condition, patient: str) -> str:
        """The on-chain claim a create under ``condition`` takes ("" for a condition that
        claims nothing: :meth:`~ehrshare.fhirapi.conditional.Condition.claimed_identifier`)."""
        token = condition.claimed_identifier()
        if token is None:
            return ""
        return session.labels.claim(patient, condition.resource_type, *token)

    def _held(
        self, session: Session, condition: Condition, patient: str, claim: str, where: str
    ) -> dict[str, Any] | None:
        """The record (with meta) holding ``claim`` on chain, None when none does; 412 when
        one the caller may not read does (nothing is written: it exists, and FHIR's answer
        for a condition the server will not resolve to a record is 412)."""
        if not claim:
            return None
        record_id, ref = session.find_claim(patient, claim)
        if not record_id:
            return None
        refused = FhirError(
            412,
            f"{where} {condition.text!r}: a {condition.resource_type} record of {patient} was "
            "created under this condition and you may not read it; nothing was written",
        )
        if ref is None:
            raise refused
        try:
            read, data = session.open_record_json(ref)
        except AccessDenied:  # its creator without a grant sees the pointer, not the record
            raise refused from None
        return self._with_meta(data, read)

    @staticmethod
    def _with_meta(resource: dict[str, Any], ref: RecordRef) -> dict[str, Any]:
        out = dict(resource)
        out["id"] = ref.record_id
        meta = dict(out.get("meta") or {})
        meta["versionId"] = str(ref.version)
        meta["lastUpdated"] = instant(ref.updated_at or ref.created_at)
        out["meta"] = meta
        return out

    def _checked_update(
        self,
        session: Session,
        rtype: str,
        rid: str,
        resource: dict[str, Any],
        expected: int | None = None,
    ) -> dict[str, Any]:
        """``resource`` (a PUT's body, as JSON) checked as a new version of record ``rid``:
        valid FHIR, the record the caller's to amend (and at version ``expected``, when
        given), of the same type and patient, not too large. Nothing is written. Returns the
        resource to store (without its id)."""
        current = session.get_record(rid)  # unknown: 404; not the caller's to see: 403
        if session.ibe_id not in (current.owner, current.creator):
            raise FhirError(
                403, f"{session.ibe_id} may not update {rtype}/{rid}: only its owner or creator"
            )
        if expected is not None and current.version != expected:
            raise FhirError(
                412, f"record {rid} is at version {current.version}, not {expected} (If-Match)"
            )
        if current.kind and current.kind != session.labels.kind(rtype):
            raise FhirError(
                422, f"record {rid} is not a {rtype}: a new version keeps the resource's type"
            )
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict):
                try:
                    named = member_from_reference(ref, key)
                except FhirError:
                    continue
                if named != current.owner:
                    raise FhirError(
                        422,
                        f"{rtype}/{rid} is {current.owner}'s; an update cannot move it to {named}",
                    )
        body = {k: v for k, v in resource.items() if k != "id"}
        try:
            model = parse_resource(body)
        except FhirValidationError as exc:
            raise FhirError(400, str(exc)) from None
        size = len(resource_bytes(model))
        if size > session.max_record_bytes:
            raise RecordTooLarge(
                f"record is {size} bytes; this profile's limit is {session.max_record_bytes}"
            )
        if session.labels.opaque(session.mapping.resolve(model)) != current.label:
            raise FhirError(
                422,
                f"{rtype}/{rid} is of record type {current.type or 'unknown'}; this version "
                "would change it (store it as a new resource instead)",
            )
        return body

    def _update(
        self,
        session: Session,
        rtype: str,
        rid: str,
        body: bytes,
        base_url: str,
        expected: int | None = None,
    ) -> Answer:
        """``PUT [base]/{type}/{id}``: a new version of a record (no update-as-create); with
        ``expected`` (If-Match) only if the record is still at that version (else 412)."""
        resource = self._load(body, rtype)
        if resource.get("id") != rid:
            raise FhirError(400, f"the body's id {resource.get('id')!r} must be the URL's {rid!r}")
        stored = self._checked_update(session, rtype, rid, resource, expected)
        try:
            # The chaincode checks the version again in the write's own transaction, so a
            # concurrent update between this check and the write is refused too (412).
            ref = session.amend_record(rid, stored, if_version=expected)
        except FhirValidationError as exc:
            raise FhirError(400, str(exc)) from None
        location = f"{base_url}/{rtype}/{rid}/_history/{ref.version}"
        return with_validators(Answer(200, self._with_meta(stored, ref), {"Location": location}))

    def _readable(self, session: Session, patient: str | None) -> list[RecordRef]:
        """The pointers of records the caller may read (of ``patient`` when given)."""
        if patient in (None, session.ibe_id) and self._role(session) == "patient":
            return session.list_records()
        return [
            ref
            for ref, _grant in session.granted_records()
            if patient is None or ref.owner == patient
        ]

    def _existing(
        self,
        session: Session,
        condition: Condition,
        patient: str,
        where: str,
        held: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The one record of ``patient`` the caller may read that ``condition`` matches (with
        meta), None for none; 412 for several. Pointers decide patient, resource type and
        ``_id`` before any decryption; each record decrypted is a logged read, as in a search.
        ``held``: the record holding the condition's claim (:meth:`_held`), a match whatever
        its identifiers."""
        found = [] if held is None else [held]
        kind = session.labels.kind(condition.resource_type)
        for ref in self._readable(session, patient):
            if held is not None and ref.record_id == held["id"]:
                continue
            if condition.admits_pointer(ref, patient, kind):
                read, data = session.open_record_json(ref)  # the pointer gives the hints
                if condition.admits_resource(data):
                    found.append(self._with_meta(data, read))
        if len(found) > 1:
            ids = ", ".join(sorted(r["id"] for r in found))
            raise FhirError(
                412,
                f"{where} {condition.text!r} matches {len(found)} {condition.resource_type} "
                f"records of {patient} ({ids}); nothing was written",
            )
        return found[0] if found else None

    def _transaction(
        self, session: Session, body: bytes, base_url: str, retries: int = 2
    ) -> Answer:
        """``POST [base]`` with a transaction Bundle: every entry checked, then all written in
        one ledger transaction (see :mod:`ehrshare.fhirapi.transaction`). When an entry's
        claim was taken meanwhile (another gateway or member created it), nothing was written
        and the Bundle is evaluated again (up to ``retries`` times): that entry now matches."""
        entries = parse_transaction(_json_body(body), NOT_RECORDS)
        planned: list[tuple[Entry, dict[str, Any], str]] = []
        for e in entries:
            where = f"entry[{e.index}]"
            resource_type(e.resource_type)
            try:
                if e.method == "PUT":
                    stored = self._checked_update(
                        session, e.resource_type, e.record_id, e.resource, e.if_version
                    )
                    planned.append((e, stored, ""))
                    continue
                resource = {k: v for k, v in e.resource.items() if k != "id"}
                patient = self._patient_of(session, resource)
                try:
                    session.chain.get_identity(patient)
                except EhrshareError:
                    raise FhirError(422, f"no such member: {patient}") from None
                model = parse_resource(resource)
                if len(resource_bytes(model)) > session.max_record_bytes:
                    raise FhirError(413, "over this profile's record size limit")
                session.mapping.resolve(model)
                planned.append((e, resource, patient))
            except FhirValidationError as exc:
                raise FhirError(400, f"{where}: {exc}") from None
            except FhirError as exc:
                raise FhirError(exc.status, f"{where}: {exc}", exc.code) from None
            except EhrshareError as exc:
                status, _ = outcome_for(exc)
                raise FhirError(status, f"{where}: {exc}") from None
        # Conditions after every entry's checks (a bad entry refuses before any logged read),
        # against what is stored before this Bundle: its own entries are not yet there.
        matched: dict[int, dict[str, Any]] = {}
        claims: dict[str, int] = {}  # claim -> the entry that takes it
        for e, _resource, patient in planned:
            if e.condition is None:
                continue
            where = f"entry[{e.index}].request.ifNoneExist"
            try:
                claim = self._claim(session, e.condition, patient)
                held = self._held(session, e.condition, patient, claim, where)
                found = self._existing(session, e.condition, patient, where, held)
            except EhrshareError as exc:
                status, _ = outcome_for(exc)
                raise FhirError(status, f"{where}: {exc}") from None
            if found is not None:
                matched[e.index] = found
            elif claim:
                if claim in claims:  # one record per condition: two entries would make two
                    raise FhirError(
                        422,
                        f"{where}: entry[{claims[claim]}] creates under the same condition "
                        f"{e.condition.text!r}; send one of them",
                    )
                claims[claim] = e.index
        claim_of = {index: claim for claim, index in claims.items()}
        planned = [p for p in planned if p[0].index not in matched]
        writes = [
            RecordWrite(resource, e.record_id, if_version=e.if_version)
            if e.method == "PUT"
            else RecordWrite(resource, patient=patient, claim=claim_of.get(e.index, ""))
            for e, resource, patient in planned
        ]
        try:  # one ledger transaction: all or none
            refs = session.write_records(writes) if writes else []
        except ClaimHeld:
            if retries == 0:
                raise
            return self._transaction(session, body, base_url, retries - 1)
        except (RequestRejected, RecordStorageError, InvalidInput) as exc:
            status, _ = outcome_for(exc)
            raise FhirError(
                status, f"the transaction was refused after the checks; nothing was written: {exc}"
            ) from None
        except Exception as exc:
            status, _ = outcome_for(exc)
            known = isinstance(exc, EhrshareError | ConnectionError | TimeoutError)
            why = str(exc) if known else f"internal error {type(exc).__name__}; see the log"
            if not known:
                _log.exception("transaction bundle")
            raise FhirError(
                status,
                f"the transaction failed ({why}); its entries are one ledger transaction, so "
                "either all of them were written or none: read them back before retrying",
            ) from None
        out = {
            e.index: self._with_meta(resource, ref)
            for (e, resource, _), ref in zip(planned, refs, strict=True)
        }
        created = {e.index for e, _, _ in planned if e.method == "POST"}
        done: list[dict[str, Any]] = []
        for index in sorted(out | matched):
            stored = out.get(index) or matched[index]
            rid, version = stored["id"], stored["meta"]["versionId"]
            rtype = stored["resourceType"]
            done.append(
                {
                    "fullUrl": f"{base_url}/{rtype}/{rid}",
                    "resource": stored,
                    "response": {
                        "status": "201 Created" if index in created else "200 OK",
                        "location": f"{rtype}/{rid}/_history/{version}",
                        "etag": f'W/"{version}"',
                        "lastModified": stored["meta"]["lastUpdated"],
                    },
                }
            )
        return Answer(
            200, {"resourceType": "Bundle", "type": "transaction-response", "entry": done}
        )


def _json_body(body: bytes) -> Any:
    """The request body parsed as JSON; 400 when it is not JSON or nests too deep."""
    # Before parsing: the C JSON decoder recurses per level, and a deep enough body could
    # exhaust the C stack (see ehrshare.fhir.parse_resource).
    if too_deep(body, MAX_DEPTH):
        raise FhirError(400, f"the body nests more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FhirError(400, "the request body is not JSON") from None
