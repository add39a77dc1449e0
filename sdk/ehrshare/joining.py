"""``consortium add-hospital``: a new hospital enters a running consortium, step by step.

The steps, each found done and skipped when an interrupted run is repeated:

1. **config** — the channel admits the hospital's MSP (its root CA), once a majority of the
   member hospitals' admins signed the :class:`~ehrshare.membership.MembershipUpdate` computed
   against the current membership. Embedded ledger: a config block (``add_organization``).
2. **register** — the new hospital's admin puts its CA certificate on chain (``RegisterOrgCA``)
   and its KGC node and proxy register their identities; all three act with keys from the
   hospital's own directory.
3. **profile** — the consortium's profile names the new KGC node and proxy, whose state, node
   keys and wallets stay in the hospital's directory (the profile points there).
4. **reshare** — the current committee re-deals the master key to itself plus the new node
   (same mpk: every identity key and record stays valid; τ unchanged).

With a private IPFS swarm, between 2 and 3 the hospital's Kubo node joins it (**storage**:
repository in the hospital's directory, the swarm's key, every node's peering naming it).

With the services as processes (``consortium init --services processes``), before step 3
**client-cas** writes the hospital's CA certificate (atomically) into the directory every
running service reads its client CAs from and reads again when it changes (``client_cas:``,
``--client-ca-dir``): they trust the new members for new connections without a restart. Step 3
names the new services with addresses and TLS server certificates issued by the hospital's CA
into its own directory, and the CA among the profile's ``cas``; between 3 and 4 **services**
makes the running services match the profile (``network up``'s supervisor reloads it: the new
KGC node and proxy start, the others keep running with the command line they had; a profile
written before ``client_cas:`` gets it in this join, and its services restart once, one at a
time; or ``network up`` when none runs); step 4 opens
the resharing on chain for the node processes to run (its nonce kept in ``joins/<MSP>.json``
first, so a repeated run waits for it) and waits until the new node holds its share.

On Fabric (:mod:`ehrshare.network.fabric.new_org`), **config** is the channel's config update
(computed against the config fetched from the orderer when the update file was made, the new
organisation's anchor peer in it) submitted with the signers' ConfigSignatures; the
profile's ``ledger.endorsers`` (``client: peer`` only) becomes a majority of the new membership
at once (the channel's ``MAJORITY Endorsement`` now counts one more organisation). Then
**peer**: the hospital's peer, made in its own directory (``<hospital>/fabric``), started,
joined with the genesis block fetched from the orderer, caught up, the chaincode installed and
approved for its organisation, and named in the profile's ``ledger.peers``.

Crash points (``EHRSHARE_FAULT_AT``): ``add_hospital.after_config``,
``add_hospital.after_peer`` (Fabric), ``add_hospital.after_register``,
``add_hospital.after_storage``, ``add_hospital.after_client_cas``,
``add_hospital.after_profile``, ``add_hospital.after_services``
and ``add_hospital.reshare_opened`` (processes), ``add_hospital.after_reshare``
(and the resharing's own ``reshare.promoted``/``reshare.retired``). Until step 1 commits nothing
changed; after it, each later step only adds what the hospital needs and a repeated run finishes.
A Fabric profile without the network's directory (a channel run elsewhere) is refused
(:class:`FabricJoinUnsupported`). On a network on several hosts (``--hosts netns``) the hospital
gets a host of its own, the layout's next address (its anchor peer in the update), recorded and
made before step **peer**; its peer, Kubo node, KGC node and proxy run there (also on hosts
linked through the link relay: the running relay opens a port for the new host).

This module must not read a private key of the new hospital except to act as it, in its
process, from its directory; it copies none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ehrshare.contract import EhrContract
from ehrshare.errors import ConfigurationError, Refused
from ehrshare.faults import fault_point
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.hospital import HospitalDir
from ehrshare.ledger.errors import GatewayError
from ehrshare.membership import InvalidUpdate, MembershipUpdate, StaleUpdate
from ehrshare.network.fabric.spec import FabricNetError
from ehrshare.network.netns import NodeHost
from ehrshare.network.services import CLIENT_CA_DIR
from ehrshare.profile import KgcNodeConfig, Profile, ProxyConfig, ServiceConfig
from ehrshare.services.vault import atomic_write
from ehrshare.wallet import Wallet

if TYPE_CHECKING:
    from ehrshare.network.fabric import FabricNet

__all__ = ["FabricJoinUnsupported", "JoinOutcome", "add_hospital", "compute_update"]

_log = logging.getLogger(__name__)

Progress = Callable[[str], None]
STEPS: Final = (
    "config",
    "peer",
    "register",
    "storage",
    "client-cas",
    "profile",
    "services",
    "reshare",
)


class FabricJoinUnsupported(ConfigurationError):
    """``add-hospital`` on a Fabric channel whose network this consortium does not run here."""


class JoinConflict(Refused):
    """The channel already has a member of that MSP id with another CA."""


class _Steps:
    """The steps a run performed, each with the seconds since the previous one ended."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.names.append(name)
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


