"""Pieces of Fabric channel configurations for the tests that build them by hand."""

from __future__ import annotations

from typing import Any

from fabric_protos.common import configtx_pb2, policies_pb2
from fabric_protos.msp import msp_config_pb2, msp_principal_pb2

from ehrshare.identity import LocalCA

configtx: Any = configtx_pb2
mspconf: Any = msp_config_pb2
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


def org_group(msp: str, ca: LocalCA, *, version: int = 0) -> Any:
    """An organisation's group as configtxgen writes it: Admins and Readers signature policies,
    an MSP with ``ca`` as its root and TLS root and NodeOUs enabled (client, peer, admin,
    orderer), and an AnchorPeers value; every policy and value at ``version``."""
    group = configtx.ConfigGroup(version=1, mod_policy="Admins")
    for name, role in (("Admins", principal.MSPRole.ADMIN), ("Readers", principal.MSPRole.MEMBER)):
        group.policies[name].CopyFrom(
            configtx.ConfigPolicy(
                version=version, mod_policy="Admins", policy=signature_policy(msp, role)
            )
        )
    fabric = mspconf.FabricMSPConfig(name=msp)
    fabric.root_certs.append(ca.certificate_pem)
    fabric.tls_root_certs.append(ca.certificate_pem)
    fabric.fabric_node_ous.enable = True
    for field, ou in (
        ("client_ou_identifier", "client"),
        ("peer_ou_identifier", "peer"),
        ("admin_ou_identifier", "admin"),
        ("orderer_ou_identifier", "orderer"),
    ):
        ident = getattr(fabric.fabric_node_ous, field)
        ident.certificate = ca.certificate_pem
        ident.organizational_unit_identifier = ou
    value = mspconf.MSPConfig(type=0, config=fabric.SerializeToString())
    group.values["MSP"].CopyFrom(
        configtx.ConfigValue(version=version, mod_policy="Admins", value=value.SerializeToString())
    )
    group.values["AnchorPeers"].CopyFrom(
        configtx.ConfigValue(version=version, mod_policy="Admins", value=b"anchor-" + msp.encode())
    )
    return group
