"""Proactive resharing of the KGC master secret to a new committee, keeping the master key.

Scheme: resharing of a Feldman-shared secret (Desmedt–Jajodia 1997, "Redistributing secret
shares to new access structures"; Wong, Wang, Wing 2002 for verifiability), as drand runs it
(dedis/kyber ``share/dkg``, "resharing"). Setting: BLS12-381, commitments in G1, the old public
polynomial A_0..A_{τ−1} of the previous DKG (or resharing) on chain, ``mpk = A_0``.

Each dealer i of the old committee re-deals its old share s_i with a fresh polynomial f_i of
degree τ'−1 and f_i(0) = s_i; its commitment A_{i,0} must equal S_i = Σ_k i^k·A_k (its public
share under the old polynomial), which anyone can check, so a dealer that deals anything but its
share is disqualified without a complaint. For the qualified dealer set Q (|Q| ≥ τ_old) with
Lagrange coefficients λ_i at 0 over Q's old indices, new member j's share is
s'_j = Σ_{i∈Q} λ_i·f_i(j) and the new public polynomial is A'_k = Σ_{i∈Q} λ_i·A_{i,k}; since
Σ λ_i·s_i = s, A'_0 = mpk: the master key, every identity key and every record stay valid.

Phases and bundles are the DKG's (:mod:`ehrshare.hazmat.dkg`): deal (old members, one sealed share
per new member), response (new members, one status per old dealer), justification (old members
reveal complained shares). Bundle headers name the sender by its *position* in the dealer list
(deal, justification) or the recipient list (response), as the chaincode binds positions to
posting identities; the polynomials are evaluated at *share indices*, which stay a node's index
for good (a node keeps index 3 when node 2 leaves). A node can be in both committees.

This module is a pure protocol object like :class:`~ehrshare.hazmat.dkg.DKGNode`: no I/O, no
logging or raising of secret values. Destroying the old shares is the caller's job, and only
after the new committee's result is final.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from ehrshare.hazmat.dkg import (
    NONCE_SIZE,
    BundleKind,
    DealBundle,
    DealStatus,
    DKGAborted,
    DKGError,
    DKGResult,
    EquivocationEvidence,
    InvalidNonce,
    JustificationBundle,
    KeyShare,
    PhaseError,
    PublicPolynomial,
    Rejection,
    ResponseBundle,
    ShareUnavailable,
    ThresholdTooHigh,
    UnknownParticipant,
    open_share,
    seal_share,
)
from ehrshare.hazmat.dkg.bundles import intake_bundles
from ehrshare.hazmat.dkg.config import _eval_commitments, _eval_poly
from ehrshare.hazmat.errors import DecryptionError
from ehrshare.hazmat.kgc_keys import KGCNodeKey, KGCNodePublicKey
from ehrshare.hazmat.pairing import G1, RngFn, Scalar

__all__ = [
    "NotADealer",
    "NotARecipient",
    "ReshareConfig",
    "ReshareNode",
    "ResharePhase",
    "TooFewDealers",
    "lagrange_at_zero",
]

_log = logging.getLogger(__name__)
_MAX_NODES: Final = 1024


class TooFewDealers(DKGError, ValueError):
    """The old committee listed as dealers has fewer than τ_old members: it cannot reshare."""


class NotADealer(DKGError, ValueError):
    """A dealer was given no old share, or a share of another index than its dealer slot."""


class NotARecipient(DKGError, RuntimeError):
    """A node that only dealt (it leaves the committee) asked for a new share."""


def lagrange_at_zero(indices: Sequence[int]) -> list[Scalar]:
    """λ_i for each i in ``indices`` (distinct, ≥ 1): Σ λ_i·f(i) = f(0) for deg f < len."""
    out = []
    for j in indices:
        num, den = Scalar.from_int(1), Scalar.from_int(1)
        for m in indices:
            if m != j:
                num = num * Scalar.from_int(m)
                den = den * Scalar.from_int(m - j)
        out.append(num / den)
    return out


def _check_members(what: str, keys: Sequence[KGCNodePublicKey], indices: Sequence[int]) -> None:
    if len(keys) != len(indices):
        raise ValueError(f"{what}: {len(keys)} keys but {len(indices)} share indices")
    if not 1 <= len(keys) <= _MAX_NODES:
        raise ValueError(f"{what}: need between 1 and {_MAX_NODES} members, got {len(keys)}")
    if any(i < 1 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"{what}: share indices must be distinct and ≥ 1, got {list(indices)}")
    if len({k.to_bytes() for k in keys}) != len(keys):
        raise ValueError(f"{what} must have distinct public keys")


@dataclass(frozen=True, slots=True)
class _Rules:
    """The :class:`~ehrshare.hazmat.dkg.BundleRules` of one phase of a resharing session."""

    nonce: bytes
    n: int
    threshold: int
    senders: tuple[KGCNodePublicKey, ...]

    def public_key_of(self, index: int) -> KGCNodePublicKey:
        if not 1 <= index <= len(self.senders):
            raise UnknownParticipant(
                f"sender position must be between 1 and {len(self.senders)}, got {index}"
            )
        return self.senders[index - 1]


@dataclass(frozen=True, slots=True)
class ReshareConfig:
    """One resharing session; every node must use an identical config and a fresh nonce.

    ``dealers`` / ``dealer_indices``: the old committee members that deal (position p deals old
    share ``dealer_indices[p-1]``); ``recipients`` / ``recipient_indices``: the new committee
    (position q receives share index ``recipient_indices[q-1]``). ``old_public`` is the old
    public polynomial (τ_old = its length). ``threshold`` is τ_new (default: a majority of the
    new committee).
    """

    old_public: PublicPolynomial
    dealers: tuple[KGCNodePublicKey, ...]
    dealer_indices: tuple[int, ...]
    recipients: tuple[KGCNodePublicKey, ...]
    recipient_indices: tuple[int, ...]
    nonce: bytes
    threshold: int = 0

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_SIZE:
            raise InvalidNonce(f"session nonce must be {NONCE_SIZE} bytes, got {len(self.nonce)}")
        _check_members("the dealers", self.dealers, self.dealer_indices)
        _check_members("the new committee", self.recipients, self.recipient_indices)
        if len(self.dealers) < self.old_threshold:
            raise TooFewDealers(
                f"{len(self.dealers)} dealers cannot reshare a key with threshold "
                f"{self.old_threshold}; the old committee must have at least that many members"
            )
        n = len(self.recipients)
        if n < 2:
            raise ValueError(f"the new committee needs at least 2 members, got {n}")
        if self.threshold == 0:
            object.__setattr__(self, "threshold", n // 2 + 1)
        if self.threshold > n:
            raise ThresholdTooHigh(f"threshold {self.threshold} exceeds the {n} new members")
        if self.threshold < 2:
            raise ValueError(
                f"threshold must be at least 2, got {self.threshold} (τ=1 hands every node the key)"
            )

    @property
    def old_threshold(self) -> int:
        """τ_old: how many qualified dealers the session needs."""
        return self.old_public.threshold

    @property
    def mpk(self) -> G1:
        """The master public key, which the resharing keeps."""
        return self.old_public.mpk

    def dealer_position(self, key: KGCNodePublicKey) -> int | None:
        """1-based position of ``key`` among the dealers, or None."""
        for p, k in enumerate(self.dealers, start=1):
            if k == key:
                return p
        return None

    def recipient_position(self, key: KGCNodePublicKey) -> int | None:
        """1-based position of ``key`` in the new committee, or None."""
        for q, k in enumerate(self.recipients, start=1):
            if k == key:
                return q
        return None

    @property
    def deal_rules(self) -> _Rules:
        """Deals: from dealers, one sealed share per new member, τ_new commitments."""
        return _Rules(self.nonce, len(self.recipients), self.threshold, self.dealers)

    @property
    def response_rules(self) -> _Rules:
        """Responses: from new members, one status per dealer."""
        return _Rules(self.nonce, len(self.dealers), self.threshold, self.recipients)

    @property
    def justification_rules(self) -> _Rules:
        """Justifications: from dealers, revealing shares of new members."""
        return _Rules(self.nonce, len(self.recipients), self.threshold, self.dealers)


class ResharePhase(enum.Enum):
    """Where a :class:`ReshareNode` is; names say what it waits for next."""

    READY = "ready"
    AWAITING_DEALS = "awaiting-deals"
    AWAITING_RESPONSES = "awaiting-responses"
    AWAITING_JUSTIFICATIONS = "awaiting-justifications"
    FINISHED = "finished"
    ABORTED = "aborted"


_B = TypeVar("_B", DealBundle, ResponseBundle, JustificationBundle)


class ReshareNode:
    """One node's side of a resharing session: a dealer (old member, ``old_share`` given), a
    recipient (new member), or both. Pure: feed it bundles, post what it returns (None means
    this node posts nothing in that phase).

    Order of calls (:data:`TRANSITIONS`): :meth:`deals` → :meth:`process_deals` →
    :meth:`process_responses` → (:meth:`process_justifications` when :attr:`phase` is
    ``AWAITING_JUSTIFICATIONS``) → :meth:`result` (recipients). Dealers that leave the committee
    go through the same calls, since they must answer complaints, and end ``FINISHED`` without
    a share. A dealer without its old share (``abstain=True``) deals nothing and takes part
    only as a new member.
    """

    TRANSITIONS: Final[Mapping[tuple[ResharePhase, str], frozenset[ResharePhase]]] = {
        (ResharePhase.READY, "deals"): frozenset({ResharePhase.AWAITING_DEALS}),
        (ResharePhase.AWAITING_DEALS, "process_deals"): frozenset(
            {ResharePhase.AWAITING_RESPONSES, ResharePhase.ABORTED}
        ),
        (ResharePhase.AWAITING_RESPONSES, "process_responses"): frozenset(
            {ResharePhase.AWAITING_JUSTIFICATIONS, ResharePhase.FINISHED, ResharePhase.ABORTED}
        ),
        (ResharePhase.AWAITING_JUSTIFICATIONS, "process_justifications"): frozenset(
            {ResharePhase.FINISHED, ResharePhase.ABORTED}
        ),
        (ResharePhase.FINISHED, "result"): frozenset({ResharePhase.FINISHED}),
    }

    def __init__(
        self,
        config: ReshareConfig,
        key: KGCNodeKey,
        *,
        old_share: KeyShare | None = None,
        abstain: bool = False,
        rng: RngFn | None = None,
    ) -> None:
        self.config = config
        self._key = key
        self._rng = rng
        self.dealer_position = config.dealer_position(key.public_key)
        self.recipient_position = config.recipient_position(key.public_key)
        if self.dealer_position is None and self.recipient_position is None:
            raise UnknownParticipant(
                f"key {key.public_key.fingerprint()} is neither a dealer nor a new member"
            )
        if self.dealer_position is not None and old_share is None and abstain:
            # A dealer that lost its share: it deals nothing (the others see it as absent),
            # and still receives if it is a new member.
            self.dealer_position = None
            if self.recipient_position is None:
                raise NotADealer("a dealer that abstains and is not a new member has no part")
        if self.dealer_position is not None:
            expected = config.dealer_indices[self.dealer_position - 1]
            if old_share is None:
                raise NotADealer(f"dealer {expected} needs its old share to reshare")
            if old_share.index != expected:
                raise NotADealer(
                    f"the dealer at position {self.dealer_position} deals share {expected}, "
                    f"but was given share {old_share.index}"
                )
            if G1.generator() * old_share.value != config.old_public.evaluate(expected):
                raise NotADealer(
                    f"the old share {expected} does not match the old public polynomial"
                )
        self._old_share = old_share if self.dealer_position is not None else None
        self._phase = ResharePhase.READY
        self._coefficients: tuple[Scalar, ...] = ()
        self._deals: dict[int, DealBundle] = {}  # dealer position -> its verified deal
        self._my_shares: dict[int, Scalar] = {}  # dealer position -> f_dealer(my index)
        self._complaints: dict[int, set[int]] = {}  # dealer position -> complaining positions
        self._disqualified: dict[int, str] = {}  # by dealer *share index*
        self._cheating_recipients: set[int] = set()
        self._result: DKGResult | None = None
        self._qual: tuple[int, ...] = ()
        self._abort: DKGAborted | None = None
        self.rejected: list[Rejection] = []
        self.evidence: list[EquivocationEvidence] = []

    def __repr__(self) -> str:
        return (
            f"ReshareNode(dealer={self.dealer_position}, recipient={self.recipient_position}, "
            f"phase={self._phase.value})"
        )

    @property
    def phase(self) -> ResharePhase:
        """The current protocol phase."""
        return self._phase

    @property
    def index(self) -> int | None:
        """This node's new share index (None for a dealer that leaves the committee)."""
        q = self.recipient_position
        return None if q is None else self.config.recipient_indices[q - 1]

    @property
    def disqualified(self) -> Mapping[int, str]:
        """Dealers excluded so far, by old share index, with the reason."""
        return dict(self._disqualified)

    @property
    def qual(self) -> tuple[int, ...]:
        """Old share indices of the qualified dealers (once finished)."""
        return self._qual

    # -- state machine

    def _check_allowed(self, action: str) -> frozenset[ResharePhase]:
        allowed = self.TRANSITIONS.get((self._phase, action))
        if allowed is None:
            expected = sorted(a for (p, a) in self.TRANSITIONS if p is self._phase)
            if self._phase is ResharePhase.ABORTED and self._abort is not None:
                raise PhaseError(f"{action}() after the session aborted: {self._abort}")
            raise PhaseError(
                f"{action}() is not allowed in phase {self._phase.value}; "
                f"allowed: {', '.join(expected) or 'nothing'}"
            )
        return allowed

    def _move(self, allowed: frozenset[ResharePhase], to: ResharePhase) -> None:
        if to not in allowed:
            raise AssertionError(f"transition {self._phase} -> {to} is not in the table")
        self._phase = to

    def _old_index(self, position: int) -> int:
        return self.config.dealer_indices[position - 1]

    def _new_index(self, position: int) -> int:
        return self.config.recipient_indices[position - 1]

    def _disqualify(self, position: int, reason: str) -> None:
        dealer = self._old_index(position)
        if dealer not in self._disqualified:
            _log.info("reshare: dealer %d disqualified: %s", dealer, reason)
            self._disqualified[dealer] = reason
        self._deals.pop(position, None)

    def _intake(
        self, kind: BundleKind, cls: type[_B], bundles: Iterable[_B | bytes], rules: _Rules
    ) -> dict[int, _B]:
        """Parse, verify and de-duplicate one phase's bundles; at most one per sender."""
        by_sender, equivocators = intake_bundles(
            kind,
            cls,
            bundles,
            lambda bundle: bundle.verify(rules),
            rejected=self.rejected,
            evidence=self.evidence,
            log=lambda text: _log.info("reshare: %s", text),
        )
        for sender in equivocators:
            if kind is BundleKind.RESPONSE:
                self._cheating_recipients.add(sender)
            else:
                self._disqualify(sender, f"equivocated: two different signed {kind.name} bundles")
        return by_sender

    def _fail(self, allowed: frozenset[ResharePhase]) -> None:
        qual = tuple(self._old_index(p) for p in sorted(self._deals))
        self._abort = DKGAborted(qual, self.config.old_threshold, self._disqualified)
        self._coefficients = ()
        self._move(allowed, ResharePhase.ABORTED)
        raise self._abort

    # -- phase 1: deal

    def deals(self) -> DealBundle | None:
        """A dealer's signed deal of its old share to the new committee (None for new members
        that do not deal)."""
        allowed = self._check_allowed("deals")
        bundle: DealBundle | None = None
        if self.dealer_position is not None:
            assert self._old_share is not None
            c = self.config
            rest = tuple(Scalar.random(self._rng) for _ in range(c.threshold - 1))
            self._coefficients = (self._old_share.value, *rest)
            commitments = tuple(G1.generator() * a for a in self._coefficients)
            sealed = tuple(
                seal_share(
                    c.recipients[q - 1],
                    _eval_poly(self._coefficients, self._new_index(q)),
                    nonce=c.nonce,
                    dealer=self.dealer_position,
                    recipient=q,
                    rng=self._rng,
                )
                for q in range(1, len(c.recipients) + 1)
            )
            bundle = DealBundle.create(
                self._key,
                nonce=c.nonce,
                dealer=self.dealer_position,
                commitments=commitments,
                sealed_shares=sealed,
            )
        self._move(allowed, ResharePhase.AWAITING_DEALS)
        return bundle

    # -- phase 2: response

    def _open_my_share(self, position: int, bundle: DealBundle) -> Scalar | None:
        q = self.recipient_position
        assert q is not None
        try:
            share = open_share(
                self._key,
                bundle.sealed_shares[q - 1],
                nonce=self.config.nonce,
                dealer=position,
                recipient=q,
            )
        except DecryptionError:
            return None
        expected = _eval_commitments(bundle.commitments, self._new_index(q))
        return share if G1.generator() * share == expected else None

    def process_deals(self, bundles: Iterable[DealBundle | bytes]) -> ResponseBundle | None:
        """Check every deal (its A_0 must be the dealer's public share S_i under the old
        polynomial); a new member returns its signed response, a leaving dealer None.

        Raises :class:`~ehrshare.hazmat.dkg.DKGAborted` when fewer than τ_old dealers remain.
        """
        allowed = self._check_allowed("process_deals")
        c = self.config
        self._deals = self._intake(BundleKind.DEAL, DealBundle, bundles, c.deal_rules)
        for position in range(1, len(c.dealers) + 1):
            bundle = self._deals.get(position)
            if bundle is None:
                if self._old_index(position) not in self._disqualified:
                    self._disqualify(position, "no valid deal bundle")
                continue
            expected = c.old_public.evaluate(self._old_index(position))
            if bundle.commitments[0] != expected:
                # Public: every node sees it, so no complaint round is needed.
                self._disqualify(
                    position, "dealt another value than its old share (A_0 is not S_i)"
                )
        statuses: list[DealStatus] = []
        if self.recipient_position is not None:
            for position in range(1, len(c.dealers) + 1):
                bundle = self._deals.get(position)
                if bundle is None:
                    statuses.append(DealStatus.ABSENT)
                    continue
                share = self._open_my_share(position, bundle)
                if share is None:
                    _log.info("reshare: complaint against dealer %d", self._old_index(position))
                    statuses.append(DealStatus.COMPLAINT)
                else:
                    self._my_shares[position] = share
                    statuses.append(DealStatus.ACCEPTED)
        if len(self._deals) < c.old_threshold:
            self._fail(allowed)
        response = None
        if self.recipient_position is not None:
            response = ResponseBundle.create(
                self._key, nonce=c.nonce, responder=self.recipient_position, statuses=statuses
            )
        self._move(allowed, ResharePhase.AWAITING_RESPONSES)
        return response

    # -- phase 3: justification

    def process_responses(
        self, bundles: Iterable[ResponseBundle | bytes]
    ) -> JustificationBundle | None:
        """Tally complaints; a dealer that was complained about returns its justification.

        Afterwards :attr:`phase` is ``FINISHED`` when no qualified dealer has a complaint,
        else ``AWAITING_JUSTIFICATIONS``. Raises ``DKGAborted`` if too few dealers remain.
        """
        allowed = self._check_allowed("process_responses")
        c = self.config
        responses = self._intake(BundleKind.RESPONSE, ResponseBundle, bundles, c.response_rules)
        for responder, response in sorted(responses.items()):
            if responder in self._cheating_recipients:
                continue
            for position, status in enumerate(response.statuses, start=1):
                if position in self._deals and status != DealStatus.ACCEPTED:
                    self._complaints.setdefault(position, set()).add(responder)
        for position, complainers in sorted(self._complaints.items()):
            if len(complainers) >= c.threshold and position in self._deals:
                # Revealing τ_new shares would publish f_i, hence the dealer's old share.
                self._disqualify(position, f"{len(complainers)} complaints (≥ τ)")
        pending = {p: cs for p, cs in self._complaints.items() if p in self._deals}
        justification: JustificationBundle | None = None
        mine = pending.get(self.dealer_position or 0)
        if mine and self.dealer_position is not None:
            revealed = tuple(
                (q, _eval_poly(self._coefficients, self._new_index(q))) for q in sorted(mine)
            )
            justification = JustificationBundle.create(
                self._key, nonce=c.nonce, dealer=self.dealer_position, revealed=revealed
            )
        if not pending:
            self._finish(allowed)
        elif len(self._deals) < c.old_threshold:
            self._fail(allowed)
        else:
            self._move(allowed, ResharePhase.AWAITING_JUSTIFICATIONS)
        return justification

    # -- phase 4: finish

    def process_justifications(
        self, bundles: Iterable[JustificationBundle | bytes]
    ) -> DKGResult | None:
        """Check revealed shares; disqualify dealers that did not justify; finish."""
        allowed = self._check_allowed("process_justifications")
        c = self.config
        justifications = self._intake(
            BundleKind.JUSTIFICATION, JustificationBundle, bundles, c.justification_rules
        )
        for position, complainers in sorted(self._complaints.items()):
            deal = self._deals.get(position)
            if deal is None:
                continue
            just = justifications.get(position)
            if just is None:
                names = sorted(self._new_index(q) for q in complainers)
                self._disqualify(position, f"did not justify complaints from {names}")
                continue
            revealed = dict(just.revealed)
            if set(revealed) != complainers:
                self._disqualify(
                    position,
                    f"justified new members {sorted(self._new_index(q) for q in revealed)}, "
                    f"complaints came from {sorted(self._new_index(q) for q in complainers)}",
                )
                continue
            bad = [
                self._new_index(q)
                for q, s in revealed.items()
                if G1.generator() * s != _eval_commitments(deal.commitments, self._new_index(q))
            ]
            if bad:
                self._disqualify(position, f"revealed shares for {bad} do not match commitments")
                continue
            if self.recipient_position in revealed:
                self._my_shares[position] = revealed[self.recipient_position]
        return self._finish(allowed)

    def _finish(self, allowed: frozenset[ResharePhase]) -> DKGResult | None:
        c = self.config
        positions = sorted(self._deals)
        if len(positions) < c.old_threshold:
            self._fail(allowed)
        self._qual = tuple(self._old_index(p) for p in positions)
        lambdas = lagrange_at_zero(self._qual)
        commitments = []
        for k in range(c.threshold):
            acc = G1.identity()
            for p, lam in zip(positions, lambdas, strict=True):
                acc = acc + self._deals[p].commitments[k] * lam
            commitments.append(acc)
        public = PublicPolynomial(tuple(commitments))
        if public.mpk != c.mpk:  # guaranteed by the A_0 = S_i check; a bug otherwise
            raise AssertionError("resharing changed the master public key")
        self._coefficients = ()
        if self.recipient_position is None:
            self._move(allowed, ResharePhase.FINISHED)
            return None
        missing = [self._old_index(p) for p in positions if p not in self._my_shares]
        if missing:
            self._abort = None
            self._move(allowed, ResharePhase.ABORTED)
            raise ShareUnavailable(
                f"new member {self.index} has no valid share from qualified dealers {missing} "
                "(its complaint is not on the board)"
            )
        value = Scalar.from_int(0)
        for p, lam in zip(positions, lambdas, strict=True):
            value = value + self._my_shares[p] * lam
        index = self.index
        assert index is not None
        if G1.generator() * value != public.evaluate(index):
            raise AssertionError("combined share does not match the new public polynomial")
        self._result = DKGResult(
            index=index,
            share=KeyShare(index, value),
            qual=self._qual,
            public=public,
            nonce=c.nonce,
            disqualified=dict(self._disqualified),
        )
        self._move(allowed, ResharePhase.FINISHED)
        return self._result

    def result(self) -> DKGResult:
        """The new share, QUAL (old indices) and public polynomial (new members, ``FINISHED``)."""
        self._check_allowed("result")
        if self._result is None:
            raise NotARecipient(
                f"dealer {self.config.dealer_indices[(self.dealer_position or 1) - 1]} is not in "
                "the new committee; it gets no share"
            )
        return self._result