@dataclass(frozen=True)
class JoinOutcome:
    """What a run did: the steps it performed (others were found done) and the committee."""

    msp_id: str
    kgc_index: int
    performed: tuple[str, ...]
    signers: tuple[str, ...]
    committee: tuple[str, ...]
    threshold: int
    seconds: dict[str, float] = field(default_factory=dict)
    """Per performed step, the seconds since the previous step (or the start) ended."""

    def to_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "msp_id": self.msp_id,
            "kgc_index": self.kgc_index,
            "performed": list(self.performed),
            "signers": list(self.signers),
            "committee": list(self.committee),
            "threshold": self.threshold,
            "seconds": dict(self.seconds),
        }


def _organizations(consortium: Any) -> dict[str, bytes]:
    orgs: dict[str, bytes] = consortium.ledger.organizations()
    return orgs


def _fabric_net(profile: Profile) -> FabricNet:
    from ehrshare.network.fabric import FabricNet

    assert profile.fabric is not None
    if profile.fabric.network is None or not (profile.fabric.network / "network.json").is_file():
        raise FabricJoinUnsupported(
            "this profile's Fabric channel is not a network this consortium runs here "
            "(ledger.network); add the hospital where the network was created"
        )
    return FabricNet.load(profile.fabric.network.parent)


def _new_host(net: FabricNet, msp: str) -> NodeHost | None:
    """On a network on several hosts (``consortium init --hosts netns``), the host the joining
    hospital gets (its own namespace and address: the layout's next); None on loopback."""
    if not net.spec.hosts:
        return None
    from ehrshare.network.consortium_hosts import next_host

    return next_host(net.root, msp)


def _fabric_config(net: FabricNet) -> Any:
    from ehrshare.network.fabric.new_org import fetch_config

    return fetch_config(net, net.spec.msp_ids[0], net.dir / "updates" / "config.block")


def _anchor(update: MembershipUpdate) -> tuple[str, int]:
    host, _, port = (update.anchor_peer or "").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidUpdate(f"the update's anchor peer {update.anchor_peer!r} is not host:port")
    return host, int(port)


def _check_peer_host(net: FabricNet, host: str, msp: str) -> None:
    """Refuse, before the channel changes, a peer address this network cannot run it at."""
    place = _new_host(net, msp)
    expected = place.address if place is not None else net.host(net.spec.msp_ids[0])
    if host != expected:
        where = "its own host's" if place is not None else "this network's"
        raise FabricJoinUnsupported(
            f"the new peer's address {host} is not {where} ({expected}): give 'hospital init' "
            f"no peer endpoint, or one on {expected}"
        )


