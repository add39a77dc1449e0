"""``ledger.fabric_config.check_config_block`` without a network: a config block is accepted
only when its signed update satisfies the policies of what it changes under the configuration
in force (an organisation added by a majority of member admins, an anchor peer by its own
organisation's admin) and when the block's configuration is exactly that update applied.
Real config blocks (an organisation added on a live channel) go through the same check in
tests/fabric/test_fabric_add_org.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from channel_configs import org_group
from fabric_protos.common import common_pb2, configtx_pb2, policies_pb2

from ehrshare.identity import LocalCA, Signer
from ehrshare.ledger.fabric_config import (
    ConfigBlockError,
    check_config_block,
    config_of,
    members_at,
    organisations,
)
from ehrshare.network.fabric.config_update import (
    compute_update,
    config_signature,
    update_envelope,
    with_organization,
)

common: Any = common_pb2
configtx: Any = configtx_pb2
policies: Any = policies_pb2

CHANNEL = "ehrshare"
MEMBERS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


def _meta(sub: str, rule: str) -> Any:
    meta = policies.ImplicitMetaPolicy(
        sub_policy=sub, rule=policies.ImplicitMetaPolicy.Rule.Value(rule)
    )
    return policies.Policy(
        type=policies.Policy.PolicyType.Value("IMPLICIT_META"), value=meta.SerializeToString()
    )


@pytest.fixture(scope="module")
def cas() -> dict[str, LocalCA]:
    return {m: LocalCA.create(m) for m in (*MEMBERS, "HospitalDMSP", "OrdererMSP")}


@pytest.fixture(scope="module")
def admins(cas: dict[str, LocalCA]) -> dict[str, tuple[bytes, Signer]]:
    out = {}
    for msp, ca in cas.items():
        identity, signer = ca.issue("admin", node_ou="admin")
        out[msp] = (identity.credentials, signer)
    return out


@pytest.fixture
def genesis(cas: dict[str, LocalCA]) -> Any:
    cfg = configtx.Config(sequence=0)
    channel = cfg.channel_group
    channel.mod_policy = "Admins"
    channel.policies["Admins"].CopyFrom(
        configtx.ConfigPolicy(mod_policy="Admins", policy=_meta("Admins", "MAJORITY"))
    )
    app = channel.groups["Application"]
    app.mod_policy = "Admins"
    app.policies["Admins"].CopyFrom(
        configtx.ConfigPolicy(mod_policy="Admins", policy=_meta("Admins", "MAJORITY"))
    )
    for msp in MEMBERS:
        app.groups[msp].CopyFrom(org_group(msp, cas[msp]))
    orderer = channel.groups["Orderer"]
    orderer.mod_policy = "Admins"
    orderer.groups["OrdererMSP"].CopyFrom(org_group("OrdererMSP", cas["OrdererMSP"]))
    return cfg


def _block(number: int, config: Any, update: bytes, signatures: list[Any]) -> Any:
    last = common.Envelope.FromString(update_envelope(CHANNEL, update, signatures, timestamp_s=1))
    body = configtx.ConfigEnvelope(config=config, last_update=last)
    header = common.ChannelHeader(type=common.HeaderType.Value("CONFIG"), channel_id=CHANNEL)
    payload = common.Payload(
        header=common.Header(channel_header=header.SerializeToString()),
        data=body.SerializeToString(),
    )
    block = common.Block()
    block.header.number = number
    block.data.data.append(common.Envelope(payload=payload.SerializeToString()).SerializeToString())
    return block


def _applied(original: Any, updated: Any) -> Any:
    """The configuration the orderer makes: the update's delta applied, versions bumped."""
    update = compute_update(CHANNEL, original, updated)
    new = copy.deepcopy(updated)
    new.sequence = original.sequence + 1
    _bump(new.channel_group, update.write_set)
    return new


def _bump(target: Any, written: Any) -> None:
    target.version = written.version
    for key, child in written.groups.items():
        _bump(target.groups[key], child)
    for key, value in written.values.items():
        target.values[key].version = value.version
    for key, policy in written.policies.items():
        target.policies[key].version = policy.version


