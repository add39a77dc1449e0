"""A local consortium (embedded ledger or a real Fabric network), and :func:`connect`.

:meth:`Consortium.init` creates, in one directory, everything a hospital consortium needs to run
on one machine: one certificate authority per hospital, a ledger admitting them (an embedded
ledger directory, or with ``ledger="fabric"`` a Fabric network whose MSPs are those CAs), the
content store (or a Kubo URL), the consortium's type-label key, one KGC node per hospital (node
key outside its state directory, service identity registered with role ``kgc``, public key
published on chain), an ``admin`` wallet that opens the DKG session on chain, a distributed key
generation over the ledger board (mpk, public polynomial and the KGC roster with its keys in the
final result τ nodes agreed on), one re-encryption proxy per hospital, and ``profile.yaml``
pointing at all of it. A random consortium id goes into the profile, the ledger and the store;
:meth:`Consortium.open` refuses a ledger or store volume that lacks it (:mod:`ehrshare.volumes`).
:meth:`Consortium.add_member` enrols patients, clinicians and auditors into wallets;
:meth:`Consortium.session` opens a :class:`~ehrshare.session.Session` that shares the
consortium's ledger and services (the demo, the tests, the benchmark).

:func:`connect` is what hospital apps and the CLI call: it reads a profile and a wallet and opens
the backends the profile names. With in-process services, the process that connects also runs
the KGC nodes and the proxies from their state directories — a single-machine setup for
development and demos. With ``services="processes"`` at init, the profile gives each KGC node and
each proxy a loopback gRPC address instead; they run as ``ehrshare kgc serve`` / ``ehrshare proxy
serve`` processes (:mod:`ehrshare.network.services` starts them from the profile) and the
session dials them over mutual TLS with the wallet's TLS client certificate (its own key, issued
by the member's hospital CA next to the ledger certificate; never the ledger signing key). The
embedded ledger directory is then opened by every process. On Fabric the same TLS client
certificate opens the connections to the peers and orderers, which require mutual TLS: members
present their wallet's, in-process KGC nodes and proxies their service wallet's.

This module must not log secrets, and must not write key material anywhere but mode-0600 files.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from ehrshare.closing import Closing
from ehrshare.errors import EXIT_USAGE, ConfigurationError
from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.api import StoredCheckpoint
from ehrshare.ledger.embedded import EmbeddedNetwork
from ehrshare.ledger.errors import GatewayError
from ehrshare.ledger.store import EmbeddedLedger
from ehrshare.ledgers import (
    ClientTlsPair,
    EmbeddedBackend,
    FabricBackend,
    LedgerBackend,
    open_ledger,
)
from ehrshare.profile import (
    BackendUnavailable,
    Profile,
    ProfileError,
    ProxyConfig,
    Wallet,
)
from ehrshare.services.kgc import InProcessKgcClient, KgcNode, run_local_dkg
from ehrshare.services.protocols import KgcClient, ProxyClient
from ehrshare.services.proxy import InProcessProxyClient, ReencryptionProxy, catch_up
from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient
from ehrshare.services.tls import ClientTls, issue_tls_certificate
from ehrshare.services.vault import atomic_write, read_key_file, write_key_file
from ehrshare.session import ProxyRoute, Session

if TYPE_CHECKING:
    from ehrshare.network.fabric import FabricNet
from ehrshare.storage import (
    BlobStore,
    EmbeddedStore,
    KuboClient,
    KuboStore,
    StorageError,
    StorageUnavailable,
)
from ehrshare.volumes import VolumeError, check_ledger, check_store, mark_store

__all__ = [
    "DEFAULT_HOSPITALS",
    "Consortium",
    "ConsortiumError",
    "FabricOptions",
    "InvalidName",
    "connect",
    "open_store",
    "profile_file",
]

_log = logging.getLogger(__name__)

DEFAULT_HOSPITALS: Final = ("HospitalA", "HospitalB", "HospitalC")
DEFAULT_BASE_PORT: Final = 7060
SERVICE_MODES: Final = ("in-process", "processes")
ROLES: Final = ("patient", "clinician", "auditor", "admin")
ADMIN_WALLET: Final = "admin"
# A member's name is its enrollment id and its wallet's directory name: what the chaincode
# accepts as an id, which is also a safe file name.
_MEMBER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Clock = Callable[[], int]
Progress = Callable[[str], None]


class ConsortiumError(ConfigurationError, ValueError):
    """A consortium directory cannot be created or opened; the message says what to do."""


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
        )
        say(f"building a Fabric network: {len(msp_ids)} peers, {self.orderers} Raft orderer(s)")
        network = FabricNet.create(spec, progress=say)
        try:
            network.start(progress=say)
        except BaseException:
            network.stop()
            raise
        return network


def _fabric_ledger_section(root: Path, network: FabricNet) -> dict[str, Any]:
    """The profile's ``ledger:`` section for a network under ``root`` (paths relative to it)."""
    conn = network.connection()

    def endpoint(e: dict[str, Any]) -> dict[str, Any]:
        out = {"address": e["address"], "tls_ca": os.path.relpath(e["tls_ca"], root)}
        if e.get("server_name"):
            out["server_name"] = e["server_name"]
        if e.get("msp"):
            out["msp"] = e["msp"]
        return out

    section: dict[str, Any] = {
        "backend": "fabric",
        "peers": [endpoint(p) for p in conn["peers"]],
        "orderers": [endpoint(o) for o in conn["orderers"]],
        "network": "fabric",
    }
    if conn.get("endorsers"):
        section["endorsers"] = conn["endorsers"]
    if conn.get("client_auth"):
        # The network requires mutual TLS: a wallet without a TLS certificate is refused with
        # the way to re-issue one, instead of failing in the TLS handshake.
        section["client_auth"] = True
    return section