def compute_update(profile: Profile, request_path: Path) -> MembershipUpdate:
    """Fetch the channel's membership and compute the update adding the request's hospital
    (on Fabric: the channel's config update, with the new peer as the organisation's anchor
    peer — the request's ``peer`` endpoint, else a free loopback port)."""
    from ehrshare.hospital import JoinRequest
    from ehrshare.provisioning import Consortium

    request = JoinRequest.load(request_path)
    if profile.consortium_id is None:
        raise ConfigurationError("the profile has no consortium id")
    if profile.fabric is None:
        with Consortium.open(profile) as consortium:
            orgs = _organizations(consortium)
            return MembershipUpdate.compute(profile.consortium_id, profile.channel, orgs, request)
    from ehrshare.network.fabric.config_update import (
        compute_update as config_update,
    )
    from ehrshare.network.fabric.config_update import msp_root_certs, with_organization
    from ehrshare.network.supervisor import free_loopback_ports

    net = _fabric_net(profile)
    config = _fabric_config(net)
    place = _new_host(net, request.msp_id)
    default_host = "127.0.0.1" if place is None else place.address
    anchor = request.endpoints.get("peer") or f"{default_host}:{free_loopback_ports(1)[0]}"
    host, _, port = anchor.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidUpdate(f"the join request's peer endpoint {anchor!r} is not host:port")
    _check_peer_host(net, host, request.msp_id)
    orgs = msp_root_certs(config)
    if request.msp_id in orgs:
        raise StaleUpdate(f"{request.msp_id} is already a member of channel {profile.channel}")
    updated = with_organization(config, request.msp_id, request.ca_pem, anchor=(host, int(port)))
    update = config_update(profile.channel, config, updated).SerializeToString()
    return MembershipUpdate.compute(
        profile.consortium_id,
        profile.channel,
        orgs,
        request,
        config_update=update,
        anchor_peer=anchor,
    )


def add_hospital(
    profile_path: Path,
    update: MembershipUpdate,
    hospital: HospitalDir,
    *,
    admin_wallet: Wallet,
    progress: Progress | None = None,
) -> JoinOutcome:
    """Run (or finish) the steps adding ``hospital`` under a signed ``update``."""
    from ehrshare.provisioning import Consortium

    say = progress or (lambda _m: None)
    request = hospital.request()
    if request.sha256 != update.request.sha256:
        raise InvalidUpdate(
            f"the update adds the request {update.request.sha256[:16]}…, but {hospital.root} "
            f"exported {request.sha256[:16]}…"
        )
    msp = request.msp_id
    performed = _Steps()
    profile = Profile.load(profile_path)
    if update.consortium_id != profile.consortium_id or update.channel != profile.channel:
        raise InvalidUpdate(
            f"the update is for consortium {update.consortium_id} channel {update.channel}, "
            f"not this profile's ({profile.consortium_id}, {profile.channel})"
        )
    processes = _runs_processes(profile)
    if processes:
        _service_endpoints(profile, request)  # checked before anything changes
    signers: list[str] = []
    if profile.fabric is not None:
        signers = _fabric_join(profile_path, update, hospital, performed, say)
        profile = Profile.load(profile_path)
    with Consortium.open(profile) as consortium:
        if profile.fabric is None:
            signers = _embedded_config(consortium, update, performed, say)
        if _register(consortium, hospital, say):
            performed.done("register")
        fault_point("add_hospital.after_register")
    swarm_url = None
    if profile.swarm is not None:
        swarm_url, added = _join_swarm(profile, hospital, say)
        if added:
            performed.done("storage")
            fault_point("add_hospital.after_storage")
    if processes and _client_cas(profile_path, hospital, say):
        performed.done("client-cas")
        fault_point("add_hospital.after_client_cas")
    if _write_profile(profile_path, hospital, say, swarm_url, processes=processes):
        performed.done("profile")
        fault_point("add_hospital.after_profile")
    profile = Profile.load(profile_path)
    index = next(n.index for n in profile.kgc_nodes if n.msp_id == msp)
    if processes:
        if _start_services(profile_path, say):
            performed.done("services")
            fault_point("add_hospital.after_services")
        committee, tau, reshared = _reshare_processes(profile, admin_wallet, index, say)
    else:
        with Consortium.open(profile) as consortium:
            committee, tau, reshared = _reshare(consortium, admin_wallet, index, say)
    if reshared:
        performed.done("reshare")
        fault_point("add_hospital.after_reshare")
    return JoinOutcome(
        msp,
        index,
        tuple(performed.names),
        tuple(signers),
        committee,
        tau,
        dict(performed.seconds),
    )


