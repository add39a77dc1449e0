"""Changing the KGC committee keeps every record readable (issue 12).

A fresh DKG on a consortium with records would replace the master key (the chain refuses it);
a resharing hands the same secret to a new committee: a node leaves, a node that was not in the
first committee joins, τ changes, a dealer that is down is tolerated while τ_old remain, and a
resharing that cannot finish leaves the old shares answering.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.hazmat.dkg import BundleKind, DealBundle, new_session_nonce, seal_share
from ehrshare.hazmat.errors import EncodingError
from ehrshare.hazmat.pairing import G1, Scalar
from ehrshare.ledger.errors import LedgerError
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import ADMIN_WALLET, Consortium
from ehrshare.services.kgc import (
    DKGSessionFailed,
    ReshareParticipation,
    open_dkg_session,
    roster_from_chain,
    run_local_reshare,
)

DAY = dt.timedelta(days=1)
HOSPITALS = ("HospitalA", "HospitalB", "HospitalC", "HospitalD")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def consortium(tmp_path: Path, clock: ManualClock) -> Iterator[Consortium]:
    """Four hospitals; the first three KGC nodes hold the key (τ=2); HospitalD's node does not."""
    c = Consortium.init(tmp_path / "c", hospitals=HOSPITALS, threshold=2, committee=3, clock=clock)
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("adams", "HospitalA", "clinician"),
        ("baker", "HospitalB", "clinician"),
        ("dora", "HospitalD", "clinician"),
    ):
        c.add_member(name, hospital, role)
    yield c
    c.close()


def _enrolled(c: Consortium, name: str) -> None:
    with c.session(name) as s:
        s.enroll()
        s.publish_type_keys()


def _records(c: Consortium) -> list[str]:
    """Alice's records, written before any committee change, and a grant to baker."""
    for name in ("alice", "adams", "baker"):
        _enrolled(c, name)
    with c.session("adams") as adams, c.session("alice") as alice:
        refs = [adams.put_record(lab_observation(), patient=alice.ibe_id) for _ in range(2)]
        alice.grant(baker_id(c), "lab", expires=DAY)
    return [r.record_id for r in refs]


def baker_id(c: Consortium) -> str:
    with c.session("baker") as s:
        return s.ibe_id


def _all_read(c: Consortium, refs: list[str]) -> None:
    """Every record reads for its owner and its grantee, each from its wallet's old key."""
    for name in ("alice", "baker"):
        with c.session(name) as s:
            for ref in refs:
                assert s.read_record(ref).status == "final"  # type: ignore[attr-defined]


def _reshare(c: Consortium, clock: ManualClock, **kwargs: object) -> object:
    def sleep(seconds: float) -> None:
        clock.advance(1)

    with c.session(ADMIN_WALLET) as admin:
        return run_local_reshare(
            c.kgc_nodes,
            nonce=new_session_nonce(),
            admin=admin.contract,
            phase_timeout_s=5,
            poll=0.0,
            sleep=sleep,
            now=lambda: clock.seconds,
            **kwargs,  # type: ignore[arg-type]
        )


def test_a_fresh_dkg_on_a_consortium_with_records_is_refused(
    consortium: Consortium,
) -> None:
    refs = _records(consortium)
    with consortium.session(ADMIN_WALLET) as admin, pytest.raises(LedgerError) as info:
        open_dkg_session(
            admin.contract,
            nonce=new_session_nonce(),
            roster=[f"{h}MSP/kgc{i}" for i, h in enumerate(HOSPITALS[:3], start=1)],
            threshold=2,
        )
    assert "reshare the key to a new committee instead" in info.value.message
    _all_read(consortium, refs)