def _stop_network_of(root: Path) -> None:
    """Stop the Fabric network under ``root`` if one was created there (init failed)."""
    if not (root / "fabric").is_dir():
        return
    try:
        from ehrshare.network.fabric import FabricNet

        FabricNet.load(root).stop()
    except Exception as exc:  # the original error matters more; say this one in the log
        _log.warning("stopping the Fabric network of %s: %s", root, exc)


def _msp(hospital: str) -> str:
    return hospital if hospital.endswith("MSP") else f"{hospital}MSP"


def open_store(profile: Profile) -> tuple[BlobStore, Callable[[], None]]:
    """The profile's store and what closes it, after checking that it carries this
    consortium's id (nothing is created: a missing, empty or foreign volume raises
    :class:`~ehrshare.volumes.VolumeError`)."""
    if profile.storage_backend == "kubo":
        assert profile.storage_url is not None
        client = KuboClient(profile.storage_url, timeout=profile.storage_timeout)
        try:
            check_store(profile, client)
        except StorageUnavailable as exc:
            # Nothing can be written to a node that does not answer, so nothing can be lost;
            # reads and puts then fail with "try later" (exit 4) as they always did.
            _log.warning("cannot check the store's consortium marker now: %s", exc)
        except BaseException:
            client.close()
            raise
        return KuboStore(client), client.close
    assert profile.storage_path is not None
    check_store(profile)
    try:
        return EmbeddedStore(profile.storage_path, create=False), lambda: None
    except StorageError as exc:
        raise VolumeError(str(exc)) from None


def _mark_store(profile: Profile, consortium_id: str) -> None:
    if profile.storage_backend != "kubo":
        mark_store(profile, consortium_id)
        return
    assert profile.storage_url is not None
    with KuboClient(profile.storage_url, timeout=profile.storage_timeout) as client:
        mark_store(profile, consortium_id, client)


def _load_node_key(path: Path) -> KGCNodeKey:
    return KGCNodeKey.from_secret_bytes(read_key_file(path))


@dataclass
class _Services:
    kgc: list[KgcNode]
    proxies: dict[str, ReencryptionProxy]  # in-process proxies by ledger identity