def _embedded_config(
    consortium: Any, update: MembershipUpdate, performed: _Steps, say: Progress
) -> list[str]:
    """Step config on the embedded ledger: a config block admitting the MSP; the signers."""
    request = update.request
    msp = request.msp_id
    orgs = _organizations(consortium)
    if msp in orgs:
        if orgs[msp] != request.ca_pem:
            raise JoinConflict(f"{msp} is already a channel member, with another CA")
        update.check_base({k: v for k, v in orgs.items() if k != msp})
        return []
    update.check_base(orgs)
    signers = update.require_majority(orgs)
    say(f"admitting {msp} to channel {update.channel} (signed by {', '.join(signers)})")
    consortium.ledger.add_organization(msp, request.ca_pem)
    performed.done("config")
    fault_point("add_hospital.after_config")
    return signers


def _fabric_join(
    profile_path: Path,
    update: MembershipUpdate,
    hospital: HospitalDir,
    performed: _Steps,
    say: Progress,
) -> list[str]:
    """Steps config and peer on Fabric; the signers (none when the config was done)."""
    from ehrshare.identity import LocalCA
    from ehrshare.network.fabric.config_update import msp_root_certs
    from ehrshare.network.fabric.new_org import join_peer, submit_update

    request = update.request
    msp = request.msp_id
    net = _fabric_net(Profile.load(profile_path))
    if update.config_update is None:
        raise InvalidUpdate(
            "the update was computed for the embedded ledger, not this Fabric channel: remove "
            "it and run add-hospital again to compute the channel's config update"
        )
    anchor = _anchor(update)
    _check_peer_host(net, anchor[0], msp)
    orgs = msp_root_certs(_fabric_config(net))
    signers: list[str] = []
    if msp in orgs:
        if orgs[msp] != request.ca_pem:
            raise JoinConflict(f"{msp} is already a channel member, with another CA")
        update.check_base({k: v for k, v in orgs.items() if k != msp})
    else:
        update.check_base(orgs)
        signers = update.require_majority(orgs)
        # Before the update commits: a majority of n+1 peers also satisfies one of n, and
        # after it the old count would be refused (ENDORSEMENT_POLICY_FAILURE).
        _fabric_profile(profile_path, net, len(orgs) + 1, None, say)
        say(
            f"submitting the config update of channel {update.channel} adding {msp} "
            f"(signed by {', '.join(signers)})"
        )
        submit_update(
            net,
            update.config_update,
            update.config_signatures(signers),
            submitter=signers[0],
            work=net.dir / "updates",
        )
        deadline = time.monotonic() + 60
        while msp not in msp_root_certs(_fabric_config(net)):
            if time.monotonic() > deadline:
                raise FabricNetError(f"the config update adding {msp} did not commit in time")
            time.sleep(0.2)
        net.wait_synced()
        performed.done("config")
        fault_point("add_hospital.after_config")
    members = len(orgs) + (msp not in orgs)
    _fabric_profile(profile_path, net, members, None, say)
    place = None
    if net.spec.hosts:
        from ehrshare.network.consortium_hosts import add_host

        say(f"giving {msp} a host of its own ({anchor[0]})")
        place = add_host(net.root, msp)
    ca = LocalCA.load(hospital.ca_dir)
    if join_peer(net, ca, hospital.root / "fabric", anchor, say, host=place):
        performed.done("peer")
        fault_point("add_hospital.after_peer")
    _fabric_profile(profile_path, net, members, msp, say)
    return signers


def _fabric_profile(
    path: Path, net: FabricNet, members: int, new_peer: str | None, say: Progress
) -> None:
    """The profile's ``ledger.endorsers`` for ``members`` organisations (the channel's
    MAJORITY, or 1 under ANY) and, once it serves, the new peer in ``ledger.peers``."""
    from ehrshare.profile import FabricEndpoint

    profile = Profile.load(path)
    fabric = profile.fabric
    assert fabric is not None
    peers = fabric.peers
    if new_peer is not None and all(p.msp_id != new_peer for p in peers):
        endpoint = FabricEndpoint(
            address=net.peer_address(new_peer),
            tls_ca=net.tls_ca(new_peer),
            server_name=net.server_name(new_peer),
            msp_id=new_peer,
        )
        peers = (*peers, endpoint)
    endorsers: int | None = 1 if net.spec.endorsement == "ANY" else members // 2 + 1
    if fabric.client == "gateway":
        endorsers = None  # the peers' Gateway plans endorsement itself (PEER_CLIENT_ONLY)
    if peers == fabric.peers and endorsers == fabric.endorsers:
        return
    if new_peer is not None:
        count = f"{endorsers} endorsing hospitals" if endorsers else "the Gateway's endorsers"
        say(f"naming the peer of {new_peer} in the profile ({count})")
    updated = replace(profile, fabric=replace(fabric, peers=peers, endorsers=endorsers))
    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    atomic_write(path, updated.to_yaml(header).encode(), mode=0o644)


