"""Consortium.init publishes every hospital's CA on chain, so its admins can RegisterMember."""

from __future__ import annotations

import json

import pytest

from ehrshare.identity import LocalCA
from ehrshare.ledger.embedded import connect as ledger_connect
from ehrshare.ledger.errors import EndorseError
from ehrshare.provisioning import Consortium


def test_init_puts_each_hospitals_ca_on_chain_and_add_member_keeps_it(
    consortium: Consortium,
) -> None:
    ca_a = LocalCA.load(consortium.directory / "ca" / "HospitalAMSP")
    admin_id, admin_signer = ca_a.issue("admin", node_ou="admin")
    with ledger_connect(admin_id, admin_signer, consortium.ledger, clock=consortium.clock) as gw:
        contract = gw.get_network("ehrshare").get_contract("ehrshare")
        for msp in ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP"):
            ca = LocalCA.load(consortium.directory / "ca" / msp)
            on_chain = json.loads(contract.evaluate_transaction("GetOrgCA", msp))
            assert on_chain["ca_pem"].encode() == ca.certificate_pem
        # Publishing again is a no-op, not a second registration or an error.
        assert consortium._publish_org_ca("HospitalAMSP") is False
        consortium.add_member("nadia", "HospitalA", "clinician")
        member, _ = ca_a.issue("walk-in")
        registered = json.loads(
            contract.submit_transaction("RegisterMember", member.credentials, "patient")
        )
        assert registered["ibe_id"] == "HospitalAMSP/walk-in"
        forged, _ = LocalCA.create("HospitalAMSP").issue("forged")
        with pytest.raises(EndorseError) as info:
            contract.submit_transaction("RegisterMember", forged.credentials, "patient")
        assert info.value.message == (
            "certificate of forged is not signed by the registered ca of HospitalAMSP"
        )
