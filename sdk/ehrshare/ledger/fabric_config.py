"""A Fabric channel's configuration history, checked block by block from the genesis block.

A config block after the genesis block carries the channel's whole new configuration and, as
``last_update``, the signed ``ConfigUpdate`` it came from. The orderer checks that update
against the configuration in force (``common/configtx/update.go``) and the peers check it again
when they commit; a client reading blocks from peers trusts neither. :func:`check_config_block`
repeats the orderer's check offline, so that the channel's membership history read from blocks
is only what the members themselves signed:

1. the update is for this channel and the new configuration's sequence is the previous one + 1;
2. every element the update changes (its *delta*: in the write set at a version other than the
   one in force, or new at version 0) is allowed by its ``mod_policy`` — resolved as Fabric
   does (relative to the element's group for a group, to the containing group for a value or a
   policy; ``/Channel/...`` from the root) and evaluated against the update's signatures:
   implicit-meta policies (ANY / ALL / MAJORITY of the sub-groups' policy of that name) and
   signature policies over MSP roles (member, admin, client, peer, orderer: NodeOUs in the
   certificate's subject, or the MSP's explicit admin certificates), each signer counted once,
   its certificate issued directly by the organisation's root CA *in the configuration in
   force* and its signature over ``signature header ‖ config update`` valid;
3. the new configuration is exactly the one in force with the delta applied: no element
   changed, added or removed that the signed update does not change.

Not checked (as in :mod:`ehrshare.ledger.fabric_blocks`): intermediate CAs, certificate validity
periods and revocation lists, principals other than MSP roles. This module parses protobufs
and verifies signatures; it starts nothing and logs no block contents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fabric_protos.common import common_pb2 as _common_pb2
from fabric_protos.common import configtx_pb2 as _configtx_pb2
from fabric_protos.common import policies_pb2 as _policies_pb2
from fabric_protos.msp import identities_pb2 as _identities_pb2
from fabric_protos.msp import msp_config_pb2 as _msp_config_pb2
from fabric_protos.msp import msp_principal_pb2 as _msp_principal_pb2

__all__ = [
    "ConfigBlockError",
    "ConfigChange",
    "check_config_block",
    "config_of",
    "is_config_block",
    "issued_by",
    "members_at",
    "organisations",
]

common: Any = _common_pb2
configtx: Any = _configtx_pb2
policies: Any = _policies_pb2
identities: Any = _identities_pb2
mspconfig: Any = _msp_config_pb2
principals: Any = _msp_principal_pb2

_CONFIG = int(common.HeaderType.Value("CONFIG"))
_SIGNATURE = int(policies.Policy.PolicyType.Value("SIGNATURE"))
_IMPLICIT_META = int(policies.Policy.PolicyType.Value("IMPLICIT_META"))
_ANY = int(policies.ImplicitMetaPolicy.Rule.Value("ANY"))
_ALL = int(policies.ImplicitMetaPolicy.Rule.Value("ALL"))
_MAJORITY = int(policies.ImplicitMetaPolicy.Rule.Value("MAJORITY"))
_ROLE_OUS = {
    int(principals.MSPRole.CLIENT): "client",
    int(principals.MSPRole.PEER): "peer",
    int(principals.MSPRole.ORDERER): "orderer",
    int(principals.MSPRole.ADMIN): "admin",
}
_MEMBER = int(principals.MSPRole.MEMBER)
_ADMIN = int(principals.MSPRole.ADMIN)


class ConfigBlockError(ValueError):
    """A config block whose update does not hold; the message says why (no block contents)."""


@dataclass(frozen=True)
class ConfigChange:
    """One config block after the genesis block, as checked."""

    block: int
    sequence: int
    organisations: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    signed_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "sequence": self.sequence,
            "organisations": list(self.organisations),
            "added": list(self.added),
            "removed": list(self.removed),
            "signed_by": list(self.signed_by),
        }


def _payload(block: Any) -> Any | None:
    if len(block.data.data) != 1:
        return None
    try:
        envelope = common.Envelope.FromString(block.data.data[0])
        payload = common.Payload.FromString(envelope.payload)
        header = common.ChannelHeader.FromString(payload.header.channel_header)
    except Exception:  # protobuf's DecodeError: not an envelope at all
        return None
    return payload if int(header.type) == _CONFIG else None


def is_config_block(block: Any) -> bool:
    """Whether the block holds one CONFIG transaction."""
    return _payload(block) is not None


def config_of(block: Any) -> Any:
    """The channel ``Config`` a config block sets (raises :class:`ConfigBlockError`)."""
    payload = _payload(block)
    if payload is None:
        raise ConfigBlockError("it is not a config block")
    try:
        return configtx.ConfigEnvelope.FromString(payload.data).config
    except Exception as exc:
        raise ConfigBlockError("its config envelope does not parse") from exc


def organisations(config: Any, section: str = "Application") -> dict[str, list[bytes]]:
    """MSP id → root CA certificates (PEM) of each organisation of one section."""
    return {msp: [bytes(c) for c in f.root_certs] for msp, f in _msps(config, (section,)).items()}


def _msps(config: Any, sections: Iterable[str] = ("Application", "Orderer")) -> dict[str, Any]:
    """MSP id → ``FabricMSPConfig`` of each organisation of ``sections``."""
    out: dict[str, Any] = {}
    for section in sections:
        if section not in config.channel_group.groups:
            continue
        for org in config.channel_group.groups[section].groups.values():
            if "MSP" in org.values:
                fabric = _fabric_msp(org)
                out[str(fabric.name)] = fabric
    return out


def _fabric_msp(org: Any) -> Any:
    msp = mspconfig.MSPConfig.FromString(org.values["MSP"].value)
    return mspconfig.FabricMSPConfig.FromString(msp.config)


# --- the configuration as a flat map of elements -----------------------------------------------

Path = tuple[str, ...]
Element = tuple[str, int, str, bytes]  # kind, version, mod_policy, content


def _flatten(group: Any, path: Path, out: dict[tuple[str, Path], Element]) -> None:
    out[("group", path)] = ("group", int(group.version), str(group.mod_policy), b"")
    for key, value in group.values.items():
        out[("value", (*path, key))] = (
            "value",
            int(value.version),
            str(value.mod_policy),
            bytes(value.value),
        )
    for key, policy in group.policies.items():
        out[("policy", (*path, key))] = (
            "policy",
            int(policy.version),
            str(policy.mod_policy),
            policy.policy.SerializeToString(deterministic=True),
        )
    for key, child in group.groups.items():
        _flatten(child, (*path, key), out)


def _flat(group: Any) -> dict[tuple[str, Path], Element]:
    out: dict[tuple[str, Path], Element] = {}
    _flatten(group, ("Channel",), out)
    return out


def _children(group: Any) -> set[tuple[str, str]]:
    return (
        {("group", k) for k in group.groups}
        | {("value", k) for k in group.values}
        | {("policy", k) for k in group.policies}
    )


def _group_at(root: Any, path: Path) -> Any | None:
    group = root
    for key in path[1:]:
        if key not in group.groups:
            return None
        group = group.groups[key]
    return group


def _show(kind: str, path: Path) -> str:
    return ("/" + "/".join(path)) if kind == "group" else f"{kind} /{'/'.join(path)}"


# --- signatures and policies ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Signer:
    msp: str
    cert: x509.Certificate
    cert_der: bytes


def _signers(
    update_bytes: bytes, signatures: Iterable[Any], msps: Mapping[str, Any]
) -> tuple[list[_Signer], list[str]]:
    """The update's valid signers (deduplicated by certificate) and why others did not count."""
    roots = {msp: [bytes(c) for c in f.root_certs] for msp, f in msps.items()}
    valid: dict[bytes, _Signer] = {}
    ignored: list[str] = []
    for sig in signatures:
        try:
            header = common.SignatureHeader.FromString(sig.signature_header)
            creator = identities.SerializedIdentity.FromString(header.creator)
            cert = x509.load_pem_x509_certificate(bytes(creator.id_bytes))
        except Exception:
            ignored.append("a signature whose signer is not a certificate")
            continue
        msp = str(creator.mspid)
        if not any(issued_by(cert, root) for root in roots.get(msp, [])):
            ignored.append(f"a signature by {msp} whose certificate its ca in force did not issue")
            continue
        public = cert.public_key()
        try:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(
                bytes(sig.signature),
                bytes(sig.signature_header) + update_bytes,
                ec.ECDSA(hashes.SHA256()),
            )
        except (AssertionError, InvalidSignature, ValueError):
            ignored.append(f"a signature by {msp} that does not verify")
            continue
        der = cert.public_bytes(Encoding.DER)
        valid.setdefault(der, _Signer(msp, cert, der))
    return list(valid.values()), ignored


