"""Users check KGC partial keys against the roster of the chain's final DKG result.

The roster (each node's published key, snapshotted by the session the result belongs to) is the
trust anchor; no file in the consortium directory is. A node answering under a key that is not
in that snapshot is named and never combined.
"""

from __future__ import annotations

import base64

import pytest

from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.provisioning import Consortium
from ehrshare.session import EnrollmentError


def test_session_roster_is_the_final_results_key_snapshot(consortium: Consortium) -> None:
    consortium.add_member("ivy", "HospitalA", "patient")
    with consortium.session("ivy") as ivy:
        ivy.register()
        result = ivy._call("GetDKGResult", "")
        assert [k.to_bytes() for k in ivy.roster] == [base64.b64decode(k) for k in result["keys"]]
        assert [k.to_bytes() for k in ivy.roster] == [
            n.public_key.to_bytes() for n in consortium.kgc_nodes
        ]
        assert len(result["agreed_by"]) >= result["threshold"]
    assert not (consortium.directory / "kgc" / "roster.json").exists()


def test_enrolment_fails_clearly_when_partial_keys_do_not_verify_against_the_chain(
    consortium: Consortium,
) -> None:
    consortium.add_member("eve", "HospitalA", "patient")
    # Nodes 1 and 2 now sign with keys the chain's roster does not hold (as after a key
    # replacement without a new DKG): their answers must not verify.
    for node in consortium.kgc_nodes[:2]:
        node._key = KGCNodeKey.generate()
    with consortium.session("eve") as eve:
        with pytest.raises(EnrollmentError) as info:
            eve.enroll()
        assert set(info.value.invalid) == {1, 2}
        assert str(info.value) == (
            "enrolment of HospitalAMSP/eve failed: need 2 verified partial keys, have 1; "
            "rejected invalid shares from nodes [1, 2] (partial keys are checked against the "
            "KGC roster of the chain's final DKG result)"
        )
        assert not eve.enrolled
    assert not (consortium.profile.wallet("eve").directory / "ibe.key").exists()


def test_one_node_outside_the_chain_roster_is_named_and_skipped(consortium: Consortium) -> None:
    consortium.add_member("joe", "HospitalB", "clinician")
    consortium.kgc_nodes[0]._key = KGCNodeKey.generate()
    with consortium.session("joe") as joe:
        outcome = joe.enroll()
        assert outcome.invalid == (1,)
        assert joe.enrolled