class Consortium(Closing):
    """A consortium's ledger, store and in-process services, opened from its profile."""

    def __init__(
        self,
        profile: Profile,
        ledger: LedgerBackend,
        store: BlobStore,
        services: _Services,
        *,
        clock: Clock | None,
        closers: Sequence[Callable[[], None]],
    ) -> None:
        self.profile = profile
        self.backend = ledger
        self.store = store
        self.kgc_nodes = services.kgc
        self._proxies = services.proxies
        self.clock = clock
        self._closers = list(closers)
        self._labels = profile.labels()
        self._closed = False
        self._network: FabricNet | None = None  # a Fabric network this object started

    @property
    def proxy(self) -> ReencryptionProxy:
        """The first in-process re-encryption proxy (refused when it runs as its own process)."""
        first = self.profile.proxies[0]
        if not first.service.embedded:
            raise ConsortiumError(
                f"the proxy of this profile runs as a process at {first.service.address}"
            )
        return next(iter(self._proxies.values()))

    @property
    def proxies(self) -> dict[str, ReencryptionProxy]:
        """The in-process proxies by the ledger identity grants name them by (one per
        hospital; none when they run as processes)."""
        return dict(self._proxies)

    @property
    def remote_services(self) -> bool:
        """True when any KGC node or proxy is reached over gRPC (a separate process)."""
        return any(not p.service.embedded for p in self.profile.proxies) or any(
            not n.service.embedded for n in self.profile.kgc_nodes
        )

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
    ) -> Consortium:
        """Create a consortium in an empty (or new) directory and run its DKG.

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
        if storage not in ("embedded", "kubo"):
            raise ConsortiumError(f"storage backend {storage!r} is not embedded or kubo")
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
                root, hospitals, threshold, storage, kubo_url, clock, say, fabric, members
            )
            if not port_list:
                return consortium
            network = consortium._release_network()
            consortium.close()
            say("issuing TLS server certificates and writing the process profile")
            _switch_to_processes(root, port_list)
            reopened = cls.open(root / "profile.yaml", clock=clock)
            reopened._network = network
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
    ) -> Consortium:
        root.mkdir(parents=True, exist_ok=True)
        (root / "keys").mkdir(mode=0o700, exist_ok=True)
        write_key_file(root / "labels.key", secrets.token_bytes(32))
        nodes_cfg: list[dict[str, Any]] = []
        for i, hospital in enumerate(hospitals, start=1):
            nodes_cfg.append(
                {
                    "index": i,
                    "msp": _msp(hospital),
                    "state": f"kgc/node{i}",
                    "key": f"keys/kgc{i}.key",
                    "wallet": f"wallets/kgc{i}",
                }
            )
        # One proxy per hospital; each is the enrolment "proxy" of its hospital's CA.
        proxies_cfg = [
            {
                "name": _proxy_name(hospital),
                "msp": _msp(hospital),
                "id": f"{_msp(hospital)}/proxy",
                "state": f"proxy/{hospital.lower()}",
                "key": f"keys/{_proxy_name(hospital)}.key",
                "wallet": f"wallets/{_proxy_name(hospital)}",
            }
            for hospital in hospitals
        ]
        # The consortium's id, also written into its ledger and store: opening a volume that
        # lacks it (unmounted, empty, another consortium's) is refused (ehrshare.volumes).
        consortium_id = "c-" + secrets.token_hex(16)
        profile_data: dict[str, Any] = {
            "version": 1,
            "id": consortium_id,
            "name": root.name,
            "channel": "ehrshare",
            "chaincode": "ehrshare",
            "ledger": {"backend": "embedded", "path": "ledger"},
            "storage": (
                {"backend": "embedded", "path": "store"}
                if storage == "embedded"
                else {"backend": "kubo", "url": kubo_url}
            ),
            "kgc": {"threshold": threshold, "nodes": nodes_cfg},
            "proxies": proxies_cfg,
            "types": {"label_key": "labels.key", "default": "general"},
            "limits": {"max_record_bytes": 32 * 1024 * 1024},
            "wallets": "wallets",
        }
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
            for node in nodes_cfg:
                write_key_file(root / node["key"], KGCNodeKey.generate().to_secret_bytes())
                cls._issue(root, node["msp"], f"kgc{node['index']}", "kgc", root / node["wallet"])
            for px in proxies_cfg:
                write_key_file(root / px["key"], X25519KeyPair.generate().to_secret_bytes())
                cls._issue(root, px["msp"], "proxy", "proxy", root / px["wallet"])
            # The org admin that opens the DKG session on chain (OpenDKGSession needs role admin).
            cls._issue(root, _msp(hospitals[0]), ADMIN_WALLET, "admin", root / "wallets/admin")
        finally:
            if ledger_obj is not None:
                ledger_obj.close()
        network = None
        if fabric is not None:
            network = fabric.build(root, [_msp(h) for h in hospitals], say)
            profile_data["ledger"] = _fabric_ledger_section(root, network)
        (root / "profile.yaml").write_text(
            "# ehrshare connection profile (created by 'ehrshare consortium init').\n"
            "# Switch storage to Kubo with: storage: {backend: kubo, url: http://127.0.0.1:5001}\n"
            + yaml.safe_dump(profile_data, sort_keys=False),
            encoding="utf-8",
        )
        _mark_store(Profile.load(root / "profile.yaml"), consortium_id)
        consortium = cls.open(root / "profile.yaml", clock=clock)
        consortium._network = network
        try:
            say("publishing each hospital's CA certificate on chain")
            for hospital in hospitals:
                consortium._publish_org_ca(_msp(hospital))
            for kgc_node in consortium.kgc_nodes:
                _register_service(consortium, f"kgc{kgc_node.index}")
            for px in proxies_cfg:
                _register_service(consortium, px["name"])
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
        identity, signer = ca.issue(name, role=role)
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
        prof = profile if isinstance(profile, Profile) else Profile.load(_profile_path(profile))
        check_ledger(prof)  # a missing, empty or foreign ledger volume: VolumeError, nothing made
        # The ledger checks proposal timestamps against this same clock (a manual clock in
        # tests and the demo would otherwise look skewed).
        ledger = open_ledger(prof, clock=clock)
        closers: list[Callable[[], None]] = []
        try:
            store, close_store = open_store(prof)
            closers.append(close_store)
            services = _open_services(prof, ledger, clock)
            closers.extend(p.close for p in services.proxies.values())
            closers.extend(n.close for n in services.kgc)
        except BaseException:
            for c in closers:
                c()
            ledger.close()
            raise
        closers.append(ledger.close)
        return cls(prof, ledger, store, services, clock=clock, closers=closers)

    def close(self) -> None:
        """Close the services, the store client and the ledger (and stop the Fabric network
        :meth:`init` started, if it is still this object's)."""
        if self._closed:
            return
        self._closed = True
        for c in self._closers:
            try:
                c()
            except Exception as exc:
                _log.warning("closing the consortium: %s", exc)
        network, self._network = self._network, None
        if network is not None:
            network.stop()

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
            raise ConsortiumError(f"hospital {hospital!r} is not in this consortium ({known})")
        wallet = self.profile.wallet(name)
        if wallet.exists:
            raise ConsortiumError(f"wallet {wallet.directory} already exists")
        return self._issue(self.directory, msp, name, role, wallet.directory)

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
            contract = gateway.get_network(self.profile.channel).get_contract(
                self.profile.chaincode
            )
            try:
                contract.evaluate_transaction("GetOrgCA", msp)
                return False
            except GatewayError as exc:
                if exc.message != f"the ca of {msp} is not registered":
                    raise
            contract.submit_transaction("RegisterOrgCA", ca.certificate_pem)
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
        return self._session(identity, signer, w)

    def _session(
        self,
        identity: Identity,
        signer: Signer,
        wallet: Wallet | None,
        on_close: Callable[[], None] | None = None,
    ) -> Session:
        tls_pair = self._tls_pair(identity, wallet)
        client_tls = None  # the embedded ledger ignores it
        if tls_pair is not None:
            client_tls = (tls_pair[0].credentials, tls_pair[1].to_secret_bytes())
        gateway = self.backend.connect(identity, signer, client_tls=client_tls)
        contract = gateway.get_network(self.profile.channel).get_contract(self.profile.chaincode)
        try:
            kgc, proxies, channels = self._clients(identity, tls_pair)
        except BaseException:
            gateway.close()
            raise

        def close_all(then: Callable[[], None] | None = on_close) -> None:
            for channel in channels:
                channel.close()
            gateway.close()
            if then is not None:
                then()

        try:
            return Session(
                identity=identity,
                signer=signer,
                contract=contract,
                store=self.store,
                kgc=kgc,
                proxies=proxies,
                labels=self._labels,
                mapping=self.profile.mapping,
                max_record_bytes=self.profile.max_record_bytes,
                wallet=wallet,
                clock=self.clock,
                on_close=close_all,
                ledger_check=self._ledger_check(identity, signer, client_tls),
            )
        except BaseException:
            close_all(None)
            raise

    def _ledger_check(
        self, identity: Identity, signer: Signer, client_tls: ClientTlsPair | None
    ) -> Callable[..., dict[str, Any]] | None:
        """What ``audit verify`` runs on the ledger, ``check(against=, audit_chains=)``: the
        embedded ledger's own check (signed blocks and a replay of every transaction, which
        covers its state); on Fabric the cross-peer block check, plus each audit chain's
        ``VerifyAuditTrail`` asked of one peer per organisation and compared (a peer's state
        database is not covered by its blocks), as this session's identity."""
        backend = self.backend
        if isinstance(backend, FabricBackend):
            fabric = backend
            channel, chaincode = self.profile.channel, self.profile.chaincode

            def fabric_check(
                *, against: Sequence[Any] = (), audit_chains: Sequence[str] = ()
            ) -> dict[str, Any]:
                report = fabric.verify_as(
                    identity,
                    signer,
                    channel=channel,
                    client_tls=client_tls,
                    against=against,
                    chaincode=chaincode,
                )
                report["state_compared"] = [
                    fabric.compare_answers(
                        identity,
                        signer,
                        channel=channel,
                        chaincode=chaincode,
                        function="VerifyAuditTrail",
                        args=(chain,),
                        client_tls=client_tls,
                    )
                    for chain in audit_chains
                ]
                return report

            return fabric_check
        verify = backend.verify
        if verify is None:
            return None
        embedded = verify

        def embedded_check(
            *, against: Sequence[Any] = (), audit_chains: Sequence[str] = ()
        ) -> dict[str, Any]:
            del audit_chains  # the replay recomputes the whole state from the signed blocks
            return embedded(against=against)

        return embedded_check

    def _tls_pair(
        self, identity: Identity, wallet: Wallet | None
    ) -> tuple[Identity, Signer] | None:
        """The wallet's TLS client certificate and key, read once, when something needs it:
        remote services, or Fabric peers and orderers (those of a profile with
        ``ledger.client_auth`` refuse a wallet without it, saying how to re-issue it; others get
        it when the wallet has one). None otherwise: embedded, in-process consortia never read
        it."""
        if not self.remote_services and not _ledger_wants_tls(self.profile, wallet):
            return None
        if wallet is None:
            raise ConsortiumError(
                f"{identity.ibe_id}: services over gRPC and Fabric peers need a wallet's TLS "
                "client key"
            )
        return wallet.load_tls()

    def _clients(
        self, identity: Identity, tls_pair: tuple[Identity, Signer] | None
    ) -> tuple[list[KgcClient], list[ProxyRoute], list[GrpcKgcClient | GrpcProxyClient]]:
        """Service clients for one member: in-process cores, or gRPC channels over mutual TLS
        presenting the member's TLS client certificate (the services authorise by it)."""
        in_process = {n.index: n for n in self.kgc_nodes}
        channels: list[GrpcKgcClient | GrpcProxyClient] = []
        kgc: list[KgcClient] = []
        assert tls_pair is not None or not self.remote_services  # _tls_pair refused it

        def client_tls(tls_ca: Path | None) -> ClientTls:
            assert tls_pair is not None
            return _client_tls(*tls_pair, tls_ca)

        try:
            for cfg in self.profile.kgc_nodes:
                svc = cfg.service
                if svc.embedded:
                    kgc.append(InProcessKgcClient(in_process[cfg.index], requester=identity.ibe_id))
                    continue
                assert svc.address is not None
                client = GrpcKgcClient(
                    svc.address,
                    index=cfg.index,
                    tls=client_tls(svc.tls_ca),
                    server_name=svc.server_name,
                )
                channels.append(client)
                kgc.append(client)
            routes: list[ProxyRoute] = []
            for pcfg in self.profile.proxies:
                psvc = pcfg.service
                ibe_id = _proxy_ibe_id(pcfg)
                proxy: ProxyClient
                if psvc.embedded:
                    proxy = InProcessProxyClient(self._proxies[ibe_id], caller=identity.ibe_id)
                else:
                    assert psvc.address is not None
                    grpc_proxy = GrpcProxyClient(
                        psvc.address,
                        tls=client_tls(psvc.tls_ca),
                        server_name=psvc.server_name,
                    )
                    channels.append(grpc_proxy)
                    proxy = grpc_proxy
                routes.append(ProxyRoute(ibe_id, pcfg.msp_id or ibe_id.split("/")[0], proxy))
        except BaseException:
            for c in channels:
                c.close()
            raise
        return kgc, routes, channels


def _client_tls(identity: Identity, signer: Signer, tls_ca: Path | None) -> ClientTls:
    assert tls_ca is not None
    try:
        roots = tls_ca.read_bytes()
    except OSError as exc:
        raise ProfileError(f"TLS CA file {tls_ca} cannot be read: {exc.strerror}") from None
    return ClientTls.for_member(identity, signer, [roots])


def _switch_to_processes(root: Path, ports: Sequence[int]) -> None:
    """Rewrite a fresh consortium's profile so its services are gRPC processes on loopback.

    Each service gets a TLS server certificate from its hospital's CA (SANs 127.0.0.1 and
    localhost; key in ``keys/``, mode 0600) and keeps its state, node key and ledger wallet, so
    ``ehrshare kgc serve`` / ``ehrshare proxy serve`` can be started from the profile alone.
    """
    path = root / "profile.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    ca_files = sorted((root / "ca").glob("*/ca-cert.pem"))
    data["cas"] = [str(p.relative_to(root)) for p in ca_files]
    (root / "tls").mkdir(exist_ok=True)

    def serve_entry(entry: dict[str, Any], name: str, msp: str, port: int) -> dict[str, Any]:
        cert, key = issue_tls_certificate(LocalCA.load(root / "ca" / msp), name)
        write_key_file(root / "keys" / f"{name}-tls.key", key)
        atomic_write(root / "tls" / f"{name}.pem", cert, mode=0o644)
        return {
            "address": f"127.0.0.1:{port}",
            "tls_ca": f"ca/{msp}/ca-cert.pem",
            **entry,
            "tls_cert": f"tls/{name}.pem",
            "tls_key": f"keys/{name}-tls.key",
        }

    nodes = data["kgc"]["nodes"]
    data["kgc"]["nodes"] = [
        {"index": n["index"], "msp": n["msp"]}
        | serve_entry(
            {k: n[k] for k in ("state", "key", "wallet")}, f"kgc{n['index']}", n["msp"], port
        )
        for n, port in zip(nodes, ports[len(data["proxies"]) :], strict=True)
    ]
    proxies = data["proxies"]
    data["proxies"] = [
        {k: px[k] for k in ("name", "msp", "id")}
        | serve_entry({k: px[k] for k in ("state", "key", "wallet")}, px["name"], px["msp"], port)
        for px, port in zip(proxies, ports[: len(proxies)], strict=True)
    ]
    atomic_write(
        path,
        (
            "# ehrshare connection profile (created by 'ehrshare consortium init --services "
            "processes').\n# Start the services with 'ehrshare consortium services start' "
            "(see docs/operations.md).\n" + yaml.safe_dump(data, sort_keys=False)
        ).encode(),
        mode=0o644,
    )


def _register_service(consortium: Consortium, wallet_name: str) -> None:
    """Register a service identity (role from its certificate) on the ledger."""
    with consortium.session(wallet_name) as s:
        s.register()


def profile_file(value: str | os.PathLike[str]) -> Path:
    """The profile file a path names: the path itself, or ``profile.yaml`` in a directory."""
    p = Path(value)
    return p / "profile.yaml" if p.is_dir() else p


_profile_path = profile_file


def _ledger_wants_tls(profile: Profile, wallet: Wallet | None) -> bool:
    """Whether a gateway presents a TLS client certificate to the ledger: on Fabric, when the
    profile requires it (``ledger.client_auth``) or the wallet has one."""
    fabric = profile.fabric  # set only for ledger: fabric
    return fabric is not None and (fabric.client_auth or (wallet is not None and wallet.has_tls))


def _service_ledger_tls(profile: Profile, wallet: Wallet) -> ClientTlsPair | None:
    """An in-process service's TLS client certificate for Fabric peers and orderers (its
    wallet's; see :meth:`Consortium._tls_pair`), None on the embedded ledger."""
    if not _ledger_wants_tls(profile, wallet):
        return None
    identity, signer = wallet.load_tls()
    return identity.credentials, signer.to_secret_bytes()


def _open_services(profile: Profile, ledger: LedgerBackend, clock: Clock | None) -> _Services:
    nodes = []
    for n in profile.kgc_nodes:
        svc = n.service
        if not svc.embedded:
            continue
        assert svc.state is not None and svc.key_file is not None and svc.wallet is not None
        wallet = Wallet(svc.wallet, use_env=False)
        identity, signer = wallet.load_identity()
        gateway = ledger.connect(identity, signer, client_tls=_service_ledger_tls(profile, wallet))
        contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
        try:
            key = _load_node_key(svc.key_file)
        except (OSError, ValueError) as exc:
            raise ProfileError(f"KGC node {n.index}: {exc}") from None
        # A generous limit: the demo and tests enrol many users from one process.
        nodes.append(
            KgcNode(
                index=n.index,
                node_key=key,
                state_dir=svc.state,
                contract=contract,
                rate_limit_per_minute=600,
                # Request timestamps are checked against the consortium's clock (a manual
                # clock in tests and the demo stamps the members' requests too).
                wall_clock=clock or time.time_ns,
            )
        )
    proxies: dict[str, ReencryptionProxy] = {}
    try:
        for pcfg in profile.proxies:
            psvc = pcfg.service
            if not psvc.embedded:
                continue
            assert psvc.state is not None and psvc.key_file is not None
            assert psvc.wallet is not None
            pwallet = Wallet(psvc.wallet, use_env=False)
            identity, signer = pwallet.load_identity()
            if pcfg.ibe_id and pcfg.ibe_id != identity.ibe_id:
                raise ProfileError(
                    f"proxy {pcfg.name}: its wallet is {identity.ibe_id}, not {pcfg.ibe_id}"
                )
            gateway = ledger.connect(
                identity, signer, client_tls=_service_ledger_tls(profile, pwallet)
            )
            contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
            try:
                pkey = X25519KeyPair.from_secret_bytes(read_key_file(psvc.key_file))
            except (OSError, ValueError) as exc:
                raise ProfileError(f"proxy {pcfg.name}: {exc}") from None
            proxy = proxies[identity.ibe_id] = ReencryptionProxy(
                state_dir=psvc.state,
                contract=contract,
                key=pkey,
                ibe_id=identity.ibe_id,
                name=pcfg.name,
            )
            _catch_up(proxy, gateway.get_network(profile.channel), profile.chaincode)
    except BaseException:
        for p in proxies.values():
            p.close()
        raise
    return _Services(nodes, proxies)


def _catch_up(proxy: ReencryptionProxy, network: Any, chaincode: str) -> None:
    """An in-process proxy runs no event follower: on the embedded ledger, apply what it
    missed since its checkpoint (a revocation whose process died before telling it) when it
    opens. On Fabric the revocation is finished by revoking again (or a served proxy)."""
    if not isinstance(network, EmbeddedNetwork):
        return
    block, tx = proxy.checkpoint()
    events = network.get_chaincode_events(
        chaincode,
        start_block=0 if block is None else None,
        checkpoint=None if block is None else StoredCheckpoint(block, tx),
        idle_timeout=0.0,
    )
    try:
        with events:
            deleted = catch_up(proxy, events)
    except Exception as exc:  # the proxy still works; the chain refuses revoked grants anyway
        _log.warning("proxy %s could not catch up with the ledger's events: %s", proxy.ibe_id, exc)
        return
    if deleted:
        _log.info(
            "proxy %s deleted %d re-key(s) of grants revoked meanwhile", proxy.ibe_id, deleted
        )


def _proxy_name(hospital: str) -> str:
    return f"proxy-{hospital.lower()}"


def _proxy_ibe_id(cfg: ProxyConfig) -> str:
    """The ledger identity grants name a proxy by: the profile's ``id``, else its wallet's."""
    if cfg.ibe_id:
        return cfg.ibe_id
    if cfg.service.wallet is not None:
        identity, _ = Wallet(cfg.service.wallet, use_env=False).load_identity()
        return identity.ibe_id
    raise ProfileError(
        f"proxy {cfg.name}: give its ledger identity as id (<msp id>/<enrollment id>)"
    )


def connect(
    profile: Profile | str | os.PathLike[str],
    wallet: str | os.PathLike[str] | Wallet,
    *,
    clock: Clock | None = None,
) -> Session:
    """Open a :class:`~ehrshare.session.Session` for ``wallet`` on the backends ``profile`` names.

    ``profile`` is a profile file, a consortium directory or a parsed :class:`Profile`;
    ``wallet`` a wallet name under the profile's wallet directory, a path, or a
    :class:`Wallet`. Close the session (or use ``with``) to close what this opened.
    On ``ledger: fabric`` the network must be running (``ehrshare network up``).
    """
    consortium = Consortium.open(profile, clock=clock)
    try:
        w = wallet if isinstance(wallet, Wallet) else consortium.profile.wallet(os.fspath(wallet))
        identity, signer = w.load_identity()
        # A wallet refused here (say, an unreadable ibe.key) must not leave the ledger open.
        return consortium._session(identity, signer, w, on_close=consortium.close)
    except BaseException:
        consortium.close()
        raise
