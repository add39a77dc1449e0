"""Extraction serving: how a :class:`~ehrshare.services.kgc.node.KgcNode` answers a signed
extraction request, and :class:`InProcessKgcClient`, the in-process way to ask it.

Only signed requests (format 2, :class:`~ehrshare.hazmat.extract.SignedExtractionRequest`) whose
certificate is the one registered on chain for the identity (GetIdentity's ``cert_sha256``) and
whose signature by that certificate's key verifies — so the member's ledger key is needed, not
just its TLS client key — addressed to this node and its DKG's mpk, stamped within
``max_clock_skew_s`` of the node's clock and not seen before (nonces kept in the state
directory, :class:`~ehrshare.services.extract_auth.SeenNonces`); only to the identity itself
when the caller is authenticated; rate-limited per requester (token bucket, injectable clock);
each partial key sealed to the requester's one-time reply key and signed; and each attempt
logged (who, for which identity, which node, the outcome or the reason for a refusal — never
key material).

What this module must not do: log or raise with a share, a partial key or a reply key; trust a
requester field when an authenticated caller is given; answer before the share is loaded and
the identity checked on chain.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ehrshare.contract.dkg import DkgBoardClient
from ehrshare.hazmat.dkg import DKGResult
from ehrshare.hazmat.errors import EncodingError
from ehrshare.hazmat.extract import (
    SIGNED_REQUEST_VERSION,
    SignedExtractionRequest,
    extract_partial_key,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import RngFn
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.extract_auth import SeenNonces, verify_request_signature
from ehrshare.services.kgc.emergency import check_emergency_requester, is_emergency_identity
from ehrshare.services.kgc.errors import (
    BadRequest,
    BadSignature,
    IdentityNotRegistered,
    KgcError,
    NoShare,
    NotAuthorised,
    OutdatedRequest,
    RateLimited,
    ReplayedRequest,
    StaleRequest,
    UnregisteredCertificate,
)
from ehrshare.services.ratelimit import TokenBucketLimiter

if TYPE_CHECKING:
    from ehrshare.services.kgc.node import KgcNode

__all__ = ["ExtractionServing", "InProcessKgcClient"]

# The audit log's logger name is what operators filter on: one name for the key centre.
_log = logging.getLogger("ehrshare.services.kgc")

_NOT_REGISTERED_MARK: Final = "is not registered"


class ExtractionServing:
    """The extraction half of :class:`~ehrshare.services.kgc.node.KgcNode` (a mixin: one node
    type across two files, as a contract type spans files in fabric-samples). The node
    calls :meth:`_init_extraction` from its constructor."""

    index: int
    max_clock_skew_s: int
    _key: KGCNodeKey
    _rng: RngFn | None
    _lock: threading.Lock
    _result: DKGResult | None
    _chain: DkgBoardClient
    _wall_clock: Callable[[], int]
    _limiter: TokenBucketLimiter
    _refusal_log: TokenBucketLimiter
    _refusals_unlogged: dict[str, int]
    _audit_lock: threading.Lock
    _seen: SeenNonces

    def _init_extraction(
        self,
        *,
        rate_limit_per_minute: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], int],
        max_clock_skew_s: int,
        seen: SeenNonces,
    ) -> None:
        self._limiter = TokenBucketLimiter(rate_limit_per_minute, period=60.0, clock=clock)
        self._refusal_log = TokenBucketLimiter(rate_limit_per_minute, period=60.0, clock=clock)
        self._refusals_unlogged = {}
        self._audit_lock = threading.Lock()
        self._wall_clock = wall_clock
        self.max_clock_skew_s = int(max_clock_skew_s)
        self._seen = seen

    # --- extraction ---------------------------------------------------------------------------

    def extract(self, request_bytes: bytes, *, requester: str | None = None) -> bytes:
        """Answer one signed extraction request with a sealed, signed partial key (response bytes).

        ``requester`` is the authenticated caller's identity (the gRPC layer takes it from the
        client certificate); it must be the identity whose key is asked for. In-process callers
        that authenticated the user themselves may leave it None. Either way the request must
        be signed with the identity's ledger key (its certificate the one on chain), be
        addressed to this node and its DKG, be fresh and not replayed; each refusal raises the
        :class:`KgcError` subclass that names the reason and is logged.
        """
        request = self._parse(request_bytes, requester)
        who = requester if requester is not None else request.identity
        emergency = is_emergency_identity(request.identity)  # services/kgc/emergency.py
        if requester is not None and requester != request.identity and not emergency:
            self._audit(request.identity, who, "refused: not the owner")
            raise NotAuthorised(
                f"identity {requester} may not extract the key of {request.identity}"
            )
        # Every check that a request is really the member's comes BEFORE the member's rate
        # budget is charged: otherwise whoever holds a stolen TLS key (but not the ledger key)
        # could spend the member's extractions with forged requests and lock it out.
        with self._lock:
            result = self._result
        self._check_addressed(request, who, result)
        now = self._wall_clock() // 1_000_000_000
        self._check_fresh(request, who, now)
        if not verify_request_signature(request):
            self._audit(request.identity, who, "refused: bad signature")
            raise BadSignature(
                f"the extraction request for {request.identity} is not signed by the key of the "
                "certificate it carries (requests are signed with the member's ledger key, not "
                "its TLS key)"
            )
        granted = "ok"
        if emergency:
            try:
                granted = check_emergency_requester(
                    self._chain.contract, request, requester, self.index
                )
            except KgcError as exc:
                self._audit(request.identity, who, f"refused: {exc}")
                raise
        else:
            self._check_registered(request, who)
        if not self._seen.remember(
            request.identity,
            request.nonce,
            request.timestamp,
            now=now,
            window=self.max_clock_skew_s,
        ):
            self._audit(request.identity, who, "refused: replayed")
            raise ReplayedRequest(
                f"the extraction request for {request.identity} with nonce "
                f"{request.nonce.hex()} was already answered by KGC node {self.index}; "
                "a client makes a fresh request for every attempt"
            )
        if not self._limiter.try_acquire(who):
            wait = self._limiter.retry_after(who)
            self._audit(request.identity, who, "refused: rate limit")
            raise RateLimited(
                f"identity {who} exceeded {self._limiter.capacity} extractions per minute at "
                f"KGC node {self.index}; retry in {wait:.1f} s",
                retry_after=wait,
            )
        if result is None:
            self._audit(request.identity, who, "refused: no share")
            raise NoShare(f"KGC node {self.index} holds no DKG share yet")
        response = extract_partial_key(result.share, self._key, request, rng=self._rng)
        self._audit(request.identity, who, granted, result.nonce)
        return response.to_bytes()

    def _parse(self, request_bytes: bytes, requester: str | None) -> SignedExtractionRequest:
        who = requester or "-"
        if request_bytes[:1] == bytes([1]):
            self._audit("-", who, "refused: outdated request format")
            raise OutdatedRequest(
                f"extraction request format 1 (unsigned) is no longer accepted by KGC node "
                f"{self.index}: it needs format {SIGNED_REQUEST_VERSION}, signed with the "
                "member's ledger key; upgrade the ehrshare client"
            )
        try:
            return SignedExtractionRequest.from_bytes(request_bytes)
        except EncodingError as exc:
            self._audit("-", who, "refused: malformed request")
            raise BadRequest(f"extraction request: {exc}") from None

    def _check_addressed(
        self, request: SignedExtractionRequest, who: str, result: DKGResult | None
    ) -> None:
        if request.node_index != self.index:
            self._audit(request.identity, who, "refused: addressed to another node")
            raise BadRequest(
                f"the extraction request is addressed to KGC node {request.node_index}, "
                f"not node {self.index}"
            )
        if result is not None and request.mpk != result.public.mpk.to_bytes():
            self._audit(request.identity, who, "refused: other mpk", result.nonce)
            raise BadRequest(
                f"the extraction request names mpk {request.mpk.hex()[:16]}…; KGC node "
                f"{self.index} holds a share of dkg session {result.nonce.hex()[:16]} "
                f"(mpk {result.public.mpk.to_bytes().hex()[:16]}…)"
            )

    def _check_fresh(self, request: SignedExtractionRequest, who: str, now: int) -> None:
        skew = request.timestamp - now
        if abs(skew) > self.max_clock_skew_s:
            direction = "ahead of" if skew > 0 else "behind"
            self._audit(request.identity, who, "refused: stale timestamp")
            raise StaleRequest(
                f"the extraction request timestamp {request.timestamp} is {abs(skew)} s "
                f"{direction} KGC node {self.index}'s clock ({now}); the limit is "
                f"{self.max_clock_skew_s} s: check the client's clock"
            )

    def _check_registered(self, request: SignedExtractionRequest, who: str) -> None:
        identity = request.identity
        try:
            ident = self._chain.identity(identity)
        except LedgerError as exc:
            if _NOT_REGISTERED_MARK in exc.message or "is not of the form" in exc.message:
                self._audit(identity, who, "refused: not registered")
                raise IdentityNotRegistered(
                    f"identity {identity} is not registered on chain; KGC node {self.index} "
                    "extracts keys only for registered identities"
                ) from None
            self._audit(identity, who, "refused: ledger error")
            raise KgcError(
                f"KGC node {self.index} could not check identity {identity} on chain: {exc}"
            ) from None
        registered = str(ident.get("cert_sha256", ""))
        presented = hashlib.sha256(request.certificate).hexdigest()
        if presented != registered:
            self._audit(identity, who, "refused: unregistered certificate")
            raise UnregisteredCertificate(
                f"the certificate in the extraction request (sha256 {presented[:16]}…) is not "
                f"the one registered on chain for {identity} (sha256 {registered[:16]}…); "
                "requests are signed with the member's ledger key and certificate"
            )

    def _audit(self, identity: str, who: str, outcome: str, nonce: bytes | None = None) -> None:
        # One line per extraction attempt; the log record carries the time. Refusals come
        # before the rate limit (see extract), so a flood of forged requests would flood the
        # log: refusals get their own per-caller budget, and what it drops is counted in the
        # caller's next logged refusal.
        if outcome.startswith("refused"):
            with self._audit_lock:
                if not self._refusal_log.try_acquire(who):
                    self._refusals_unlogged[who] = self._refusals_unlogged.get(who, 0) + 1
                    return
                dropped = self._refusals_unlogged.pop(who, 0)
            if dropped:
                outcome = f"{outcome} ({dropped} earlier refusals not logged)"
        _log.info(
            "extraction node=%d identity=%s requester=%s session=%s outcome=%s",
            self.index,
            identity,
            who,
            nonce.hex()[:16] if nonce is not None else "-",
            outcome,
        )


class InProcessKgcClient:
    """A :class:`~ehrshare.services.protocols.KgcClient` that calls a
    :class:`~ehrshare.services.kgc.node.KgcNode` directly (embedded backend).

    ``requester`` is the identity the application authenticated (its own enrolled identity);
    the node refuses requests for any other identity. The request goes through the same checks
    as over gRPC (signature by the registered ledger certificate, freshness, replay).
    """

    def __init__(self, node: KgcNode, *, requester: str) -> None:
        self._node = node
        self.index = node.index
        self.requester = requester

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        """Call the node (``timeout`` is accepted for protocol compatibility)."""
        del timeout
        return self._node.extract(request_bytes, requester=self.requester)
