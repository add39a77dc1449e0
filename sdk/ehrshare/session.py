"""The SDK for hospital apps: ``ehrshare.connect(profile, wallet=...) → Session``.

A :class:`Session` is one member (patient, clinician, auditor) acting through one identity. Its
verbs are the paper's flows: :meth:`Session.enroll` (threshold key extraction from τ KGC
nodes), :meth:`Session.publish_type_keys`, :meth:`Session.put_record`, :meth:`Session.grant`,
:meth:`Session.revoke`, :meth:`Session.read_record` (request access → committed decision → proxy
re-encryption → decrypt → FHIR object), :meth:`Session.forward` (multi-hop referral),
:meth:`Session.audit` and :meth:`Session.verify_audit`. All but ``publish_type_keys`` have an
``a``-prefixed asyncio mirror (``agrant``, ``aread_record``, …) that runs them in a worker thread;
each is generated from its sync method, so it takes the same arguments.

Order of effects, on purpose: a record's ciphertext is stored and read back (CID and SHA-256
checked) before the record is registered on chain, so a failed store leaves nothing on chain.
Grants are atomic: the grantor picks the grant id, delivers the sealed re-key to the proxy under
it (kept *pending* there), and only then submits GrantAccess with that id; the proxy takes the
re-key into use once it sees the committed grant. A proxy that is down or refuses leaves nothing
on chain, and a grant that commits has its re-key at its proxy, whatever process is killed when.

Proxies: one per hospital (:class:`ProxyRoute`). A grant names on chain the proxy that holds its
re-key — by default the proxy of the grantee's hospital (its MSP as registered on chain), else
the first proxy of the profile; ``proxy=`` overrides. A read under a forwarded grant visits the
proxies of the grant chain in order, each applying its own hops.

This module must not log record contents, keys, re-keys or capsules, and must not put them in
exception messages. It talks to the ledger only through :mod:`ehrshare.ledger.api` and to the
KGC nodes and the proxy only through the :class:`KgcClient` / :class:`ProxyClient` protocols.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar

from fhir_core.fhirabstractmodel import FHIRAbstractModel

from ehrshare import crypto
from ehrshare.closing import Closing
from ehrshare.errors import (
    ConfigurationError,
    EhrshareError,
    IntegrityFailure,
    InvalidInput,
    Refused,
    Unavailable,
    UsageError,
)
from ehrshare.faults import fault_point
from ehrshare.fhir import (
    FhirValidationError,
    TypeLabels,
    TypeMapping,
    parse_resource,
    resource_bytes,
)
from ehrshare.hazmat import tipre
from ehrshare.hazmat.dkg import PublicPolynomial
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.kgc_keys import KGCNodePublicKey
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerIntegrityError,
    OrderingKeyError,
)
from ehrshare.services.protocols import KgcClient, ProxyClient
from ehrshare.services.proxy import InvalidReKey, NoReKey, ProxyUnavailable, seal_rekey
from ehrshare.services.proxy import NotAuthorised as ProxyNotAuthorised
from ehrshare.storage import (
    BlobStore,
    ContentNotFound,
    IntegrityError,
    StorageError,
    get_verified,
    sha256_hex,
)
from ehrshare.wallet import Wallet, WalletError
from ehrshare_chaincode.contract import master_key_epoch

__all__ = [
    "AccessDenied",
    "AuditTrail",
    "AuditVerification",
    "EnrollmentError",
    "EnrollmentResult",
    "ForeignIdentity",
    "Grant",
    "GrantNotServed",
    "KgcClient",
    "LedgerUnreachable",
    "NoSuchMember",
    "NotEnrolledError",
    "ProxyClient",
    "ProxyError",
    "ProxyNotInProfile",
    "ProxyRoute",
    "ProxyUnreachable",
    "RecordIntegrityError",
    "RecordRef",
    "RecordStorageError",
    "RecordTooLarge",
    "RequestRejected",
    "SdkError",
    "Session",
    "UnknownProxy",
]

_log = logging.getLogger(__name__)

FORMAT_VERSION: Final = "1"
_PAGE: Final = "100"
_LABEL_RE: Final = re.compile(r"t-[0-9a-f]{32}")
_MAX_FALLBACK_GRANTS: Final = 8


# --- errors ----------------------------------------------------------------------------------


class SdkError(EhrshareError):
    """Base class of every error the session raises on purpose (exit code 1 unless a
    subclass names another family)."""


class RequestRejected(SdkError):
    """The ledger refused a transaction or query; the message is the chaincode's reason."""

    def __init__(self, function: str, message: str, transaction_id: str = "") -> None:
        self.function = function
        self.reason = message
        self.transaction_id = transaction_id
        super().__init__(f"{function} was rejected: {message}")


class LedgerUnreachable(Unavailable, SdkError):
    """No peer or orderer of the ledger answered; nothing was decided or written."""

    hint = "is the ledger running? For a local Fabric network: 'ehrshare network up'"

    def __init__(self, function: str, message: str) -> None:
        self.function = function
        super().__init__(f"{function}: {message}")


class ForeignIdentity(ConfigurationError, SdkError):
    """The channel does not accept the wallet's certificate: issued by another consortium's CA
    (or not a member certificate at all). Use a wallet this consortium issued."""

    hint = "use a wallet issued by this consortium ('ehrshare consortium add-member')"


class AccessDenied(Refused, SdkError):
    """The chaincode denied a read; the denial is on the audit log (``access_id``)."""

    hint = "ask the patient for a grant of this record's type"

    def __init__(self, record_id: str, reason: str, access_id: str) -> None:
        self.record_id = record_id
        self.reason = reason
        self.access_id = access_id
        super().__init__(f"access to record {record_id} denied: {reason} (logged as {access_id})")


class NotEnrolledError(ConfigurationError, SdkError):
    """The session has no identity secret key yet: call :meth:`Session.enroll` first."""

    hint = "run 'ehrshare enroll --wallet <name>'"


