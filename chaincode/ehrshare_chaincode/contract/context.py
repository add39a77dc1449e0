"""What one transaction sees: the caller (from its certificate), the clock and the operation log.

:class:`TxContext` is the only way contract code reads or writes state; it keeps the log entries a
transaction appends (they become its one event) and caches chain heads, because a transaction
never reads back a key it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import canonical
from ..auditlog import GENESIS_HASH, entry_hash
from ..certs import CertInfo, parse_certificate
from ..stub import ChaincodeError, ChaincodeStub, KeyValue
from .checks import check_bookmark, check_page_size
from .keys import INDEX_VALUE, K_IDENTITY, K_LOG, K_LOG_BY_RECORD, K_LOG_HEAD, seq

__all__ = [
    "ADMIN",
    "AUDITOR",
    "CLINICIAN",
    "CONTRACT_NAME",
    "GUARDIAN",
    "KGC",
    "PATIENT",
    "PROXY",
    "ROLES",
    "ROLE_ATTRIBUTE",
    "Caller",
    "TxContext",
]

CONTRACT_NAME = "ehrshare"
ROLE_ATTRIBUTE = "ehrshare.role"
PATIENT, CLINICIAN, ADMIN, KGC, PROXY, AUDITOR, GUARDIAN = (
    "patient",
    "clinician",
    "admin",
    "kgc",
    "proxy",
    "auditor",
    "guardian",
)
ROLES = (PATIENT, CLINICIAN, ADMIN, KGC, PROXY, AUDITOR, GUARDIAN)


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
    scanned: dict[tuple[str, ...], list[KeyValue]] = field(default_factory=dict)
    """Partial composite-key scans made before the function ran (by its ``prepare`` step,
    before anything was written), by ``(object type, *attributes)``: the function reuses one
    whose prefix matches instead of scanning again."""

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
        check_bookmark(bookmark, index, subject)
        rows, next_bm = self.stub.get_state_by_partial_composite_key_with_pagination(
            index, [subject], check_page_size(page_size), bookmark
        )
        out = []
        for kv in rows:
            _, attrs = self.stub.split_composite_key(kv.key)
            out.append(self.get_json(target, *attrs[1:]))
        return out, next_bm

    def prefetch(self, *keys: tuple[str, ...]) -> None:
        """Tell the stub the keys ``(object type, *attributes)`` this transaction reads on every
        path that succeeds, and the caller's identity while it is not resolved yet.

        Only a hint (:meth:`~ehrshare_chaincode.stub.ChaincodeStub.prefetch`): on a Fabric >= 3.1
        peer they are fetched together with the next key read, which saves a round trip per
        key; elsewhere nothing changes. Name only keys that are always read, so the read set
        stays what it was; a key whose attributes are invalid is skipped (the read that
        follows fails with the right error).
        """
        wanted = []
        if self._caller is None:
            try:
                cert = parse_certificate(self.stub.get_creator()[1])
                wanted.append(self.key(K_IDENTITY, cert.client_key))
            except ChaincodeError:
                pass  # resolving the caller fails with its own error
        for object_type, *attrs in keys:
            try:
                wanted.append(self.key(object_type, *attrs))
            except ChaincodeError:
                continue
        self.stub.prefetch(wanted)

    def likely_ibe_id(self) -> str | None:
        """Before the caller's identity is read: the IBE identity its certificate was most
        likely registered under (``msp/enrollment id``, as registration names it), for hints
        only. Recovery can bind an identity to a certificate of another enrollment id, so the
        guess must be checked against :attr:`caller` once it is resolved."""
        if self._caller is not None:
            return self._caller.ibe_id
        msp_id, pem = self.stub.get_creator()
        try:
            return f"{msp_id}/{parse_certificate(pem).enrollment_id}"
        except ChaincodeError:
            return None  # resolving the caller fails with its own error

    def put_json(self, value: Any, object_type: str, *attrs: str) -> None:
        self.stub.put_state(self.key(object_type, *attrs), canonical.dumps(value))

    def put_index(self, object_type: str, *attrs: str) -> None:
        self.stub.put_state(self.key(object_type, *attrs), INDEX_VALUE)

    @property
    def caller(self) -> Caller:
        """The caller, registered or not (resolved once per transaction)."""
        if self._caller is None:
            msp_id, pem = self.stub.get_creator()
            cert = parse_certificate(pem)
            ident = self.get_json(K_IDENTITY, cert.client_key)
            if ident is not None and ident["msp_id"] == msp_id:
                _refuse_revoked(ident, cert)
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
        self.put_json(entry, K_LOG, chain, seq(entry["seq"]))
        new_head = {"chain": chain, "seq": entry["seq"], "hash": entry["hash"]}
        self.put_json(new_head, K_LOG_HEAD, chain)
        self.heads[chain] = new_head
        if record_id:
            self.put_index(K_LOG_BY_RECORD, record_id, chain, seq(entry["seq"]))
        self.entries.append(entry)
        return entry


def _refuse_revoked(ident: dict[str, Any], cert: CertInfo) -> None:
    """Refuse a certificate of an identity that recovery rebound to another certificate."""
    if "revoked_at" in ident or (ident.get("pinned") and cert.sha256 != ident["cert_sha256"]):
        at = ident.get("revoked_at", ident.get("rebound_at"))
        raise ChaincodeError(
            f"certificate {cert.sha256} of identity {ident['ibe_id']} was revoked at {at}: "
            "the identity was rebound to a new certificate by recovery"
        )