def test_reshare_removes_a_node_adds_one_and_raises_tau_keeping_every_record(
    consortium: Consortium, clock: ManualClock
) -> None:
    refs = _records(consortium)
    mpk = consortium.dkg_result()["mpk"]
    node2 = next(n for n in consortium.kgc_nodes if n.index == 2)
    old_session = node2.current_session
    assert old_session is not None and node2.holds_share(old_session)
    public = _reshare(consortium, clock, members=[1, 3, 4], dealers=[1, 2, 3], threshold=3)
    result = consortium.dkg_result()
    assert result["mpk"] == mpk
    assert result["roster"] == ["HospitalAMSP/kgc1", "HospitalCMSP/kgc3", "HospitalDMSP/kgc4"]
    assert result["indices"] == [1, 3, 4]
    assert public.threshold == 3  # type: ignore[attr-defined]
    # The node that left destroyed its share once the result was final; the others answer
    # under the new one.
    assert node2.current_session is None and not node2.holds_share(old_session)
    for node in consortium.kgc_nodes:
        if node.index != 2:
            assert node.current_session == bytes.fromhex(result["nonce"])
            assert not node.holds_share(old_session)
    _all_read(consortium, refs)
    # Users check partial keys by share index against the chain's snapshot.
    roster = roster_from_chain(result)
    assert isinstance(roster, dict) and sorted(roster) == [1, 3, 4]
    assert {i: k for i, k in roster.items()} == {
        n.index: n.public_key for n in consortium.kgc_nodes if n.index != 2
    }
    with pytest.raises(EncodingError, match="reshare result on chain is malformed"):
        roster_from_chain({**result, "indices": [1, 3]})
    # A new member enrols with τ=3 partial keys from nodes 1, 3, 4 (node 2 has no share) and
    # reads under a new grant.
    _enrolled(consortium, "dora")
    with consortium.session("alice") as alice, consortium.session("dora") as dora:
        alice.grant(dora.ibe_id, "lab", expires=DAY)
        assert dora.read_record(refs[0]).status == "final"  # type: ignore[attr-defined]
        # Re-enrolling an old member gives the same key (same mpk), so old wallets stay good.
        before = alice._secret_key().to_secret_bytes()
        alice.enroll()
        assert alice._secret_key().to_secret_bytes() == before


def test_a_dealer_that_is_down_is_tolerated_while_tau_old_deal(
    consortium: Consortium, clock: ManualClock
) -> None:
    refs = _records(consortium)
    mpk = consortium.dkg_result()["mpk"]
    # Node 3 is being replaced by node 4 and is down: its deal phase closes at the timeout.
    _reshare(consortium, clock, members=[1, 2, 4], dealers=[1, 2, 3], threshold=3, skip=[3])
    assert consortium.dkg_result()["mpk"] == mpk
    assert consortium.dkg_result()["qual"] == ["HospitalAMSP/kgc1", "HospitalBMSP/kgc2"]
    _all_read(consortium, refs)


def test_a_resharing_that_cannot_finish_leaves_the_old_shares_answering(
    consortium: Consortium, clock: ManualClock
) -> None:
    refs = _records(consortium)
    before = consortium.dkg_result()
    sessions = {n.index: n.current_session for n in consortium.kgc_nodes}
    with pytest.raises(DKGSessionFailed, match="only 1 of 3 dealers posted a deal; threshold is 2"):
        _reshare(consortium, clock, members=[1, 2, 3], dealers=[1, 2, 3], skip=[2, 3])
    assert consortium.dkg_result() == before
    assert {n.index: n.current_session for n in consortium.kgc_nodes} == sessions
    _all_read(consortium, refs)
    _enrolled(consortium, "dora")


def test_a_dealer_dealing_another_secret_is_named_and_disqualified_on_chain(
    consortium: Consortium, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 2 deals a fresh random polynomial instead of its share (it would change mpk): every
    new member disqualifies it from the public commitments, the result keeps mpk without it."""
    refs = _records(consortium)
    mpk = consortium.dkg_result()["mpk"]
    honest = ReshareParticipation.post_deal

    def cheat(self: ReshareParticipation) -> None:
        if self.node.index != 2:
            honest(self)
            return
        self._proto.deals()  # keeps the protocol object's phase table in step
        c = self.config
        coefficients = [Scalar.random() for _ in range(c.threshold)]
        sealed = [
            seal_share(
                key,
                sum(
                    (coefficients[k] * Scalar.from_int(j**k) for k in range(c.threshold)),
                    Scalar.from_int(0),
                ),
                nonce=c.nonce,
                dealer=2,
                recipient=q,
            )
            for q, (key, j) in enumerate(zip(c.recipients, c.recipient_indices, strict=True), 1)
        ]
        bundle = DealBundle.create(
            self.node._key,
            nonce=c.nonce,
            dealer=2,
            commitments=[G1.generator() * a for a in coefficients],
            sealed_shares=sealed,
        )
        self.board.post(c.nonce, BundleKind.DEAL, bundle.to_bytes())

    monkeypatch.setattr(ReshareParticipation, "post_deal", cheat)
    _reshare(consortium, clock, members=[1, 3, 4], dealers=[1, 2, 3], threshold=2)
    result = consortium.dkg_result()
    assert result["mpk"] == mpk
    assert result["qual"] == ["HospitalAMSP/kgc1", "HospitalCMSP/kgc3"]
    for node in consortium.kgc_nodes:
        if node.index != 2:
            held = node._result
            assert held is not None
            assert held.disqualified == {
                2: "dealt another value than its old share (A_0 is not S_i)"
            }
    _all_read(consortium, refs)
