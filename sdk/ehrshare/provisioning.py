"""Creating a consortium (embedded ledger or a real Fabric network) and issuing its members.

:meth:`Consortium.init` creates, in one directory, everything a hospital consortium needs to run
on one machine: one certificate authority per hospital, a ledger admitting them (an embedded
ledger directory, or with ``ledger="fabric"`` a Fabric network whose MSPs are those CAs), the
content store (or a Kubo URL), the consortium's type-label key, one KGC node per hospital (node
key outside its state directory, service identity registered with role ``kgc``, public key
published on chain), an ``admin`` wallet that opens the DKG session on chain, a distributed key
generation over the ledger board (mpk, public polynomial and the KGC roster with its keys in the
final result τ nodes agreed on), one re-encryption proxy per hospital, and ``profile.yaml``
pointing at all of it (written by :mod:`ehrshare.profile`, which also reads it). A random
consortium id goes into the profile, the ledger and the store; opening refuses a ledger or store
volume that lacks it (:mod:`ehrshare.volumes`). :meth:`Consortium.add_member` enrols patients,
clinicians and auditors into wallets; :meth:`Consortium.session` opens a
:class:`~ehrshare.session.Session` that shares the consortium's ledger and services (the demo,
the tests, the benchmark).

Applications do not need this module: :func:`ehrshare.runtime.connect` opens a consortium from
its profile. This module must not log secrets, and must not write key material anywhere but
mode-0600 files.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ehrshare.closing import Closing
from ehrshare.contract import EhrContract
from ehrshare.errors import EXIT_USAGE
from ehrshare.fhir import TypeMapping
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import LocalCA
from ehrshare.ledger.errors import GatewayError
from ehrshare.ledger.store import EmbeddedLedger
from ehrshare.ledgers import EmbeddedBackend
from ehrshare.network.netns import NodeHost
from ehrshare.network.swarm import KuboSwarm
from ehrshare.profile import (
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_REPLICAS,
    DEFAULT_STORAGE_TIMEOUT,
    BackendUnavailable,
    FabricLedger,
    KgcNodeConfig,
    Profile,
    ProxyConfig,
    ServiceConfig,
)
from ehrshare.runtime import Clock, ConsortiumError, Runtime
from ehrshare.services.kgc import run_local_dkg
from ehrshare.services.proxy import ReencryptionProxy
from ehrshare.services.tls import issue_tls_certificate
from ehrshare.services.vault import atomic_write, write_key_file
from ehrshare.session import Session
from ehrshare.storage import KuboClient
from ehrshare.swarm_setup import create_swarm, mark_swarm_nodes, stop_swarm_of
from ehrshare.volumes import mark_store
from ehrshare.wallet import Wallet

if TYPE_CHECKING:
    from ehrshare.network.fabric import FabricNet

__all__ = [
    "ADMIN_WALLET",
    "DEFAULT_HOSPITALS",
    "INIT_HEADER",
    "PROCESSES_HEADER",
    "Consortium",
    "FabricOptions",
    "InvalidName",
]

_log = logging.getLogger(__name__)

DEFAULT_HOSPITALS: Final = ("HospitalA", "HospitalB", "HospitalC")
DEFAULT_BASE_PORT: Final = 7060
SERVICE_MODES: Final = ("in-process", "processes")
STORAGE_MODES: Final = ("embedded", "kubo", "swarm")
"""``swarm``: a Kubo store, one node per hospital in a private swarm (ehrshare.network.swarm)."""
ROLES: Final = ("patient", "clinician", "auditor", "admin", "guardian")
ADMIN_WALLET: Final = "admin"
# A member's name is its enrollment id and its wallet's directory name: what the chaincode
# accepts as an id, which is also a safe file name.
_MEMBER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Progress = Callable[[str], None]
INIT_HEADER: Final = (
    "# ehrshare connection profile (created by 'ehrshare consortium init').\n"
    "# Switch storage to Kubo with: storage: {backend: kubo, url: http://127.0.0.1:5001}\n"
)
PROCESSES_HEADER: Final = (
    "# ehrshare connection profile (created by 'ehrshare consortium init --services "
    "processes').\n# Start the services with 'ehrshare consortium services start' "
    "(see docs/operations.md).\n"
)


class InvalidName(ConsortiumError):
    """A new member's or hospital's name cannot be an id on chain (an enrollment id, an MSP
    id) and a directory name; nothing was made."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class FabricOptions:
    """How ``Consortium.init(ledger="fabric")`` builds its network: Raft orderers, block cutting
    (Fabric's BatchTimeout and MaxMessageCount) and the endorsement policy (MAJORITY or ANY of
    the hospitals' peers).

    The 20 ms BatchTimeout suits an interactive consortium at low load, where a lone
    transaction waits that long for its block: bench e2e measured a 10 KB put at 56 ms p50 with
    20 ms and 145 ms with 100 ms (docs/benchmarks.md). Under load, MaxMessageCount cuts blocks.
    """

    orderers: int = 1
    batch_timeout: str = "20ms"
    max_message_count: int = 10
    endorsement: str = "MAJORITY"
    orderer_type: str = "etcdraft"
    """``etcdraft`` (Raft, 1 or 3 orderers) or ``BFT`` (SmartBFT, 4 orderers, Fabric 3.x)."""
    hosts: Mapping[str, NodeHost] = field(default_factory=dict)
    """Where each hospital's nodes and the orderers run (``Consortium.init(hosts=...)``)."""
    client: str | None = None
    """The profile's ``ledger.client``: ``gateway`` (Fabric >= 2.4), ``peer``, or None: by the
    binaries' version (:func:`ehrshare.network.fabric.default_client`)."""

    def check(self) -> None:
        """Refuse options Fabric would refuse, and a machine without the Fabric binaries."""
        from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
        from ehrshare.network.fabric import FabricNetError, FabricNetSpec, missing_binaries

        try:
            FabricNetSpec(
                root=Path(),
                msp_ids=("CheckMSP",),
                orderers=self.orderers,
                batch_timeout=self.batch_timeout,
                max_message_count=self.max_message_count,
                endorsement=self.endorsement,
                orderer_type=self.orderer_type,
            ).check()
        except FabricNetError as exc:
            raise ConsortiumError(f"Fabric options: {exc}") from None
        bin_dir = default_bin_dir()
        missing = missing_binaries(bin_dir)
        if missing:
            raise BackendUnavailable(
                f"the Fabric binaries ({', '.join(missing)}) are not in {bin_dir}: run "
                "'make tools' (it builds Fabric 2.3), or set EHRSHARE_FABRIC_BIN"
            )
        if self.client not in (None, "gateway", "peer"):
            raise ConsortiumError(f"Fabric options: client {self.client!r} is not gateway or peer")
        if self.orderer_type == "BFT" or self.client == "gateway":
            from ehrshare.network.fabric import GATEWAY_SINCE, fabric_version

            version = fabric_version(bin_dir)
            if self.client == "gateway" and version[:2] < GATEWAY_SINCE:
                raise ConsortiumError(
                    f"Fabric options: the Gateway client needs Fabric 2.4 or later; {bin_dir} "
                    f"has {'.'.join(map(str, version))}, whose peers have no Gateway service "
                    "(use the peer client)"
                )
            if self.orderer_type == "BFT" and version[0] < 3:
                raise ConsortiumError(
                    f"Fabric options: SmartBFT orderers need Fabric 3.x; {bin_dir} has "
                    f"{'.'.join(map(str, version))} (set EHRSHARE_FABRIC_BIN and "
                    "EHRSHARE_FABRIC_SAMPLECONFIG to 3.x binaries, or use Raft)"
                )

    def build(self, root: Path, msp_ids: Sequence[str], say: Progress) -> FabricNet:
        """Create the network's crypto and configuration under ``root`` and start it."""
        from ehrshare.network.fabric import FabricNet, FabricNetSpec

        spec = FabricNetSpec(
            root=root,
            msp_ids=tuple(msp_ids),
            orderers=self.orderers,
            batch_timeout=self.batch_timeout,
            max_message_count=self.max_message_count,
            endorsement=self.endorsement,
            orderer_type=self.orderer_type,
            hosts=self.hosts,
        )
        kind = "SmartBFT" if self.orderer_type == "BFT" else "Raft"
        say(f"building a Fabric network: {len(msp_ids)} peers, {self.orderers} {kind} orderer(s)")
        network = FabricNet.create(spec, progress=say)
        try:
            network.start(progress=say)
        except BaseException:
            network.stop()
            raise
        return network


