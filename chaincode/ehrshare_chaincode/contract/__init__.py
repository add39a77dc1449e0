"""The ehrshare contract: identities, type keys, records, grants, access, DKG board, audit log.

One contract class whose methods are named as verbs, and a dispatcher :func:`invoke` that the
backends call with ``(stub, function, args)``. Every method takes its caller from the stub's creator
certificate, its clock from the transaction timestamp, and stores canonical JSON under composite
keys. A failure raises :class:`ChaincodeError` before anything is committed (the backend discards
the write set). Every state change appends to the operation log and the transaction's log entries
are emitted as its single chaincode event.

What this module must not do: import a backend, read a wall clock, use randomness or floats, iterate
over unordered collections into its output, or read back a key it wrote in the same transaction
(Fabric would show the old value). Crypto objects (capsules, type keys, DKG bundles) are stored as
opaque base64 with a format version; their meaning belongs to ``ehrshare.hazmat``, except that
a type key's proof of knowledge is checked here (:mod:`.typekey`, which repeats the little of
BLS12-381 that needs).

IBE identity strings are ``"<MSP id>/<enrollment id>"`` where the enrollment id is the certificate's
common name, so registration is deterministic and re-enrolment (a new certificate with the same
subject and issuer) keeps the identity.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import canonical, typekey
from .auditlog import GENESIS_HASH, SYSTEM_CHAIN, entry_hash, verify_entries
from .certs import CertInfo, issued_by, parse_certificate, signature_problem
from .stub import ChaincodeError, ChaincodeStub

__all__ = [
    "CONTRACT_NAME",
    "ROLES",
    "EHRContract",
    "TxContext",
    "invoke",
]

CONTRACT_NAME = "ehrshare"
ROLE_ATTRIBUTE = "ehrshare.role"
PATIENT, CLINICIAN, ADMIN, KGC, PROXY, AUDITOR = (
    "patient",
    "clinician",
    "admin",
    "kgc",
    "proxy",
    "auditor",
)
ROLES = (PATIENT, CLINICIAN, ADMIN, KGC, PROXY, AUDITOR)

MAX_CAPSULE_BYTES = 64 * 1024
MAX_TYPE_KEY_BYTES = 4 * 1024
MAX_DKG_BUNDLE_BYTES = 1024 * 1024
MAX_MPK_BYTES = 1024
MAX_CERT_BYTES = 16 * 1024
MAX_FORMAT_VERSION = 255
MAX_HOPS = 16
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
DKG_PHASES = ("deal", "response", "justification")
DKG_DONE = "done"  # every phase closed: the session collects no more bundles
DKG_FAILED = "failed"  # aborted (AbortDKGSession): no result, no more bundles or views
MAX_ABORT_REASON = 200
# The kind byte of each phase's bundles (ehrshare.hazmat.dkg.BundleKind).
DKG_PHASE_KIND = {"deal": 1, "response": 2, "justification": 3}
# Header of every DKG bundle (ehrshare.hazmat.dkg's wire format): version, kind, 32-byte session
# nonce, big-endian u16 sender index. The contract reads only this header, never the body.
DKG_HEADER_SIZE = 1 + 1 + 32 + 2
MAX_KGC_KEY_BYTES = 1024
MIN_KGC_NODES = 2
MAX_KGC_NODES = 64  # the roster and its key snapshot live in one state value
MAX_PHASE_TIMEOUT_S = 7 * 24 * 3600

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_CID_RE = re.compile(r"[A-Za-z0-9]{8,128}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_GRANT_ID_RE = re.compile(r"g-[0-9a-f]{32}")
_NONCE_RE = re.compile(r"[0-9a-f]{64}")
_IBE_RE = re.compile(r"[^/\x00-\x1f]{1,64}/[^/\x00-\x1f]{1,64}")

# Object types of composite keys. Index entries hold a one-byte value: Fabric treats an empty
# value as a delete.
K_IDENTITY = "ehr.id"
K_IBE = "ehr.ibe"
K_ORG_CA = "ehr.orgca"
K_TYPEKEY = "ehr.typekey"
K_RECORD = "ehr.rec"
K_RECORD_VERSION = "ehr.recver"
K_RECORD_BY_OWNER = "ehr.rec~owner"
K_GRANT = "ehr.grant"
K_GRANT_BY_OWNER = "ehr.grant~owner"
K_GRANT_BY_GRANTEE = "ehr.grant~grantee"
K_GRANT_BY_GRANTOR = "ehr.grant~grantor"
K_GRANT_MATCH = "ehr.grant~match"
K_ACCESS = "ehr.access"
K_APPROVAL = "ehr.approval"
K_REENCRYPTION = "ehr.reenc"
K_DKG = "ehr.dkg"
K_DKG_RESULT = "ehr.dkgresult"
K_DKG_LATEST = "ehr.dkglatest"
K_DKG_SESSION = "ehr.dkgsession"
K_DKG_VIEW = "ehr.dkgview"
K_KGC_KEY = "ehr.kgckey"
K_KGC_USE = "ehr.kgckey~session"
K_LOG = "ehr.log"
K_LOG_HEAD = "ehr.loghead"
K_LOG_BY_RECORD = "ehr.log~record"
_INDEX_VALUE = b"\x01"


def _seq(n: int) -> str:
    return f"{n:012d}"


@dataclass(slots=True)
class Caller:
    """The submitting client as the contract sees it."""

    msp_id: str
    cert: CertInfo
    ibe_id: str | None
    role: str | None

    @property
    def name(self) -> str:
        """How errors name this client: its IBE identity or, unregistered, msp/enrollment id."""
        return self.ibe_id or f"{self.msp_id}/{self.cert.enrollment_id}"

    @property
    def is_org_admin(self) -> bool:
        """Fabric NodeOU admin, or a Fabric CA role attribute of ``admin``."""
        return (
            "admin" in self.cert.organizational_units
            or self.cert.attribute(ROLE_ATTRIBUTE) == ADMIN
        )


@dataclass(slots=True)
class TxContext:
    """Per-invocation state: the stub, the caller, the clock and the log entries being appended."""

    stub: ChaincodeStub
    function: str
    now: int
    tx_id: str
    _caller: Caller | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def key(self, object_type: str, *attrs: str) -> str:
        return self.stub.create_composite_key(object_type, list(attrs))

    def get_json(self, object_type: str, *attrs: str) -> Any | None:
        raw = self.stub.get_state(self.key(object_type, *attrs))
        if raw is None:
            return None
        return canonical.loads(raw, f"stored {object_type}")

    def index_page(
        self, index: str, subject: str, target: str, page_size: str, bookmark: str
    ) -> tuple[list[Any], str]:
        """One page of the objects an index ``(index, subject, *target key)`` points at."""
        _check_bookmark(bookmark, index, subject)
        rows, next_bm = self.stub.get_state_by_partial_composite_key_with_pagination(
            index, [subject], _page_size(page_size), bookmark
        )
        out = []
        for kv in rows:
            _, attrs = self.stub.split_composite_key(kv.key)
            out.append(self.get_json(target, *attrs[1:]))
        return out, next_bm

    def put_json(self, value: Any, object_type: str, *attrs: str) -> None:
        self.stub.put_state(self.key(object_type, *attrs), canonical.dumps(value))

    def put_index(self, object_type: str, *attrs: str) -> None:
        self.stub.put_state(self.key(object_type, *attrs), _INDEX_VALUE)

    @property
    def caller(self) -> Caller:
        """The caller, registered or not (resolved once per transaction)."""
        if self._caller is None:
            msp_id, pem = self.stub.get_creator()
            cert = parse_certificate(pem)
            ident = self.get_json(K_IDENTITY, cert.client_key)
            if ident is not None and ident["msp_id"] == msp_id:
                self._caller = Caller(msp_id, cert, ident["ibe_id"], ident["role"])
            else:
                self._caller = Caller(msp_id, cert, None, None)
        return self._caller

    def registered(self, *roles: str) -> Caller:
        """The caller, who must be registered (and hold one of ``roles`` when given)."""
        caller = self.caller
        if caller.ibe_id is None:
            raise ChaincodeError(f"identity {caller.name} is not registered")
        if roles and caller.role not in roles:
            raise ChaincodeError(
                f"identity {caller.name} has role {caller.role}; this needs role "
                + " or ".join(roles)
            )
        return caller

    def log(
        self,
        chain: str,
        action: str,
        outcome: str,
        *,
        record_id: str = "",
        grant_id: str = "",
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry to ``chain``; the head is cached so one tx may append several."""
        head = self.heads.get(chain)
        if head is None:
            head = self.get_json(K_LOG_HEAD, chain) or {"seq": 0, "hash": GENESIS_HASH}
        caller = self.caller
        entry: dict[str, Any] = {
            "chain": chain,
            "seq": int(head["seq"]) + 1,
            "prev_hash": head["hash"],
            "tx_id": self.tx_id,
            "timestamp": self.now,
            "actor": caller.name,
            "actor_msp": caller.msp_id,
            "action": action,
            "outcome": outcome,
            "record_id": record_id,
            "grant_id": grant_id,
            "detail": detail or {},
        }
        entry["hash"] = entry_hash(entry)
        self.put_json(entry, K_LOG, chain, _seq(entry["seq"]))
        new_head = {"chain": chain, "seq": entry["seq"], "hash": entry["hash"]}
        self.put_json(new_head, K_LOG_HEAD, chain)
        self.heads[chain] = new_head
        if record_id:
            self.put_index(K_LOG_BY_RECORD, record_id, chain, _seq(entry["seq"]))
        self.entries.append(entry)
        return entry


# --- argument checks -------------------------------------------------------------------------


def master_key_epoch(mpk_b64: str) -> str:
    """The epoch of a master key: the first 16 hex digits of SHA-256 over its encoding.

    Records, type keys and grants carry the epoch they were made under, so a member reads a
    record with the identity key of that epoch after a new DKG (a resharing keeps the epoch).
    """
    return hashlib.sha256(base64.b64decode(mpk_b64)).hexdigest()[:16]


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise ChaincodeError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


def _check_type(value: str) -> str:
    if not _TYPE_RE.fullmatch(value):
        raise ChaincodeError(
            f"record type {value!r} is invalid: use 1-64 letters, digits, '.', '_', ':' or '-'"
        )
    return value


def _check_ibe(value: str, what: str = "identity") -> str:
    if not _IBE_RE.fullmatch(value):
        raise ChaincodeError(f"{what} {value!r} is not of the form <msp id>/<enrollment id>")
    return value


def _check_b64(value: str, what: str, limit: int) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ChaincodeError(f"{what} is not valid base64") from None
    if not raw:
        raise ChaincodeError(f"{what} is empty")
    if len(raw) > limit:
        raise ChaincodeError(f"{what} is {len(raw)} bytes; the limit is {limit}")
    return value


def _check_int(value: str, what: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"-?[0-9]{1,19}", value):
        raise ChaincodeError(f"{what} {value!r} is not an integer")
    n = int(value)
    if not lo <= n <= hi:
        raise ChaincodeError(f"{what} {n} is out of range [{lo}, {hi}]")
    return n


def _check_version(value: str) -> int:
    return _check_int(value, "format version", 1, MAX_FORMAT_VERSION)


