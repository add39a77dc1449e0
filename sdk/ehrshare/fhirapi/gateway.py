"""The FHIR API's requests and answers, without HTTP: routes ``(method, path, query)`` to the
member's :class:`~ehrshare.session.Session` and turns what it returns into FHIR JSON.

One :class:`Gateway` serves every member its authenticator names (see
:mod:`ehrshare.fhirapi.auth`); it opens one session per wallet on one runtime, lazily. Requests
of different members run concurrently; those of one member are serialised by that member's
lock, because a :class:`Session` keeps per-member caches (keys, grants) that are not made for
concurrent use, while what sessions share — the embedded ledger, the in-process KGC nodes and
proxies, the content store — locks for itself (Fabric and Kubo are separate processes). It is
the trusted hospital-side gateway: it holds the keys of the members it acts for. The member's
lock also makes a conditional create's search and its write one step for that member (not
across members, nor across gateways: there a condition of one ``system|value`` identifier
holds by its on-chain claim). Record writes are in :mod:`ehrshare.fhirapi.writes`, the base
class. This module must not parse HTTP.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ehrshare.contract import RecordRef
from ehrshare.errors import EhrshareError
from ehrshare.fhirapi import consent as consent_map
from ehrshare.fhirapi.auditevent import entry_to_auditevent
from ehrshare.fhirapi.auth import Authenticator, Credentials
from ehrshare.fhirapi.capability import capability_statement
from ehrshare.fhirapi.members import member_from_id
from ehrshare.fhirapi.outcome import FhirError, outcome_for
from ehrshare.fhirapi.provenance import version_to_provenance
from ehrshare.fhirapi.search import parse_search
from ehrshare.fhirapi.transaction import etag_version
from ehrshare.fhirapi.writes import (
    NOT_RECORDS,
    Answer,
    RecordWrites,
    instant,
    resource_type,
    with_validators,
)
from ehrshare.runtime import Runtime
from ehrshare.session import (
    Session,
)

__all__ = ["BASE", "Answer", "Gateway", "gateway_for"]

_log = logging.getLogger(__name__)

BASE: Final = "/fhir"


def _version_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 1 << 31:
        raise FhirError(404, f"_history/{text}: a version id is a number from 1")
    return int(text)


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


class Gateway(RecordWrites):
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
        if_none_exist: str | None = None,
    ) -> Answer:
        """Answer one request; every error becomes an OperationOutcome with its status.
        ``if_match``: the request's If-Match header (an update's expected version);
        ``if_none_exist``: its If-None-Exist header (a create's condition)."""
        try:
            return self._route(
                method, path, query, credentials, body, base_url, if_match, if_none_exist
            )
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
        if_none_exist: str | None = None,
    ) -> Answer:
        if path != BASE and not path.startswith(BASE + "/"):
            raise FhirError(404, f"no such endpoint {path}: the FHIR base is {BASE}")
        parts = [p for p in path[len(BASE) :].split("/") if p]
        if parts == ["metadata"] and method == "GET":
            date = instant(self._now())
            return Answer(
                200, capability_statement(self._version, date, mutual_tls=self._auth.mutual_tls)
            )
        if if_none_exist is not None and (
            method != "POST" or len(parts) != 1 or parts[0] in NOT_RECORDS
        ):
            raise FhirError(400, "If-None-Exist is for a create of a record (POST [base]/{type})")
        if not parts and method == "POST":
            session, lock = self._caller(credentials)
            with lock:
                return self._transaction(session, body, base_url)
        if not parts or len(parts) > 4:
            raise FhirError(404, f"no such endpoint {path}")
        session, lock = self._caller(credentials)
        rtype = resource_type(parts[0])
        rid = parts[1] if len(parts) >= 2 else ""
        extra = parts[2:]
        with lock:
            if extra == ["$everything"] and rtype == "Patient" and method == "GET":
                return self._everything(session, rid, query, base_url)
            if extra[:1] == ["_history"] and rtype not in NOT_RECORDS and method == "GET":
                if len(extra) == 1:
                    return self._history(session, rtype, rid, base_url)
                return with_validators(
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
            if rtype in NOT_RECORDS:
                raise FhirError(405, f"{method} of {rtype} is not supported by this server")
            if method == "POST" and not rid:
                return self._create(session, rtype, body, base_url, if_none_exist)
            if method == "GET" and rid:
                return with_validators(Answer(200, self._read(session, rtype, rid)))
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
