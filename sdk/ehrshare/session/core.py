"""The core of a :class:`~ehrshare.session.Session`: what every area of it uses.

Its identity and clients (the typed contract :attr:`SessionCore.chain`, the store, the KGC
nodes, the proxies and which proxy a grant names), how a failed ledger call reads to the member,
the keys (the identity key, its type secrets, the master key and roster of the chain's final DKG
result, type public keys) and the lookups of records and grants the areas share. The areas
(:mod:`.enrolment`, :mod:`.records`, :mod:`.access`, :mod:`.audit`) add the verbs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from ehrshare.closing import Closing
from ehrshare.contract import EhrContract, Grant, Page, RecordRef
from ehrshare.errors import EhrshareError
from ehrshare.fhir import TypeLabels, TypeMapping
from ehrshare.hazmat import tipre
from ehrshare.hazmat.dkg import PublicPolynomial
from ehrshare.hazmat.errors import EncodingError, VerificationError
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
from ehrshare.session.errors import (
    ForeignIdentity,
    LedgerUnreachable,
    NoSuchMember,
    NotEnrolledError,
    ProxyNotInProfile,
    RequestRejected,
    SdkError,
    UnknownProxy,
)
from ehrshare.storage import BlobStore
from ehrshare.wallet import Wallet, WalletError
from ehrshare_chaincode.contract import master_key_epoch

_log = logging.getLogger(__name__)

FORMAT_VERSION: Final = "1"
_PAGE: Final = 100
_LABEL_RE: Final = re.compile(r"t-[0-9a-f]{32}")
_MAX_FALLBACK_GRANTS: Final = 8
_MAX_POINTERS: Final = 4096
"""Record pointers a session keeps for RequestAccess's hints (records.py)."""
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One proxy a session can reach: the ledger identity grants name it by, its hospital's MSP
    id, and the client to call it with."""

    ibe_id: str
    msp_id: str
    client: ProxyClient


Expiry = _dt.datetime | _dt.timedelta | int
Clock = Callable[[], int]  # nanoseconds since the epoch, as the embedded gateway takes


class SessionCore(Closing):
    """What every area of a :class:`~ehrshare.session.Session` uses (see the module)."""

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
        self.labels = labels
        self.contract = contract  # also sets self.chain
        self.store = store
        self.kgc = tuple(kgc)
        if not proxies:
            raise ValueError("a session needs at least one proxy")
        self.proxies = tuple(proxies)
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
        self._type_secrets: dict[tuple[str, int], tipre.TypeSecretKey] = {}
        self._ibe_id = identity.ibe_id  # parses the certificate: once
        self._dkg: tuple[tipre.MasterPublicKey, PublicPolynomial] | None = None
        self._epoch = ""  # the current master key's epoch, set with _dkg
        self._roster: Sequence[KGCNodePublicKey] | Mapping[int, KGCNodePublicKey] | None = None
        self._sk_checked = False
        # Owner and label of records this session has seen, by id: RequestAccess's hints for a
        # later read by bare id (records.py). A record's owner and label never change, and a
        # wrong hint only costs the chaincode a read, never a wrong decision. Bounded.
        self._pointers: dict[str, tuple[str, str]] = {}

    @property
    def contract(self) -> Contract:
        """The ledger client this session calls the chaincode with."""
        return self._contract

    @contract.setter
    def contract(self, contract: Contract) -> None:
        self._contract = contract
        # Every chaincode call but the DKG board's goes through this typed client; a failed
        # call reads as the member's error (_ledger_error).
        self.chain = EhrContract(contract, labels=self.labels, errors=self._ledger_error)

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
        msp = self.chain.get_identity(grantee).msp_id
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

    def _call(self, function: str, *args: str) -> Any:
        """Any chaincode function by name, submitted or evaluated as the chaincode declares it,
        with this session's error mapping (tests and diagnostics; the SDK uses :attr:`chain`)."""
        return self.chain.call(function, *args)

    def _ledger_error(self, function: str, exc: LedgerError) -> EhrshareError:
        """What a failed ledger call means to the member: unreachable, a certificate the
        channel does not accept, a damaged ledger database, or a refusal. A ledger that was
        edited, cannot be written or is damaged is none of these: its error stays as it is."""
        if isinstance(exc, (LedgerIntegrityError, OrderingKeyError)):
            return exc
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

    def _type_secret(
        self, sk: tipre.IdentitySecretKey, label: str, type_epoch: int = 0
    ) -> tipre.TypeSecretKey:
        """``sk.type_secret(label, type_epoch)``, derived once per (label, epoch) for this
        session's key."""
        secret = self._type_secrets.get((label, type_epoch))
        if secret is None:
            secret = self._type_secrets[label, type_epoch] = sk.type_secret(label, type_epoch)
        return secret

    def _master(self) -> tuple[tipre.MasterPublicKey, PublicPolynomial]:
        from ehrshare.contract.dkg import public_polynomial_from_chain, roster_from_chain

        if self._dkg is None:
            # GetDKGResult answers only a final result: τ KGC nodes posted the same view.
            result = self.chain.dkg.result()
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

    def _sealing_key(
        self, owner: str, label: str, *, finish: Callable[[str], object] | None = None
    ) -> tuple[tipre.VerifiedTypePublicKey, int]:
        """The owner's type key a new record of ``label`` is sealed to, and its type-key epoch
        (docs/security.md §3.2): the chain's current epoch, whose key must be published.
        ``finish(label)`` publishes it when this session is the owner and the epoch has none
        (a revocation killed before its rotation was done); anyone else is refused."""
        try:
            state = self.chain.get_type_key_epoch(owner, label)
        except RequestRejected:
            return self._type_key(owner, label), 0  # says what is missing
        if state.type_epoch == 0:  # the published key itself: no second read (GetTypeKey)
            return self._checked_type_key(owner, label, state.key, state.epoch), 0
        if not state.key and finish is not None and owner == self.ibe_id:
            finish(label)
            state = self.chain.get_type_key_epoch(owner, label)
        if not state.key:
            raise RequestRejected(
                "GetTypeKeyEpoch",
                f"type key {self.labels.reveal(label) or label!r} of {owner} is being rotated "
                f"(epoch {state.type_epoch} has no key yet); {owner} finishes it by storing a "
                "record of that type, or with 'ehrshare type-key rotate' (or 'ehrshare grant "
                "repair')",
            )
        return self._checked_type_key(owner, label, state.key, state.epoch), state.type_epoch

    def _type_key(self, owner: str, label: str) -> tipre.VerifiedTypePublicKey:
        """The owner's type key of ``label`` of type-key epoch 0: what re-keys to it are made
        to."""
        try:
            stored = self.chain.get_type_key(owner, label)
        except RequestRejected as exc:
            self._check_member(owner)
            name = self.labels.reveal(label) or label
            raise RequestRejected(
                "GetTypeKey",
                f"{owner} has not published a key for type {name!r}; it must enrol and run "
                "publish_type_keys() (CLI: 'ehrshare enroll') first",
            ) from exc
        return self._checked_type_key(owner, label, stored.key, stored.epoch)

    def _checked_type_key(
        self, owner: str, label: str, key_b64: str, epoch: str | None
    ) -> tipre.VerifiedTypePublicKey:
        mpk, _ = self._master()
        if epoch is not None and epoch != self._epoch:
            # Its proof is of an earlier mpk; say what to do rather than "no valid proof".
            raise RequestRejected(
                "GetTypeKey",
                f"type key {label} of {owner} is of an earlier master key (epoch {epoch}, now "
                f"{self._epoch}); {owner} must enrol again first",
            )
        try:
            key = tipre.TypePublicKey.from_bytes(base64.b64decode(key_b64))
            return key.verify(owner=owner, type_label=label, mpk=mpk)
        except (EncodingError, VerificationError, ValueError) as exc:
            raise SdkError(f"type key {label} of {owner} on chain is invalid: {exc}") from None

    def _check_member(self, ibe_id: str) -> None:
        """Raise :class:`NoSuchMember` unless ``ibe_id`` is registered on chain."""
        try:
            self.chain.get_identity(ibe_id)
        except RequestRejected as exc:
            if exc.reason != f"identity {ibe_id} is not registered" and (
                "is not of the form" not in exc.reason
            ):
                raise  # the caller itself was refused (a revoked certificate, say)
            raise NoSuchMember(ibe_id) from None

    # --- lookups the areas share ---------------------------------------------------------------

    def get_record(self, record_id: str) -> RecordRef:
        """The record's pointer (if you may see it)."""
        return self.chain.get_record(record_id).ref

    def get_grant(self, grant_id: str) -> Grant:
        """One grant you are party to."""
        return self.chain.get_grant(grant_id)

    def grants(self, side: Literal["owner", "grantor", "grantee"] = "owner") -> list[Grant]:
        """Grants you gave as a patient (``owner``), forwarded as a grantee (``grantor``), or
        received (``grantee``)."""
        return list(
            self._pages(
                lambda bookmark: self.chain.list_grants(
                    self.ibe_id, side, page_size=_PAGE, bookmark=bookmark
                )
            )
        )

    def _pages(self, fetch: Callable[[str], Page[_T]], *, sparse: bool = False) -> Iterator[_T]:
        """Every item of a paginated query, ``fetch(bookmark)`` a page. ``sparse``: the query
        filters its pages, so an empty page is not the end; only an empty (or repeated)
        bookmark is."""
        bookmark = ""
        while True:
            page = fetch(bookmark)
            yield from page.items
            previous, bookmark = bookmark, page.bookmark
            if not bookmark or bookmark == previous or (not sparse and not page.items):
                return