def issued_by(cert: x509.Certificate, root_pem: bytes) -> bool:
    """Whether ``root_pem`` (a CA certificate) signed ``cert`` directly."""
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _has_role(signer: _Signer, msp: str, role: int, msps: Mapping[str, Any]) -> bool:
    fabric = msps.get(msp)
    if signer.msp != msp or fabric is None:
        return False
    if role == _MEMBER:
        return True
    if role == _ADMIN:
        for admin_pem in fabric.admins:
            try:
                if x509.load_pem_x509_certificate(bytes(admin_pem)).public_bytes(Encoding.DER) == (
                    signer.cert_der
                ):
                    return True
            except ValueError:
                continue
    ou = _ROLE_OUS.get(role)
    if ou is None or not fabric.fabric_node_ous.enable:
        return False
    identifiers = {
        int(principals.MSPRole.CLIENT): fabric.fabric_node_ous.client_ou_identifier,
        int(principals.MSPRole.PEER): fabric.fabric_node_ous.peer_ou_identifier,
        int(principals.MSPRole.ADMIN): fabric.fabric_node_ous.admin_ou_identifier,
        int(principals.MSPRole.ORDERER): fabric.fabric_node_ous.orderer_ou_identifier,
    }
    wanted = str(identifiers[role].organizational_unit_identifier) or ou
    ous = {
        str(a.value)
        for a in signer.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    }
    return wanted in ous