def _page_size(value: str) -> int:
    if value == "":
        return DEFAULT_PAGE_SIZE
    return _check_int(value, "page size", 1, MAX_PAGE_SIZE)


def _check_bookmark(value: str, object_type: str, *attrs: str) -> str:
    # A bookmark is a key; it must lie inside the queried range, or a caller could page through
    # another patient's entries.
    if value == "":
        return value
    prefix = "\x00" + object_type + "\x00" + "".join(a + "\x00" for a in attrs)
    if not value.startswith(prefix):
        raise ChaincodeError("bookmark does not belong to this query")
    return value


def _cert_arg(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_CERT_BYTES:
        raise ChaincodeError(f"{what} is {len(raw)} bytes; the limit is {MAX_CERT_BYTES}")
    return raw


def _check_nonce(value: str) -> str:
    if not _NONCE_RE.fullmatch(value):
        raise ChaincodeError("session nonce must be 64 lower-case hex digits")
    return value


def _check_phase(value: str) -> str:
    if value not in DKG_PHASES:
        raise ChaincodeError(f"phase {value!r} is not one of {', '.join(DKG_PHASES)}")
    return value


def _check_bundle_header(raw: bytes, nonce: str, phase: str, position: int, poster: str) -> None:
    if len(raw) < DKG_HEADER_SIZE:
        raise ChaincodeError(
            f"dkg bundle is {len(raw)} bytes; its header alone is {DKG_HEADER_SIZE}"
        )
    kind = raw[1]
    if kind != DKG_PHASE_KIND[phase]:
        raise ChaincodeError(
            f"dkg bundle has kind {kind}; a {phase} bundle has kind {DKG_PHASE_KIND[phase]}"
        )
    if raw[2:34].hex() != nonce:
        raise ChaincodeError(f"dkg bundle is for session {raw[2:34].hex()}, not {nonce}")
    sender = int.from_bytes(raw[34:36], "big")
    if sender != position:
        raise ChaincodeError(
            f"dkg bundle names sender {sender}, but kgc {poster} is at position {position} "
            f"of the roster of dkg session {nonce}"
        )


def _check_reason(value: str) -> str:
    if not 1 <= len(value) <= MAX_ABORT_REASON or not value.isprintable():
        raise ChaincodeError(
            f"abort reason must be 1-{MAX_ABORT_REASON} printable characters on one line"
        )
    return value


def _failed_message(session: dict[str, Any]) -> str:
    failure = session.get("failure") or {}
    return (
        f"dkg session {session['nonce']} failed: {failure.get('cause', 'aborted')} "
        f"(aborted by {failure.get('by', '?')}: {failure.get('reason', '')})"
    )


def _json_list(value: str, what: str) -> list[str]:
    if value == "":
        return []
    parsed = canonical.loads(value, what)
    if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
        raise ChaincodeError(f"{what} must be a json list of strings")
    return list(parsed)


def _json_ints(value: str, what: str) -> list[int]:
    parsed = canonical.loads(value, what) if value else []
    if not isinstance(parsed, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in parsed
    ):
        raise ChaincodeError(f"{what} must be a json list of integers")
    return list(parsed)


def _is_reshare(session: dict[str, Any]) -> bool:
    return session.get("kind") == "reshare"


def _senders(session: dict[str, Any], phase: str) -> list[str]:
    """Who posts in ``phase``: the roster, except in a resharing, where the old committee's
    dealers post deals and justifications and the new committee (the roster) responds."""
    if _is_reshare(session) and phase != DKG_PHASES[1]:
        return list(session["dealers"])
    return list(session["roster"])


def _takes_part(session: dict[str, Any], ibe_id: str | None) -> bool:
    return ibe_id in session["roster"] or ibe_id in session.get("dealers", [])


def _dealer_threshold(session: dict[str, Any]) -> int:
    """How many dealers must qualify: τ, or for a resharing the old key's τ."""
    return int(session.get("previous_threshold", session["threshold"]))


# --- the contract ----------------------------------------------------------------------------

_TxMethod = Callable[..., Any]


class EHRContract:
    """The contract. Public methods named as verbs are the transaction functions."""

    # Functions that only read; the dispatcher refuses none of them on submit (Fabric cannot tell),
    # but they never write and log nothing.
    QUERIES = frozenset(
        {
            "GetIdentity",
            "GetOrgCA",
            "GetRecord",
            "GetRecordHistory",
            "ListRecords",
            "ListRecordVersions",
            "ListGrants",
            "GetGrant",
            "CheckApproval",
            "GetTypeKey",
            "GetKGCKey",
            "GetDKGSession",
            "GetDKGBundles",
            "GetDKGResult",
            "GetAuditTrail",
            "VerifyAuditTrail",
        }
    )

    # --- identities --------------------------------------------------------------------------

    def RegisterIdentity(self, ctx: TxContext) -> Any:
        """Register the caller with the role its certificate carries (attribute or admin OU)."""
        caller = ctx.caller
        role = caller.cert.attribute(ROLE_ATTRIBUTE)
        if role is None and "admin" in caller.cert.organizational_units:
            role = ADMIN
        if role is None:
            raise ChaincodeError(
                f"certificate of {caller.name} carries no {ROLE_ATTRIBUTE} attribute; "
                "an org admin must register it"
            )
        return self._register(
            ctx,
            caller.msp_id,
            caller.cert,
            role,
            registered_by=caller.name,
            action="RegisterIdentity",
        )

    def RegisterMember(self, ctx: TxContext, cert_pem: str, role: str) -> Any:
        """An org admin registers a member of its own organisation with a role.

        The member's certificate is an argument nobody else has checked, so it must verify
        against the organisation's CA certificate on chain (:meth:`RegisterOrgCA`): issuer,
        signature, validity at the transaction's time, and not a CA certificate itself.
        """
        caller = ctx.caller
        if not caller.is_org_admin:
            raise ChaincodeError(f"identity {caller.name} is not an org admin")
        raw = _cert_arg(cert_pem, "certificate")
        cert = parse_certificate(raw)
        org_ca = ctx.get_json(K_ORG_CA, caller.msp_id)
        if org_ca is None:
            raise ChaincodeError(
                f"the ca of {caller.msp_id} is not registered; its org admin must run "
                "RegisterOrgCA first"
            )
        if ctx.now > int(org_ca["not_after"]):
            raise ChaincodeError(
                f"the registered ca of {caller.msp_id} expired at {org_ca['not_after']}; "
                "rotate it with RotateOrgCA"
            )
        problem = issued_by(raw, str(org_ca["ca_pem"]).encode(), now=ctx.now, org=caller.msp_id)
        if problem is not None:
            raise ChaincodeError(problem)
        return self._register(
            ctx, caller.msp_id, cert, role, registered_by=caller.name, action="RegisterMember"
        )

    def RegisterOrgCA(self, ctx: TxContext, ca_pem: str) -> Any:
        """An org admin puts its organisation's CA certificate on chain, once.

        The CA must have signed the admin's own certificate, whose chain the MSP has already
        checked: that binds the CA to the MSP, so another organisation (or a CA that merely
        copies this one's name) cannot be registered for it. Replacing it is
        :meth:`RotateOrgCA`, never a second RegisterOrgCA.
        """
        caller = self._org_admin(ctx)
        current = ctx.get_json(K_ORG_CA, caller.msp_id)
        if current is not None:
            raise ChaincodeError(
                f"the ca of {caller.msp_id} is already registered (sha256 {current['sha256']}); "
                "replace it with RotateOrgCA"
            )
        return self._put_org_ca(ctx, caller, ca_pem, previous_sha256="")

    def RotateOrgCA(self, ctx: TxContext, ca_pem: str, previous_sha256: str) -> Any:
        """An org admin replaces its organisation's CA certificate, naming the one it replaces.

        The new CA is checked as in :meth:`RegisterOrgCA` (so the admin calls with a
        certificate the new CA issued); naming the old fingerprint makes a rotation deliberate
        and refuses one that raced with another. Identities already registered stay registered.
        """
        caller = self._org_admin(ctx)
        current = ctx.get_json(K_ORG_CA, caller.msp_id)
        if current is None:
            raise ChaincodeError(f"the ca of {caller.msp_id} is not registered; use RegisterOrgCA")
        if previous_sha256 != current["sha256"]:
            raise ChaincodeError(
                f"the registered ca of {caller.msp_id} has sha256 {current['sha256']}, "
                f"not {previous_sha256!r}"
            )
        return self._put_org_ca(ctx, caller, ca_pem, previous_sha256=previous_sha256)

    def GetOrgCA(self, ctx: TxContext, msp_id: str) -> Any:
        """The CA certificate registered for an organisation.

        Open to every channel member, registered or not: a CA certificate is public (it is in
        the channel configuration too), and an org admin checks it before registering.
        """
        _check_id(msp_id, "msp id")
        record = ctx.get_json(K_ORG_CA, msp_id)
        if record is None:
            raise ChaincodeError(f"the ca of {msp_id} is not registered")
        return record

    def _org_admin(self, ctx: TxContext) -> Caller:
        caller = ctx.caller
        if not caller.is_org_admin:
            raise ChaincodeError(f"identity {caller.name} is not an org admin")
        return caller

    def _put_org_ca(
        self, ctx: TxContext, caller: Caller, ca_pem: str, *, previous_sha256: str
    ) -> Any:
        raw = _cert_arg(ca_pem, "ca certificate")
        ca = parse_certificate(raw)
        if not (ca.is_ca and ca.key_cert_sign):
            raise ChaincodeError(f"certificate {ca.subject} is not a ca certificate")
        if previous_sha256 == ca.sha256:
            raise ChaincodeError(f"ca certificate {ca.subject} is the one already registered")
        if not ca.not_before <= ctx.now <= ca.not_after:
            raise ChaincodeError(
                f"ca certificate {ca.subject} is valid from {ca.not_before} to {ca.not_after}, "
                f"not at tx time {ctx.now}"
            )
        _, creator_pem = ctx.stub.get_creator()
        if signature_problem(creator_pem, raw) is not None:
            raise ChaincodeError(
                f"ca certificate {ca.subject} did not issue the certificate of {caller.name}; "
                "an org admin registers the ca that issued its own certificate"
            )
        record = {
            "msp_id": caller.msp_id,
            "ca_pem": raw.decode(),
            "sha256": ca.sha256,
            "subject": ca.subject,
            "not_before": ca.not_before,
            "not_after": ca.not_after,
            "previous_sha256": previous_sha256,
            "registered_at": ctx.now,
            "registered_by": caller.name,
        }
        ctx.put_json(record, K_ORG_CA, caller.msp_id)
        detail = {"msp_id": caller.msp_id, "sha256": ca.sha256, "subject": ca.subject}
        if previous_sha256:
            detail["previous_sha256"] = previous_sha256
        ctx.log(SYSTEM_CHAIN, ctx.function, "ok", detail=detail)
        return record

    def _register(
        self,
        ctx: TxContext,
        msp_id: str,
        cert: CertInfo,
        role: str,
        registered_by: str,
        action: str,
    ) -> Any:
        if role not in ROLES:
            raise ChaincodeError(f"role {role!r} is not one of {', '.join(ROLES)}")
        ibe_id = f"{msp_id}/{cert.enrollment_id}"
        _check_ibe(ibe_id)
        if ctx.get_json(K_IDENTITY, cert.client_key) is not None:
            raise ChaincodeError(f"identity {ibe_id} is already registered")
        if ctx.get_json(K_IBE, ibe_id) is not None:
            raise ChaincodeError(f"ibe identity {ibe_id} is already taken")
        ident = {
            "ibe_id": ibe_id,
            "msp_id": msp_id,
            "role": role,
            "subject": cert.subject,
            "issuer": cert.issuer,
            "cert_sha256": cert.sha256,
            "registered_at": ctx.now,
            "registered_by": registered_by,
        }
        ctx.put_json(ident, K_IDENTITY, cert.client_key)
        ctx.put_json({"client_key": cert.client_key}, K_IBE, ibe_id)
        chain = ibe_id if role == PATIENT else SYSTEM_CHAIN
        ctx.log(chain, action, "ok", detail={"ibe_id": ibe_id, "role": role})
        return ident

    def GetIdentity(self, ctx: TxContext, ibe_id: str) -> Any:
        """The public registration of an identity (role, MSP, certificate fingerprint)."""
        ctx.registered()
        ident = self._identity(ctx, ibe_id)
        return ident

    def _identity(self, ctx: TxContext, ibe_id: str) -> dict[str, Any]:
        _check_ibe(ibe_id)
        link = ctx.get_json(K_IBE, ibe_id)
        if link is None:
            raise ChaincodeError(f"identity {ibe_id} is not registered")
        ident = ctx.get_json(K_IDENTITY, link["client_key"])
        if not isinstance(ident, dict):
            raise ChaincodeError(f"identity {ibe_id} has no stored registration")
        return ident

    def _epoch(self, ctx: TxContext) -> str:
        """The current master key's epoch ("" before the first final DKG)."""
        latest = ctx.get_json(K_DKG_LATEST)
        if latest is None:
            return ""
        result = ctx.get_json(K_DKG_RESULT, latest["nonce"])
        assert isinstance(result, dict)  # K_DKG_LATEST only ever names a final result
        return master_key_epoch(str(result["mpk"]))

    # --- type public keys --------------------------------------------------------------------

    def PublishTypeKey(
        self, ctx: TxContext, record_type: str, key_b64: str, format_version: str
    ) -> Any:
        """Publish the caller's own type public key T_{id,t}; republishing rotates it.

        The key must be bound to the caller and the type and prove knowledge of h with
        T = h·mpk under the master public key of the latest final DKG (typekey.py)."""
        caller = ctx.registered()
        _check_type(record_type)
        _check_b64(key_b64, "type key", MAX_TYPE_KEY_BYTES)
        assert caller.ibe_id is not None
        typekey.check_type_key(
            base64.b64decode(key_b64),
            owner=caller.ibe_id,
            record_type=record_type,
            mpk_point=self._current_mpk(ctx),
        )
        value = {
            "ibe_id": caller.ibe_id,
            "type": record_type,
            "key": key_b64,
            "format_version": _check_version(format_version),
            "epoch": self._epoch(ctx),
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(value, K_TYPEKEY, caller.ibe_id, record_type)
        chain = caller.ibe_id if caller.role == PATIENT else SYSTEM_CHAIN
        ctx.log(chain, "PublishTypeKey", "ok", detail={"type": record_type})
        return value

    def _current_mpk(self, ctx: TxContext) -> bytes:
        latest = ctx.get_json(K_DKG_LATEST)
        if latest is None:
            raise ChaincodeError(
                "no dkg session has finished; a type key is checked against its master public key"
            )
        result = ctx.get_json(K_DKG_RESULT, latest["nonce"])
        assert isinstance(result, dict)  # K_DKG_LATEST only ever names a final result
        try:
            raw = base64.b64decode(str(result["mpk"]), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        point = typekey.parse_mpk(raw)
        if point is None:
            raise ChaincodeError(
                f"the master public key of dkg session {latest['nonce']} is not a version "
                f"{typekey.KEY_VERSION} G1 point; type keys cannot be checked against it"
            )
        return point

    def GetTypeKey(self, ctx: TxContext, ibe_id: str, record_type: str) -> Any:
        """Read someone's type public key (any registered identity may)."""
        ctx.registered()
        _check_ibe(ibe_id)
        _check_type(record_type)
        value = ctx.get_json(K_TYPEKEY, ibe_id, record_type)
        if value is None:
            raise ChaincodeError(f"type key {record_type} of {ibe_id} does not exist")
        return value

    # --- records -----------------------------------------------------------------------------

    def RegisterRecord(
        self,
        ctx: TxContext,
        record_id: str,
        owner: str,
        record_type: str,
        cid: str,
        sha256: str,
        capsule_b64: str,
        format_version: str,
    ) -> Any:
        """Register a record pointer; the patient itself or a clinician of any member hospital."""
        caller = ctx.registered()
        _check_id(record_id, "record id")
        _check_ibe(owner, "owner")
        _check_type(record_type)
        if not _CID_RE.fullmatch(cid):
            raise ChaincodeError(f"cid {cid!r} is not a content identifier")
        if not _SHA256_RE.fullmatch(sha256):
            raise ChaincodeError("sha256 must be 64 lower-case hex digits")
        _check_b64(capsule_b64, "capsule", MAX_CAPSULE_BYTES)
        version = _check_version(format_version)
        if not (caller.role == CLINICIAN or (caller.role == PATIENT and caller.ibe_id == owner)):
            raise ChaincodeError(f"identity {caller.name} may not create records for {owner}")
        owner_ident = ctx.get_json(K_IBE, owner)
        if owner_ident is None:
            raise ChaincodeError(f"patient {owner} is not registered")
        if self._identity(ctx, owner)["role"] != PATIENT:
            raise ChaincodeError(f"identity {owner} is not a patient")
        if ctx.stub.get_state(ctx.key(K_RECORD, record_id)) is not None:
            raise ChaincodeError(f"record {record_id} already exists")
        epoch = self._fresh_type_key_epoch(ctx, owner, record_type)
        record = {
            "record_id": record_id,
            "owner": owner,
            "type": record_type,
            "cid": cid,
            "sha256": sha256,
            "capsule": capsule_b64,
            "format_version": version,
            "epoch": epoch,
            "creator": caller.name,
            "creator_msp": caller.msp_id,
            "version": 1,
            "created_at": ctx.now,
            "updated_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(record, K_RECORD, record_id)
        ctx.put_json(record, K_RECORD_VERSION, record_id, _seq(1))
        ctx.put_index(K_RECORD_BY_OWNER, owner, record_id)
        ctx.log(
            owner,
            "RegisterRecord",
            "ok",
            record_id=record_id,
            detail={"type": record_type, "version": 1, "cid": cid},
        )
        return record

    def _fresh_type_key_epoch(self, ctx: TxContext, owner: str, record_type: str) -> str:
        """The current epoch, which a new capsule is stamped with; refused while the owner's
        type key on chain is of an earlier master key (the capsule would be sealed to it)."""
        epoch = self._epoch(ctx)
        key = ctx.get_json(K_TYPEKEY, owner, record_type)
        if key is not None and key.get("epoch") and key["epoch"] != epoch:
            raise ChaincodeError(
                f"type key {record_type} of {owner} is of an earlier master key (epoch "
                f"{key['epoch']}, now {epoch}); {owner} must enrol again first"
            )
        return epoch

    def AmendRecord(
        self,
        ctx: TxContext,
        record_id: str,
        cid: str,
        sha256: str,
        capsule_b64: str,
        format_version: str,
    ) -> Any:
        """A new version of a record (owner or original creator); older versions stay readable."""
        caller = ctx.registered()
        record = self._record(ctx, record_id)
        if caller.name not in (record["owner"], record["creator"]):
            raise ChaincodeError(f"identity {caller.name} may not amend record {record_id}")
        if not _CID_RE.fullmatch(cid):
            raise ChaincodeError(f"cid {cid!r} is not a content identifier")
        if not _SHA256_RE.fullmatch(sha256):
            raise ChaincodeError("sha256 must be 64 lower-case hex digits")
        _check_b64(capsule_b64, "capsule", MAX_CAPSULE_BYTES)
        epoch = self._fresh_type_key_epoch(ctx, str(record["owner"]), str(record["type"]))
        amended = dict(record)
        amended.update(
            {
                "epoch": epoch,
                "cid": cid,
                "sha256": sha256,
                "capsule": capsule_b64,
                "format_version": _check_version(format_version),
                "version": int(record["version"]) + 1,
                "updated_at": ctx.now,
                "amended_by": caller.name,
                "tx_id": ctx.tx_id,
            }
        )
        ctx.put_json(amended, K_RECORD, record_id)
        ctx.put_json(amended, K_RECORD_VERSION, record_id, _seq(amended["version"]))
        ctx.log(
            record["owner"],
            "AmendRecord",
            "ok",
            record_id=record_id,
            detail={"version": amended["version"], "cid": cid},
        )
        return amended

    def _record(self, ctx: TxContext, record_id: str) -> dict[str, Any]:
        _check_id(record_id, "record id")
        record = ctx.get_json(K_RECORD, record_id)
        if record is None:
            raise ChaincodeError(f"record {record_id} does not exist")
        result: dict[str, Any] = record
        return result

    def _may_read(self, ctx: TxContext, caller: Caller, record: dict[str, Any]) -> bool:
        # The proxy reads pointers to check that a capsule it is given belongs to the record.
        if caller.role in (AUDITOR, PROXY) or caller.name in (record["owner"], record["creator"]):
            return True
        assert caller.ibe_id is not None
        grant, _ = self._valid_grant(ctx, record["owner"], record["type"], caller.ibe_id)
        return grant is not None

    def GetRecord(self, ctx: TxContext, record_id: str, version: str = "") -> Any:
        """A record pointer (latest or a given version): owner, creator, grantee, auditor, proxy."""
        caller = ctx.registered()
        record = self._record(ctx, record_id)
        if not self._may_read(ctx, caller, record):
            raise ChaincodeError(f"identity {caller.name} may not read record {record_id}")
        if version == "":
            return record
        n = _check_int(version, "version", 1, int(record["version"]))
        return ctx.get_json(K_RECORD_VERSION, record_id, _seq(n))

    def GetRecordHistory(self, ctx: TxContext, record_id: str) -> Any:
        """Every version of a record, oldest first."""
        caller = ctx.registered()
        record = self._record(ctx, record_id)
        if not self._may_read(ctx, caller, record):
            raise ChaincodeError(f"identity {caller.name} may not read record {record_id}")
        rows = ctx.stub.get_state_by_partial_composite_key(K_RECORD_VERSION, [record_id])
        return [canonical.loads(kv.value, "stored record") for kv in rows]

    def ListRecords(
        self, ctx: TxContext, patient: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of a patient's records (the patient or an auditor)."""
        caller = ctx.registered()
        _check_ibe(patient, "patient")
        if caller.name != patient and caller.role != AUDITOR:
            raise ChaincodeError(f"identity {caller.name} may not list records of {patient}")
        records, next_bm = ctx.index_page(K_RECORD_BY_OWNER, patient, K_RECORD, page_size, bookmark)
        return {"records": records, "bookmark": next_bm}

    def ListRecordVersions(self, ctx: TxContext, page_size: str = "", bookmark: str = "") -> Any:
        """One page of every version of every record, as ``{record_id, version, cid, sha256,
        epoch}`` in key order: what a store must hold (``ehrshare store check/gc``). Org admins
        and auditors only; it names no owner or type."""
        ctx.registered(ADMIN, AUDITOR)
        _check_bookmark(bookmark, K_RECORD_VERSION)
        rows, next_bm = ctx.stub.get_state_by_partial_composite_key_with_pagination(
            K_RECORD_VERSION, [], _page_size(page_size), bookmark
        )
        versions = []
        for kv in rows:
            rec = canonical.loads(kv.value, f"stored {K_RECORD_VERSION}")
            versions.append(
                {
                    "record_id": rec["record_id"],
                    "version": rec["version"],
                    "cid": rec["cid"],
                    "sha256": rec["sha256"],
                    "epoch": rec.get("epoch", ""),
                }
            )
        return {"versions": versions, "bookmark": next_bm}

    def ListGrantedRecords(
        self, ctx: TxContext, grant_id: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of the records a grant lets its grantee read now: the owner's records of
        the grant's type (the grantee only, while the grant and its chain are valid). A page
        may hold fewer records than asked for; follow the bookmark until it is empty."""
        caller = ctx.registered()
        grant = self._grant(ctx, grant_id)
        if grant["grantee"] != caller.ibe_id:
            raise ChaincodeError(f"identity {caller.name} is not the grantee of grant {grant_id}")
        problem = self._grant_problem(ctx, grant)
        if problem is not None:
            raise ChaincodeError(problem)
        records, next_bm = ctx.index_page(
            K_RECORD_BY_OWNER, grant["owner"], K_RECORD, page_size, bookmark
        )
        return {"records": [r for r in records if r["type"] == grant["type"]], "bookmark": next_bm}

    # --- grants ------------------------------------------------------------------------------

    def _grant(self, ctx: TxContext, grant_id: str) -> dict[str, Any]:
        _check_id(grant_id, "grant id")
        grant = ctx.get_json(K_GRANT, grant_id)
        if grant is None:
            raise ChaincodeError(f"grant {grant_id} does not exist")
        result: dict[str, Any] = grant
        return result

    def _grant_problem(
        self,
        ctx: TxContext,
        grant: dict[str, Any],
        walked: list[dict[str, Any]] | None = None,
        epoch: str = "",
    ) -> str | None:
        """Why a grant is not valid now (walking its forwarding chain), or None.

        ``walked`` collects the grants read, leaf first, so a caller that also needs the chain
        does not read every grant a second time (on a peer, each read is a round trip).
        ``epoch``: the master-key epoch of the record to be read; a grant's re-keys come from
        the type keys of the epoch it was made in, so a grant of another epoch does not serve.
        """
        current: dict[str, Any] | None = grant
        child: dict[str, Any] | None = None
        while current is not None:
            if walked is not None:
                walked.append(current)
            if current["state"] != "active":
                return f"grant {current['grant_id']} is revoked"
            if epoch and current.get("epoch") and current["epoch"] != epoch:
                return (
                    f"grant {current['grant_id']} was made under master key epoch "
                    f"{current['epoch']}, the record under epoch {epoch}; a grant covers only "
                    "records of its own master key (the owner still reads the record)"
                )
            if ctx.now >= int(current["expiry"]):
                return f"grant {current['grant_id']} expired at {current['expiry']}"
            if child is not None and (
                int(child["max_hops"]) >= int(current["max_hops"])
                or int(child["hop"]) != int(current["hop"]) + 1
            ):
                return f"grant {child['grant_id']} exceeds the hops of its parent"
            parent_id = current["parent_grant_id"]
            child = current
            current = self._grant(ctx, parent_id) if parent_id else None
        return None

    def _valid_grant(
        self,
        ctx: TxContext,
        owner: str,
        record_type: str,
        grantee: str,
        walked: list[dict[str, Any]] | None = None,
        epoch: str = "",
    ) -> tuple[dict[str, Any] | None, str]:
        """The first valid grant (key order) for (owner, type, grantee), else the reason.

        ``walked`` receives the valid grant's chain, leaf first (see :meth:`_grant_problem`).
        """
        rows = ctx.stub.get_state_by_partial_composite_key(
            K_GRANT_MATCH, [owner, record_type, grantee]
        )
        first_problem = ""
        for kv in rows:
            _, attrs = ctx.stub.split_composite_key(kv.key)
            grant = self._grant(ctx, attrs[3])
            tried: list[dict[str, Any]] = []
            problem = self._grant_problem(ctx, grant, tried, epoch)
            if problem is None:
                if walked is not None:
                    walked.extend(tried)
                return grant, ""
            if not first_problem:
                first_problem = problem
        if first_problem:
            return None, first_problem
        return None, f"identity {grantee} has no grant for type {record_type} of {owner}"

    def GrantAccess(
        self,
        ctx: TxContext,
        record_type: str,
        grantee: str,
        expiry: str,
        max_hops: str,
        allowed_next: str,
        parent_grant_id: str,
        proxy: str,
        grant_id: str = "",
    ) -> Any:
        """Grant ``grantee`` access to the owner's records of a type until ``expiry``.

        The owner grants directly; a grantee forwards (``parent_grant_id``) within its remaining
        hops, never beyond its own expiry and only to an allowed next grantee when a list is set.
        ``proxy`` names the registered proxy identity that holds this grant's re-key: only that
        proxy re-encrypts this grant's hop. It is required and must not be empty (a grant no
        proxy can serve would decide requests that nobody can fulfil). ``grant_id`` is the id
        the grantor chose (``g-`` and 32 lower-case hex digits) and already delivered the re-key
        under, so the grant is usable from the moment it commits; without it the id is derived
        from the transaction id.
        """
        caller = ctx.registered()
        assert caller.ibe_id is not None
        if proxy == "":
            raise ChaincodeError("grant needs the proxy that will hold its re-key")
        _check_type(record_type)
        _check_ibe(grantee, "grantee")
        exp = _check_int(expiry, "expiry", 0, 2**62)
        hops = _check_int(max_hops, "max hops", 0, MAX_HOPS)
        next_ok = [
            _check_ibe(x, "allowed next grantee")
            for x in _json_list(allowed_next, "allowed next grantees")
        ]
        if parent_grant_id == "":
            if caller.role != PATIENT:
                raise ChaincodeError(f"identity {caller.name} is not a patient and may not grant")
            owner, hop = caller.ibe_id, 0
        else:
            parent = self._grant(ctx, parent_grant_id)
            if parent["grantee"] != caller.ibe_id:
                raise ChaincodeError(
                    f"identity {caller.name} is not the grantee of grant {parent_grant_id}"
                )
            problem = self._grant_problem(ctx, parent)
            if problem is not None:
                raise ChaincodeError(problem)
            if int(parent["max_hops"]) < 1:
                raise ChaincodeError(f"grant {parent_grant_id} allows no further hops")
            if parent.get("epoch") and parent["epoch"] != self._epoch(ctx):
                raise ChaincodeError(
                    f"grant {parent_grant_id} was made under an earlier master key; it can "
                    "no longer be forwarded (ask the owner for a new grant)"
                )
            if parent["type"] != record_type:
                raise ChaincodeError(f"grant {parent_grant_id} does not cover type {record_type}")
            if hops > int(parent["max_hops"]) - 1:
                raise ChaincodeError(
                    f"max hops {hops} exceeds the {int(parent['max_hops']) - 1} left by grant "
                    f"{parent_grant_id}"
                )
            if exp > int(parent["expiry"]):
                raise ChaincodeError(f"expiry {exp} is later than grant {parent_grant_id} allows")
            if parent["allowed_next"] and grantee not in parent["allowed_next"]:
                raise ChaincodeError(
                    f"grant {parent_grant_id} does not allow forwarding to {grantee}"
                )
            owner, hop = parent["owner"], int(parent["hop"]) + 1
        if grantee in (caller.ibe_id, owner):
            raise ChaincodeError(f"identity {grantee} may not be granted its own records")
        if ctx.get_json(K_IBE, grantee) is None:
            raise ChaincodeError(f"grantee {grantee} is not registered")
        if exp <= ctx.now:
            raise ChaincodeError(f"expiry {exp} is not after the transaction time {ctx.now}")
        self._check_proxy(ctx, proxy)
        # The re-key is made to the grantee's type key on chain: one of an earlier master key
        # would leave the grantee a capsule none of its keys of this grant's epoch opens.
        epoch = self._fresh_type_key_epoch(ctx, grantee, record_type)
        if grant_id == "":
            grant_id = "g-" + ctx.tx_id[:32]
        elif not _GRANT_ID_RE.fullmatch(grant_id):
            raise ChaincodeError(
                f"grant id {grant_id!r} is invalid: use 'g-' and 32 lower-case hex digits"
            )
        elif ctx.stub.get_state(ctx.key(K_GRANT, grant_id)) is not None:
            raise ChaincodeError(f"grant {grant_id} already exists")
        grant = {
            "grant_id": grant_id,
            "owner": owner,
            "grantor": caller.ibe_id,
            "grantee": grantee,
            "type": record_type,
            "expiry": exp,
            "max_hops": hops,
            "hop": hop,
            "allowed_next": sorted(set(next_ok)),
            "parent_grant_id": parent_grant_id,
            "proxy": proxy,
            "state": "active",
            "epoch": epoch,
            "created_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(grant, K_GRANT, grant_id)
        ctx.put_index(K_GRANT_BY_OWNER, owner, grant_id)
        ctx.put_index(K_GRANT_BY_GRANTEE, grantee, grant_id)
        if parent_grant_id:
            # A forward: its grantor (a grantee further up) finds it here, not by owner.
            ctx.put_index(K_GRANT_BY_GRANTOR, caller.ibe_id, grant_id)
        ctx.put_index(K_GRANT_MATCH, owner, record_type, grantee, grant_id)
        ctx.log(
            owner,
            "GrantAccess",
            "ok",
            grant_id=grant_id,
            detail={
                "grantee": grantee,
                "type": record_type,
                "expiry": exp,
                "max_hops": hops,
                "hop": hop,
                "proxy": proxy,
            },
        )
        return grant

    def _check_proxy(self, ctx: TxContext, proxy: str) -> None:
        _check_ibe(proxy, "proxy")
        if ctx.get_json(K_IBE, proxy) is None:
            raise ChaincodeError(f"proxy {proxy} is not registered")
        if self._identity(ctx, proxy)["role"] != PROXY:
            raise ChaincodeError(f"identity {proxy} is not a proxy")

    @staticmethod
    def _grant_chain(walked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The hops of a forwarding chain walked leaf first, root first: grant id and proxy."""
        return [{"grant_id": g["grant_id"], "proxy": g["proxy"]} for g in reversed(walked)]

    def RevokeAccess(self, ctx: TxContext, grant_id: str) -> Any:
        """Revoke a grant (its owner or its grantor); forwarded grants below it fail with it."""
        caller = ctx.registered()
        grant = self._grant(ctx, grant_id)
        if caller.name not in (grant["owner"], grant["grantor"]):
            raise ChaincodeError(f"identity {caller.name} may not revoke grant {grant_id}")
        if grant["state"] != "active":
            raise ChaincodeError(f"grant {grant_id} is already revoked")
        revoked = dict(grant)
        revoked.update({"state": "revoked", "revoked_at": ctx.now, "revoked_by": caller.name})
        ctx.put_json(revoked, K_GRANT, grant_id)
        ctx.log(
            grant["owner"],
            "RevokeAccess",
            "ok",
            grant_id=grant_id,
            detail={"grantee": grant["grantee"], "type": grant["type"]},
        )
        return revoked

    def GetGrant(self, ctx: TxContext, grant_id: str) -> Any:
        """One grant: its owner, grantor, grantee, a proxy or an auditor."""
        caller = ctx.registered()
        grant = self._grant(ctx, grant_id)
        if caller.role not in (AUDITOR, PROXY) and caller.name not in (
            grant["owner"],
            grant["grantor"],
            grant["grantee"],
        ):
            raise ChaincodeError(f"identity {caller.name} may not read grant {grant_id}")
        return grant

    def ListGrants(
        self, ctx: TxContext, party: str, side: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of the grants a party gave as the patient (side ``owner``), forwarded as a
        grantee (side ``grantor``), or received (side ``grantee``)."""
        caller = ctx.registered()
        _check_ibe(party, "party")
        indexes = {
            "owner": K_GRANT_BY_OWNER,
            "grantor": K_GRANT_BY_GRANTOR,
            "grantee": K_GRANT_BY_GRANTEE,
        }
        if side not in indexes:
            raise ChaincodeError(f"side {side!r} is not owner, grantor or grantee")
        if caller.name != party and caller.role != AUDITOR:
            raise ChaincodeError(f"identity {caller.name} may not list grants of {party}")
        index = indexes[side]
        grants, next_bm = ctx.index_page(index, party, K_GRANT, page_size, bookmark)
        return {"grants": grants, "bookmark": next_bm}

    # --- access ------------------------------------------------------------------------------

    def RequestAccess(self, ctx: TxContext, record_id: str, grant_id: str = "") -> Any:
        """Decide a request to read a record at the transaction's time, and log it either way.

        A denial is a successful transaction with ``decision: deny``: the attempt is audit-worthy
        and grants nothing. Only an allowed decision creates the approval the proxy checks.
        ``grant_id`` names the grant the requester reads under (its re-keys sit at the proxies
        that grant's chain names); without it the first valid grant in key order is used. A
        named grant that is not the caller's or does not cover the record is an error. An
        allowed answer also carries ``record``, the record pointer decided on.
        """
        caller = ctx.registered()
        assert caller.ibe_id is not None
        record = self._record(ctx, record_id)
        owner = record["owner"]
        epoch = str(record.get("epoch", ""))
        grant: dict[str, Any] | None
        named: dict[str, Any] | None = None
        walked: list[dict[str, Any]] = []  # the decided grant's chain, leaf first
        if grant_id != "":
            named = self._grant(ctx, grant_id)
            if named["grantee"] != caller.ibe_id:
                raise ChaincodeError(
                    f"identity {caller.name} is not the grantee of grant {grant_id}"
                )
            if named["owner"] != owner or named["type"] != record["type"]:
                raise ChaincodeError(f"grant {grant_id} does not cover record {record_id}")
        if caller.ibe_id == owner:
            grant, reason, grant_id, hop = None, "owner", "owner", 0
            decision = "allow"
        else:
            if named is not None:
                problem = self._grant_problem(ctx, named, walked, epoch)
                grant, reason = (named, "") if problem is None else (None, problem)
            else:
                grant, reason = self._valid_grant(
                    ctx, owner, record["type"], caller.ibe_id, walked, epoch
                )
            decision = "allow" if grant is not None else "deny"
            grant_id = grant["grant_id"] if grant is not None else ""
            hop = int(grant["hop"]) if grant is not None else 0
            if grant is not None:
                reason = "grant"
        access_id = "a-" + ctx.tx_id[:32]
        access = {
            "access_id": access_id,
            "record_id": record_id,
            "record_version": record["version"],
            "capsule_sha256": hashlib.sha256(base64.b64decode(record["capsule"])).hexdigest(),
            "owner": owner,
            "type": record["type"],
            "requester": caller.ibe_id,
            "decision": decision,
            "reason": reason,
            "grant_id": grant_id,
            "hop": hop,
            "chain": self._grant_chain(walked) if grant is not None else [],
            "at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(access, K_ACCESS, access_id)
        if decision == "allow":
            ctx.put_json(access, K_APPROVAL, access_id)
        ctx.log(
            owner,
            "RequestAccess",
            "requested",
            record_id=record_id,
            detail={"requester": caller.ibe_id, "access_id": access_id},
        )
        ctx.log(
            owner,
            "AccessDecision",
            decision,
            record_id=record_id,
            grant_id=grant_id,
            detail={"requester": caller.ibe_id, "access_id": access_id, "reason": reason},
        )
        if decision == "allow":
            # The pointer the requester may now read (the version decided on), returned but not
            # stored: the reader needs its CID and capsule and need not ask GetRecord for it.
            return access | {"record": record}
        return access

    def CheckApproval(self, ctx: TxContext, access_id: str) -> Any:
        """For the proxy: the committed approval ``access_id`` (what RequestAccess returned).

        Approvals are keyed by access id, so concurrent requests of one record by one member
        each get their own. The approval must still stand now: a grant revoked or expired since
        then fails. A proxy may check only an approval whose grant chain names it (it holds one
        of the chain's re-keys). The answer carries the re-encryptions reported so far
        (``reports``: hops applied, proxy, output capsule hash), so the proxy of a later hop can
        check the partly re-encrypted capsule it is given. The proxy compares record,
        requester, grant and capsule hash itself and enforces single use.
        """
        caller = ctx.registered(PROXY, AUDITOR)
        _check_id(access_id, "access id")
        access = ctx.get_json(K_APPROVAL, access_id)
        if access is None:
            raise ChaincodeError(f"access {access_id} has no committed approval")
        if caller.role == PROXY:
            self._require_named_proxy(access, caller.name)
        grant_id = str(access["grant_id"])
        if grant_id != "owner":
            problem = self._grant_problem(ctx, self._grant(ctx, grant_id))
            if problem is not None:
                raise ChaincodeError(problem)
        rows = ctx.stub.get_state_by_partial_composite_key(K_REENCRYPTION, [access_id])
        reports = [canonical.loads(kv.value, "stored re-encryption report") for kv in rows]
        return dict(access) | {"reports": reports}

    def _require_named_proxy(self, access: dict[str, Any], proxy: str) -> None:
        if not any(hop.get("proxy") == proxy for hop in access.get("chain", [])):
            raise ChaincodeError(f"no grant of access {access['access_id']} names proxy {proxy}")

    def ReportReencryption(
        self,
        ctx: TxContext,
        access_id: str,
        outcome: str,
        detail: str = "",
        applied: str = "",
        capsule_sha256: str = "",
    ) -> Any:
        """The proxy reports a re-encryption it performed (or refused) for an access.

        A proxy named by the access's grant chain reports; with ``applied`` (how many hops the
        capsule it released carries) and ``capsule_sha256`` (that capsule's hash) the report is
        kept, once per hop count, for the proxy of the next hop to check its input against.
        """
        caller = ctx.registered(PROXY)
        _check_id(access_id, "access id")
        if outcome not in ("ok", "failed"):
            raise ChaincodeError(f"outcome {outcome!r} is not ok or failed")
        if len(detail) > 256:
            raise ChaincodeError("detail is longer than 256 characters")
        access = ctx.get_json(K_ACCESS, access_id)
        if access is None:
            raise ChaincodeError(f"access {access_id} does not exist")
        if access["decision"] != "allow":
            raise ChaincodeError(f"access {access_id} was denied")
        self._require_named_proxy(access, caller.name)
        log_detail: dict[str, Any] = {"access_id": access_id, "proxy": caller.name, "note": detail}
        if applied != "" or capsule_sha256 != "":
            chain = access["chain"]
            n = _check_int(applied, "applied hops", 1, len(chain))
            if outcome != "ok":
                raise ChaincodeError("only an ok re-encryption reports applied hops")
            if not _SHA256_RE.fullmatch(capsule_sha256):
                raise ChaincodeError("capsule sha256 must be 64 lower-case hex digits")
            if chain[n - 1]["proxy"] != caller.name:
                raise ChaincodeError(
                    f"hop {n} of access {access_id} is for proxy {chain[n - 1]['proxy']}, not "
                    f"{caller.name}"
                )
            if ctx.stub.get_state(ctx.key(K_REENCRYPTION, access_id, _seq(n))) is not None:
                raise ChaincodeError(f"hop {n} of access {access_id} was already reported")
            report = {
                "access_id": access_id,
                "applied": n,
                "proxy": caller.name,
                "capsule_sha256": capsule_sha256,
                "tx_id": ctx.tx_id,
            }
            ctx.put_json(report, K_REENCRYPTION, access_id, _seq(n))
            log_detail |= {"applied": n, "capsule_sha256": capsule_sha256}
        entry = ctx.log(
            access["owner"],
            "ReportReencryption",
            outcome,
            record_id=access["record_id"],
            grant_id=access["grant_id"],
            detail=log_detail,
        )
        return entry

    # --- KGC roster and DKG board ------------------------------------------------------------
    #
    # A DKG session is opened by an org admin with an ordered roster of KGC identities; the
    # session stores the roster with a snapshot of the keys they published, so users verify
    # partial keys against what the chain says rather than a file. Phases close by a committed
    # CloseDKGPhase (every roster node posted, or the phase timed out by transaction time), and
    # every post reads the session record a close writes, so MVCC orders a late post against the
    # close: all nodes read the same closed set. The result is final once τ roster nodes posted
    # byte-identical views.

    def PublishKGCKey(self, ctx: TxContext, public_key_b64: str) -> Any:
        """A KGC node publishes its long-term DKG/extraction public key (re-publishing the same
        key only logs; a new key is refused while a session still collecting bundles uses the
        old one)."""
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        _check_b64(public_key_b64, "kgc public key", MAX_KGC_KEY_BYTES)
        existing = ctx.get_json(K_KGC_KEY, caller.ibe_id)
        if existing is not None and existing["public_key"] == public_key_b64:
            ctx.log(
                SYSTEM_CHAIN,
                "PublishKGCKey",
                "repeated",
                detail={"kgc": caller.ibe_id, "sha256": existing["sha256"]},
            )
            return existing
        if existing is not None:
            for kv in ctx.stub.get_state_by_partial_composite_key(K_KGC_USE, [caller.ibe_id]):
                _, attrs = ctx.stub.split_composite_key(kv.key)
                session = ctx.get_json(K_DKG_SESSION, attrs[1])
                if session is not None and session["phase"] not in (DKG_DONE, DKG_FAILED):
                    raise ChaincodeError(
                        f"kgc {caller.ibe_id} cannot replace its public key: dkg session "
                        f"{attrs[1]} is still collecting bundles with it"
                    )
        record = {
            "ibe_id": caller.ibe_id,
            "public_key": public_key_b64,
            "sha256": hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest(),
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(record, K_KGC_KEY, caller.ibe_id)
        ctx.log(
            SYSTEM_CHAIN,
            "PublishKGCKey",
            "replaced" if existing is not None else "ok",
            detail={"kgc": caller.ibe_id, "sha256": record["sha256"]},
        )
        return record

    def GetKGCKey(self, ctx: TxContext, ibe_id: str) -> Any:
        """The public key a KGC node published."""
        ctx.registered()
        _check_ibe(ibe_id, "kgc")
        record = ctx.get_json(K_KGC_KEY, ibe_id)
        if record is None:
            raise ChaincodeError(f"kgc {ibe_id} has not published a public key")
        return record

    def OpenDKGSession(
        self,
        ctx: TxContext,
        nonce: str,
        threshold: str,
        roster_json: str,
        phase_timeout_s: str,
        replace_master_key: str = "",
    ) -> Any:
        """An org admin opens a DKG session: the ordered roster (node j is entry j), τ and the
        phase timeout; the roster's published keys are snapshotted into the session.

        A DKG makes a new master key. Once a key is final and records exist, that would leave
        every record unreadable under the new key, so it is refused unless
        ``replace_master_key`` is ``"replace-master-key"``; OpenReshareSession changes the
        committee and keeps the key.
        """
        caller = ctx.registered(ADMIN)
        _check_nonce(nonce)
        if replace_master_key not in ("", "replace-master-key"):
            raise ChaincodeError(
                "replace_master_key must be empty or 'replace-master-key', got "
                f"{replace_master_key!r}"
            )
        roster = [_check_ibe(x, "roster member") for x in _json_list(roster_json, "roster")]
        if not MIN_KGC_NODES <= len(roster) <= MAX_KGC_NODES:
            raise ChaincodeError(
                f"roster has {len(roster)} members; a dkg needs {MIN_KGC_NODES} to {MAX_KGC_NODES}"
            )
        seen: set[str] = set()
        for member in roster:
            if member in seen:
                raise ChaincodeError(f"kgc {member} appears twice in the roster")
            seen.add(member)
        # τ=1 would hand every node the master key (the DKG refuses it too).
        tau = _check_int(threshold, "threshold", 2, len(roster))
        timeout = _check_int(phase_timeout_s, "phase timeout", 1, MAX_PHASE_TIMEOUT_S)
        if ctx.stub.get_state(ctx.key(K_DKG_SESSION, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")
        if ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")
        latest = ctx.get_json(K_DKG_LATEST)
        # A full scan, but of a rare admin transaction; a record counter would be a hot key that
        # every RegisterRecord writes.
        if (
            latest is not None
            and not replace_master_key
            and ctx.stub.get_state_by_partial_composite_key(K_RECORD, [])
        ):
            raise ChaincodeError(
                f"a new dkg would replace the master key of dkg session {latest['nonce']}, under "
                "which records are stored; reshare the key to a new committee instead "
                "(OpenReshareSession, 'ehrshare kgc reshare'), or open it deliberately with "
                "'ehrshare kgc dkg open --new-master-key' (records keep the key of their epoch)"
            )
        keys: list[str] = []
        owner_of: dict[str, str] = {}
        for member in roster:
            record = ctx.get_json(K_KGC_KEY, member)
            if record is None:
                raise ChaincodeError(f"kgc {member} has not published a public key")
            key = str(record["public_key"])
            if key in owner_of:
                raise ChaincodeError(
                    f"kgc {owner_of[key]} and kgc {member} published the same public key"
                )
            owner_of[key] = member
            keys.append(key)
        session = {
            "nonce": nonce,
            "threshold": tau,
            "roster": roster,
            "keys": keys,
            "phase": DKG_PHASES[0],
            "phase_opened_at": ctx.now,
            "phase_timeout_s": timeout,
            "closed": [],
            "opened_at": ctx.now,
            "opened_by": caller.name,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(session, K_DKG_SESSION, nonce)
        for member in roster:
            ctx.put_index(K_KGC_USE, member, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "OpenDKGSession",
            "ok",
            detail={"nonce": nonce, "threshold": tau, "roster": roster},
        )
        return session

    def OpenReshareSession(
        self,
        ctx: TxContext,
        nonce: str,
        threshold: str,
        roster_json: str,
        indices_json: str,
        dealers_json: str,
        phase_timeout_s: str,
    ) -> Any:
        """An org admin opens a resharing of the latest final key to a new committee: the new
        roster (ordered KGC identities), their share indices, the dealers (members of the
        current committee) and the new τ. The master key stays; the result must keep it.

        A member of the current committee keeps its share index; a new member takes an index
        no current member holds. At least the current τ dealers are needed.
        """
        caller = ctx.registered(ADMIN)
        _check_nonce(nonce)
        latest = ctx.get_json(K_DKG_LATEST)
        if latest is None:
            raise ChaincodeError("no dkg session has finished; there is no key to reshare")
        current = ctx.get_json(K_DKG_RESULT, latest["nonce"])
        assert isinstance(current, dict)  # K_DKG_LATEST only ever names a final result
        old_roster: list[str] = list(current["roster"])
        old_indices: list[int] = list(current.get("indices") or range(1, len(old_roster) + 1))
        old_tau = int(current["threshold"])
        roster = [_check_ibe(x, "roster member") for x in _json_list(roster_json, "roster")]
        if not MIN_KGC_NODES <= len(roster) <= MAX_KGC_NODES:
            raise ChaincodeError(
                f"roster has {len(roster)} members; a committee needs {MIN_KGC_NODES} to "
                f"{MAX_KGC_NODES}"
            )
        if len(set(roster)) != len(roster):
            raise ChaincodeError("the roster names a kgc twice")
        indices = _json_ints(indices_json, "indices")
        if len(indices) != len(roster):
            raise ChaincodeError(
                f"indices has {len(indices)} entries; the roster has {len(roster)}"
            )
        if len(set(indices)) != len(indices) or any(not 1 <= i <= 65535 for i in indices):
            raise ChaincodeError("share indices must be distinct integers from 1 to 65535")
        held = dict(zip(old_indices, old_roster, strict=True))
        for member, index in zip(roster, indices, strict=True):
            if member in old_roster and old_indices[old_roster.index(member)] != index:
                raise ChaincodeError(
                    f"kgc {member} holds share {old_indices[old_roster.index(member)]} of the "
                    f"current key; it keeps that index, not {index}"
                )
            if member not in old_roster and index in held:
                raise ChaincodeError(
                    f"share index {index} belongs to kgc {held[index]} of the current committee; "
                    f"give kgc {member} another index"
                )
        dealers = [_check_ibe(x, "dealer") for x in _json_list(dealers_json, "dealers")]
        if len(set(dealers)) != len(dealers):
            raise ChaincodeError("the dealers name a kgc twice")
        for member in dealers:
            if member not in old_roster:
                raise ChaincodeError(
                    f"dealer {member} is not in the committee of dkg session {latest['nonce']}"
                )
        if len(dealers) < old_tau:
            raise ChaincodeError(
                f"{len(dealers)} dealers cannot reshare a key with threshold {old_tau}"
            )
        tau = _check_int(threshold, "threshold", 2, len(roster))
        timeout = _check_int(phase_timeout_s, "phase timeout", 1, MAX_PHASE_TIMEOUT_S)
        if ctx.stub.get_state(ctx.key(K_DKG_SESSION, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} already exists")

        def snapshot(members: list[str]) -> list[str]:
            keys: list[str] = []
            for member in members:
                record = ctx.get_json(K_KGC_KEY, member)
                if record is None:
                    raise ChaincodeError(f"kgc {member} has not published a public key")
                if record["public_key"] in keys:
                    raise ChaincodeError(f"kgc {member} published the same key as another kgc")
                keys.append(str(record["public_key"]))
            return keys

        session = {
            "nonce": nonce,
            "kind": "reshare",
            "threshold": tau,
            "roster": roster,
            "keys": snapshot(roster),
            "indices": indices,
            "dealers": dealers,
            "dealer_keys": snapshot(dealers),
            "dealer_indices": [old_indices[old_roster.index(d)] for d in dealers],
            "previous": latest["nonce"],
            "previous_threshold": old_tau,
            "mpk": current["mpk"],
            "phase": DKG_PHASES[0],
            "phase_opened_at": ctx.now,
            "phase_timeout_s": timeout,
            "closed": [],
            "opened_at": ctx.now,
            "opened_by": caller.name,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(session, K_DKG_SESSION, nonce)
        for member in sorted(set(roster) | set(dealers)):
            ctx.put_index(K_KGC_USE, member, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "OpenReshareSession",
            "ok",
            detail={
                "nonce": nonce,
                "threshold": tau,
                "roster": roster,
                "dealers": dealers,
                "previous": latest["nonce"],
            },
        )
        return session

    def GetDKGSession(self, ctx: TxContext, nonce: str) -> Any:
        """A session's roster, key snapshot, τ and phases, with who posted in the open phase and
        how far its result got (``result``: final, views published, the largest agreeing set)."""
        ctx.registered()
        _check_nonce(nonce)
        session = self._dkg_session(ctx, nonce)
        posted: list[str] = []
        if session["phase"] in DKG_PHASES:
            posted = self._dkg_posters(ctx, nonce, session["phase"])
        counts: dict[str, int] = {}
        for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce]):
            d = str(canonical.loads(kv.value, "stored dkg view")["digest"])
            counts[d] = counts.get(d, 0) + 1
        final = ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None
        result = {
            "final": final,
            "views": sum(counts.values()),
            "agree": max(counts.values(), default=0),
        }
        return {**session, "posted": posted, "result": result}

    def _dkg_session(self, ctx: TxContext, nonce: str) -> dict[str, Any]:
        session = ctx.get_json(K_DKG_SESSION, nonce)
        if not isinstance(session, dict):
            raise ChaincodeError(f"dkg session {nonce} does not exist")
        return session

    def _dkg_posters(self, ctx: TxContext, nonce: str, phase: str) -> list[str]:
        rows = ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, phase])
        return [str(canonical.loads(kv.value, "stored dkg bundle")["poster"]) for kv in rows]

    @staticmethod
    def _phase_must_be_open(session: dict[str, Any], phase: str) -> None:
        current = session["phase"]
        if current == phase:
            return
        nonce = session["nonce"]
        if current == DKG_FAILED:
            raise ChaincodeError(_failed_message(session))
        if current == DKG_DONE or DKG_PHASES.index(phase) < DKG_PHASES.index(current):
            raise ChaincodeError(f"{phase} phase of dkg session {nonce} is closed")
        raise ChaincodeError(
            f"{phase} phase of dkg session {nonce} is not open yet; the open phase is {current}"
        )

    def PostDKGBundle(
        self, ctx: TxContext, nonce: str, phase: str, bundle_b64: str, format_version: str
    ) -> Any:
        """A roster node posts its deal, response or justification bundle in the open phase.

        The bundle's header must name this session, this phase and the poster's own roster
        position as sender (the chain binds a sender index to the identity that posts it).
        """
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        _check_nonce(nonce)
        _check_phase(phase)
        _check_b64(bundle_b64, "dkg bundle", MAX_DKG_BUNDLE_BYTES)
        version = _check_version(format_version)
        # Read before anything else that may fail late: this read is what makes a post conflict
        # (MVCC) with a close of its phase that commits first.
        session = self._dkg_session(ctx, nonce)
        senders = _senders(session, phase)
        if caller.ibe_id not in senders:
            if _is_reshare(session):
                who = "the new committee" if phase == DKG_PHASES[1] else "the dealers"
                raise ChaincodeError(
                    f"kgc {caller.ibe_id} is not in {who} of reshare session {nonce}; "
                    f"{phase} bundles come from {who}"
                )
            raise ChaincodeError(f"kgc {caller.ibe_id} is not in the roster of dkg session {nonce}")
        self._phase_must_be_open(session, phase)
        position = senders.index(caller.ibe_id) + 1
        _check_bundle_header(base64.b64decode(bundle_b64), nonce, phase, position, caller.ibe_id)
        if ctx.stub.get_state(ctx.key(K_DKG, nonce, phase, caller.ibe_id)) is not None:
            raise ChaincodeError(
                f"kgc {caller.ibe_id} already posted a {phase} bundle for session {nonce}"
            )
        bundle = {
            "nonce": nonce,
            "phase": phase,
            "poster": caller.ibe_id,
            "sender": position,
            "bundle": bundle_b64,
            "format_version": version,
            "posted_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(bundle, K_DKG, nonce, phase, caller.ibe_id)
        ctx.log(
            SYSTEM_CHAIN,
            "PostDKGBundle",
            "ok",
            detail={"nonce": nonce, "phase": phase, "sender": position},
        )
        return {k: v for k, v in bundle.items() if k != "bundle"}

    def CloseDKGPhase(self, ctx: TxContext, nonce: str, phase: str) -> Any:
        """Close the open phase once every roster node posted in it or its timeout passed
        (by transaction time); the next phase opens. Bundles of a closed phase are refused.

        The justification phase also closes once every accused dealer posted: only dealers
        named in a complaint post in it, so waiting for all n would always mean the timeout.
        """
        caller = ctx.registered()
        _check_nonce(nonce)
        _check_phase(phase)
        session = self._dkg_session(ctx, nonce)
        if caller.role != ADMIN and not _takes_part(session, caller.ibe_id):
            raise ChaincodeError(
                f"identity {caller.name} may not close phases of dkg session {nonce}: "
                "it is neither in the roster nor an admin"
            )
        self._phase_must_be_open(session, phase)
        posters = self._dkg_posters(ctx, nonce, phase)
        n = len(_senders(session, phase))
        deadline = int(session["phase_opened_at"]) + int(session["phase_timeout_s"])
        timed_out = len(posters) < n and ctx.now >= deadline
        if len(posters) < n and not timed_out:
            waiting = (
                sorted(set(self._accused(ctx, session)) - set(posters))
                if phase == DKG_PHASES[2]
                else None
            )
            if waiting is None:
                raise ChaincodeError(
                    f"{phase} phase of dkg session {nonce} cannot close yet: {len(posters)} of "
                    f"{n} roster nodes posted and its timeout ends at {deadline}"
                )
            if waiting:
                raise ChaincodeError(
                    f"{phase} phase of dkg session {nonce} cannot close yet: accused dealers "
                    f"{', '.join(waiting)} have not posted and its timeout ends at {deadline}"
                )
        updated = self._end_phase(ctx, session, caller.name, posters=posters, timed_out=timed_out)
        ctx.log(
            SYSTEM_CHAIN,
            "CloseDKGPhase",
            "ok",
            detail={"nonce": nonce, "phase": phase, "posters": len(posters)},
        )
        return updated

    def _end_phase(
        self,
        ctx: TxContext,
        session: dict[str, Any],
        closed_by: str,
        *,
        posters: list[str] | None = None,
        by_result: bool = False,
        timed_out: bool = False,
    ) -> dict[str, Any]:
        """Write the session with its open phase closed and the next one (or done) open."""
        phase = session["phase"]
        nonce = session["nonce"]
        if posters is None:
            posters = self._dkg_posters(ctx, nonce, phase)
        following = DKG_PHASES.index(phase) + 1
        closed = {
            "phase": phase,
            "closed_at": ctx.now,
            "closed_by": closed_by,
            "posters": sorted(posters),
            "timed_out": timed_out,
            "by_result": by_result,
        }
        updated = dict(session)
        updated.update(
            {
                "phase": DKG_PHASES[following] if following < len(DKG_PHASES) else DKG_DONE,
                "phase_opened_at": ctx.now,
                "closed": [*session["closed"], closed],
            }
        )
        if by_result:
            updated["phase"] = DKG_DONE
        ctx.put_json(updated, K_DKG_SESSION, nonce)
        return updated

    def _accused(self, ctx: TxContext, session: dict[str, Any]) -> list[str]:
        """Dealers that some response of the (closed) response phase did not accept.

        Reads only the response layout after the header (u16 n, then n status bytes; 0 is
        accepted) and counts every structurally whole response, signed validly or not, and
        every dealer that posted a deal. Nodes count only verified ones, so this set is a
        superset of theirs: an error here can only make the phase wait for its timeout, never
        close it before a dealer the nodes expect had its say.
        """
        nonce = session["nonce"]
        roster: list[str] = session["roster"]
        dealer_list = _senders(session, DKG_PHASES[0])
        dealers = set(self._dkg_posters(ctx, nonce, DKG_PHASES[0]))
        accused: set[str] = set()
        for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, DKG_PHASES[1]]):
            row = canonical.loads(kv.value, "stored dkg bundle")
            raw = base64.b64decode(row["bundle"])
            if len(raw) < DKG_HEADER_SIZE + 2:
                continue
            count = int.from_bytes(raw[DKG_HEADER_SIZE : DKG_HEADER_SIZE + 2], "big")
            statuses = raw[DKG_HEADER_SIZE + 2 : DKG_HEADER_SIZE + 2 + count]
            if len(statuses) != count:
                continue
            responder = roster.index(row["poster"]) + 1
            for dealer, status in enumerate(statuses[: len(dealer_list)], start=1):
                if status == 0 or dealer_list[dealer - 1] not in dealers:
                    continue
                if dealer != responder or _is_reshare(session):
                    accused.add(dealer_list[dealer - 1])
        return sorted(accused)

    def AbortDKGSession(self, ctx: TxContext, nonce: str, reason: str) -> Any:
        """Mark a session that can no longer finish as failed (a roster node or an admin).

        Allowed only when the chain itself shows the session cannot finish: the deal phase
        closed with fewer than τ dealers (QUAL is a subset of them), or so many views disagree
        that no view can reach τ any more, or every phase closed and the result phase's timeout
        passed without τ agreeing views. The caller's ``reason`` is kept beside the chain's
        ``cause``; the session then refuses bundles, closes and views.
        """
        caller = ctx.registered()
        _check_nonce(nonce)
        _check_reason(reason)
        session = self._dkg_session(ctx, nonce)
        if caller.role != ADMIN and not _takes_part(session, caller.ibe_id):
            raise ChaincodeError(
                f"identity {caller.name} may not abort dkg session {nonce}: it is neither in "
                "the roster nor an admin"
            )
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(_failed_message(session))
        if ctx.stub.get_state(ctx.key(K_DKG_RESULT, nonce)) is not None:
            raise ChaincodeError(f"dkg session {nonce} has a final result; it cannot be aborted")
        cause = self._abort_cause(ctx, session)
        failure = {
            "cause": cause,
            "reason": reason,
            "by": caller.name,
            "at": ctx.now,
            "tx_id": ctx.tx_id,
            "phase": session["phase"],
        }
        updated = {**session, "phase": DKG_FAILED, "phase_opened_at": ctx.now, "failure": failure}
        ctx.put_json(updated, K_DKG_SESSION, nonce)
        ctx.log(
            SYSTEM_CHAIN,
            "AbortDKGSession",
            "failed",
            detail={"nonce": nonce, "cause": cause, "reason": reason},
        )
        return updated

    def _abort_cause(self, ctx: TxContext, session: dict[str, Any]) -> str:
        """Why the session cannot finish, as the chain sees it; refuses while it still can."""
        nonce = session["nonce"]
        tau = int(session["threshold"])
        roster: list[str] = session["roster"]
        phase = session["phase"]
        if phase == DKG_PHASES[0]:
            raise ChaincodeError(
                f"dkg session {nonce} can still finish: its deal phase is open (close it first)"
            )
        dealers = len(self._dkg_posters(ctx, nonce, DKG_PHASES[0]))
        need = _dealer_threshold(session)
        if dealers < need:
            return (
                f"only {dealers} of {len(_senders(session, DKG_PHASES[0]))} dealers posted a "
                f"deal; threshold is {need}"
            )
        counts: dict[str, int] = {}
        for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce]):
            d = str(canonical.loads(kv.value, "stored dkg view")["digest"])
            counts[d] = counts.get(d, 0) + 1
        silent = len(roster) - sum(counts.values())
        best = max(counts.values(), default=0)
        if best + silent < tau:
            return (
                f"{len(counts)} different result views, at most {best} agree and {silent} "
                f"roster nodes have not published; threshold is {tau}"
            )
        deadline = int(session["phase_opened_at"]) + int(session["phase_timeout_s"])
        if phase == DKG_DONE and ctx.now >= deadline:
            return (
                f"every phase closed and the result timeout passed at {deadline} with {best} "
                f"of {tau} agreeing views"
            )
        if phase == DKG_DONE:
            raise ChaincodeError(
                f"dkg session {nonce} can still finish: {best} of {tau} views agree and its "
                f"result timeout ends at {deadline}"
            )
        raise ChaincodeError(
            f"dkg session {nonce} can still finish: its {phase} phase is open and "
            f"{dealers} dealers posted a deal (threshold {tau})"
        )

    def GetDKGBundles(self, ctx: TxContext, nonce: str, phase: str) -> Any:
        """Every bundle of a closed phase of a session, ordered by poster.

        An open phase is refused: its set can still grow, and nodes must all read the same set.
        """
        ctx.registered()
        _check_nonce(nonce)
        _check_phase(phase)
        session = self._dkg_session(ctx, nonce)
        closed = {str(c["phase"]) for c in session["closed"]}
        if session["phase"] != DKG_DONE and phase not in closed:
            raise ChaincodeError(
                f"{phase} phase of dkg session {nonce} is not closed; read its bundles after "
                "CloseDKGPhase commits"
            )
        rows = ctx.stub.get_state_by_partial_composite_key(K_DKG, [nonce, phase])
        return [canonical.loads(kv.value, "stored dkg bundle") for kv in rows]

    def PublishDKGResult(
        self,
        ctx: TxContext,
        nonce: str,
        mpk_b64: str,
        public_poly: str,
        qual: str,
        format_version: str,
    ) -> Any:
        """A QUAL member posts its view of the result (mpk, public polynomial, QUAL).

        The result becomes final when τ distinct roster nodes posted byte-identical views; a
        view that differs is recorded (evidence) and does not count.
        """
        caller = ctx.registered(KGC)
        assert caller.ibe_id is not None
        _check_nonce(nonce)
        _check_b64(mpk_b64, "mpk", MAX_MPK_BYTES)
        poly = _json_list(public_poly, "public polynomial")
        if not poly:
            raise ChaincodeError("public polynomial is empty")
        for i, c in enumerate(poly):
            _check_b64(c, f"public polynomial coefficient {i}", MAX_MPK_BYTES)
        members = [_check_ibe(x, "qual member") for x in _json_list(qual, "qual")]
        if not members:
            raise ChaincodeError("qual is empty")
        version = _check_version(format_version)
        session = self._dkg_session(ctx, nonce)
        roster: list[str] = session["roster"]
        tau = int(session["threshold"])
        reshare = _is_reshare(session)
        if caller.ibe_id not in roster:
            raise ChaincodeError(f"kgc {caller.ibe_id} is not in the roster of dkg session {nonce}")
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(_failed_message(session))
        if session["phase"] in DKG_PHASES[:2]:
            raise ChaincodeError(
                f"dkg session {nonce} is still collecting {session['phase']} bundles; publish "
                "the result after the response phase closes"
            )
        if len(poly) != tau:
            raise ChaincodeError(
                f"public polynomial has {len(poly)} coefficients; dkg session {nonce} has "
                f"threshold {tau}"
            )
        if reshare and mpk_b64 != session["mpk"]:
            raise ChaincodeError(
                f"reshare session {nonce} must keep the master key; the published mpk differs "
                f"from the mpk of dkg session {session['previous']}"
            )
        dealers: list[str] = session["dealers"] if reshare else roster
        for member in members:
            if member not in dealers:
                raise ChaincodeError(
                    f"qual member {member} is not "
                    + (
                        f"a dealer of reshare session {nonce}"
                        if reshare
                        else f"in the roster of dkg session {nonce}"
                    )
                )
        qual_sorted = sorted(set(members))
        if len(qual_sorted) < _dealer_threshold(session):
            raise ChaincodeError(
                f"qual has {len(qual_sorted)} members; dkg session {nonce} has threshold "
                f"{_dealer_threshold(session)}"
            )
        if not reshare and caller.ibe_id not in qual_sorted:
            raise ChaincodeError(
                f"kgc {caller.ibe_id} is not in the qual it published; only qual members publish"
            )
        view = {"mpk": mpk_b64, "public_poly": poly, "qual": qual_sorted, "format_version": version}
        digest = hashlib.sha256(canonical.dumps(view)).hexdigest()
        views = {
            str(v["publisher"]): v
            for v in (
                canonical.loads(kv.value, "stored dkg view")
                for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce])
            )
        }
        mine = views.get(caller.ibe_id)
        if mine is not None:
            if mine["digest"] != digest:
                raise ChaincodeError(
                    f"kgc {caller.ibe_id} already published a different result for dkg session "
                    f"{nonce}"
                )
            status = self._dkg_status(ctx, session, views, digest)
            ctx.log(
                SYSTEM_CHAIN,
                "PublishDKGResult",
                "repeated",
                detail={"nonce": nonce, "digest": digest, "agree": status["agree"]},
            )
            return status
        final = ctx.get_json(K_DKG_RESULT, nonce)
        agreeing = sorted([p for p, v in views.items() if v["digest"] == digest] + [caller.ibe_id])
        record = {
            "nonce": nonce,
            "publisher": caller.ibe_id,
            "digest": digest,
            **view,
            "published_at": ctx.now,
            "tx_id": ctx.tx_id,
        }
        ctx.put_json(record, K_DKG_VIEW, nonce, caller.ibe_id)
        if final is not None:
            outcome = "confirmed" if final["digest"] == digest else "conflict"
        elif len(agreeing) >= tau:
            latest = ctx.get_json(K_DKG_LATEST)
            if reshare and (latest is None or latest["nonce"] != session["previous"]):
                raise ChaincodeError(
                    f"reshare session {nonce} reshares the key of dkg session "
                    f"{session['previous']}, but dkg session "
                    f"{(latest or {}).get('nonce')} became final since; open a new resharing"
                )
            outcome = "final"
            result = {
                "nonce": nonce,
                **view,
                "digest": digest,
                "threshold": tau,
                "roster": roster,
                "keys": session["keys"],
                **(
                    {
                        "kind": "reshare",
                        "indices": session["indices"],
                        "previous": session["previous"],
                    }
                    if reshare
                    else {}
                ),
                "agreed_by": agreeing,
                "final_at": ctx.now,
                "tx_id": ctx.tx_id,
            }
            ctx.put_json(result, K_DKG_RESULT, nonce)
            ctx.put_json({"nonce": nonce}, K_DKG_LATEST)
            if session["phase"] != DKG_DONE:
                # τ nodes agree: a still-open justification phase is moot (nodes that needed
                # justifications waited for its close), so the session stops collecting now.
                self._end_phase(ctx, session, caller.name, by_result=True)
        else:
            outcome = "pending"
        others = sum(1 for v in views.values() if v["digest"] != digest)
        ctx.log(
            SYSTEM_CHAIN,
            "PublishDKGResult",
            outcome,
            detail={"nonce": nonce, "digest": digest, "agree": len(agreeing)},
        )
        return {
            "nonce": nonce,
            "publisher": caller.ibe_id,
            "digest": digest,
            "outcome": outcome,
            "agree": len(agreeing),
            "disagree": others,
            "threshold": tau,
        }

    def _dkg_status(
        self,
        ctx: TxContext,
        session: dict[str, Any],
        views: dict[str, Any],
        digest: str,
    ) -> dict[str, Any]:
        """What a repeated publication answers: the view's standing (only the log grows)."""
        nonce = session["nonce"]
        final = ctx.get_json(K_DKG_RESULT, nonce)
        agree = sum(1 for v in views.values() if v["digest"] == digest)
        if final is not None:
            outcome = "confirmed" if final["digest"] == digest else "conflict"
        else:
            outcome = "pending"
        return {
            "nonce": nonce,
            "publisher": ctx.caller.name,
            "digest": digest,
            "outcome": outcome,
            "agree": agree,
            "disagree": len(views) - agree,
            "threshold": int(session["threshold"]),
        }

    def GetDKGResult(self, ctx: TxContext, nonce: str = "") -> Any:
        """The final result of a session (with its roster and key snapshot), or of the latest
        session that became final when nonce is empty. A result τ nodes have not yet agreed on
        is refused."""
        ctx.registered()
        if nonce == "":
            latest = ctx.get_json(K_DKG_LATEST)
            if latest is None:
                raise ChaincodeError("no dkg session has finished")
            nonce = latest["nonce"]
        _check_nonce(nonce)
        result = ctx.get_json(K_DKG_RESULT, nonce)
        if result is not None:
            return result
        session = self._dkg_session(ctx, nonce)
        if session["phase"] == DKG_FAILED:
            raise ChaincodeError(_failed_message(session))
        counts: dict[str, int] = {}
        for kv in ctx.stub.get_state_by_partial_composite_key(K_DKG_VIEW, [nonce]):
            d = str(canonical.loads(kv.value, "stored dkg view")["digest"])
            counts[d] = counts.get(d, 0) + 1
        best = max(counts.values(), default=0)
        raise ChaincodeError(
            f"dkg session {nonce} result is not final yet: {best} of {session['threshold']} agree"
        )

    # --- audit -------------------------------------------------------------------------------

    def _may_audit(self, ctx: TxContext, caller: Caller, chain: str) -> None:
        if caller.role == AUDITOR or caller.name == chain:
            return
        if chain == SYSTEM_CHAIN and caller.role == ADMIN:
            return
        raise ChaincodeError(f"identity {caller.name} may not read the audit trail of {chain}")

    def GetAuditTrail(
        self, ctx: TxContext, kind: str, subject: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of the operation log of a patient (kind ``patient``) or a record."""
        caller = ctx.registered()
        size = _page_size(page_size)
        if kind == "patient":
            if subject != SYSTEM_CHAIN:
                _check_ibe(subject, "patient")
            self._may_audit(ctx, caller, subject)
            _check_bookmark(bookmark, K_LOG, subject)
            rows, next_bm = ctx.stub.get_state_by_partial_composite_key_with_pagination(
                K_LOG, [subject], size, bookmark
            )
            entries = [canonical.loads(kv.value, "stored log entry") for kv in rows]
        elif kind == "record":
            record = self._record(ctx, subject)
            self._may_audit(ctx, caller, record["owner"])
            entries, next_bm = ctx.index_page(K_LOG_BY_RECORD, subject, K_LOG, page_size, bookmark)
        else:
            raise ChaincodeError(f"audit trail kind {kind!r} is not patient or record")
        return {"entries": entries, "bookmark": next_bm}

    def StateDigest(self, ctx: TxContext) -> Any:
        """SHA-256 over every key and value of this contract's world state, in key order, and
        the number of keys: equal on every peer at the same height. Blocks are signed and
        compared across organisations; a peer's state database is not, and queries are read
        from it, so ``ledger verify`` compares this digest across the organisations' peers to
        catch a hand edit of one peer's state. Any registered member; it reveals nothing but
        the count of keys."""
        ctx.registered()
        digest = hashlib.sha256()
        count = 0
        for object_type in _STATE_TYPES:
            for kv in ctx.stub.get_state_by_partial_composite_key(object_type, []):
                value = kv.value if isinstance(kv.value, bytes) else str(kv.value).encode()
                digest.update(len(kv.key).to_bytes(4, "big") + kv.key.encode("utf-8"))
                digest.update(len(value).to_bytes(4, "big") + value)
                count += 1
        return {"sha256": digest.hexdigest(), "keys": count}

    def VerifyAuditTrail(self, ctx: TxContext, chain: str) -> Any:
        """Recompute a chain's hashes and links against its head."""
        caller = ctx.registered()
        if chain != SYSTEM_CHAIN:
            _check_ibe(chain, "patient")
        self._may_audit(ctx, caller, chain)
        rows = ctx.stub.get_state_by_partial_composite_key(K_LOG, [chain])
        entries = [canonical.loads(kv.value, "stored log entry") for kv in rows]
        head = ctx.get_json(K_LOG_HEAD, chain)
        return verify_entries(chain, entries, head)


# Every object type this contract writes (the module's K_* names), for StateDigest.
_STATE_TYPES = tuple(
    sorted(value for name, value in dict(globals()).items() if name.startswith("K_"))
)


# --- dispatcher ------------------------------------------------------------------------------

_CONTRACT = EHRContract()


def _functions() -> dict[str, tuple[_TxMethod, int, int]]:
    table: dict[str, tuple[_TxMethod, int, int]] = {}
    for name, method in inspect.getmembers(_CONTRACT, inspect.ismethod):
        if not name[:1].isupper():
            continue
        params = list(inspect.signature(method).parameters.values())[1:]  # drop ctx
        required = sum(1 for p in params if p.default is inspect.Parameter.empty)
        table[name] = (method, required, len(params))
    return table


_FUNCTIONS = _functions()


def invoke(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    """Run one transaction function; returns canonical JSON or raises :class:`ChaincodeError`.

    On success the transaction's log entries become its one chaincode event, named after the
    function. On failure the caller must discard every write the stub collected.
    """
    entry = _FUNCTIONS.get(function)
    if entry is None:
        raise ChaincodeError(f"function {function} does not exist")
    method, required, total = entry
    if not required <= len(args) <= total:
        expected = str(required) if required == total else f"{required} to {total}"
        raise ChaincodeError(f"{function} takes {expected} arguments, got {len(args)}")
    texts: list[str] = []
    for i, raw in enumerate(args):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ChaincodeError(f"argument {i + 1} of {function} is not valid utf-8") from None
    ts = stub.get_tx_timestamp()
    ctx = TxContext(stub=stub, function=function, now=int(ts.seconds), tx_id=stub.get_tx_id())
    result = method(ctx, *texts)
    if ctx.entries:
        stub.set_event(function, canonical.dumps({"tx_id": ctx.tx_id, "entries": ctx.entries}))
    return canonical.dumps(result)