def _stop_network_of(root: Path) -> None:
    """Stop the Fabric network and the IPFS swarm under ``root`` if made there (init failed)."""
    stop_swarm_of(root)
    if not (root / "fabric").is_dir():
        return
    try:
        from ehrshare.network.fabric import FabricNet

        FabricNet.load(root).stop()
    except Exception as exc:  # the original error matters more; say this one in the log
        _log.warning("stopping the Fabric network of %s: %s", root, exc)


def _msp(hospital: str) -> str:
    return hospital if hospital.endswith("MSP") else f"{hospital}MSP"


def _mark_store(profile: Profile, consortium_id: str) -> None:
    if profile.swarm is not None:
        mark_swarm_nodes(profile, consortium_id)
        return
    if profile.storage_backend != "kubo":
        mark_store(profile, consortium_id)
        return
    assert profile.storage_url is not None
    with KuboClient(profile.storage_url, timeout=profile.storage_timeout) as client:
        mark_store(profile, consortium_id, client)


class Consortium(Closing):
    """A consortium's administration: creating it, issuing members, and sessions for them on
    one shared :class:`~ehrshare.runtime.Runtime` (its ledger, store and in-process services)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.profile = runtime.profile
        self.backend = runtime.backend
        self.store = runtime.store
        self.kgc_nodes = runtime.kgc_nodes
        self.clock = runtime.clock
        self._network: FabricNet | None = None  # a Fabric network this object started
        self._swarm: KuboSwarm | None = None  # an IPFS swarm this object started

    @property
    def proxy(self) -> ReencryptionProxy:
        """The first in-process re-encryption proxy (refused when it runs as its own process)."""
        first = self.profile.proxies[0]
        if not first.service.embedded:
            raise ConsortiumError(
                f"the proxy of this profile runs as a process at {first.service.address}"
            )
        return next(iter(self.runtime.proxies.values()))

    @property
    def proxies(self) -> dict[str, ReencryptionProxy]:
        """The in-process proxies by the ledger identity grants name them by (one per
        hospital; none when they run as processes)."""
        return dict(self.runtime.proxies)

    @property
    def remote_services(self) -> bool:
        """True when any KGC node or proxy is reached over gRPC (a separate process)."""
        return self.runtime.remote_services

    @property
    def directory(self) -> Path:
        """The consortium directory (where ``profile.yaml`` is)."""
        assert self.profile.path is not None
        return self.profile.path.parent

    # --- creation ----------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        hospitals: Sequence[str] = DEFAULT_HOSPITALS,
        threshold: int = 2,
        storage: str = "embedded",
        kubo_url: str = "http://127.0.0.1:5001",
        ledger: str = "embedded",
        services: str = "in-process",
        ports: Sequence[int] | None = None,
        clock: Clock | None = None,
        progress: Progress | None = None,
        fabric: FabricOptions | None = None,
        committee: int | None = None,
        replicas: int = DEFAULT_REPLICAS,
        hosts: Mapping[str, NodeHost] | None = None,
    ) -> Consortium:
        """Create a consortium in an empty (or new) directory and run its DKG.

        ``hosts`` (per hospital MSP, and ``OrdererMSP``: an address and a network namespace, e.g.
        :meth:`ehrshare.network.netns.HostLayout.placements`) puts each hospital's peer, Kubo
        node, KGC node and proxy on its own host, bound to its address (with Fabric, a swarm and
        service processes).

        ``storage="swarm"`` gives each hospital its own Kubo node in a private swarm
        (:mod:`ehrshare.network.swarm`, started here and stopped by :meth:`close`); a record is
        pinned at its origin hospital's node and the next ``replicas`` hospitals' nodes.

        ``committee`` (default: every hospital) is how many of the hospitals' KGC nodes, the
        first ones, run the first DKG; the others' nodes get keys and identities and can join
        the committee later by resharing (``ehrshare kgc reshare --add``).

        Each hospital runs a KGC node and a re-encryption proxy. ``services="processes"`` writes
        a profile whose KGC nodes and proxies are gRPC services on 127.0.0.1 (``ports``: one per
        hospital's proxy, then one per hospital's KGC node; default ``7060, 7061, …``) with TLS
        server certificates issued by their hospitals' CAs; start
        them with :class:`ehrshare.network.services.ServiceProcesses` or the commands
        ``ehrshare consortium services`` prints. The DKG still runs here, before the profile
        is switched: each node's sealed share is in its state directory when its process starts.
        Refuses a directory that already holds a profile (nothing is overwritten).

        ``ledger="fabric"`` builds a real Fabric network for the consortium instead of the
        embedded ledger (:mod:`ehrshare.network.fabric`: MSPs from the hospitals' CAs, one peer per
        hospital, Raft orderers, the chaincode as a service; ``fabric`` sets orderers and block
        cutting) and starts it to run the setup transactions and the DKG. The returned
        consortium owns the running network: :meth:`close` stops it; ``ehrshare network up``
        starts it again later.
        """
        say = progress or (lambda _msg: None)
        if services not in SERVICE_MODES:
            raise ConsortiumError(f"services {services!r} is not in-process or processes")
        port_list: list[int] = []
        if services == "processes":
            port_list = (
                list(ports)
                if ports is not None
                else [DEFAULT_BASE_PORT + i for i in range(2 * len(hospitals))]
            )
            if len(port_list) != 2 * len(hospitals) or len(set(port_list)) != len(port_list):
                raise ConsortiumError(
                    f"give {2 * len(hospitals)} distinct ports: one per hospital's proxy, then one "
                    "per hospital's KGC node"
                )
            if any(not 0 < p < 65536 for p in port_list):
                raise ConsortiumError(f"ports {port_list} must be between 1 and 65535")
        elif ports is not None:
            raise ConsortiumError("ports are only used with services='processes'")
        if ledger not in ("embedded", "fabric"):
            raise ConsortiumError(f"ledger backend {ledger!r} is not embedded or fabric")
        if fabric is not None and ledger != "fabric":
            raise ConsortiumError("Fabric options are only used with ledger='fabric'")
        if ledger == "fabric":
            fabric = fabric or FabricOptions()
            fabric.check()
            if hosts:
                fabric = replace(fabric, hosts=dict(hosts))
        if hosts and (ledger != "fabric" or storage != "swarm" or services != "processes"):
            raise ConsortiumError(
                "hosts need every node in a process of its own: ledger='fabric', "
                "storage='swarm' and services='processes'"
            )
        if storage not in STORAGE_MODES:
            raise ConsortiumError(f"storage backend {storage!r} is not embedded, kubo or swarm")
        if replicas < 0:
            raise ConsortiumError(f"replicas must be 0 or more, got {replicas}")
        if len(hospitals) < 2 or len(set(hospitals)) != len(hospitals):
            raise ConsortiumError("a consortium needs at least two distinct hospitals")
        for hospital in hospitals:
            if not isinstance(hospital, str) or not _MEMBER_NAME_RE.fullmatch(_msp(hospital)):
                raise InvalidName(
                    f"hospital name {hospital!r} is invalid: use letters, digits, '.', '_' or "
                    "'-', starting with a letter or digit (at most 61, so that its MSP id "
                    "<name>MSP fits 64)"
                )
        members = len(hospitals) if committee is None else committee
        if not 2 <= members <= len(hospitals):
            raise ConsortiumError(
                f"the first KGC committee must have 2 to {len(hospitals)} nodes, got {members}"
            )
        if not 2 <= threshold <= members:
            raise ConsortiumError(
                f"threshold {threshold} must be between 2 and the {members} KGC nodes"
            )
        root = Path(directory).resolve()
        if (root / "profile.yaml").exists():
            raise ConsortiumError(
                f"{root} already holds a consortium (profile.yaml); open it or pick another "
                "directory"
            )
        if root.exists() and any(root.iterdir()):
            raise ConsortiumError(f"{root} is not empty; give a new or empty directory")
        created = not root.exists()
        try:
            consortium = cls._create(
                root, hospitals, threshold, storage, kubo_url, clock, say, fabric, members, replicas
            )  # the swarm's hosts come with ``fabric.hosts``
            if not port_list:
                return consortium
            network = consortium._release_network()
            swarm, consortium._swarm = consortium._swarm, None
            consortium.close()
            say("issuing TLS server certificates and writing the process profile")
            _switch_to_processes(root, port_list, hosts or {})
            reopened = cls.open(root / "profile.yaml", clock=clock)
            reopened._network = network
            reopened._swarm = swarm
            return reopened
        except BaseException:
            # Nothing half-made stays behind: the directory was new or empty, and a Fabric
            # network started for it is stopped first (by pid).
            _stop_network_of(root)
            shutil.rmtree(root, ignore_errors=True)
            if not created:
                root.mkdir(parents=True, exist_ok=True)
            raise

    @classmethod
    def _create(
        cls,
        root: Path,
        hospitals: Sequence[str],
        threshold: int,
        storage: str,
        kubo_url: str,
        clock: Clock | None,
        say: Progress,
        fabric: FabricOptions | None = None,
        committee: int | None = None,
        replicas: int = DEFAULT_REPLICAS,
    ) -> Consortium:
        root.mkdir(parents=True, exist_ok=True)
        (root / "keys").mkdir(mode=0o700, exist_ok=True)
        write_key_file(root / "labels.key", secrets.token_bytes(32))
        # The consortium's id, also written into its ledger and store: opening a volume that
        # lacks it (unmounted, empty, another consortium's) is refused (ehrshare.volumes).
        consortium_id = "c-" + secrets.token_hex(16)
        profile = _initial_profile(root, hospitals, threshold, storage, kubo_url, consortium_id)
        swarm = None
        if storage == "swarm":
            msps = [_msp(h) for h in hospitals]
            hosts = fabric.hosts if fabric is not None else None
            swarm, profile = create_swarm(root, msps, profile, replicas, say, hosts)
        say(f"creating certificate authorities for {', '.join(hospitals)}")
        ledger_obj = (
            EmbeddedLedger.open(root / "ledger", channel="ehrshare") if fabric is None else None
        )
        try:
            if ledger_obj is not None:
                ledger_obj.mark_consortium(consortium_id)
            for hospital in hospitals:
                ca = LocalCA.create(_msp(hospital))
                ca.save(root / "ca" / _msp(hospital))
                if ledger_obj is not None:
                    ledger_obj.add_organization(ca.msp_id, ca.certificate_pem)
            say("issuing KGC node and proxy identities")
            for node in profile.kgc_nodes:
                svc = node.service
                assert svc.key_file is not None and svc.wallet is not None
                write_key_file(svc.key_file, KGCNodeKey.generate().to_secret_bytes())
                cls._issue(root, node.msp_id, f"kgc{node.index}", "kgc", svc.wallet)
            for px in profile.proxies:
                psvc = px.service
                assert psvc.key_file is not None and psvc.wallet is not None
                write_key_file(psvc.key_file, X25519KeyPair.generate().to_secret_bytes())
                cls._issue(root, px.msp_id, "proxy", "proxy", psvc.wallet)
            # The org admin that opens the DKG session on chain (OpenDKGSession needs role admin).
            cls._issue(root, _msp(hospitals[0]), ADMIN_WALLET, "admin", root / "wallets/admin")
        finally:
            if ledger_obj is not None:
                ledger_obj.close()
        network = None
        if fabric is not None:
            network = fabric.build(root, [_msp(h) for h in hospitals], say)
            connection = network.connection()
            if fabric.client is not None:
                # Chosen before reading it: the peer client keeps endorsers and quorum, the
                # Gateway client must not name them (profile.PEER_CLIENT_ONLY).
                connection = {**connection, "client": fabric.client}
            ledger = FabricLedger.from_connection(connection, root / "fabric")
            profile = replace(profile, ledger_backend="fabric", fabric=ledger)
        (root / "profile.yaml").write_text(profile.to_yaml(INIT_HEADER), encoding="utf-8")
        _mark_store(Profile.load(root / "profile.yaml"), consortium_id)
        consortium = cls.open(root / "profile.yaml", clock=clock)
        consortium._network = network
        consortium._swarm = swarm
        try:
            say("publishing each hospital's CA certificate on chain")
            for hospital in hospitals:
                consortium._publish_org_ca(_msp(hospital))
            for kgc_node in consortium.kgc_nodes:
                _register_service(consortium, f"kgc{kgc_node.index}")
            for px in profile.proxies:
                _register_service(consortium, px.name)
            ordered = sorted(consortium.kgc_nodes, key=lambda n: n.index)
            first = ordered[: committee or len(hospitals)]
            say(f"running the DKG among {len(first)} KGC nodes (threshold {threshold})")
            with consortium.session(ADMIN_WALLET) as admin:
                admin.register()
                # Keys are published and the session opened on chain; the roster users verify
                # partial keys against is the final result's snapshot of those keys.
                run_local_dkg(
                    first,
                    nonce=new_session_nonce(),
                    threshold=threshold,
                    admin=admin.contract,
                )
        except BaseException:
            consortium.close()
            raise
        return consortium

    @staticmethod
    def _issue(root: Path, msp: str, name: str, role: str, wallet_dir: Path) -> Wallet:
        ca = LocalCA.load(root / "ca" / msp)
        # An admin carries Fabric's admin NodeOU too: the channel's Admins policies count only
        # those, so its signature on a membership update is also a valid ConfigSignature.
        identity, signer = ca.issue(
            name, role=role, node_ou="admin" if role == "admin" else "client"
        )
        # Service wallets stay unencrypted (the serve processes read their keys unattended);
        # member wallets follow $EHRSHARE_WALLET_PASSPHRASE.
        wallet = Wallet(wallet_dir, use_env=role not in ("kgc", "proxy"))
        wallet.create(identity, signer, ca.issue_tls_client(name))  # whole or not at all
        return wallet

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, profile: Profile | str | os.PathLike[str], *, clock: Clock | None = None
    ) -> Consortium:
        """Open a consortium from its profile (a path or a parsed :class:`Profile`)."""
        return cls(Runtime.open(profile, clock=clock))

    def close(self) -> None:
        """Close the services, the store client and the ledger (and stop the Fabric network
        :meth:`init` started, if it is still this object's)."""
        self.runtime.close()
        network, self._network = self._network, None
        if network is not None:
            network.stop()
        swarm, self._swarm = self._swarm, None
        if swarm is not None:
            swarm.stop()

    @property
    def ledger(self) -> EmbeddedLedger:
        """The embedded ledger (its database: digests, heights, integrity checks); refused on
        Fabric, where the ledger lives in the peers."""
        if not isinstance(self.backend, EmbeddedBackend):
            raise ConsortiumError(
                "this consortium's ledger is a Fabric channel, not a local database"
            )
        return self.backend.ledger

    @property
    def network(self) -> FabricNet | None:
        """The Fabric network :meth:`init` started and this object stops on close."""
        return self._network

    @property
    def swarm(self) -> KuboSwarm | None:
        """The IPFS swarm :meth:`init` started and this object stops on close."""
        return self._swarm

    def _release_network(self) -> FabricNet | None:
        """Hand the running network over (the caller stops it); close() leaves it running."""
        network, self._network = self._network, None
        return network

    def dkg_result(self) -> dict[str, Any]:
        """The latest DKG result on chain (mpk, public polynomial, QUAL), read as the proxy."""
        with self.session(Wallet(self.profile.proxy.wallet or Path(), use_env=False)) as s:
            result: dict[str, Any] = s.chain.dkg.result()
        return result

    # --- members -----------------------------------------------------------------------------

    def add_member(self, name: str, hospital: str, role: str) -> Wallet:
        """Issue a certificate for ``name`` at ``hospital``'s CA into a new wallet."""
        if not isinstance(name, str) or not _MEMBER_NAME_RE.fullmatch(name):
            raise InvalidName(
                f"member name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if role not in ROLES:
            raise ConsortiumError(f"role {role!r} is not one of {', '.join(ROLES)}")
        msp = _msp(hospital)
        if not _MEMBER_NAME_RE.fullmatch(msp) or not (self.directory / "ca" / msp).is_dir():
            known = sorted(p.name for p in (self.directory / "ca").iterdir())
            raise ConsortiumError(
                f"hospital {hospital!r} is not in this consortium ({known}); a hospital that "
                "joined with its own directory issues members with 'ehrshare hospital add-member'"
            )
        wallet = self.profile.wallet(name)
        if wallet.exists:
            raise ConsortiumError(f"wallet {wallet.directory} already exists")
        return self._issue(self.directory, msp, name, role, wallet.directory)

    def reissue_member(self, ibe_id: str, wallet: str, role: str = "patient") -> Wallet:
        """Issue a new key and certificate for an existing identity into a new wallet: the first
        step of recovering a lost wallet (after identity proofing; hospital admins then rebind
        the identity on chain, :meth:`ehrshare.Session.recover_member`).

        ``ibe_id`` is ``<MSP id>/<enrollment id>``; the certificate is issued by that MSP's CA
        with the same enrollment id. A wallet that already holds a certificate of ``ibe_id`` is
        returned as it is, so a recovery interrupted after this step resumes with it.
        """
        msp, _, name = ibe_id.partition("/")
        if not _MEMBER_NAME_RE.fullmatch(name) or not _MEMBER_NAME_RE.fullmatch(msp):
            raise InvalidName(f"identity {ibe_id!r} is not of the form <MSP id>/<member name>")
        if role not in ("patient", "clinician", "auditor"):
            raise ConsortiumError(
                f"role {role!r} is not one of patient, clinician, auditor (recovered roles)"
            )
        if not (self.directory / "ca" / msp).is_dir():
            raise ConsortiumError(
                f"the CA of {msp} is not in {self.directory / 'ca'}; the hospital that issued "
                "the identity issues its new certificate"
            )
        w = self.profile.wallet(wallet)
        if w.exists:
            identity, _ = w.load_identity()
            if identity.ibe_id != ibe_id:
                raise ConsortiumError(
                    f"wallet {w.directory} already exists and holds {identity.ibe_id}, not {ibe_id}"
                )
            return w
        return self._issue(self.directory, msp, name, role, w.directory)

    def _publish_org_ca(self, msp: str) -> bool:
        """Put ``msp``'s CA certificate on chain unless one is there; True when it published.

        ``RegisterOrgCA`` must come from an org admin whose own certificate that CA issued, so
        the CA issues a throwaway admin certificate for the one call (and, on Fabric, a
        throwaway TLS client certificate for the peers and orderers); neither is stored and it
        registers no identity.
        """
        ca = LocalCA.load(self.directory / "ca" / msp)
        identity, signer = ca.issue("ca-publisher", node_ou="admin", valid_days=1)
        client_tls = None
        if self.profile.fabric is not None:
            tls_identity, tls_key = ca.issue_tls_client("ca-publisher", valid_days=1)
            client_tls = (tls_identity.credentials, tls_key.to_secret_bytes())
        with self.backend.connect(identity, signer, client_tls=client_tls) as gateway:
            chain = EhrContract(
                gateway.get_network(self.profile.channel).get_contract(self.profile.chaincode)
            )
            try:
                chain.get_org_ca(msp)
                return False
            except GatewayError as exc:
                if exc.message != f"the ca of {msp} is not registered":
                    raise
            chain.register_org_ca(ca.certificate_pem.decode("ascii"))
        _log.info("published the CA certificate of %s on chain", msp)
        return True

    def reissue_tls(self, wallet: str | Wallet) -> Wallet:
        """Issue a new TLS client certificate and key into an existing wallet.

        To replace a TLS key you suspect, or one the wallet lost (the ledger identity is
        untouched). Sealed when the wallet is encrypted.
        """
        w = wallet if isinstance(wallet, Wallet) else self.profile.wallet(wallet)
        identity, _ = w.load_identity()  # also unlocks (or refuses) an encrypted wallet
        ca_dir = self.directory / "ca" / identity.msp_id
        if not ca_dir.is_dir():
            raise ConsortiumError(
                f"the CA of {identity.msp_id} is not in {self.directory / 'ca'}; only the "
                "consortium that issued the wallet can re-issue its TLS certificate"
            )
        w.replace_tls(*LocalCA.load(ca_dir).issue_tls_client(identity.enrollment_id))
        _log.info("issued a TLS client certificate for %s", identity.ibe_id)
        return w

    def session(self, wallet: str | Wallet) -> Session:
        """A session for a wallet, sharing this consortium's ledger and services."""
        w = wallet if isinstance(wallet, Wallet) else self.profile.wallet(wallet)
        identity, signer = w.load_identity()
        return self.runtime.session(identity, signer, w)


def _switch_to_processes(root: Path, ports: Sequence[int], hosts: Mapping[str, NodeHost]) -> None:
    """Rewrite a fresh consortium's profile so its services are gRPC processes on loopback (or
    each on its hospital's host, ``hosts``).

    Each service gets a TLS server certificate from its hospital's CA (SANs 127.0.0.1 and
    localhost, or its host's address; key in ``keys/``, mode 0600) and keeps its state, node
    key and ledger wallet, so
    ``ehrshare kgc serve`` / ``ehrshare proxy serve`` can be started from the profile alone.
    """
    path = root / "profile.yaml"
    profile = Profile.load(path)
    (root / "tls").mkdir(exist_ok=True)

    def served(service: ServiceConfig, name: str, msp: str, port: int) -> ServiceConfig:
        host = hosts[msp].address if msp in hosts else "127.0.0.1"
        names = (host,) if msp in hosts else ("127.0.0.1", "localhost")
        cert, key = issue_tls_certificate(LocalCA.load(root / "ca" / msp), name, hosts=names)
        write_key_file(root / "keys" / f"{name}-tls.key", key)
        atomic_write(root / "tls" / f"{name}.pem", cert, mode=0o644)
        return replace(
            service,
            address=f"{host}:{port}",
            tls_ca=root / "ca" / msp / "ca-cert.pem",
            tls_cert=root / "tls" / f"{name}.pem",
            tls_key=root / "keys" / f"{name}-tls.key",
        )

    proxies = profile.proxies
    nodes = tuple(
        replace(n, service=served(n.service, f"kgc{n.index}", n.msp_id, port))
        for n, port in zip(profile.kgc_nodes, ports[len(proxies) :], strict=True)
    )
    served_proxies = tuple(
        replace(px, service=served(px.service, px.name, px.msp_id, port))
        for px, port in zip(proxies, ports[: len(proxies)], strict=True)
    )
    from ehrshare.network.services import CLIENT_CA_DIR, write_client_cas

    ca_files = tuple(sorted((root / "ca").glob("*/ca-cert.pem")))
    # The services' client CAs, as copies in one directory they read again when it changes:
    # a hospital's join adds its CA there without restarting them.
    write_client_cas(root / CLIENT_CA_DIR, ca_files)
    profile = replace(
        profile,
        kgc_nodes=nodes,
        proxies=served_proxies,
        ca_files=ca_files,
        client_ca_dir=root / CLIENT_CA_DIR,
    )
    atomic_write(path, profile.to_yaml(PROCESSES_HEADER).encode(), mode=0o644)


def _initial_profile(
    root: Path,
    hospitals: Sequence[str],
    threshold: int,
    storage: str,
    kubo_url: str,
    consortium_id: str,
) -> Profile:
    """The profile of a new consortium under ``root``: its layout, in-process services."""

    def in_process(state: str, key: str, wallet: str) -> ServiceConfig:
        return ServiceConfig(state=root / state, key_file=root / key, wallet=root / wallet)

    nodes = tuple(
        KgcNodeConfig(
            index=i,
            msp_id=_msp(hospital),
            service=in_process(f"kgc/node{i}", f"keys/kgc{i}.key", f"wallets/kgc{i}"),
        )
        for i, hospital in enumerate(hospitals, start=1)
    )
    # One proxy per hospital; each is the enrolment "proxy" of its hospital's CA.
    proxies = tuple(
        ProxyConfig(
            name=_proxy_name(hospital),
            msp_id=_msp(hospital),
            ibe_id=f"{_msp(hospital)}/proxy",
            service=in_process(
                f"proxy/{hospital.lower()}",
                f"keys/{_proxy_name(hospital)}.key",
                f"wallets/{_proxy_name(hospital)}",
            ),
        )
        for hospital in hospitals
    )
    return Profile(
        path=root / "profile.yaml",
        name=root.name,
        channel="ehrshare",
        chaincode="ehrshare",
        ledger_path=root / "ledger",
        storage_backend="kubo" if storage == "swarm" else storage,
        storage_path=root / "store" if storage == "embedded" else None,
        storage_url=kubo_url if storage == "kubo" else None,
        storage_timeout=DEFAULT_STORAGE_TIMEOUT,
        kgc_threshold=threshold,
        kgc_nodes=nodes,
        proxies=proxies,
        label_key_file=root / "labels.key",
        mapping=TypeMapping(),
        max_record_bytes=DEFAULT_MAX_RECORD_BYTES,
        wallets=root / "wallets",
        consortium_id=consortium_id,
    )


def _register_service(consortium: Consortium, wallet_name: str) -> None:
    """Register a service identity (role from its certificate) on the ledger."""
    with consortium.session(wallet_name) as s:
        s.register()


def _proxy_name(hospital: str) -> str:
    return f"proxy-{hospital.lower()}"