def _sign(update: bytes, admins: dict[str, tuple[bytes, Signer]], *msps: str) -> list[Any]:
    return [config_signature(update, m, admins[m][0], admins[m][1].sign) for m in msps]


def _adding_d(genesis: Any, cas: dict[str, LocalCA]) -> tuple[Any, bytes]:
    updated = with_organization(genesis, "HospitalDMSP", cas["HospitalDMSP"].certificate_pem)
    new = _applied(genesis, updated)
    return new, compute_update(CHANNEL, genesis, updated).SerializeToString()


def test_an_organisation_added_by_a_majority_of_admins_is_accepted(
    genesis: Any, cas: dict[str, LocalCA], admins: dict[str, tuple[bytes, Signer]]
) -> None:
    new, update = _adding_d(genesis, cas)
    block = _block(5, new, update, _sign(update, admins, "HospitalAMSP", "HospitalBMSP"))
    config, change = check_config_block(genesis, block, channel=CHANNEL)
    assert config == config_of(block)
    assert change.block == 5 and change.sequence == 1
    assert change.added == ("HospitalDMSP",) and change.removed == ()
    assert change.signed_by == ("HospitalAMSP", "HospitalBMSP")
    assert set(organisations(config)) == {*MEMBERS, "HospitalDMSP"}
    assert members_at({0: genesis, 5: config}, 5) is genesis  # blocks 0..4: before it
    assert members_at({0: genesis, 5: config}, 6) is config


@pytest.mark.parametrize(
    ("signers", "who"),
    [
        (("HospitalAMSP",), "HospitalAMSP"),  # 1 of 3
        (("HospitalAMSP", "HospitalDMSP"), "HospitalAMSP"),  # the joining org does not count
        (("HospitalAMSP", "HospitalAMSP"), "HospitalAMSP"),  # one admin twice counts once
        ((), "nobody"),
    ],
)
def test_fewer_than_a_majority_of_member_admins_is_refused(
    genesis: Any,
    cas: dict[str, LocalCA],
    admins: dict[str, tuple[bytes, Signer]],
    signers: tuple[str, ...],
    who: str,
) -> None:
    new, update = _adding_d(genesis, cas)
    block = _block(5, new, update, _sign(update, admins, *signers))
    with pytest.raises(ConfigBlockError) as info:
        check_config_block(genesis, block, channel=CHANNEL)
    assert str(info.value).startswith(
        "its change of /Channel/Application needs policy /Channel/Application/Admins, "
        f"which the signatures of {who} do not satisfy"
    )


def test_a_client_a_forged_and_a_foreign_signature_do_not_count(
    genesis: Any, cas: dict[str, LocalCA], admins: dict[str, tuple[bytes, Signer]]
) -> None:
    new, update = _adding_d(genesis, cas)
    client, client_signer = cas["HospitalBMSP"].issue("nurse", node_ou="client")
    as_client = config_signature(update, "HospitalBMSP", client.credentials, client_signer.sign)
    forged = config_signature(update, "HospitalCMSP", admins["HospitalCMSP"][0], lambda _: b"x")
    # B's admin certificate claimed for C: C's CA did not issue it.
    foreign = config_signature(
        update, "HospitalCMSP", admins["HospitalBMSP"][0], admins["HospitalBMSP"][1].sign
    )
    sigs = [*_sign(update, admins, "HospitalAMSP"), as_client, forged, foreign]
    with pytest.raises(ConfigBlockError) as info:
        check_config_block(genesis, _block(5, new, update, sigs), channel=CHANNEL)
    message = str(info.value)
    assert "signatures of HospitalAMSP, HospitalBMSP do not satisfy" in message
    assert "a signature by HospitalCMSP that does not verify" in message
    assert "a signature by HospitalCMSP whose certificate its ca in force did not issue" in message