def _register(consortium: Any, hospital: HospitalDir, say: Progress) -> bool:
    """The new hospital's CA on chain and its services' identities; True if anything was
    submitted."""
    did = False
    admin = Wallet(hospital.wallet("admin"))
    with consortium.session(admin) as s:
        chain = EhrContract(s.contract)  # raw ledger errors: GatewayError with the reason
        try:
            chain.get_org_ca(hospital.msp_id)
        except GatewayError as exc:
            if exc.message != f"the ca of {hospital.msp_id} is not registered":
                raise
            say(f"publishing the CA certificate of {hospital.msp_id} on chain")
            chain.register_org_ca((hospital.ca_dir / "ca-cert.pem").read_text(encoding="ascii"))
            did = True
    for name in ("kgc", "proxy"):
        with consortium.session(Wallet(hospital.wallet(name), use_env=False)) as s:
            try:
                EhrContract(s.contract).get_identity(s.ibe_id)
            except GatewayError:
                say(f"registering {s.ibe_id}")
                s.register()
                did = True
    return did


def _join_swarm(profile: Profile, hospital: HospitalDir, say: Progress) -> tuple[str, bool]:
    """The hospital's Kubo node in the consortium's private swarm (repository in its own
    directory), started and dialled if the swarm runs, marked as the consortium's volume;
    (its RPC URL, whether it was made now)."""
    from ehrshare.network.swarm import KuboSwarm
    from ehrshare.storage import KuboClient
    from ehrshare.swarm_setup import mark_swarm_node
    from ehrshare.volumes import mark_store

    assert profile.swarm is not None and profile.consortium_id is not None
    swarm = KuboSwarm.load(profile.swarm.path)
    added = hospital.msp_id not in swarm.nodes
    if added:
        say(f"giving {hospital.msp_id} a node in the private IPFS swarm")
    place = _hospital_host(profile, hospital.msp_id)
    node = swarm.add_node(hospital.msp_id, hospital.root / "ipfs", place)
    if swarm.pids():
        swarm.start([hospital.msp_id])  # dials the running nodes
        with KuboClient(node.api_url, timeout=profile.storage_timeout) as client:
            mark_store(profile, profile.consortium_id, client)
    else:
        mark_swarm_node(profile, swarm, hospital.msp_id)
    return node.api_url, added


def _runs_processes(profile: Profile) -> bool:
    """Whether the profile's KGC nodes and proxies run as processes (all or none of them)."""
    services = [n.service for n in profile.kgc_nodes] + [p.service for p in profile.proxies]
    remote = [not s.embedded for s in services]
    if any(remote) and not all(remote):
        raise ConfigurationError(
            "this profile runs some services in-process and others as processes; add-hospital "
            "needs one or the other"
        )
    return all(remote)


_LOOPBACK: Final = ("127.0.0.1", "localhost")


