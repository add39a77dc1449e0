"""The one DKG protocol driver (``hazmat.board.drive``): phase order, who the phaser waits for,
and which failures drop a participant rather than end the run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ehrshare.hazmat.board import Driven, Step, drive
from ehrshare.hazmat.dkg import BundleKind, DKGError


@dataclass
class Script:
    """A participant that logs each call into a shared journal and fails where told."""

    name: str
    journal: list[str]
    justify: bool = False
    fail_at: str | None = None
    calls: list[str] = field(default_factory=list)

    def _step(self, what: str) -> None:
        self.journal.append(f"{self.name}.{what}")
        if self.fail_at == what:
            raise DKGError(f"{self.name} fails at {what}")

    def post_deal(self) -> None:
        self._step("deal")

    def post_response(self) -> None:
        self._step("response")

    def post_justification(self) -> bool:
        self._step("justification")
        return self.justify

    def finish(self) -> str:
        self._step("finish")
        return f"{self.name}-result"


@dataclass
class Phaser:
    journal: list[str]
    fail_on: BundleKind | None = None

    def close(self, phase: BundleKind) -> None:
        self.journal.append(f"close {phase.name.lower()}")
        if phase is self.fail_on:
            raise DKGError(f"{phase.name.lower()} never closed")


def test_every_participant_posts_each_phase_before_the_phaser_closes_it() -> None:
    journal: list[str] = []
    a, b = Script("a", journal), Script("b", journal)
    driven = drive([a, b], Phaser(journal))
    assert journal == [
        "a.deal",
        "b.deal",
        "close deal",
        "a.response",
        "b.response",
        "close response",
        "a.justification",
        "b.justification",
        "a.finish",
        "b.finish",
    ]
    assert driven == Driven(results={0: "a-result", 1: "b-result"})


def test_the_justification_phase_is_waited_for_only_when_someone_needs_it() -> None:
    journal: list[str] = []
    driven = drive([Script("a", journal), Script("b", journal, justify=True)], Phaser(journal))
    assert journal.index("close justification") == journal.index("b.justification") + 1
    assert driven.needed_justifications


def test_an_untolerated_failure_ends_the_run_before_the_phase_closes() -> None:
    journal: list[str] = []
    with pytest.raises(DKGError, match="a fails at response"):
        drive([Script("a", journal, fail_at="response"), Script("b", journal)], Phaser(journal))
    assert journal[-1] == "a.response"


def test_a_tolerated_failure_drops_only_that_participant() -> None:
    journal: list[str] = []
    seen: list[Step] = []

    def tolerate(step: Step, exc: DKGError) -> bool:
        seen.append(step)
        return True

    a = Script("a", journal, fail_at="response")
    driven = drive([a, Script("b", journal)], Phaser(journal), tolerate=tolerate)
    assert seen == [Step.RESPONSE]
    assert [entry for entry in journal if entry.startswith("a.")] == ["a.deal", "a.response"]
    assert driven.results == {1: "b-result"}
    assert str(driven.failures[0]) == "a fails at response"


def test_a_tolerated_justification_wait_failure_drops_everyone_still_waiting() -> None:
    journal: list[str] = []
    phaser = Phaser(journal, fail_on=BundleKind.JUSTIFICATION)
    driven = drive(
        [Script("a", journal, justify=True)],
        phaser,
        tolerate=lambda step, exc: step is Step.JUSTIFICATION_WAIT,
    )
    assert "a.finish" not in journal
    assert driven.results == {}
    assert str(driven.failures[0]) == "justification never closed"


def test_a_deal_phase_that_never_closes_is_never_tolerated() -> None:
    journal: list[str] = []
    with pytest.raises(DKGError, match="deal never closed"):
        drive(
            [Script("a", journal)],
            Phaser(journal, fail_on=BundleKind.DEAL),
            tolerate=lambda step, exc: True,
        )