class EnrollmentError(Unavailable, SdkError):
    """Threshold extraction failed; names the nodes that were down and those that sent bad keys."""

    def __init__(self, message: str, *, failed: dict[int, str], invalid: Sequence[int]) -> None:
        self.failed = dict(failed)
        self.invalid = tuple(invalid)
        super().__init__(message)


class RecordStorageError(Unavailable, SdkError):
    """The ciphertext could not be stored or read back; nothing was registered on chain."""


class RecordIntegrityError(IntegrityFailure, RecordStorageError):
    """A record's ciphertext is missing from the store, altered, or does not decrypt under its
    capsule: the pointer on chain and the bytes behind it disagree. Retrying does not help."""


class RecordTooLarge(InvalidInput, SdkError):
    """A record is over the profile's ``limits.max_record_bytes``."""


class NoSuchMember(Refused, RequestRejected):
    """The identity named (a grantee, a referral's target, a record's patient) is not a
    registered member of this consortium."""

    def __init__(self, ibe_id: str) -> None:
        super().__init__("GetIdentity", f"{ibe_id} is not registered in this consortium")
        self.ibe_id = ibe_id
        self.args = (
            f"no such member: {ibe_id} is not registered in this consortium (check the id, "
            "<msp id>/<enrollment id>; a new member registers with 'ehrshare enroll')",
        )


class ProxyError(Unavailable, SdkError):
    """The re-encryption proxy could not be reached or refused a call."""


class GrantNotServed(Refused, SdkError):
    """A grant is on chain but its proxy holds no re-key for it (the proxy lost its state):
    a refusal, not an outage — it does not heal by waiting. The grantor re-delivers the re-key
    with :meth:`Session.repair_grant` (CLI ``ehrshare grant repair``) or revokes the grant."""

    def __init__(self, message: str, *, grant_ids: Sequence[str], proxy: str) -> None:
        self.grant_ids = tuple(grant_ids)
        self.proxy = proxy
        super().__init__(message)
        self.hint = (
            "the grantor runs 'ehrshare grant repair "
            + (self.grant_ids[-1] if self.grant_ids else "<grant id>")
            + "' (or 'ehrshare revoke'); 'ehrshare grant list' shows your grants"
        )


class ProxyNotInProfile(ConfigurationError, ProxyError):
    """A grant chain names a proxy this profile does not list (add it under ``proxies:``)."""


class UnknownProxy(UsageError, ProxyNotInProfile):
    """``proxy=`` (CLI ``--proxy``) names no proxy of this profile; nothing was done."""