def _service_endpoints(profile: Profile, request: Any) -> dict[str, str | None]:
    """The addresses the join request asks for its KGC node and proxy (None: a free loopback
    port is chosen when the profile is written), refused when they cannot run here."""
    from ehrshare.hospital import InvalidJoinRequest

    used = {s.address for s in _services(profile) if s.address}
    place = _hospital_host(profile, request.msp_id)
    allowed = _LOOPBACK if place is None else (place.address,)
    out: dict[str, str | None] = {}
    for which in ("kgc", "proxy"):
        address = request.endpoints.get(which)
        out[which] = address
        if address is None:
            continue
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidJoinRequest(
                f"the join request's {which} endpoint {address!r} is not host:port"
            )
        if host not in allowed:
            where = (
                f"this machine's loopback ({', '.join(_LOOPBACK)}), where this consortium's "
                "services run"
                if place is None
                else f"the hospital's own host ({place.address})"
            )
            raise ConfigurationError(
                f"the join request's {which} endpoint {address} is not on {where}; give "
                f"'hospital init' an endpoint on {allowed[0]} or none"
            )
        if any(f"{h}:{port}" in used for h in allowed):
            raise ConfigurationError(
                f"the join request's {which} endpoint {address}: a service of this consortium "
                "already listens on that port"
            )
    if out["kgc"] is not None and out["kgc"] == out["proxy"]:
        raise ConfigurationError("the join request gives its KGC node and proxy the same address")
    return out


def _hospital_host(profile: Profile, msp: str) -> NodeHost | None:
    """The host of the hospital on a consortium on several hosts (``hosts.json`` beside the
    profile; made by the join's peer step on Fabric), None on loopback."""
    from ehrshare.network.consortium_hosts import load_hosts, next_host

    assert profile.path is not None
    if load_hosts(profile.path.parent) is None:
        return None
    return next_host(profile.path.parent, msp)


def _services(profile: Profile) -> list[ServiceConfig]:
    return [n.service for n in profile.kgc_nodes] + [p.service for p in profile.proxies]


