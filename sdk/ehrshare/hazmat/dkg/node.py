"""The DKG protocol object: :class:`DKGNode` and its single transition table.

One KGC node's side of a session, as dedis/kyber's ``dkg.DistKeyGenerator``: feed it the
board's bundles phase by phase and post what it returns. Every call is checked against
:attr:`DKGNode.TRANSITIONS`; complaints, justifications and QUAL are decided only from what is
on the board. Pure: no I/O, no clock, no secret in an exception or a log line; driving it is
:mod:`ehrshare.hazmat.board`'s job.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Final

from ehrshare.hazmat.dkg.bundles import (
    _B,
    BundleKind,
    DealBundle,
    DealStatus,
    EquivocationEvidence,
    JustificationBundle,
    Rejection,
    ResponseBundle,
    intake_bundles,
    open_share,
    seal_share,
)
from ehrshare.hazmat.dkg.config import (
    DKGAborted,
    DKGConfig,
    DKGResult,
    KeyShare,
    PhaseError,
    PublicPolynomial,
    ShareUnavailable,
    _eval_poly,
    _share_matches,
)
from ehrshare.hazmat.errors import DecryptionError
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.pairing import G1, RngFn, Scalar

__all__ = ["DKGNode", "Phase"]

# One logger for the whole DKG (the name it had as a single module).
_log = logging.getLogger("ehrshare.hazmat.dkg")

# ---------------------------------------------------------------------------------------------
# the protocol object


class Phase(enum.Enum):
    """Where a :class:`DKGNode` is; names say what it waits for next."""

    READY = "ready"  # deals() not called yet
    AWAITING_DEALS = "awaiting-deals"
    AWAITING_RESPONSES = "awaiting-responses"
    AWAITING_JUSTIFICATIONS = "awaiting-justifications"
    FINISHED = "finished"
    ABORTED = "aborted"


class DKGNode:
    """One KGC node's side of a DKG session. Pure: feed it bundles, post what it returns.

    Order of calls (enforced by :data:`TRANSITIONS`): :meth:`deals` → :meth:`process_deals` →
    :meth:`process_responses` → (:meth:`process_justifications` if :attr:`phase` is
    ``AWAITING_JUSTIFICATIONS``) → :meth:`result`. The ``process_*`` methods take every bundle
    the board holds for that phase (parsed or raw bytes) and skip the ones that fail checks,
    recording each in :attr:`rejected`; provable equivocation lands in :attr:`evidence`.
    """

    TRANSITIONS: Final[Mapping[tuple[Phase, str], frozenset[Phase]]] = {
        (Phase.READY, "deals"): frozenset({Phase.AWAITING_DEALS}),
        (Phase.AWAITING_DEALS, "process_deals"): frozenset(
            {Phase.AWAITING_RESPONSES, Phase.ABORTED}
        ),
        (Phase.AWAITING_RESPONSES, "process_responses"): frozenset(
            {Phase.AWAITING_JUSTIFICATIONS, Phase.FINISHED, Phase.ABORTED}
        ),
        (Phase.AWAITING_JUSTIFICATIONS, "process_justifications"): frozenset(
            {Phase.FINISHED, Phase.ABORTED}
        ),
        (Phase.FINISHED, "result"): frozenset({Phase.FINISHED}),
    }

    def __init__(self, config: DKGConfig, key: KGCNodeKey, *, rng: RngFn | None = None) -> None:
        self.config = config
        self.index = config.index_of(key.public_key)
        self._key = key
        self._rng = rng
        self._phase = Phase.READY
        self._coefficients: tuple[Scalar, ...] = ()
        self._deals: dict[int, DealBundle] = {}  # candidate dealers' bundles
        self._my_shares: dict[int, Scalar] = {}  # dealer -> f_dealer(self.index), verified
        self._complaints: dict[int, set[int]] = {}  # dealer -> responders that complained
        self._disqualified: dict[int, str] = {}
        self._cheaters: set[int] = set()  # nodes with equivocation evidence against them
        self._result: DKGResult | None = None
        self._abort: DKGAborted | None = None
        self.rejected: list[Rejection] = []
        self.evidence: list[EquivocationEvidence] = []

    def __repr__(self) -> str:
        return f"DKGNode(index={self.index}, n={self.config.n}, phase={self._phase.value})"

    @property
    def phase(self) -> Phase:
        """The current protocol phase."""
        return self._phase

    @property
    def disqualified(self) -> Mapping[int, str]:
        """Dealers excluded so far, with the reason."""
        return dict(self._disqualified)

    # -- state machine

    def _check_allowed(self, action: str) -> frozenset[Phase]:
        allowed = self.TRANSITIONS.get((self._phase, action))
        if allowed is None:
            expected = sorted(a for (p, a) in self.TRANSITIONS if p is self._phase)
            if self._phase is Phase.ABORTED and self._abort is not None:
                raise PhaseError(f"{action}() after the session aborted: {self._abort}")
            raise PhaseError(
                f"{action}() is not allowed in phase {self._phase.value}; "
                f"allowed: {', '.join(expected) or 'nothing'}"
            )
        return allowed

    def _move(self, allowed: frozenset[Phase], to: Phase) -> None:
        if to not in allowed:  # a bug in this module, not bad input
            raise AssertionError(f"transition {self._phase} -> {to} is not in the table")
        _log.debug("dkg node %d: %s -> %s", self.index, self._phase.value, to.value)
        self._phase = to

    def _disqualify(self, dealer: int, reason: str) -> None:
        if dealer not in self._disqualified:
            _log.info("dkg node %d: dealer %d disqualified: %s", self.index, dealer, reason)
            self._disqualified[dealer] = reason
        self._deals.pop(dealer, None)

    # -- intake shared by the three phases

    def _intake(
        self, kind: BundleKind, cls: type[_B], bundles: Iterable[_B | bytes]
    ) -> dict[int, _B]:
        """Parse, verify and de-duplicate one phase's bundles; at most one per sender."""
        by_sender, equivocators = intake_bundles(
            kind,
            cls,
            bundles,
            lambda bundle: bundle.verify(self.config),
            rejected=self.rejected,
            evidence=self.evidence,
            log=lambda text: _log.info("dkg node %d: %s", self.index, text),
        )
        for sender in equivocators:
            self._cheaters.add(sender)
            self._disqualify(sender, f"equivocated: two different signed {kind.name} bundles")
        return by_sender

    # -- phase 1: deal

    def deals(self) -> DealBundle:
        """Pick this node's random polynomial; return its signed deal bundle for the board."""
        allowed = self._check_allowed("deals")
        t, n, nonce = self.config.threshold, self.config.n, self.config.nonce
        self._coefficients = tuple(Scalar.random(self._rng) for _ in range(t))
        commitments = tuple(G1.generator() * a for a in self._coefficients)
        sealed = tuple(
            seal_share(
                self.config.public_key_of(j),
                _eval_poly(self._coefficients, j),
                nonce=nonce,
                dealer=self.index,
                recipient=j,
                rng=self._rng,
            )
            for j in range(1, n + 1)
        )
        bundle = DealBundle.create(
            self._key,
            nonce=nonce,
            dealer=self.index,
            commitments=commitments,
            sealed_shares=sealed,
        )
        self._move(allowed, Phase.AWAITING_DEALS)
        return bundle

    # -- phase 2: response

    def _open_my_share(self, bundle: DealBundle) -> Scalar | None:
        try:
            share = open_share(
                self._key,
                bundle.sealed_shares[self.index - 1],
                nonce=self.config.nonce,
                dealer=bundle.dealer,
                recipient=self.index,
            )
        except DecryptionError:
            return None
        return share if _share_matches(share, bundle.commitments, self.index) else None

    def process_deals(self, bundles: Iterable[DealBundle | bytes]) -> ResponseBundle:
        """Check every deal; return this node's signed response (complaints included).

        Raises :class:`DKGAborted` when fewer than τ dealers produced a usable deal.
        """
        allowed = self._check_allowed("process_deals")
        self._deals = self._intake(BundleKind.DEAL, DealBundle, bundles)
        statuses: list[DealStatus] = []
        for dealer in range(1, self.config.n + 1):
            bundle = self._deals.get(dealer)
            if bundle is None:
                if dealer not in self._disqualified:
                    self._disqualify(dealer, "no valid deal bundle")
                statuses.append(DealStatus.ABSENT)
                continue
            share = self._open_my_share(bundle)
            if share is None:
                _log.info("dkg node %d: complaint against dealer %d", self.index, dealer)
                statuses.append(DealStatus.COMPLAINT)
            else:
                self._my_shares[dealer] = share
                statuses.append(DealStatus.ACCEPTED)
        if len(self._deals) < self.config.threshold:
            self._fail(allowed)
        response = ResponseBundle.create(
            self._key, nonce=self.config.nonce, responder=self.index, statuses=statuses
        )
        self._move(allowed, Phase.AWAITING_RESPONSES)
        return response

    # -- phase 3: justification

    def process_responses(
        self, bundles: Iterable[ResponseBundle | bytes]
    ) -> JustificationBundle | None:
        """Tally complaints. Returns this node's justification if it must answer complaints.

        Afterwards :attr:`phase` is ``FINISHED`` when no qualified dealer has a complaint, else
        ``AWAITING_JUSTIFICATIONS``. Raises :class:`DKGAborted` if too few dealers remain.
        """
        allowed = self._check_allowed("process_responses")
        responses = self._intake(BundleKind.RESPONSE, ResponseBundle, bundles)
        for responder, response in sorted(responses.items()):
            if responder in self._cheaters:
                continue  # provably malicious (equivocated): its complaints carry no weight
            for dealer, status in enumerate(response.statuses, start=1):
                # ABSENT about a dealer whose deal is on the board means the responder lacks
                # its share, which is a complaint in effect.
                if dealer != responder and dealer in self._deals and status != DealStatus.ACCEPTED:
                    self._complaints.setdefault(dealer, set()).add(responder)
        for dealer, complainers in sorted(self._complaints.items()):
            if len(complainers) >= self.config.threshold:
                # Revealing τ shares would publish the dealer's secret; such a deal is bad anyway.
                self._disqualify(dealer, f"{len(complainers)} complaints (≥ τ)")
        pending = {d: c for d, c in self._complaints.items() if d in self._deals}
        justification: JustificationBundle | None = None
        mine = pending.get(self.index)
        if mine:
            revealed = tuple((j, _eval_poly(self._coefficients, j)) for j in sorted(mine))
            justification = JustificationBundle.create(
                self._key, nonce=self.config.nonce, dealer=self.index, revealed=revealed
            )
        if not pending:
            self._finish(allowed)
        elif len(self._deals) < self.config.threshold:
            self._fail(allowed)
        else:
            self._move(allowed, Phase.AWAITING_JUSTIFICATIONS)
        return justification

    # -- phase 4: finish

    def process_justifications(self, bundles: Iterable[JustificationBundle | bytes]) -> DKGResult:
        """Check revealed shares; disqualify dealers that did not justify; return the result."""
        allowed = self._check_allowed("process_justifications")
        justifications = self._intake(BundleKind.JUSTIFICATION, JustificationBundle, bundles)
        for dealer, complainers in sorted(self._complaints.items()):
            deal = self._deals.get(dealer)
            if deal is None:
                continue
            just = justifications.get(dealer)
            if just is None:
                self._disqualify(dealer, f"did not justify complaints from {sorted(complainers)}")
                continue
            revealed = dict(just.revealed)
            if set(revealed) != complainers:
                self._disqualify(
                    dealer,
                    f"justified recipients {sorted(revealed)}, complaints came from "
                    f"{sorted(complainers)}",
                )
                continue
            bad = [j for j, s in revealed.items() if not _share_matches(s, deal.commitments, j)]
            if bad:
                self._disqualify(dealer, f"revealed shares for {bad} do not match commitments")
                continue
            if self.index in revealed:
                self._my_shares[dealer] = revealed[self.index]
        return self._finish(allowed)

    def _fail(self, allowed: frozenset[Phase]) -> None:
        self._abort = DKGAborted(tuple(self._deals), self.config.threshold, self._disqualified)
        self._coefficients = ()
        self._move(allowed, Phase.ABORTED)
        raise self._abort

    def _finish(self, allowed: frozenset[Phase]) -> DKGResult:
        qual = tuple(sorted(self._deals))
        if len(qual) < self.config.threshold:
            self._fail(allowed)
        missing = [d for d in qual if d not in self._my_shares]
        if missing:
            # Only reachable when our own complaint never made it onto the board: the session
            # succeeded for the others, but this node holds no valid share.
            self._abort = None
            self._coefficients = ()
            self._move(allowed, Phase.ABORTED)
            raise ShareUnavailable(
                f"node {self.index} has no valid share from qualified dealers {missing} "
                "(its complaint is not on the board); it must rejoin by resharing"
            )
        t = self.config.threshold
        commitments = [self._deals[qual[0]].commitments[k] for k in range(t)]
        for dealer in qual[1:]:
            deal = self._deals[dealer]
            commitments = [commitments[k] + deal.commitments[k] for k in range(t)]
        value = self._my_shares[qual[0]]
        for dealer in qual[1:]:
            value = value + self._my_shares[dealer]
        public = PublicPolynomial(tuple(commitments))
        if G1.generator() * value != public.evaluate(self.index):
            raise AssertionError("combined share does not match the public polynomial")
        self._result = DKGResult(
            index=self.index,
            share=KeyShare(self.index, value),
            qual=qual,
            public=public,
            nonce=self.config.nonce,
            disqualified=dict(self._disqualified),
        )
        self._coefficients = ()  # the dealing polynomial is no longer needed; drop it
        self._move(allowed, Phase.FINISHED)
        return self._result

    def result(self) -> DKGResult:
        """The finished session's result (only in phase ``FINISHED``)."""
        self._check_allowed("result")
        assert self._result is not None
        return self._result
