"""Pieces of Fabric channel configurations for the tests that build them by hand."""

from __future__ import annotations

from typing import Any

from fabric_protos.common import policies_pb2
from fabric_protos.msp import msp_principal_pb2

policies: Any = policies_pb2
principal: Any = msp_principal_pb2


def signature_policy(msp: str, role: int) -> Any:
    """``OR('<msp>.<role>')`` as configtxgen writes it: one signature of that MSP role."""
    envelope = policies.SignaturePolicyEnvelope()
    envelope.rule.n_out_of.n = 1
    envelope.rule.n_out_of.rules.add().signed_by = 0
    envelope.identities.add(
        principal_classification=principal.MSPPrincipal.ROLE,
        principal=principal.MSPRole(msp_identifier=msp, role=role).SerializeToString(),
    )
    return policies.Policy(
        type=policies.Policy.PolicyType.Value("SIGNATURE"), value=envelope.SerializeToString()
    )
