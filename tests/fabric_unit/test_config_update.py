"""``network.fabric.config_update`` without a network: the read and write sets of an update
adding an organisation follow Fabric's compute_update (existing members version-only in both
sets, the Application group bumped, the new org whole at version 0, the channel group not
bumped); the new org's MSP and policies name it and its CA; signatures verify over header and
update. The same code is checked by real orderers in tests/fabric/test_fabric_add_org.py."""

from __future__ import annotations

from typing import Any

import pytest
from channel_configs import org_group
from fabric_protos.common import common_pb2, configtx_pb2, policies_pb2
from fabric_protos.msp import identities_pb2, msp_config_pb2, msp_principal_pb2

from ehrshare.identity import Identity, LocalCA, verify_signature
from ehrshare.network.fabric.config_update import (
    application_orgs,
    channel_config,
    compute_update,
    config_signature,
    update_envelope,
    with_organization,
)

common: Any = common_pb2
configtx: Any = configtx_pb2
policies: Any = policies_pb2
mspconf: Any = msp_config_pb2
principal: Any = msp_principal_pb2
identities: Any = identities_pb2


@pytest.fixture(scope="module")
def cas() -> dict[str, LocalCA]:
    return {m: LocalCA.create(m) for m in ("HospitalAMSP", "HospitalBMSP", "HospitalDMSP")}


@pytest.fixture
def config(cas: dict[str, LocalCA]) -> Any:
    cfg = configtx.Config(sequence=4)
    channel = cfg.channel_group
    channel.version = 3
    channel.mod_policy = "Admins"
    channel.values["Capabilities"].CopyFrom(configtx.ConfigValue(version=1, value=b"cap"))
    app = channel.groups["Application"]
    app.version = 2
    app.mod_policy = "Admins"
    app.policies["Admins"].CopyFrom(configtx.ConfigPolicy(version=1, mod_policy="Admins"))
    app.values["ACLs"].CopyFrom(configtx.ConfigValue(version=5, value=b"acl"))
    for msp in ("HospitalAMSP", "HospitalBMSP"):
        app.groups[msp].CopyFrom(org_group(msp, cas[msp], version=1))
    channel.groups["Orderer"].version = 7
    return cfg


def test_the_update_adding_an_org_has_fabrics_read_and_write_sets(
    config: Any, cas: dict[str, LocalCA]
) -> None:
    ca_d = cas["HospitalDMSP"].certificate_pem
    updated = with_organization(config, "HospitalDMSP", ca_d)
    assert application_orgs(config) == ["HospitalAMSP", "HospitalBMSP"]  # the original is kept
    update = compute_update("ehrshare", config, updated)
    assert update.channel_id == "ehrshare"
    read, write = update.read_set, update.write_set
    # The channel group: not bumped, only the Application group inside.
    assert read.version == write.version == 3
    assert set(read.groups) == set(write.groups) == {"Application"}
    assert not read.values and not write.values and not write.mod_policy
    r_app, w_app = read.groups["Application"], write.groups["Application"]
    assert r_app.version == 2 and w_app.version == 3 and w_app.mod_policy == "Admins"
    # Existing members of the Application group: version-only in both sets.
    for group in (r_app, w_app):
        assert {k: v.version for k, v in group.policies.items()} == {"Admins": 1}
        assert {k: v.version for k, v in group.values.items()} == {"ACLs": 5}
        assert not any(v.value for v in group.values.values())
        for msp in ("HospitalAMSP", "HospitalBMSP"):
            org = group.groups[msp]
            assert org.version == 1 and not org.values and not org.policies
    assert "HospitalDMSP" not in r_app.groups
    # The new org: whole, at version 0, naming itself and its CA.
    new = w_app.groups["HospitalDMSP"]
    assert new.version == 0 and new.mod_policy == "Admins"
    assert {k: v.version for k, v in new.policies.items()} == {"Admins": 0, "Readers": 0}
    assert set(new.values) == {"MSP"}  # no anchor peer given: none copied from the model
    fabric = mspconf.FabricMSPConfig.FromString(
        mspconf.MSPConfig.FromString(new.values["MSP"].value).config
    )
    assert fabric.name == "HospitalDMSP"
    assert list(fabric.root_certs) == list(fabric.tls_root_certs) == [ca_d]
    assert fabric.fabric_node_ous.admin_ou_identifier.certificate == ca_d
    envelope = policies.SignaturePolicyEnvelope.FromString(new.policies["Admins"].policy.value)
    role = principal.MSPRole.FromString(envelope.identities[0].principal)
    assert role.msp_identifier == "HospitalDMSP" and role.role == principal.MSPRole.ADMIN


def test_an_anchor_peer_is_set_and_a_member_cannot_be_added_twice(
    config: Any, cas: dict[str, LocalCA]
) -> None:
    updated = with_organization(
        config, "HospitalDMSP", cas["HospitalDMSP"].certificate_pem, anchor=("10.0.0.4", 7051)
    )
    assert (
        updated.channel_group.groups["Application"]
        .groups["HospitalDMSP"]
        .values["AnchorPeers"]
        .value
    )
    with pytest.raises(ValueError, match="already an organisation"):
        with_organization(config, "HospitalAMSP", cas["HospitalAMSP"].certificate_pem)
    with pytest.raises(ValueError, match="no differences"):
        compute_update("ehrshare", config, config)


def test_a_config_signature_verifies_over_header_and_update_and_the_envelope_wraps_it(
    config: Any, cas: dict[str, LocalCA]
) -> None:
    updated = with_organization(config, "HospitalDMSP", cas["HospitalDMSP"].certificate_pem)
    update = compute_update("ehrshare", config, updated).SerializeToString()
    admin, signer = cas["HospitalAMSP"].issue("admin", node_ou="admin")
    sig = config_signature(update, "HospitalAMSP", admin.credentials, signer.sign)
    header = common.SignatureHeader.FromString(sig.signature_header)
    creator = identities.SerializedIdentity.FromString(header.creator)
    assert creator.mspid == "HospitalAMSP" and creator.id_bytes == admin.credentials
    assert len(header.nonce) == 24
    ident = Identity("HospitalAMSP", admin.credentials)
    assert verify_signature(ident, sig.signature_header + update, sig.signature)
    assert not verify_signature(ident, sig.signature_header + update + b"x", sig.signature)
    raw = update_envelope("ehrshare", update, [sig], timestamp_s=1_800_000_000)
    payload = common.Payload.FromString(common.Envelope.FromString(raw).payload)
    channel_header = common.ChannelHeader.FromString(payload.header.channel_header)
    assert channel_header.type == common.HeaderType.Value("CONFIG_UPDATE")
    assert channel_header.channel_id == "ehrshare"
    body = configtx.ConfigUpdateEnvelope.FromString(payload.data)
    assert body.config_update == update and list(body.signatures) == [sig]


def test_channel_config_reads_the_config_out_of_a_config_block(config: Any) -> None:
    envelope_body = configtx.ConfigEnvelope(config=config).SerializeToString()
    payload = common.Payload(data=envelope_body).SerializeToString()
    block = common.Block()
    block.data.data.append(common.Envelope(payload=payload).SerializeToString())
    assert channel_config(block.SerializeToString()) == config
