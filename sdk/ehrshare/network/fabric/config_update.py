"""A Fabric channel config update adding an organisation, computed in Python.

What ``configtxlator compute_update`` and ``peer channel signconfigtx`` do, with the protobufs
the SDK already has (``fabric_protos``): :func:`channel_config` reads the ``Config`` out of a
config block; :func:`with_organization` returns the config with one more Application
organisation, whose group is modelled on an existing member's (same policy shapes and NodeOU
layout as ``configtxgen`` made from our ``configtx.yaml``) with the new MSP's name and CA
certificates put in; :func:`compute_update` is Fabric's read-set/write-set computation
(``internal/configtxlator/update``); :func:`config_signature` is one admin's
``ConfigSignature``; :func:`update_envelope` wraps the update and the signatures collected so far
in the ``CONFIG_UPDATE`` envelope ``peer channel update`` submits (the submitting admin's CLI
adds its own signature).

Why not ``configtxlator``: CI's Fabric 2.3 build (``make tools``) does not build it, and the
official 2.5/3.1 release archives used here do not ship it either; the computation is ~60 lines
and the orderer itself checks the result (a wrong read set or too few signatures is refused),
which the ``fabric`` tests exercise.

This module builds messages only: it starts no process and reads no key (signers are passed in).
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.common import configtx_pb2 as _configtx_pb2
from fabric_protos.common import policies_pb2 as _policies_pb2
from fabric_protos.msp import identities_pb2 as _identities_pb2
from fabric_protos.msp import msp_config_pb2 as _msp_config_pb2
from fabric_protos.msp import msp_principal_pb2 as _msp_principal_pb2
from fabric_protos.peer import configuration_pb2 as _configuration_pb2

from ehrshare.ledger.fabric_config import organisations

__all__ = [
    "application_orgs",
    "channel_config",
    "compute_update",
    "config_signature",
    "msp_root_certs",
    "update_envelope",
    "verify_config_signature",
    "with_organization",
]

# Generated protobuf modules have no type stubs here.
common_pb2: Any = _common_pb2
configtx_pb2: Any = _configtx_pb2
policies_pb2: Any = _policies_pb2
identities_pb2: Any = _identities_pb2
msp_config_pb2: Any = _msp_config_pb2
msp_principal_pb2: Any = _msp_principal_pb2
configuration_pb2: Any = _configuration_pb2

_CONFIG_UPDATE = common_pb2.HeaderType.Value("CONFIG_UPDATE")
Sign = Callable[[bytes], bytes]


def channel_config(block_bytes: bytes) -> Any:
    """The ``common.Config`` in a config block (``peer channel fetch config``)."""
    block = common_pb2.Block.FromString(block_bytes)
    envelope = common_pb2.Envelope.FromString(block.data.data[0])
    payload = common_pb2.Payload.FromString(envelope.payload)
    return configtx_pb2.ConfigEnvelope.FromString(payload.data).config


def application_orgs(config: Any) -> list[str]:
    """The MSP ids of the channel's Application organisations."""
    return sorted(config.channel_group.groups["Application"].groups.keys())


def msp_root_certs(config: Any) -> dict[str, bytes]:
    """MSP id → first root CA certificate (PEM) of each Application organisation."""
    return {msp: roots[0] if roots else b"" for msp, roots in organisations(config).items()}


def verify_config_signature(
    update_bytes: bytes, signature: bytes
) -> tuple[str, bytes, bytes, bytes] | None:
    """A serialised ``ConfigSignature`` over ``update_bytes`` taken apart: (MSP id, creator
    certificate PEM, signed bytes, signature), or None when it does not parse. The caller
    checks the signature with the certificate's key."""
    try:
        parsed = configtx_pb2.ConfigSignature.FromString(signature)
        header = common_pb2.SignatureHeader.FromString(parsed.signature_header)
        creator = identities_pb2.SerializedIdentity.FromString(header.creator)
    except Exception:  # protobuf's DecodeError and friends: not a ConfigSignature
        return None
    return (
        str(creator.mspid),
        bytes(creator.id_bytes),
        bytes(parsed.signature_header) + update_bytes,
        bytes(parsed.signature),
    )