def _signature_policy(envelope: Any, signers: list[_Signer], msps: Mapping[str, Any]) -> bool:
    roles: list[tuple[str, int] | None] = []
    for identity in envelope.identities:
        if int(identity.principal_classification) != int(principals.MSPPrincipal.ROLE):
            roles.append(None)
            continue
        role = principals.MSPRole.FromString(identity.principal)
        roles.append((str(role.msp_identifier), int(role.role)))

    def satisfied(rule: Any, used: set[int]) -> tuple[bool, set[int]]:
        if rule.WhichOneof("Type") == "signed_by":
            wanted = roles[rule.signed_by] if 0 <= rule.signed_by < len(roles) else None
            if wanted is None:
                return False, used
            for i, signer in enumerate(signers):
                if i not in used and _has_role(signer, wanted[0], wanted[1], msps):
                    return True, used | {i}
            return False, used
        count, taken = 0, set(used)
        for sub in rule.n_out_of.rules:
            ok, after = satisfied(sub, taken)
            if ok:
                count, taken = count + 1, after
        return count >= int(rule.n_out_of.n), taken

    return satisfied(envelope.rule, set())[0]


def _evaluate(
    config: Any,
    group_path: Path,
    name: str,
    signers: list[_Signer],
    msps: Mapping[str, Any],
    depth: int = 0,
) -> bool:
    """Whether the signers satisfy policy ``name`` of the group at ``group_path`` (``msps``:
    the configuration's organisations, :func:`_msps`)."""
    group = _group_at(config.channel_group, group_path)
    if group is None or name not in group.policies or depth > 8:
        return False
    policy = group.policies[name].policy
    if int(policy.type) == _SIGNATURE:
        return _signature_policy(
            policies.SignaturePolicyEnvelope.FromString(policy.value), signers, msps
        )
    if int(policy.type) != _IMPLICIT_META:
        return False
    meta = policies.ImplicitMetaPolicy.FromString(policy.value)
    subs = sorted(group.groups)
    met = sum(
        _evaluate(config, (*group_path, sub), str(meta.sub_policy), signers, msps, depth + 1)
        for sub in subs
    )
    if int(meta.rule) == _ANY:
        return met >= 1
    if int(meta.rule) == _ALL:
        return met == len(subs)
    if int(meta.rule) == _MAJORITY:
        return met >= len(subs) // 2 + 1
    return False


def _policy_for(kind: str, path: Path, mod_policy: str) -> tuple[Path, str] | None:
    """Where an element's ``mod_policy`` lives, as Fabric resolves it (group path, name)."""
    if not mod_policy:
        return None
    if mod_policy.startswith("/"):
        parts = tuple(p for p in mod_policy.split("/") if p)
        if len(parts) < 2:
            return None
        return parts[:-1], parts[-1]
    if "/" in mod_policy:
        sub = tuple(p for p in mod_policy.split("/") if p)
        base = path if kind == "group" else path[:-1]
        return (*base, *sub[:-1]), sub[-1]
    return (path if kind == "group" else path[:-1]), mod_policy


# --- the check ------------------------------------------------------------------------------------