def _served(
    hospital: HospitalDir,
    service: str,
    name: str,
    address: str,
    names: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> ServiceConfig:
    """A service of the new hospital as a process: its TLS server certificate issued by the
    hospital's own CA into the hospital's directory (``tls/<service>.pem``, key
    ``keys/<service>-tls.key``, 0600), made once and reused by a repeated run."""
    from ehrshare.identity import LocalCA
    from ehrshare.services.tls import issue_tls_certificate
    from ehrshare.services.vault import write_key_file

    cert = hospital.root / "tls" / f"{service}.pem"
    key = hospital.key_file(f"{service}-tls")
    if not (cert.is_file() and key.is_file()):
        pem, secret = issue_tls_certificate(LocalCA.load(hospital.ca_dir), name, hosts=names)
        cert.parent.mkdir(mode=0o755, exist_ok=True)
        write_key_file(key, secret)
        atomic_write(cert, pem, mode=0o644)
    return ServiceConfig(
        state=hospital.state(service),
        address=address,
        key_file=hospital.key_file(service),
        wallet=hospital.wallet(service),
        tls_ca=hospital.ca_dir / "ca-cert.pem",
        tls_cert=cert,
        tls_key=key,
    )


def _write_profile(
    path: Path,
    hospital: HospitalDir,
    say: Progress,
    swarm_url: str | None = None,
    *,
    processes: bool = False,
) -> bool:
    """Name the new KGC node and proxy in the profile (written whole); False if they are.

    ``processes``: as services with addresses (the request's, else free loopback ports) and
    TLS server certificates from the hospital's CA, and the hospital's CA among the profile's
    CAs (every service then accepts its members' TLS client certificates)."""
    from ehrshare.network.supervisor import free_loopback_ports

    profile = Profile.load(path)
    if any(n.msp_id == hospital.msp_id for n in profile.kgc_nodes):
        return False
    index = max(n.index for n in profile.kgc_nodes) + 1
    if processes:
        wanted = _service_endpoints(profile, hospital.request())
        place = _hospital_host(profile, hospital.msp_id)
        host = "127.0.0.1" if place is None else place.address
        ports = iter(free_loopback_ports(2))
        addresses = {k: v or f"{host}:{next(ports)}" for k, v in wanted.items()}
        names = _LOOPBACK if place is None else (place.address,)
        kgc_service = _served(hospital, "kgc", f"kgc{index}", addresses["kgc"], names)
        proxy_service = _served(hospital, "proxy", hospital.proxy_name, addresses["proxy"], names)
    else:
        kgc_service = ServiceConfig(
            state=hospital.state("kgc"),
            key_file=hospital.key_file("kgc"),
            wallet=hospital.wallet("kgc"),
        )
        proxy_service = ServiceConfig(
            state=hospital.state("proxy"),
            key_file=hospital.key_file("proxy"),
            wallet=hospital.wallet("proxy"),
        )
    node = KgcNodeConfig(index=index, msp_id=hospital.msp_id, service=kgc_service)
    proxy = ProxyConfig(
        name=hospital.proxy_name,
        msp_id=hospital.msp_id,
        ibe_id=f"{hospital.msp_id}/proxy",
        service=proxy_service,
    )
    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    updated = replace(
        profile, kgc_nodes=(*profile.kgc_nodes, node), proxies=(*profile.proxies, proxy)
    )
    ca_cert = hospital.ca_dir / "ca-cert.pem"
    if profile.ca_files and ca_cert not in profile.ca_files:
        updated = replace(updated, ca_files=(*profile.ca_files, ca_cert))
    if processes and profile.client_ca_dir is None:
        # A profile written before 'client_cas': its services take the directory from now on
        # (this join restarts them once with it; the next joins restart none).
        updated = replace(updated, client_ca_dir=path.parent / CLIENT_CA_DIR)
    if profile.swarm is not None and swarm_url is not None:
        nodes = (*profile.swarm.nodes, (hospital.msp_id, swarm_url))
        updated = replace(updated, swarm=replace(profile.swarm, nodes=nodes))
    say(f"adding KGC node {index} and {hospital.proxy_name} of {hospital.msp_id} to the profile")
    atomic_write(path, updated.to_yaml(header).encode(), mode=0o644)
    return True


def _reshare(
    consortium: Any, admin_wallet: Wallet, index: int, say: Progress
) -> tuple[tuple[str, ...], int, bool]:
    """Reshare to the committee plus node ``index`` unless the latest result has it."""
    from ehrshare.services.kgc import run_local_reshare

    nodes = {n.index: n for n in consortium.kgc_nodes}
    new_node = nodes[index]
    with consortium.session(admin_wallet) as admin:
        admin.register()
        current = admin.chain.dkg.result()
        roster = [str(m) for m in current["roster"]]
        indices = [int(i) for i in current.get("indices") or range(1, len(roster) + 1)]
        tau = int(current["threshold"])
        new_id = new_node.publish_key()
        if new_id in roster:
            for node in nodes.values():
                node.catch_up()  # a run killed after the result was final
            return tuple(roster), tau, False
        members = sorted({*indices, index})
        say(f"resharing the master key to {len(members)} KGC nodes (τ={tau}), adding {new_id}")
        run_local_reshare(
            list(nodes.values()),
            nonce=new_session_nonce(),
            admin=admin.contract,
            members=members,
            dealers=sorted(indices),
            threshold=tau,
        )
        final = admin.chain.dkg.result()
    return tuple(str(m) for m in final["roster"]), tau, True


def _client_cas(profile_path: Path, hospital: HospitalDir, say: Progress) -> bool:
    """Step client-cas (processes): the new hospital's CA certificate into the directory the
    running services read their client CAs from (``client_cas:``), by an atomic write; they
    trust its members for new connections from then on, without a restart. A profile written
    before that directory gets every CA there (and the profile step names it). True if a file
    was written."""
    from ehrshare.network.services import write_client_cas

    profile = Profile.load(profile_path)
    directory = profile.client_ca_dir or profile_path.parent / CLIENT_CA_DIR
    ca_cert = hospital.ca_dir / "ca-cert.pem"
    cas = [*profile.ca_files, *(() if ca_cert in profile.ca_files else (ca_cert,))]
    written = write_client_cas(directory, cas)
    if written:
        say(f"trusting {hospital.msp_id}'s CA in {directory} (the running services re-read it)")
    return bool(written)


def _start_services(profile_path: Path, say: Progress) -> bool:
    """Step services (processes): the running services take the profile that names the new
    KGC node and proxy — the supervisor of ``network up`` starts them; the others keep running
    (they trust the new CA from the client-cas step; with a profile written before
    ``client_cas:`` it restarts them once, one at a time) — or, with nothing running,
    ``network up`` starts them all. True if anything was started or restarted."""
    from ehrshare.network.control import sync_services

    say("starting the new hospital's KGC node and proxy under the services' supervisor")
    how = sync_services(profile_path)
    return how != "current"


def _join_state(profile: Profile, msp: str) -> Path:
    assert profile.path is not None
    return profile.path.parent / "joins" / f"{msp}.json"


def _reshare_processes(
    profile: Profile, admin_wallet: Wallet, index: int, say: Progress
) -> tuple[tuple[str, ...], int, bool]:
    """Step reshare with the KGC nodes as processes: open the resharing on chain (the node
    processes follow it and deal, the new one receives its share) and wait until its result is
    final and the new node answers under it. The session's nonce is written to
    ``joins/<MSP>.json`` before it is opened, so a run killed while it runs waits for that one
    rather than opening a second."""
    import json

    from ehrshare.errors import Unavailable
    from ehrshare.ledger.errors import LedgerError
    from ehrshare.runtime import connect
    from ehrshare.services.kgc import open_reshare_session

    nodes: dict[int, str] = {}
    for n in profile.kgc_nodes:
        assert n.service.wallet is not None
        nodes[n.index] = Wallet(n.service.wallet, use_env=False).load_identity()[0].ibe_id
    new_id = nodes[index]
    new_state = next(n.service.state for n in profile.kgc_nodes if n.index == index)
    assert new_state is not None
    record = _join_state(profile, nodes[index].split("/", 1)[0])
    with connect(profile, admin_wallet) as admin:
        admin.register()
        chain = admin.chain.dkg
        current = chain.result()
        roster = [str(m) for m in current["roster"]]
        indices = [int(i) for i in current.get("indices") or range(1, len(roster) + 1)]
        tau = int(current["threshold"])
        reshared = False
        if new_id not in roster:
            nonce = _recorded_nonce(record)
            opened = False
            if nonce is not None:
                try:
                    opened = chain.session_state(nonce)["phase"] != "failed"
                except LedgerError:  # written, never opened: open it now
                    pass
                else:
                    nonce = nonce if opened else None  # failed: a new session
            if opened:
                assert nonce is not None
                say(f"waiting for the resharing {nonce.hex()[:16]}… a previous run opened")
            else:
                nonce = nonce or new_session_nonce()
                record.parent.mkdir(exist_ok=True)
                atomic_write(record, json.dumps({"reshare": nonce.hex()}).encode(), mode=0o644)
                members = sorted({*indices, index})
                say(
                    f"resharing the master key to {len(members)} KGC nodes (τ={tau}), adding "
                    f"{new_id}; the node processes deal"
                )
                open_reshare_session(
                    admin.contract,
                    nonce=nonce,
                    roster=[nodes[i] for i in members],
                    indices=members,
                    dealers=[nodes[i] for i in sorted(indices)],
                    threshold=tau,
                )
                fault_point("add_hospital.reshare_opened")
            deadline = time.monotonic() + 300
            while True:
                state = chain.session_state(nonce)
                if (state.get("result") or {}).get("final"):
                    break
                if state["phase"] == "failed":
                    from ehrshare.contract.dkg import failure_text

                    raise Unavailable(
                        f"the resharing adding {new_id} failed ({failure_text(state)}); the "
                        "old shares keep answering: run add-hospital again"
                    )
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"the resharing {nonce.hex()[:16]}… adding {new_id} is not final after "
                        "300 s: are the KGC node processes running? ('ehrshare network status')"
                    )
                time.sleep(0.2)
            reshared = True
        final = chain.result()
    session = str(final["nonce"])
    pointer = new_state / "current-session"
    deadline = time.monotonic() + 60
    while not (pointer.is_file() and pointer.read_text(encoding="ascii").strip() == session):
        if time.monotonic() > deadline:
            raise Unavailable(
                f"KGC node {index} ({new_id}) has not taken its share of the final resharing "
                f"{session[:16]}… within 60 s: see its log in {new_state}"
            )
        time.sleep(0.2)
    return tuple(str(m) for m in final["roster"]), tau, reshared


def _recorded_nonce(record: Path) -> bytes | None:
    """The resharing a previous run chose (``joins/<MSP>.json``), None if none or unreadable."""
    import json

    try:
        return bytes.fromhex(json.loads(record.read_text(encoding="utf-8"))["reshare"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