def _replace_msp_in_policy(policy: Any, old: str, new: str) -> None:
    """Rewrite a Signature policy's principals from ``old`` to ``new`` MSP."""
    if policy.type != policies_pb2.Policy.PolicyType.Value("SIGNATURE"):
        return
    envelope = policies_pb2.SignaturePolicyEnvelope.FromString(policy.value)
    for identity in envelope.identities:
        if identity.principal_classification != msp_principal_pb2.MSPPrincipal.ROLE:
            continue
        role = msp_principal_pb2.MSPRole.FromString(identity.principal)
        if role.msp_identifier == old:
            role.msp_identifier = new
            identity.principal = role.SerializeToString()
    policy.value = envelope.SerializeToString()


def with_organization(
    config: Any,
    msp_id: str,
    ca_pem: bytes,
    *,
    tls_ca_pem: bytes | None = None,
    anchor: tuple[str, int] | None = None,
) -> Any:
    """A copy of ``config`` with ``msp_id`` (root CA ``ca_pem``) as an Application org."""
    updated = copy.deepcopy(config)
    orgs = updated.channel_group.groups["Application"].groups
    if msp_id in orgs:
        raise ValueError(f"{msp_id} is already an organisation of the channel")
    if not orgs:
        raise ValueError("the channel has no Application organisation to model the new one on")
    model_id = sorted(orgs.keys())[0]
    group = configtx_pb2.ConfigGroup()
    group.CopyFrom(orgs[model_id])
    group.version = 0
    for policy in group.policies.values():
        policy.version = 0
        _replace_msp_in_policy(policy.policy, model_id, msp_id)
    msp_value = msp_config_pb2.MSPConfig.FromString(group.values["MSP"].value)
    fabric = msp_config_pb2.FabricMSPConfig.FromString(msp_value.config)
    fabric.name = msp_id
    del fabric.root_certs[:]
    fabric.root_certs.append(ca_pem)
    del fabric.intermediate_certs[:]
    del fabric.admins[:]
    del fabric.revocation_list[:]
    del fabric.tls_root_certs[:]
    fabric.tls_root_certs.append(tls_ca_pem or ca_pem)
    del fabric.tls_intermediate_certs[:]
    ous = fabric.fabric_node_ous
    for ou in (
        ous.client_ou_identifier,
        ous.peer_ou_identifier,
        ous.admin_ou_identifier,
        ous.orderer_ou_identifier,
    ):
        if ou.certificate:
            ou.certificate = ca_pem
    msp_value.config = fabric.SerializeToString()
    group.values["MSP"].value = msp_value.SerializeToString()
    for value in group.values.values():
        value.version = 0
    if "AnchorPeers" in group.values:
        if anchor is None:
            del group.values["AnchorPeers"]
        else:
            peers = configuration_pb2.AnchorPeers()
            peers.anchor_peers.add(host=anchor[0], port=anchor[1])
            group.values["AnchorPeers"].value = peers.SerializeToString()
    orgs[msp_id].CopyFrom(group)
    return updated


# --- Fabric's compute_update (internal/configtxlator/update/update.go) -----------------------


def _map_update(
    original: Mapping[str, Any], updated: Mapping[str, Any], same: Callable[[Any, Any], bool]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int], bool]:
    """Read set, write set, unchanged members (name → version), membership changed."""
    read: dict[str, Any] = {}
    write: dict[str, Any] = {}
    unchanged: dict[str, int] = {}
    members_changed = False
    for name, old in original.items():
        if name not in updated:
            members_changed = True
            continue
        new = updated[name]
        if old.mod_policy == new.mod_policy and same(old, new):
            unchanged[name] = old.version
            continue
        write[name] = (old.version + 1, new)
    for name, new in updated.items():
        if name not in original:
            members_changed = True
            write[name] = (0, new)
    return read, write, unchanged, members_changed


