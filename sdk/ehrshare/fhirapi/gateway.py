"""The FHIR API's requests and answers, without HTTP: routes ``(method, path, query)`` to the
member's :class:`~ehrshare.session.Session` and turns what it returns into FHIR JSON.

One :class:`Gateway` serves every member its authenticator names (see
:mod:`ehrshare.fhirapi.auth`); it opens one session per wallet on one runtime, lazily. Requests
of different members run concurrently; those of one member are serialised by that member's
lock, because a :class:`Session` keeps per-member caches (keys, grants) that are not made for
concurrent use, while what sessions share — the embedded ledger, the in-process KGC nodes and
proxies, the content store — locks for itself (Fabric and Kubo are separate processes). It is
the trusted hospital-side gateway: it holds the keys of the members it acts for. This module
must not parse HTTP.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import importlib.metadata
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class

from ehrshare.contract import RecordRef
from ehrshare.errors import EhrshareError, InvalidInput
from ehrshare.fhir import MAX_DEPTH, FhirValidationError, parse_resource, resource_bytes
from ehrshare.fhirapi import consent as consent_map
from ehrshare.fhirapi.auditevent import entry_to_auditevent
from ehrshare.fhirapi.auth import Authenticator, Credentials
from ehrshare.fhirapi.capability import capability_statement
from ehrshare.fhirapi.members import member_from_id, member_from_reference
from ehrshare.fhirapi.outcome import FhirError, outcome_for
from ehrshare.fhirapi.provenance import version_to_provenance
from ehrshare.fhirapi.search import parse_search
from ehrshare.fhirapi.transaction import Entry, etag_version, parse_transaction
from ehrshare.jsontext import too_deep
from ehrshare.runtime import Runtime
from ehrshare.session import (
    NoSuchMember,
    RecordStorageError,
    RecordTooLarge,
    RecordWrite,
    RequestRejected,
    Session,
)

__all__ = ["BASE", "Answer", "Gateway", "gateway_for"]

_log = logging.getLogger(__name__)

BASE: Final = "/fhir"
# Resource types the server answers itself: never stored as records.
_NOT_RECORDS: Final = frozenset(
    {"Consent", "AuditEvent", "Provenance", "CapabilityStatement", "OperationOutcome", "Bundle"}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: status, FHIR JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _instant(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat().replace("+00:00", "Z")


def _version_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 31:
        raise FhirError(404, f"_history/{text}: a version id is a number from 1")
    return int(text)


def _with_validators(answer: Answer) -> Answer:
    """``answer`` (a record version) with its ETag and Last-Modified headers, from meta."""
    meta = answer.body.get("meta") or {}
    headers = dict(answer.headers)
    headers["ETag"] = f'W/"{meta["versionId"]}"'
    when = _dt.datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    headers["Last-Modified"] = email.utils.format_datetime(when, usegmt=True)
    return Answer(answer.status, answer.body, headers)


def _bundle(resources: list[dict[str, Any]], base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }


def _resource_type(name: str) -> str:
    """``name`` if it is a FHIR R4 resource type; else 404 (FHIR's answer for an unknown type)."""
    try:
        cls = get_fhir_model_class(name)
    except (ValueError, KeyError):
        cls = None
    if cls is None or name in ("Resource", "DomainResource") or not name[:1].isupper():
        raise FhirError(404, f"{name!r} is not a FHIR R4 resource type")
    return name


class Gateway:
    """Answers FHIR requests as the member each bearer token names.

    ``open_session(wallet)`` opens a session for a wallet name (on one runtime);
    ``now()`` is the clock grants are judged by (expired or not).
    """

    def __init__(
        self,
        auth: Authenticator,
        open_session: Callable[[str], Session],
        *,
        now: Callable[[], int],
        software_version: str = "",
    ) -> None:
        self._auth = auth
        self._open = open_session
        self._now = now
        self._version = software_version
        self._sessions: dict[str, tuple[Session, threading.Lock]] = {}
        self._roles: dict[str, str] = {}
        self._lock = threading.Lock()  # guards the table of sessions, not the SDK calls

    def close(self) -> None:
        """Close every session opened (after the request each is serving, if any)."""
        with self._lock:
            for session, member_lock in self._sessions.values():
                with member_lock:
                    session.close()
            self._sessions.clear()

    # --- entry point -----------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        credentials: Credentials,
        body: bytes,
        base_url: str,
        *,
        if_match: str | None = None,
    ) -> Answer:
        """Answer one request; every error becomes an OperationOutcome with its status.
        ``if_match``: the request's If-Match header (an update's expected version)."""
        try:
            return self._route(method, path, query, credentials, body, base_url, if_match)
        except Exception as exc:
            status, outcome = outcome_for(exc)
            if status >= 500:
                _log.warning("%s %s: %s", method, path, exc, exc_info=status == 500)
            headers = {"WWW-Authenticate": 'Bearer realm="ehrshare"'} if status == 401 else {}
            return Answer(status, outcome, headers)

    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        credentials: Credentials,
        body: bytes,
        base_url: str,
        if_match: str | None = None,
    ) -> Answer:
        if path != BASE and not path.startswith(BASE + "/"):
            raise FhirError(404, f"no such endpoint {path}: the FHIR base is {BASE}")
        parts = [p for p in path[len(BASE) :].split("/") if p]
        if parts == ["metadata"] and method == "GET":
            date = _instant(self._now())
            return Answer(
                200, capability_statement(self._version, date, mutual_tls=self._auth.mutual_tls)
            )
        if not parts and method == "POST":
            session, lock = self._caller(credentials)
            with lock:
                return self._transaction(session, body, base_url)
        if not parts or len(parts) > 4:
            raise FhirError(404, f"no such endpoint {path}")
        session, lock = self._caller(credentials)
        rtype = _resource_type(parts[0])
        rid = parts[1] if len(parts) >= 2 else ""
        extra = parts[2:]
        with lock:
            if extra == ["$everything"] and rtype == "Patient" and method == "GET":
                return self._everything(session, rid, query, base_url)
            if extra[:1] == ["_history"] and rtype not in _NOT_RECORDS and method == "GET":
                if len(extra) == 1:
                    return self._history(session, rtype, rid, base_url)
                return _with_validators(
                    Answer(200, self._read(session, rtype, rid, _version_id(extra[1])))
                )
            if extra:
                raise FhirError(404, f"no such endpoint {path}")
            if rtype == "Consent":
                return self._consent(session, method, rid, query, body, base_url)
            if rtype == "AuditEvent" and method == "GET" and not rid:
                return self._audit(session, query, base_url)
            if rtype == "Provenance" and method == "GET" and not rid:
                return self._provenance(session, query, base_url)
            if rtype in _NOT_RECORDS:
                raise FhirError(405, f"{method} of {rtype} is not supported by this server")
            if method == "POST" and not rid:
                return self._create(session, rtype, body, base_url)
            if method == "GET" and rid:
                return _with_validators(Answer(200, self._read(session, rtype, rid)))
            if method == "GET":
                return self._search(session, rtype, query, base_url)
            if method == "PUT" and rid:
                return self._update(session, rtype, rid, body, base_url, etag_version(if_match))
        raise FhirError(
            405, f"{method} {path} is not supported: records are create, read, update, search"
        )

    def _caller(self, credentials: Credentials) -> tuple[Session, threading.Lock]:
        """The caller's session and the lock that serialises its requests."""
        wallet = self._auth.wallet_for_request(credentials)
        with self._lock:
            known = self._sessions.get(wallet)
            if known is None:
                known = self._sessions[wallet] = (self._open(wallet), threading.Lock())
        return known

    # --- records ---------------------------------------------------------------------------

    @staticmethod
    def _load(body: bytes, expected: str) -> dict[str, Any]:
        """The body as a JSON object of resourceType ``expected`` (not yet validated as FHIR)."""
        # Before parsing: the C JSON decoder recurses per level, and a deep enough body could
        # exhaust the C stack (see ehrshare.fhir.parse_resource).
        if too_deep(body, MAX_DEPTH):
            raise FhirError(400, f"the body nests more than {MAX_DEPTH} levels deep")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise FhirError(400, "the request body is not JSON") from None
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

    def _create(self, session: Session, rtype: str, body: bytes, base_url: str) -> Answer:
        resource = self._load(body, rtype)
        patient = self._patient_of(session, resource)
        resource.pop("id", None)  # the server names records (FHIR create ignores a given id)
        try:
            ref = session.put_record(resource, patient=patient)  # validates, once
        except FhirValidationError as exc:
            raise FhirError(400, str(exc)) from None
        except NoSuchMember as exc:
            raise FhirError(422, str(exc)) from None
        out = self._with_meta(resource, ref)
        location = f"{base_url}/{rtype}/{ref.record_id}/_history/{ref.version}"
        return _with_validators(Answer(201, out, {"Location": location}))

    @staticmethod
    def _with_meta(resource: dict[str, Any], ref: RecordRef) -> dict[str, Any]:
        out = dict(resource)
        out["id"] = ref.record_id
        meta = dict(out.get("meta") or {})
        meta["versionId"] = str(ref.version)
        meta["lastUpdated"] = _instant(ref.updated_at or ref.created_at)
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
        return _with_validators(Answer(200, self._with_meta(stored, ref), {"Location": location}))

    def _read(
        self, session: Session, rtype: str, rid: str, version: int | None = None
    ) -> dict[str, Any]:
        target: RecordRef | str = rid
        if version is not None:
            latest = session.get_record(rid)  # unknown: 404; not the caller's to see: 403
            target = latest  # the pointer: its owner and label are RequestAccess's hints
            if version > latest.version:
                raise FhirError(404, f"{rtype}/{rid} has no version {version}")
            if version != latest.version and session.ibe_id != latest.owner:
                raise FhirError(
                    403,
                    f"only the owner reads older versions; {rtype}/{rid} is at version "
                    f"{latest.version} (a grant covers the current version)",
                )
        # The read first: a denial is decided and logged on chain like any (then 403), an
        # unknown record is the chaincode's "does not exist" (then 404).
        ref, data = session.open_record_json(target, version=version)  # validated, not re-dumped
        if data.get("resourceType") != rtype:
            raise FhirError(404, f"{rtype}/{rid} does not exist (record {rid} is not a {rtype})")
        return self._with_meta(data, ref)

    def _patient_param(self, session: Session, query: Mapping[str, list[str]]) -> str | None:
        values = query.get("patient") or query.get("subject") or []
        if not values:
            return None
        value = values[0]
        if value.startswith("Patient/"):
            value = value[len("Patient/") :]
        patient = member_from_id(value)
        try:
            session.chain.get_identity(patient)
        except EhrshareError:
            raise FhirError(404, f"no such patient: {patient} is not a member") from None
        return patient

    def _readable(self, session: Session, patient: str | None) -> list[RecordRef]:
        """The pointers of records the caller may read (of ``patient`` when given)."""
        if patient in (None, session.ibe_id) and self._role(session) == "patient":
            return session.list_records()
        return [
            ref
            for ref, _grant in session.granted_records()
            if patient is None or ref.owner == patient
        ]

    def _search(
        self, session: Session, rtype: str, query: Mapping[str, list[str]], base_url: str
    ) -> Answer:
        """``GET [base]/{type}?…``: the records the caller may read that match. The pointers
        decide patient, resource type, ``_lastUpdated`` and record type before anything is
        decrypted (see :mod:`ehrshare.fhirapi.search` for what only the decrypted resource can
        tell): every read is a logged access, so a record the answer leaves out is not read."""
        search = parse_search(rtype, query, None)  # bad parameters: 400 before any lookup
        search = parse_search(rtype, query, self._patient_param(session, query))
        label_of = session.labels.opaque
        labels = search.possible_labels(session.mapping, label_of)
        kind = session.labels.kind(rtype)
        found = []
        for ref in self._readable(session, search.patient):
            if not search.admits_pointer(ref, labels, kind):
                continue
            _ref, data = session.open_record_json(ref)  # a logged read (the pointer: hints)
            if search.admits_resource(data, ref, label_of):
                found.append(self._with_meta(data, ref))
        return Answer(200, _bundle(found, base_url))

    def _history(self, session: Session, rtype: str, rid: str, base_url: str) -> Answer:
        """``GET [base]/{type}/{id}/_history``: every version the caller may read, newest
        first (the owner: all; a grantee: the current one), each read a logged access."""
        latest = session.get_record(rid)
        versions = range(latest.version, 0, -1)
        if session.ibe_id != latest.owner:
            versions = range(latest.version, latest.version - 1, -1)
        entries = []
        for v in versions:
            data = self._read(session, rtype, rid, v)
            entries.append(
                {
                    "fullUrl": f"{base_url}/{rtype}/{rid}",
                    "resource": data,
                    "request": {"method": "POST" if v == 1 else "PUT", "url": rtype},
                    "response": {"status": "201" if v == 1 else "200"},
                }
            )
        return Answer(
            200,
            {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries},
        )

    def _everything(
        self, session: Session, rid: str, query: Mapping[str, list[str]], base_url: str
    ) -> Answer:
        """``GET [base]/Patient/{id}/$everything``: the patient's records the caller may read
        (each a logged read) and the Consents about them the caller may see."""
        if query:
            raise FhirError(400, f"$everything takes no parameters here ({', '.join(query)})")
        patient = self._patient_param(session, {"patient": [rid]})
        assert patient is not None
        found = []
        for ref in self._readable(session, patient):
            _ref, data = session.open_record_json(ref)  # the pointer gives RequestAccess hints
            found.append(self._with_meta(data, ref))
        found += self._consents(session, patient)
        return Answer(200, _bundle(found, base_url))

    def _transaction(self, session: Session, body: bytes, base_url: str) -> Answer:
        """``POST [base]`` with a transaction Bundle: every entry checked, then all written in
        one ledger transaction (see :mod:`ehrshare.fhirapi.transaction`)."""
        if too_deep(body, MAX_DEPTH):
            raise FhirError(400, f"the body nests more than {MAX_DEPTH} levels deep")
        try:
            bundle = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise FhirError(400, "the request body is not JSON") from None
        entries = parse_transaction(bundle, _NOT_RECORDS)
        planned: list[tuple[Entry, dict[str, Any], str]] = []
        for e in entries:
            where = f"entry[{e.index}]"
            _resource_type(e.resource_type)
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
        writes = [
            RecordWrite(resource, e.record_id, if_version=e.if_version)
            if e.method == "PUT"
            else RecordWrite(resource, patient=patient)
            for e, resource, patient in planned
        ]
        try:
            refs = session.write_records(writes)  # one ledger transaction: all or none
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
        done: list[dict[str, Any]] = []
        for (e, resource, _patient), ref in zip(planned, refs, strict=True):
            location = f"{e.resource_type}/{ref.record_id}/_history/{ref.version}"
            done.append(
                {
                    "fullUrl": f"{base_url}/{e.resource_type}/{ref.record_id}",
                    "resource": self._with_meta(resource, ref),
                    "response": {
                        "status": "201 Created" if e.method == "POST" else "200 OK",
                        "location": location,
                        "etag": f'W/"{ref.version}"',
                        "lastModified": _instant(ref.updated_at or ref.created_at),
                    },
                }
            )
        return Answer(
            200, {"resourceType": "Bundle", "type": "transaction-response", "entry": done}
        )

    # --- consent ---------------------------------------------------------------------------

    def _consents(self, session: Session, patient: str | None) -> list[dict[str, Any]]:
        """The grants the caller may see (as owner, grantor or grantee), as Consents."""
        now = self._now()
        grants = session.grants("owner") + session.grants("grantor")
        grants += session.grants("grantee")
        seen: dict[str, dict[str, Any]] = {}
        for g in grants:
            if patient is None or g.owner == patient:
                seen[g.grant_id] = consent_map.grant_to_consent(g, now=now)
        return list(seen.values())

    def _consent(
        self,
        session: Session,
        method: str,
        rid: str,
        query: Mapping[str, list[str]],
        body: bytes,
        base_url: str,
    ) -> Answer:
        now = self._now()
        if method == "POST" and not rid:
            resource = self._parse(body, "Consent")
            request = consent_map.parse(resource)
            if request.patient != session.ibe_id:
                raise FhirError(
                    403,
                    f"a Consent grants access to the caller's own records; {session.ibe_id} "
                    f"cannot consent for {request.patient}",
                )
            if request.expiry.timestamp() <= now:
                raise FhirError(422, "Consent.provision.period.end is not in the future")
            try:
                session.chain.get_identity(request.grantee)
            except EhrshareError:
                raise FhirError(422, f"no such member: {request.grantee}") from None
            grant = session.grant(
                request.grantee,
                request.record_type,
                expires=request.expiry,
                max_hops=request.max_hops,
            )
            body_out = consent_map.grant_to_consent(grant, now=now)
            return Answer(201, body_out, {"Location": f"{base_url}/Consent/{grant.grant_id}"})
        if method == "GET" and rid:
            return Answer(200, consent_map.grant_to_consent(session.get_grant(rid), now=now))
        if method == "GET":
            patient = self._patient_param(session, query)
            return Answer(200, _bundle(self._consents(session, patient), base_url))
        if method == "DELETE" and rid:
            session.revoke(rid)
            return Answer(200, consent_map.grant_to_consent(session.get_grant(rid), now=now))
        if method == "PUT" and rid:
            resource = self._parse(body, "Consent")
            if resource.get("id") != rid:
                raise FhirError(400, f"the body's id {resource.get('id')!r} is not {rid!r}")
            if resource.get("status") != "inactive":
                raise FhirError(
                    422,
                    "an update may only set status 'inactive' (revoke); a grant's terms do not "
                    "change — revoke it and create a new Consent",
                )
            session.revoke(rid)
            return Answer(200, consent_map.grant_to_consent(session.get_grant(rid), now=now))
        raise FhirError(405, f"{method} of Consent{'/' + rid if rid else ''} is not supported")

    def _provenance(
        self, session: Session, query: Mapping[str, list[str]], base_url: str
    ) -> Answer:
        """``GET Provenance?target=`` (a record id, or ``Type/id``) or ``?patient=``: every
        version of those records, from their pointers (nothing decrypted)."""
        if set(query) not in ({"target"}, {"patient"}):
            raise FhirError(400, "search Provenance by one of target= (a record) or patient=")
        if "target" in query:
            record_ids = [query["target"][0].rsplit("/", 1)[-1]]
        else:
            patient = self._patient_param(session, query)
            record_ids = [ref.record_id for ref in self._readable(session, patient)]
        out = [
            version_to_provenance(version.ref)
            for record_id in record_ids
            for version in session.chain.get_record_history(record_id)
        ]
        return Answer(200, _bundle(out, base_url))

    # --- audit -----------------------------------------------------------------------------

    def _audit(self, session: Session, query: Mapping[str, list[str]], base_url: str) -> Answer:
        patient = self._patient_param(session, query) or session.ibe_id
        trail = session.audit(patient)
        events = [entry_to_auditevent(e) for e in trail.entries]
        return Answer(200, _bundle(events, base_url))


def gateway_for(runtime: Runtime, auth: Authenticator, *, software_version: str = "") -> Gateway:
    """A gateway whose sessions open on ``runtime`` (one per wallet ``auth`` names), judged by
    the runtime's clock. Closing the gateway closes its sessions, not the runtime."""

    def open_session(wallet: str) -> Session:
        w = runtime.profile.wallet(wallet)
        identity, signer = w.load_identity()
        return runtime.session(identity, signer, w)

    def now() -> int:
        return (runtime.clock() if runtime.clock is not None else time.time_ns()) // 1_000_000_000

    if not software_version:
        try:
            software_version = importlib.metadata.version("ehrshare")
        except importlib.metadata.PackageNotFoundError:
            software_version = ""
    return Gateway(auth, open_session, now=now, software_version=software_version)
