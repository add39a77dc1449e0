"""A conditional create's claim (``TypeLabels.claim``): deterministic under the label key,
different for any change of owner, resourceType, system or value (also where plain
concatenation would collide), in its own domain (never a kind or a type label), and passed to
RegisterRecord as its 10th argument only when given (older calls keep their arguments)."""

from __future__ import annotations

import re

import pytest

from ehrshare.contract.client import register_record_args
from ehrshare.fhir import LABEL_KEY_SIZE, TypeLabels

KEY = bytes(range(LABEL_KEY_SIZE))
ALICE = "HospitalAMSP/alice"
SYS = "http://hosp.example/ids"


def test_a_claim_is_an_hmac_of_owner_type_and_identifier() -> None:
    labels = TypeLabels(KEY)
    claim = labels.claim(ALICE, "Observation", SYS, "obs-1")
    assert re.fullmatch(r"i-[0-9a-f]{32}", claim)
    assert claim == TypeLabels(KEY).claim(ALICE, "Observation", SYS, "obs-1")
    others = {
        labels.claim("HospitalAMSP/bob", "Observation", SYS, "obs-1"),
        labels.claim(ALICE, "Specimen", SYS, "obs-1"),
        labels.claim(ALICE, "Observation", SYS + "x", "obs-1"),
        labels.claim(ALICE, "Observation", "", "obs-1"),
        labels.claim(ALICE, "Observation", SYS, "obs-2"),
        labels.claim(ALICE, "Observation", SYS + "|obs", "-1"),  # same concatenation
        TypeLabels(bytes(LABEL_KEY_SIZE)).claim(ALICE, "Observation", SYS, "obs-1"),
    }
    assert claim not in others and len(others) == 7
    assert claim[2:] not in (labels.kind("Observation")[2:], labels.opaque("lab")[2:])
    with pytest.raises(ValueError, match="not a FHIR resource type"):
        labels.claim(ALICE, "observation", SYS, "obs-1")


def test_register_record_args_carry_the_claim_only_when_given() -> None:
    base = {
        "record_id": "r-1",
        "owner": ALICE,
        "label": "t-" + "0" * 32,
        "cid": "bafy",
        "sha256": "0" * 64,
        "capsule": b"c",
        "format_version": "1",
    }
    assert len(register_record_args(**base)) == 7
    assert register_record_args(**base, type_epoch=2, kind="k-1")[7:] == ("2", "k-1")
    assert register_record_args(**base, claim="i-1")[7:] == ("", "", "i-1")
    assert register_record_args(**base, type_epoch=2, kind="k-1", claim="i-1")[7:] == (
        "2",
        "k-1",
        "i-1",
    )