def test_a_configuration_that_is_not_the_signed_update_applied_is_refused(
    genesis: Any, cas: dict[str, LocalCA], admins: dict[str, tuple[bytes, Signer]]
) -> None:
    new, update = _adding_d(genesis, cas)
    sigs = _sign(update, admins, "HospitalAMSP", "HospitalBMSP")
    # HospitalC's CA swapped beside the signed change.
    swapped = copy.deepcopy(new)
    swapped.channel_group.groups["Application"].groups["HospitalCMSP"].values["MSP"].value = (
        new.channel_group.groups["Application"].groups["HospitalDMSP"].values["MSP"].value
    )
    with pytest.raises(
        ConfigBlockError, match="changes value /Channel/Application/HospitalCMSP/MSP"
    ):
        check_config_block(genesis, _block(5, swapped, update, sigs), channel=CHANNEL)
    # An organisation dropped that the update does not drop.
    dropped = copy.deepcopy(new)
    del dropped.channel_group.groups["Application"].groups["HospitalCMSP"]
    with pytest.raises(ConfigBlockError, match="HospitalCMSP"):
        check_config_block(genesis, _block(5, dropped, update, sigs), channel=CHANNEL)
    # The added organisation's CA other than the signed one.
    other = copy.deepcopy(new)
    other.channel_group.groups["Application"].groups["HospitalDMSP"].values["MSP"].value = (
        genesis.channel_group.groups["Application"].groups["HospitalAMSP"].values["MSP"].value
    )
    with pytest.raises(ConfigBlockError, match=r"does not hold value .*HospitalDMSP/MSP as signed"):
        check_config_block(genesis, _block(5, other, update, sigs), channel=CHANNEL)
    # A sequence that skips, and an update for another channel.
    skipped = copy.deepcopy(new)
    skipped.sequence = 3
    with pytest.raises(ConfigBlockError, match="sequence is 3, not 1"):
        check_config_block(genesis, _block(5, skipped, update, sigs), channel=CHANNEL)
    with pytest.raises(ConfigBlockError, match="for channel 'ehrshare'"):
        check_config_block(genesis, _block(5, new, update, sigs), channel="other")


def test_an_anchor_peer_needs_its_own_organisations_admin(
    genesis: Any, admins: dict[str, tuple[bytes, Signer]]
) -> None:
    updated = copy.deepcopy(genesis)
    updated.channel_group.groups["Application"].groups["HospitalAMSP"].values[
        "AnchorPeers"
    ].value = b"anchor-moved"
    new = _applied(genesis, updated)
    update = compute_update(CHANNEL, genesis, updated).SerializeToString()
    _, change = check_config_block(
        genesis, _block(2, new, update, _sign(update, admins, "HospitalAMSP")), channel=CHANNEL
    )
    assert change.added == change.removed == () and change.signed_by == ("HospitalAMSP",)
    with pytest.raises(ConfigBlockError, match="HospitalAMSP/Admins, which the signatures of"):
        check_config_block(
            genesis,
            _block(2, new, update, _sign(update, admins, "HospitalBMSP", "HospitalCMSP")),
            channel=CHANNEL,
        )


def test_an_organisation_removed_by_a_majority_is_accepted_and_named(
    genesis: Any, admins: dict[str, tuple[bytes, Signer]]
) -> None:
    updated = copy.deepcopy(genesis)
    del updated.channel_group.groups["Application"].groups["HospitalCMSP"]
    update_msg = compute_update(CHANNEL, genesis, updated)
    # Fabric's update for a removal: the group bumped, listing the members that stay.
    new = _applied(genesis, updated)
    update = update_msg.SerializeToString()
    _, change = check_config_block(
        genesis,
        _block(3, new, update, _sign(update, admins, "HospitalAMSP", "HospitalBMSP")),
        channel=CHANNEL,
    )
    assert change.removed == ("HospitalCMSP",) and change.added == ()


def test_a_block_that_is_not_a_config_block_or_does_not_parse_is_refused(genesis: Any) -> None:
    block = common.Block()
    block.data.data.append(b"\x01garbage")
    with pytest.raises(ConfigBlockError, match="not a config block"):
        check_config_block(genesis, block, channel=CHANNEL)