def _group_update(original: Any, updated: Any) -> tuple[Any, Any, bool]:
    pol_read, pol_write, pol_same, pol_changed = _map_update(
        original.policies, updated.policies, lambda a, b: a.policy == b.policy
    )
    val_read, val_write, val_same, val_changed = _map_update(
        original.values, updated.values, lambda a, b: a.value == b.value
    )
    grp_read: dict[str, Any] = {}
    grp_write: dict[str, Any] = {}
    grp_same: dict[str, Any] = {}
    grp_changed = False
    for name, old in original.groups.items():
        if name not in updated.groups:
            grp_changed = True
            continue
        r, w, changed = _group_update(old, updated.groups[name])
        if not changed:
            grp_same[name] = r
            continue
        grp_read[name], grp_write[name] = r, w
    for name, new in updated.groups.items():
        if name in original.groups:
            continue
        grp_changed = True
        _, w, _ = _group_update(configtx_pb2.ConfigGroup(), new)
        fresh = configtx_pb2.ConfigGroup(version=0, mod_policy=new.mod_policy)
        _copy_members(fresh, w)
        grp_write[name] = fresh

    read = configtx_pb2.ConfigGroup(version=original.version)
    write = configtx_pb2.ConfigGroup(version=original.version)
    members_changed = pol_changed or val_changed or grp_changed
    if not members_changed and original.mod_policy == updated.mod_policy:
        if not (pol_read or pol_write or val_read or val_write or grp_read or grp_write):
            return read, write, False
        _fill(read, pol_read, val_read, grp_read)
        _fill(write, pol_write, val_write, grp_write)
        return read, write, True
    for name, version in pol_same.items():
        pol_read[name] = pol_write[name] = (version, None)
    for name, version in val_same.items():
        val_read[name] = val_write[name] = (version, None)
    for name, group in grp_same.items():
        grp_read[name] = grp_write[name] = group
    _fill(read, pol_read, val_read, grp_read)
    write.version = original.version + 1
    write.mod_policy = updated.mod_policy
    _fill(write, pol_write, val_write, grp_write)
    return read, write, True


def _fill(
    group: Any,
    policies: Mapping[str, tuple[int, Any]],
    values: Mapping[str, tuple[int, Any]],
    groups: Mapping[str, Any],
) -> None:
    for name, (version, source) in policies.items():
        group.policies[name].version = version
        if source is not None:
            group.policies[name].mod_policy = source.mod_policy
            group.policies[name].policy.CopyFrom(source.policy)
    for name, (version, source) in values.items():
        group.values[name].version = version
        if source is not None:
            group.values[name].mod_policy = source.mod_policy
            group.values[name].value = source.value
    for name, sub in groups.items():
        group.groups[name].CopyFrom(sub)


def _copy_members(target: Any, source: Any) -> None:
    for name, policy in source.policies.items():
        target.policies[name].CopyFrom(policy)
    for name, value in source.values.items():
        target.values[name].CopyFrom(value)
    for name, group in source.groups.items():
        target.groups[name].CopyFrom(group)


def compute_update(channel: str, original: Any, updated: Any) -> Any:
    """The ``ConfigUpdate`` taking ``original`` to ``updated`` (both ``common.Config``)."""
    read, write, changed = _group_update(original.channel_group, updated.channel_group)
    if not changed:
        raise ValueError("no differences between the original and the updated config")
    return configtx_pb2.ConfigUpdate(channel_id=channel, read_set=read, write_set=write)


# --- signatures and the envelope ---------------------------------------------------------------


def _signature_header(msp_id: str, certificate_pem: bytes) -> bytes:
    creator = identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=certificate_pem)
    header = common_pb2.SignatureHeader(
        creator=creator.SerializeToString(), nonce=secrets.token_bytes(24)
    )
    serialized: bytes = header.SerializeToString()
    return serialized


def config_signature(update_bytes: bytes, msp_id: str, certificate_pem: bytes, sign: Sign) -> Any:
    """One admin's ``ConfigSignature`` over a serialised ``ConfigUpdate``."""
    header = _signature_header(msp_id, certificate_pem)
    return configtx_pb2.ConfigSignature(
        signature_header=header, signature=sign(header + update_bytes)
    )


def update_envelope(
    channel: str,
    update_bytes: bytes,
    signatures: Iterable[Any],
    *,
    timestamp_s: int,
) -> bytes:
    """The unsigned ``CONFIG_UPDATE`` envelope ``peer channel update -f`` takes (its admin signs
    the update once more and signs the envelope)."""
    body = configtx_pb2.ConfigUpdateEnvelope(config_update=update_bytes)
    body.signatures.extend(signatures)
    channel_header = common_pb2.ChannelHeader(type=_CONFIG_UPDATE, channel_id=channel, version=0)
    channel_header.timestamp.seconds = timestamp_s
    payload = common_pb2.Payload(
        header=common_pb2.Header(channel_header=channel_header.SerializeToString()),
        data=body.SerializeToString(),
    )
    envelope: bytes = common_pb2.Envelope(payload=payload.SerializeToString()).SerializeToString()
    return envelope