def check_config_block(previous: Any, block: Any, *, channel: str) -> tuple[Any, ConfigChange]:
    """Check a config block against the configuration in force before it; return the new
    configuration and what changed. Raises :class:`ConfigBlockError` saying why not."""
    number = int(block.header.number)
    new = config_of(block)
    payload = _payload(block)
    assert payload is not None
    try:
        last = configtx.ConfigEnvelope.FromString(payload.data).last_update
        update_payload = common.Payload.FromString(last.payload)
        body = configtx.ConfigUpdateEnvelope.FromString(update_payload.data)
        update = configtx.ConfigUpdate.FromString(body.config_update)
    except Exception as exc:
        raise ConfigBlockError("its config update does not parse") from exc
    if not last.payload:
        raise ConfigBlockError("it carries no config update")
    if str(update.channel_id) != channel:
        raise ConfigBlockError(f"its config update is for channel {update.channel_id!r}")
    if int(new.sequence) != int(previous.sequence) + 1:
        raise ConfigBlockError(
            f"its config sequence is {new.sequence}, not {int(previous.sequence) + 1}"
        )
    before, after = _flat(previous.channel_group), _flat(new.channel_group)
    written = _flat(update.write_set)
    delta: dict[tuple[str, Path], Element] = {}
    for key, element in written.items():
        old = before.get(key)
        if old is None:
            if element[1] != 0:
                raise ConfigBlockError(f"it adds {_show(*key)} at version {element[1]}, not 0")
            delta[key] = element
        elif element[1] == old[1] + 1:
            delta[key] = element
        elif element[1] != old[1]:
            raise ConfigBlockError(f"it moves {_show(*key)} from version {old[1]} to {element[1]}")
    if not delta:
        raise ConfigBlockError("its config update changes nothing")
    # Read-set versions must be the ones in force (the orderer refuses a stale update).
    for key, element in _flat(update.read_set).items():
        old = before.get(key)
        if old is None or old[1] != element[1]:
            raise ConfigBlockError(f"its read set names {_show(*key)} at a version not in force")
    in_force = _msps(previous)
    signers, ignored = _signers(bytes(body.config_update), body.signatures, in_force)
    for key in sorted(delta):
        kind, path = key
        old = before.get(key)
        if old is None:
            parent = ("group", path[:-1])
            if parent not in delta:
                raise ConfigBlockError(f"it adds {_show(*key)} without changing its group")
            continue  # the parent's policy decides the addition
        where = _policy_for(kind, path, old[2])
        if where is None or not _evaluate(previous, where[0], where[1], signers, in_force):
            policy = "/" + "/".join((*where[0], where[1])) if where else "(none)"
            who = ", ".join(sorted({s.msp for s in signers})) or "nobody"
            extra = f"; {'; '.join(dict.fromkeys(ignored))}" if ignored else ""
            raise ConfigBlockError(
                f"its change of {_show(*key)} needs policy {policy}, which the signatures of "
                f"{who} do not satisfy{extra}"
            )
    # The new configuration is the one in force with exactly the delta applied.
    for key, element in delta.items():
        if after.get(key) != element:
            raise ConfigBlockError(f"its configuration does not hold {_show(*key)} as signed")
    for key in set(before) | set(after):
        if key in delta:
            continue
        kind, path = key
        if before.get(key) == after.get(key):
            continue
        if after.get(key) is None:
            # Removed: it, or the highest group above it that is gone too, must be left out of
            # its parent group's member list in the signed update.
            top_kind, top = kind, path
            while len(top) > 1 and ("group", top[:-1]) not in after:
                top_kind, top = "group", top[:-1]
            group = _group_at(update.write_set, top[:-1])
            if (
                ("group", top[:-1]) in delta
                and group is not None
                and (top_kind, top[-1]) not in _children(group)
            ):
                continue
        raise ConfigBlockError(f"its configuration changes {_show(*key)}, which no one signed")
    for key, element in delta.items():
        if element[0] != "group":
            continue
        signed_group = _group_at(update.write_set, key[1])
        new_group = _group_at(new.channel_group, key[1])
        if signed_group is None or new_group is None:
            continue
        if _children(signed_group) != _children(new_group):
            raise ConfigBlockError(
                f"its configuration's {_show(*key)} holds other members than the update"
            )
    old_orgs, new_orgs = set(organisations(previous)), set(organisations(new))
    return new, ConfigChange(
        block=number,
        sequence=int(new.sequence),
        organisations=tuple(sorted(new_orgs)),
        added=tuple(sorted(new_orgs - old_orgs)),
        removed=tuple(sorted(old_orgs - new_orgs)),
        signed_by=tuple(sorted({s.msp for s in signers})),
    )


def members_at(history: Mapping[int, Any], height: int) -> Any:
    """The configuration in force for a chain of ``height`` blocks (``history``: block number →
    configuration set by that block, block 0 included)."""
    usable = [n for n in history if n <= height - 1]
    return history[max(usable)] if usable else history[0]