class ProxyUnreachable(ProxyError):
    """A proxy holding a hop of the read's grant chain did not answer (down, or unreachable).

    Names the proxy, its hospital (MSP id) and the grants whose re-keys it holds; the access
    request was committed and logged, so reading again once it is back makes a new request.
    """

    def __init__(
        self, message: str, *, proxy: str, msp_id: str, grant_ids: Sequence[str], access_id: str
    ) -> None:
        self.proxy = proxy
        self.msp_id = msp_id
        self.grant_ids = tuple(grant_ids)
        self.access_id = access_id
        self.hint = f"ask hospital {msp_id} to start its proxy ('ehrshare proxy serve'), then retry"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One proxy a session can reach: the ledger identity grants name it by, its hospital's MSP
    id, and the client to call it with."""

    ibe_id: str
    msp_id: str
    client: ProxyClient


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A pointer to a record on chain: what :meth:`Session.read_record` takes.

    ``type`` is the clinical type (``None`` when the label is not one this profile knows);
    ``label`` is the opaque label stored on chain.
    """

    record_id: str
    owner: str
    type: str | None
    label: str
    cid: str
    sha256: str
    version: int
    creator: str
    created_at: int

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels) -> RecordRef:
        """Build from a chaincode record."""
        return cls(
            record_id=data["record_id"],
            owner=data["owner"],
            type=labels.reveal(data["type"]),
            label=data["type"],
            cid=data["cid"],
            sha256=data["sha256"],
            version=int(data["version"]),
            creator=data["creator"],
            created_at=int(data["created_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as committed: who may read which type of whose records, until when, how far."""

    grant_id: str
    owner: str
    grantor: str
    grantee: str
    type: str | None
    label: str
    expiry: int
    max_hops: int
    hop: int
    parent_grant_id: str
    state: str
    proxy: str = ""

    @classmethod
    def from_chain(cls, data: dict[str, Any], labels: TypeLabels) -> Grant:
        """Build from a chaincode grant."""
        return cls(
            grant_id=data["grant_id"],
            owner=data["owner"],
            grantor=data["grantor"],
            grantee=data["grantee"],
            type=labels.reveal(data["type"]),
            label=data["type"],
            expiry=int(data["expiry"]),
            max_hops=int(data["max_hops"]),
            hop=int(data["hop"]),
            parent_grant_id=data["parent_grant_id"],
            state=data["state"],
            proxy=str(data.get("proxy", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """Which KGC nodes answered, which were down, which sent keys that failed verification."""

    ibe_id: str
    used: tuple[int, ...]
    failed: dict[int, str]
    invalid: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """The operation-log entries of a patient's chain (or of one record), oldest first."""

    chain: str
    entries: tuple[dict[str, Any], ...]
    record_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {"chain": self.chain, "record_id": self.record_id, "entries": list(self.entries)}


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The outcome of :meth:`Session.verify_audit`: valid only if every check passed."""

    chain: str
    valid: bool
    length: int
    first_bad_seq: int
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "chain": self.chain,
            "valid": self.valid,
            "length": self.length,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checks": self.checks,
        }


Expiry = _dt.datetime | _dt.timedelta | int
Clock = Callable[[], int]  # nanoseconds since the epoch, as the embedded gateway takes


# --- the session -----------------------------------------------------------------------------


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_thread(
    method: Callable[Concatenate[Session, _P], _R],
) -> Callable[Concatenate[Session, _P], Coroutine[Any, Any, _R]]:
    """The asyncio mirror of a sync :class:`Session` method: same signature (generated, so the
    two cannot drift), run in a worker thread."""

    @functools.wraps(method)
    async def mirror(self: Session, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    mirror.__name__ = f"a{method.__name__}"
    mirror.__qualname__ = f"Session.a{method.__name__}"
    mirror.__doc__ = f":meth:`{method.__name__}` in a worker thread."
    return mirror


class Session(Closing):
    """One member acting through one identity. Create it with :func:`ehrshare.connect`.

    Thread-safe as far as its parts are (the embedded ledger is); the async variants run the
    sync calls in worker threads. Use it as a context manager to close what it opened.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        signer: Signer,
        contract: Contract,
        store: BlobStore,
        kgc: Sequence[KgcClient],
        proxies: Sequence[ProxyRoute],
        labels: TypeLabels,
        mapping: TypeMapping,
        max_record_bytes: int,
        wallet: Wallet | None = None,
        clock: Clock | None = None,
        on_close: Callable[[], None] | None = None,
        ledger_check: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.identity = identity
        self._signer = signer
        self.contract = contract
        self.store = store
        self.kgc = tuple(kgc)
        if not proxies:
            raise ValueError("a session needs at least one proxy")
        self.proxies = tuple(proxies)
        self.labels = labels
        self.mapping = mapping
        self.max_record_bytes = max_record_bytes
        self.wallet = wallet
        self._clock: Clock = clock or time.time_ns
        self._on_close = on_close
        self._ledger_check = ledger_check
        self._sk: tipre.IdentitySecretKey | None = (
            wallet.load_secret_key() if wallet is not None else None
        )
        # Derived once per (key, type): a hash and a G2 multiplication that every read, grant
        # and referral of that type would otherwise repeat. Dropped when the key changes.
        self._type_secrets: dict[str, tipre.TypeSecretKey] = {}
        self._ibe_id = identity.ibe_id  # parses the certificate: once
        self._dkg: tuple[tipre.MasterPublicKey, PublicPolynomial] | None = None
        self._epoch = ""  # the current master key's epoch, set with _dkg
        self._roster: Sequence[KGCNodePublicKey] | Mapping[int, KGCNodePublicKey] | None = None
        self._sk_checked = False

    def __repr__(self) -> str:
        return f"Session(ibe_id={self.ibe_id!r}, enrolled={self._sk is not None})"

    @property
    def proxy(self) -> ProxyClient:
        """The first proxy's client (the only one of a single-proxy profile)."""
        return self.proxies[0].client

    @proxy.setter
    def proxy(self, client: ProxyClient) -> None:
        # Reaches every proxy through one client (tests stand a failing proxy in this way).
        self.proxies = tuple(ProxyRoute(r.ibe_id, r.msp_id, client) for r in self.proxies)

    def _route(self, ibe_id: str, error: type[ProxyNotInProfile] = ProxyNotInProfile) -> ProxyRoute:
        for route in self.proxies:
            if route.ibe_id == ibe_id:
                return route
        raise error(
            f"proxy {ibe_id} is not in this profile (it lists "
            + ", ".join(r.ibe_id for r in self.proxies)
            + ")"
        )

    def _route_for(self, grantee: str, proxy: str | None) -> ProxyRoute:
        """The proxy a grant to ``grantee`` names: ``proxy``, else the one of the grantee's
        hospital (its MSP as registered on chain), else the profile's first."""
        if proxy is not None:
            return self._route(proxy, UnknownProxy)
        if len(self.proxies) == 1:
            return self.proxies[0]
        msp = self._evaluate("GetIdentity", grantee)["msp_id"]
        for route in self.proxies:
            if route.msp_id == msp:
                return route
        return self.proxies[0]

    # --- plumbing ----------------------------------------------------------------------------

    @property
    def ibe_id(self) -> str:
        """This member's IBE identity, ``<msp id>/<enrollment id>``."""
        return self._ibe_id

    @property
    def enrolled(self) -> bool:
        """Whether the identity secret key is loaded."""
        return self._sk is not None

    def close(self) -> None:
        """Release the ledger and services this session opened (not shared ones)."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def _submit(self, function: str, *args: str) -> Any:
        try:
            return json.loads(self.contract.submit_transaction(function, *args))
        except (LedgerIntegrityError, OrderingKeyError):
            raise  # the stored ledger was edited, or cannot be written: not a refusal
        except LedgerError as exc:
            raise self._ledger_error(function, exc) from None

    def _evaluate(self, function: str, *args: str) -> Any:
        try:
            return json.loads(self.contract.evaluate_transaction(function, *args))
        except (LedgerIntegrityError, OrderingKeyError):
            raise  # the stored ledger was edited, or cannot be written: not a refusal
        except LedgerError as exc:
            raise self._ledger_error(function, exc) from None

    def _ledger_error(self, function: str, exc: LedgerError) -> EhrshareError:
        """What a failed ledger call means to the member: unreachable, a certificate the
        channel does not accept, a damaged ledger database, or a refusal."""
        if exc.unreachable:
            return LedgerUnreachable(function, exc.message)
        if exc.creator_refused:
            return ForeignIdentity(
                f"the ledger does not accept the certificate of {self.ibe_id} ({exc.message}): "
                "is the wallet from another consortium, or edited? (on Fabric: or are the "
                "profile's tls_ca files not those of the network?)"
            )
        if isinstance(exc, LedgerCorrupt):
            return exc
        return RequestRejected(function, self._humanise(exc.message), exc.transaction_id)

    def _humanise(self, text: str) -> str:
        """Name opaque type labels in a chaincode message by their clinical type."""
        return _LABEL_RE.sub(lambda m: repr(self.labels.reveal(m.group(0)) or m.group(0)), text)

    def _now(self) -> int:
        return self._clock() // 1_000_000_000

    def _secret_key(self) -> tipre.IdentitySecretKey:
        if self._sk is None:
            raise NotEnrolledError(
                f"{self.ibe_id} is not enrolled: call enroll() (CLI: 'ehrshare enroll') first"
            )
        if not self._sk_checked:
            # A key from a wallet is checked once against this consortium's mpk: a stale or
            # foreign key would otherwise only show up as failed decryptions.
            mpk, _ = self._master()
            try:
                if self._sk.identity != self.ibe_id:
                    raise VerificationError("the key is for another identity")
                self._sk.check(mpk)
            except VerificationError:
                raise NotEnrolledError(
                    f"the identity key in the wallet of {self.ibe_id} does not belong to it "
                    "under this consortium's master key; enrol again"
                ) from None
            self._sk_checked = True
        return self._sk

    def _type_secret(self, sk: tipre.IdentitySecretKey, label: str) -> tipre.TypeSecretKey:
        """``sk.type_secret(label)``, derived once per label for this session's key."""
        secret = self._type_secrets.get(label)
        if secret is None:
            secret = self._type_secrets[label] = sk.type_secret(label)
        return secret

    def _master(self) -> tuple[tipre.MasterPublicKey, PublicPolynomial]:
        from ehrshare.services.kgc import public_polynomial_from_chain, roster_from_chain

        if self._dkg is None:
            # GetDKGResult answers only a final result: τ KGC nodes posted the same view.
            result = self._evaluate("GetDKGResult", "")
            try:
                public = public_polynomial_from_chain(result)
                roster = roster_from_chain(result)
            except (EncodingError, ValueError) as exc:
                raise SdkError(f"the DKG result on chain is malformed: {exc}") from None
            self._dkg = (tipre.MasterPublicKey(public.mpk), public)
            self._roster = roster
            self._epoch = master_key_epoch(str(result["mpk"]))
        return self._dkg

    @property
    def epoch(self) -> str:
        """The current master key's epoch (what the chain stamps into new records, type keys
        and grants); a new DKG changes it, a resharing does not."""
        self._master()
        return self._epoch

    def _keys_for(self, record_id: str, epoch: str) -> list[tipre.IdentitySecretKey]:
        """The identity keys to open a capsule of master key ``epoch`` with, most likely first:
        the current key for the current epoch; the wallet's key of that epoch for an earlier
        one (or, lacking it, every key of unknown epoch: a wallet backup from before epochs
        holds its key only as ``ibe.key``)."""
        if epoch == self.epoch:
            return [self._secret_key()]
        kept = self.wallet.load_secret_keys() if self.wallet is not None else {}
        if epoch in kept:
            if kept[epoch].identity != self.ibe_id:
                # The file parsed, but not as this member's key: altered or from elsewhere.
                raise WalletError(
                    f"wallet of {self.ibe_id}: ibe-{epoch}.key holds a key of "
                    f"{kept[epoch].identity!r}, not of {self.ibe_id} (altered?); restore the "
                    "wallet from its backup"
                )
            return [kept[epoch]]
        candidates = [k for e, k in kept.items() if e.startswith("earlier-")]
        if self._sk is not None and not self._is_current(self._sk):
            candidates.insert(0, self._sk)  # a backup's ibe.key, of an earlier master key
        if not candidates:
            raise NotEnrolledError(
                f"record {record_id} was encrypted under an earlier master key (epoch {epoch}) "
                f"and the wallet of {self.ibe_id} holds no identity key of it; read it with a "
                "wallet backup from before the new master key"
            )
        return candidates

    def _is_current(self, sk: tipre.IdentitySecretKey) -> bool:
        """Whether ``sk`` is this identity's key under the current master key."""
        mpk, _ = self._master()
        try:
            sk.check(mpk)
        except VerificationError:
            return False
        return sk.identity == self.ibe_id

    @property
    def roster(self) -> Sequence[KGCNodePublicKey] | Mapping[int, KGCNodePublicKey]:
        """The KGC nodes' public keys (node j at position j-1, or by share index after a
        resharing) that partial keys are checked against: the snapshot in the chain's final
        DKG result, never a local file."""
        self._master()
        assert self._roster is not None
        return self._roster

    def _label(self, type_name: str) -> str:
        return self.labels.opaque(self.mapping.check(type_name))

    def _type_key(self, owner: str, label: str) -> tipre.VerifiedTypePublicKey:
        try:
            stored = self._evaluate("GetTypeKey", owner, label)
        except RequestRejected as exc:
            self._check_member(owner)
            name = self.labels.reveal(label) or label
            raise RequestRejected(
                "GetTypeKey",
                f"{owner} has not published a key for type {name!r}; it must enrol and run "
                "publish_type_keys() (CLI: 'ehrshare enroll') first",
            ) from exc
        mpk, _ = self._master()
        epoch = stored.get("epoch")
        if epoch is not None and epoch != self._epoch:
            # Its proof is of an earlier mpk; say what to do rather than "no valid proof".
            raise RequestRejected(
                "GetTypeKey",
                f"type key {label} of {owner} is of an earlier master key (epoch {epoch}, now "
                f"{self._epoch}); {owner} must enrol again first",
            )
        try:
            key = tipre.TypePublicKey.from_bytes(base64.b64decode(stored["key"]))
            return key.verify(owner=owner, type_label=label, mpk=mpk)
        except (EncodingError, VerificationError, ValueError) as exc:
            raise SdkError(f"type key {label} of {owner} on chain is invalid: {exc}") from None

    def _check_member(self, ibe_id: str) -> None:
        """Raise :class:`NoSuchMember` unless ``ibe_id`` is registered on chain."""
        try:
            self._evaluate("GetIdentity", ibe_id)
        except RequestRejected:
            raise NoSuchMember(ibe_id) from None

    # --- enrolment ---------------------------------------------------------------------------

    def role(self) -> str:
        """This identity's role as registered on chain (from its certificate)."""
        return str(self._evaluate("GetIdentity", self.ibe_id)["role"])

    def register(self) -> dict[str, Any]:
        """Register this identity on chain (idempotent); its role comes from its certificate."""
        try:
            ident: dict[str, Any] = self._evaluate("GetIdentity", self.ibe_id)
            return ident
        except RequestRejected:
            result: dict[str, Any] = self._submit("RegisterIdentity")
            return result

    def enroll(self, *, timeout: float = 10.0) -> EnrollmentResult:
        """Register, then get ``sk_id`` from τ KGC nodes and keep it in the wallet.

        Nodes are asked in turn until τ partial keys verify against the public polynomial on
        chain; a node that is down is skipped, one whose key fails verification is named and
        excluded (never combined). Raises :class:`EnrollmentError` when fewer than τ verify.
        """
        from ehrshare.services.kgc import ExtractionFailed, extract_identity_key

        self.register()
        fault_point("enroll.after_register")
        _, public = self._master()
        try:
            # Each request is signed with the ledger key (the TLS key only opens the channel):
            # the nodes check the signature against the certificate registered on chain.
            outcome = extract_identity_key(
                self.kgc,
                self.identity,
                self._signer,
                public=public,
                roster=self.roster,
                timeout=timeout,
                clock=self._clock,
            )
        except ExtractionFailed as exc:
            why = (
                " (partial keys are checked against the KGC roster of the chain's final DKG result)"
                if exc.invalid
                else ""
            )
            raise EnrollmentError(
                f"enrolment of {self.ibe_id} failed: {exc}{why}",
                failed=exc.unavailable,
                invalid=exc.invalid,
            ) from None
        fault_point("enroll.after_extract")
        self._sk = outcome.secret_key
        self._type_secrets.clear()
        self._sk_checked = True  # combine_partial_keys checked it against mpk
        if self.wallet is not None:
            # Kept next to the keys of earlier master keys, which read earlier records.
            self.wallet.save_secret_key(outcome.secret_key, self.epoch)
        fault_point("enroll.after_save")
        bad = set(outcome.unavailable) | set(outcome.invalid)
        used = tuple(c.index for c in self.kgc if c.index not in bad)[: public.threshold]
        _log.info("enrolled %s", self.ibe_id)
        return EnrollmentResult(self.ibe_id, used, dict(outcome.unavailable), outcome.invalid)

    def publish_type_keys(self, types: Sequence[str] | None = None) -> list[str]:
        """Publish T_{id,t} for each type (all configured types by default); returns the types
        whose key was (re)published. Keys already on chain and unchanged are skipped."""
        sk = self._secret_key()
        mpk, _ = self._master()
        published = []
        for name in types if types is not None else self.mapping.types:
            label = self._label(name)
            key_b64 = base64.b64encode(
                self._type_secret(sk, label).public_key(mpk).to_bytes()
            ).decode()
            try:
                if self._evaluate("GetTypeKey", self.ibe_id, label)["key"] == key_b64:
                    continue
            except RequestRejected:
                pass
            self._submit("PublishTypeKey", label, key_b64, FORMAT_VERSION)
            published.append(name)
        return published

    # --- records -----------------------------------------------------------------------------

    def put_record(
        self,
        resource: FHIRAbstractModel | dict[str, Any] | str | bytes,
        *,
        patient: str | None = None,
        type: str | None = None,
    ) -> RecordRef:
        """Encrypt a FHIR R4 resource for ``patient`` (yourself if you are the patient) and
        register it. The type comes from the resource's ``meta.security`` and category (see
        :class:`~ehrshare.fhir.TypeMapping`); ``type=`` names it for resources no rule covers.

        Raises FhirValidationError, UnknownRecordType, RecordTooLarge, RecordStorageError (then
        nothing is on chain) or RequestRejected.
        """
        model = parse_resource(resource)
        plaintext = resource_bytes(model)
        if len(plaintext) > self.max_record_bytes:
            raise RecordTooLarge(
                f"record is {len(plaintext)} bytes; this profile's limit is "
                f"{self.max_record_bytes} (limits.max_record_bytes)"
            )
        type_name = self.mapping.resolve(model, type)
        label = self.labels.opaque(type_name)
        owner = patient or self.ibe_id
        owner_key = self._type_key(owner, label)
        record_id = "r-" + secrets.token_hex(16)
        capsule, sealed = crypto.encrypt_record(plaintext, owner_key=owner_key, record_id=record_id)
        del plaintext
        digest = sha256_hex(sealed)
        try:
            cid = self.store.put(sealed)
            get_verified(self.store, cid, digest)
        except StorageError as exc:
            raise RecordStorageError(
                f"could not store the encrypted record ({exc}); nothing was registered on chain"
                " — check that the content store (Kubo daemon) is running and retry"
            ) from None
        # A crash here leaves an unreferenced ciphertext: 'ehrshare store gc' removes it.
        fault_point("put.after_store")
        try:
            record = self._submit(
                "RegisterRecord",
                record_id,
                owner,
                label,
                cid,
                digest,
                base64.b64encode(capsule).decode(),
                FORMAT_VERSION,
            )
        except RequestRejected:
            try:
                self.store.unpin(cid)
            except StorageError:
                _log.warning("could not release unregistered ciphertext %s", cid)
            raise
        fault_point("put.after_register")
        _log.info("registered record %s (%s) for %s", record_id, type_name, owner)
        return RecordRef.from_chain(record, self.labels)

    def get_record(self, record_id: str) -> RecordRef:
        """The record's pointer (if you may see it)."""
        return RecordRef.from_chain(self._evaluate("GetRecord", record_id), self.labels)

    def list_records(self, patient: str | None = None) -> list[RecordRef]:
        """Every record of a patient (yourself by default; others need the auditor role)."""
        out: list[RecordRef] = []
        for item in self._pages("ListRecords", "records", patient or self.ibe_id):
            out.append(RecordRef.from_chain(item, self.labels))
        return out

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
                pages = self._pages("ListGrantedRecords", "records", grant.grant_id, sparse=True)
                for item in pages:
                    if item["record_id"] not in seen:
                        seen.add(item["record_id"])
                        out.append((RecordRef.from_chain(item, self.labels), grant))
            except RequestRejected:
                continue  # a grant up its chain was revoked or expired since it was listed
        return out

    def _pages(
        self, function: str, key: str, *args: str, sparse: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated query. ``sparse``: the query filters its pages, so an
        empty page is not the end; only an empty (or repeated) bookmark is."""
        bookmark = ""
        while True:
            page = self._evaluate(function, *args, _PAGE, bookmark)
            yield from page[key]
            previous, bookmark = bookmark, page["bookmark"]
            if not bookmark or bookmark == previous or (not sparse and not page[key]):
                return

    def read_record(
        self,
        ref: RecordRef | str,
        *,
        grant: Grant | str | None = None,
    ) -> FHIRAbstractModel:
        """Read and decrypt a record you own or were granted.

        Submits RequestAccess (logged either way); only after an allow decision has committed
        do the proxies of the grant chain re-encrypt the capsule, in chain order. ``grant``
        names the grant to read under when you hold several (their re-keys may sit at
        different proxies). Raises :class:`AccessDenied` on a denial, and
        :class:`RecordIntegrityError` when the ciphertext is missing, altered or does not
        decrypt.
        """
        record_id = ref.record_id if isinstance(ref, RecordRef) else ref
        grant_id = "" if grant is None else grant.grant_id if isinstance(grant, Grant) else grant
        try:
            return self._read(record_id, grant_id)
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
                    return self._read(record_id, other.grant_id)
                except (GrantNotServed, AccessDenied):
                    continue
            raise

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

    def _read(self, record_id: str, grant_id: str) -> FHIRAbstractModel:
        # No per-record serialisation: each RequestAccess commits its own approval, keyed by
        # its access id, so concurrent reads of one record do not supersede each other.
        if self._sk is None:
            self._secret_key()  # says how to enrol
        access = self._submit("RequestAccess", record_id, grant_id)
        if access["decision"] != "allow":
            raise AccessDenied(record_id, self._humanise(access["reason"]), access["access_id"])
        record = access.get("record")
        if record is None or int(record["version"]) != int(access["record_version"]):
            record = self._evaluate("GetRecord", record_id, str(access["record_version"]))
        owner, label = record["owner"], record["type"]
        # Opened with the key of the record's master key (a grant's chain is of that epoch
        # too: the chain refuses grants of another); a record from before epochs has none and
        # is of the current key (the chain refused new DKGs once records existed).
        keys = self._keys_for(record_id, str(record.get("epoch", self.epoch)))
        capsule = base64.b64decode(record["capsule"])
        if access["grant_id"] != "owner":
            capsule = self._reencrypt_along(access, capsule)
        try:
            sealed = get_verified(self.store, record["cid"], record["sha256"])
        except (ContentNotFound, IntegrityError) as exc:
            raise RecordIntegrityError(f"could not read record {record_id}: {exc}") from None
        except StorageError as exc:
            raise RecordStorageError(f"could not read record {record_id}: {exc}") from None
        plaintext = b""
        for i, sk in enumerate(keys):
            receiving = self._type_secret(sk, label) if sk is self._sk else sk.type_secret(label)
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
        try:
            return parse_resource(plaintext)
        except FhirValidationError as exc:
            raise SdkError(f"record {record_id} decrypted to invalid FHIR: {exc}") from None

    def _reencrypt_along(self, access: dict[str, Any], capsule: bytes) -> bytes:
        """Visit each run of consecutive hops' proxy in chain order with the capsule so far
        (hops in a row at one proxy are one visit: that proxy applies them all)."""
        record_id, access_id = access["record_id"], access["access_id"]
        runs: list[tuple[str, list[str]]] = []  # (proxy, grant ids of its hops), chain order
        for hop in access.get("chain", []):
            proxy, grant_id = str(hop["proxy"]), str(hop["grant_id"])
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
                    grant_id=access["grant_id"],
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

    # --- grants ------------------------------------------------------------------------------

    def _expiry(self, expires: Expiry) -> int:
        if isinstance(expires, _dt.timedelta):
            return self._now() + int(expires.total_seconds())
        if isinstance(expires, _dt.datetime):
            if expires.tzinfo is None:
                raise ValueError("expires must be timezone-aware (e.g. datetime.now(UTC) + ...)")
            return int(expires.timestamp())
        if isinstance(expires, int) and not isinstance(expires, bool):
            return expires
        raise TypeError("expires must be a datetime, a timedelta or unix seconds")

    def _proxy_key(self, route: ProxyRoute, unchanged: str = "nothing was granted") -> bytes:
        # Asked before anything else: a proxy that is down fails the call while nothing is on
        # chain yet.
        try:
            return route.client.public_key()
        except Exception as exc:
            raise ProxyError(
                f"the re-encryption proxy {route.ibe_id} is not reachable ({exc}); {unchanged} "
                "— retry when it is up"
            ) from None

    def _deliver_rekey(
        self,
        grant_id: str,
        delegating: tipre.TypeSecretKey,
        receiving: tipre.VerifiedTypePublicKey,
        route: ProxyRoute,
        proxy_key: bytes,
    ) -> bytes:
        """Seal a fresh re-key to the proxy for ``grant_id`` and deliver it; returns the sealed
        bytes (opaque to anyone but that proxy) for a confirming delivery."""
        rekey = tipre.generate_rekey(delegating, receiving)
        sealed = seal_rekey(proxy_key, grant_id, rekey)
        del rekey
        route.client.store_rekey(grant_id, sealed)
        return sealed

    def _give(
        self,
        step: str,
        *,
        sk: tipre.IdentitySecretKey,
        label: str,
        grantee: str,
        receiving: tipre.VerifiedTypePublicKey,
        expiry: int,
        max_hops: int,
        allowed_next: Sequence[str],
        parent_grant_id: str,
        proxy: str | None,
    ) -> Grant:
        """The atomic grant: re-key to the proxy under a fresh grant id, then GrantAccess."""
        route = self._route_for(grantee, proxy)
        proxy_key = self._proxy_key(route)
        grant_id = "g-" + secrets.token_hex(16)
        try:
            sealed = self._deliver_rekey(
                grant_id, self._type_secret(sk, label), receiving, route, proxy_key
            )
        except Exception as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} did not take the re-key ({exc}); nothing was "
                "granted — retry when the proxy is up"
            ) from None
        fault_point(f"{step}.after_deliver")
        try:
            grant = self._submit(
                "GrantAccess",
                label,
                grantee,
                str(expiry),
                str(max_hops),
                json.dumps(sorted(allowed_next)) if allowed_next else "",
                parent_grant_id,
                route.ibe_id,
                grant_id,
            )
        except RequestRejected:
            # Refused: the grant will never commit, so withdraw the re-key now (else the proxy
            # drops it after PENDING_TTL_S).
            try:
                route.client.revoke(grant_id)
            except Exception as exc:
                _log.warning(
                    "proxy %s keeps an unused re-key until it expires: %s", route.ibe_id, exc
                )
            raise
        fault_point(f"{step}.after_commit")
        # The grant is usable now; delivering again only lets the proxy take the re-key into
        # use at once rather than at the first read (or its GrantAccess event).
        try:
            route.client.store_rekey(grant_id, sealed)
        except Exception as exc:
            _log.info(
                "proxy %s takes grant %s into use at its first read: %s",
                route.ibe_id,
                grant_id,
                exc,
            )
        return Grant.from_chain(grant, self.labels)

    def grant(
        self,
        grantee: str,
        type: str,
        *,
        expires: Expiry,
        max_hops: int = 0,
        allowed_next: Sequence[str] = (),
        proxy: str | None = None,
    ) -> Grant:
        """Let ``grantee`` read your records of ``type`` until ``expires``; ``max_hops`` is how
        many further referrals (forwards) the grantee may make. The re-key goes to ``proxy``
        (a proxy identity of the profile), by default the proxy of the grantee's hospital.
        Atomic: the grant commits only after its proxy took the re-key."""
        sk = self._secret_key()
        label = self._label(type)
        receiving = self._type_key(grantee, label)  # fail before anything is committed
        return self._give(
            "grant",
            sk=sk,
            label=label,
            grantee=grantee,
            receiving=receiving,
            expiry=self._expiry(expires),
            max_hops=max_hops,
            allowed_next=allowed_next,
            parent_grant_id="",
            proxy=proxy,
        )

    def forward(
        self,
        ref_or_grant: RecordRef | Grant | str,
        to: str,
        *,
        expires: Expiry | None = None,
        max_hops: int = 0,
        allowed_next: Sequence[str] = (),
        proxy: str | None = None,
    ) -> Grant:
        """Refer what you were granted to ``to`` (one hop further). Give the grant you hold, or
        a record it covers. ``expires`` defaults to the parent grant's expiry. The re-key goes
        to ``proxy``, by default the proxy of ``to``'s hospital. Atomic like :meth:`grant`."""
        sk = self._secret_key()
        parent = self._parent_grant(ref_or_grant)
        receiving = self._type_key(to, parent.label)
        return self._give(
            "forward",
            sk=sk,
            label=parent.label,
            grantee=to,
            receiving=receiving,
            expiry=parent.expiry if expires is None else self._expiry(expires),
            max_hops=max_hops,
            allowed_next=allowed_next,
            parent_grant_id=parent.grant_id,
            proxy=proxy,
        )

    def repair_grant(self, grant: Grant | str) -> Grant:
        """Deliver the re-key of an active grant you gave again, to the proxy it names.

        For a grant whose proxy holds no re-key (:class:`GrantNotServed` on reads: the proxy
        lost its state); a no-op for a grant that is fine. A
        proxy that is down changes nothing (:class:`ProxyError`); one that refuses the re-key
        gets the grant revoked, and :class:`GrantNotServed` says so — grant again then.
        """
        grant_id = grant.grant_id if isinstance(grant, Grant) else grant
        g = self.get_grant(grant_id)
        if g.grantor != self.ibe_id:
            raise RequestRejected(
                "grant repair",
                f"grant {grant_id} was given by {g.grantor}; only its grantor's wallet can "
                "deliver its re-key",
            )
        if g.state != "active":
            raise RequestRejected("grant repair", f"grant {grant_id} is {g.state}")
        if g.expiry <= self._now():
            raise RequestRejected("grant repair", f"grant {grant_id} has expired")
        sk = self._secret_key()
        receiving = self._type_key(g.grantee, g.label)
        route = self._route(g.proxy)
        proxy_key = self._proxy_key(route, f"grant {grant_id} is unchanged")
        try:
            self._deliver_rekey(
                grant_id, self._type_secret(sk, g.label), receiving, route, proxy_key
            )
        except (ProxyUnavailable, ConnectionError) as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} is not reachable ({exc}); grant {grant_id} is "
                "unchanged — retry when it is up"
            ) from None
        except (InvalidReKey, ProxyNotAuthorised) as exc:
            # A definite refusal (not a passing failure): this grant cannot be served.
            revoked = self.revoke(grant_id)
            raise GrantNotServed(
                f"the proxy {route.ibe_id} refused the re-key of grant {grant_id} ({exc}); the "
                f"grant is {revoked.state} now — grant again",
                grant_ids=[grant_id],
                proxy=route.ibe_id,
            ) from None
        except Exception as exc:
            raise ProxyError(
                f"the proxy {route.ibe_id} could not take the re-key of grant {grant_id} "
                f"({exc}); the grant is unchanged — retry later"
            ) from None
        return self.get_grant(grant_id)

    def _parent_grant(self, ref_or_grant: RecordRef | Grant | str) -> Grant:
        if isinstance(ref_or_grant, Grant):
            return ref_or_grant
        if isinstance(ref_or_grant, str) and ref_or_grant.startswith("g-"):
            return self.get_grant(ref_or_grant)
        ref = ref_or_grant if isinstance(ref_or_grant, RecordRef) else None
        record = ref if ref is not None else self.get_record(str(ref_or_grant))
        now = self._now()
        for g in self.grants("grantee"):
            if (
                g.owner == record.owner
                and g.label == record.label
                and g.state == "active"
                and g.expiry > now
            ):
                return g
        raise RequestRejected(
            "GrantAccess", f"you hold no active grant covering record {record.record_id}"
        )

    def get_grant(self, grant_id: str) -> Grant:
        """One grant you are party to."""
        return Grant.from_chain(self._evaluate("GetGrant", grant_id), self.labels)

    def grants(self, side: Literal["owner", "grantor", "grantee"] = "owner") -> list[Grant]:
        """Grants you gave as a patient (``owner``), forwarded as a grantee (``grantor``), or
        received (``grantee``)."""
        return [
            Grant.from_chain(g, self.labels)
            for g in self._pages("ListGrants", "grants", self.ibe_id, side)
        ]

    def grant_status(self, grant: Grant) -> str:
        """What a grant is worth now: ``revoked``, ``expired``, ``broken`` (active on chain, but
        its proxy holds no re-key: repair it), ``active``, or ``unchecked`` (active on chain;
        its proxy is not in this profile or did not answer)."""
        if grant.state != "active":
            return grant.state
        if grant.expiry <= self._now():
            return "expired"
        try:
            held = self._route(grant.proxy).client.rekey_status(grant.grant_id)
        except Exception as exc:
            _log.info("grant %s: its proxy %s was not asked: %s", grant.grant_id, grant.proxy, exc)
            return "unchecked"
        return "broken" if held == "missing" else "active"

    def revoke(self, grant: Grant | str) -> Grant:
        """Revoke a grant (forward-only: what was read stays read). Later requests are denied
        by the chaincode; every proxy of the profile is told and deletes the re-keys it holds
        of the grant and of grants forwarded from it (a proxy that is down only delays that —
        the chain already refuses, and a served proxy also follows the revocation events).
        Revoking a grant that is already revoked tells the proxies again (a revocation whose
        process died before it told them is finished this way)."""
        grant_id = grant.grant_id if isinstance(grant, Grant) else grant
        try:
            revoked = self._submit("RevokeAccess", grant_id)
        except RequestRejected as exc:
            if exc.reason != f"grant {grant_id} is already revoked":
                raise
            # Revoked before (perhaps by a run killed before it told the proxies): tell them.
            revoked = self._evaluate("GetGrant", grant_id)
        fault_point("revoke.after_commit")
        for route in self.proxies:
            try:
                route.client.revoke(grant_id)
            except Exception as exc:
                _log.warning(
                    "proxy %s did not delete the re-keys of %s yet: %s", route.ibe_id, grant_id, exc
                )
        return Grant.from_chain(revoked, self.labels)

    # --- audit -------------------------------------------------------------------------------

    def audit(self, patient: str | None = None, *, record: str | None = None) -> AuditTrail:
        """The operation log of a patient (yourself by default) or of one record."""
        if record is not None:
            entries = list(self._pages("GetAuditTrail", "entries", "record", record))
            chain = entries[0]["chain"] if entries else ""
            return AuditTrail(chain, tuple(entries), record)
        chain = patient or self.ibe_id
        return AuditTrail(chain, tuple(self._pages("GetAuditTrail", "entries", "patient", chain)))

    def verify_audit(
        self,
        patient: str | None = None,
        *,
        trail: AuditTrail | None = None,
        against: Sequence[Any] = (),
    ) -> AuditVerification:
        """Verify a patient's hash-chained log: the chaincode's recomputation, an offline
        recomputation of the entries as downloaded (or of ``trail``, e.g. an exported copy),
        and the whole ledger where the session was given its check (a consortium's sessions
        are): on the embedded backend signed blocks, a replay of every transaction, history and
        state; on Fabric every peer organisation's copy of the blocks, compared
        (:func:`~ehrshare.ledger.fabric_blocks.verify_copies`); ``against``: witnessed heads,
        :class:`~ehrshare.ledger.witness.SignedHead`."""
        from ehrshare_chaincode.auditlog import verify_entries

        chain = trail.chain if trail is not None else (patient or self.ibe_id)
        server = self._evaluate("VerifyAuditTrail", chain)
        entries = list(trail.entries) if trail is not None else list(self.audit(chain).entries)
        head = (
            {"seq": server["length"], "hash": server["head"]}
            if server.get("valid")
            else ({"seq": len(entries), "hash": entries[-1].get("hash")} if entries else None)
        )
        offline = verify_entries(chain, entries, head)
        checks: dict[str, Any] = {"chaincode": server, "offline": offline}
        problems = [(r["first_bad_seq"], r["reason"]) for r in (server, offline) if not r["valid"]]
        if self._ledger_check is not None:
            try:
                report = self._ledger_check(against=tuple(against), audit_chains=(chain,))
                checks["ledger"] = {"valid": True, **report}
            except Exception as exc:
                block = getattr(exc, "block", None)
                checks["ledger"] = {"valid": False, "reason": str(exc), "first_bad_block": block}
                problems.append((0, f"ledger integrity: {exc}"))
        elif against:
            reason = "witnessed heads can be checked on the embedded ledger only"
            checks["ledger"] = {"valid": False, "reason": reason}
            problems.append((0, reason))
        valid = not problems
        first = min((s for s, _ in problems if s), default=0)
        reason = "; ".join(dict.fromkeys(r for _, r in problems))
        return AuditVerification(chain, valid, len(entries), first, reason, checks)

    # --- async variants ----------------------------------------------------------------------

    aenroll = _in_thread(enroll)
    aput_record = _in_thread(put_record)
    aread_record = _in_thread(read_record)
    agrant = _in_thread(grant)
    aforward = _in_thread(forward)
    arevoke = _in_thread(revoke)
    aaudit = _in_thread(audit)
    averify_audit = _in_thread(verify_audit)
