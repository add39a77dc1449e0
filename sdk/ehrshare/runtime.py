"""Opening a consortium for an application: :func:`connect` and what it wires up.

:func:`connect` is what hospital apps and the CLI call: it reads a profile and a wallet, opens
the backends the profile names (:class:`Runtime`: the ledger, the content store, and the KGC
nodes and proxies that run in this process) and hands out one
:class:`~ehrshare.session.Session`. With in-process services, the process that connects also
runs the KGC nodes and the proxies from their state directories — a single-machine setup for
development and demos. With ``services="processes"`` at init, the profile gives each KGC node
and each proxy a loopback gRPC address instead; they run as ``ehrshare kgc serve`` /
``ehrshare proxy serve`` processes (:mod:`ehrshare.network.services` starts them from the profile)
and the session dials them over mutual TLS with the wallet's TLS client certificate (its own key,
issued by the member's hospital CA next to the ledger certificate; never the ledger signing
key). The embedded ledger directory is then opened by every process. On Fabric the same TLS
client certificate opens the connections to the peers and orderers, which require mutual TLS:
members present their wallet's, in-process KGC nodes and proxies their service wallet's.

Creating a consortium and issuing members is :mod:`ehrshare.provisioning`; this module must not
create anything (no CA, no wallet, no volume), must not log secrets, and reads keys only from
the files the profile names.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrshare.closing import Closing
from ehrshare.errors import ConfigurationError
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.api import StoredCheckpoint
from ehrshare.ledger.embedded import EmbeddedNetwork
from ehrshare.ledgers import ClientTlsPair, FabricBackend, LedgerBackend, open_ledger
from ehrshare.profile import Profile, ProfileError, ProxyConfig, profile_file
from ehrshare.services.kgc import InProcessKgcClient, KgcNode
from ehrshare.services.protocols import KgcClient, ProxyClient
from ehrshare.services.proxy import InProcessProxyClient, ReencryptionProxy, catch_up
from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient
from ehrshare.services.tls import ClientTls
from ehrshare.services.vault import read_key_file
from ehrshare.session import ProxyRoute, Session
from ehrshare.storage import (
    BlobStore,
    EmbeddedStore,
    KuboClient,
    KuboStore,
    StorageError,
    StorageUnavailable,
)
from ehrshare.storage.replicated import ReplicatedStore
from ehrshare.volumes import VolumeError, check_ledger, check_store
from ehrshare.wallet import Wallet

__all__ = ["Clock", "ConsortiumError", "Runtime", "connect", "open_store"]

_log = logging.getLogger(__name__)

Clock = Callable[[], int]


class ConsortiumError(ConfigurationError, ValueError):
    """A consortium directory cannot be created or opened; the message says what to do."""


def open_store(profile: Profile) -> tuple[BlobStore, Callable[[], None]]:
    """The profile's store and what closes it, after checking that it carries this
    consortium's id (nothing is created: a missing, empty or foreign volume raises
    :class:`~ehrshare.volumes.VolumeError`)."""
    if profile.swarm is not None:
        return _open_swarm_store(profile)
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


def _open_swarm_store(profile: Profile) -> tuple[BlobStore, Callable[[], None]]:
    """One client per hospital's node; each node that answers must carry the consortium's
    marker (a node that does not answer is left to fail its reads and puts, exit 4)."""
    swarm = profile.swarm
    assert swarm is not None
    clients = {msp: KuboClient(url, timeout=profile.storage_timeout) for msp, url in swarm.nodes}

    def close() -> None:
        for c in clients.values():
            c.close()

    try:
        for msp, client in clients.items():
            try:
                check_store(profile, client)
            except StorageUnavailable as exc:
                _log.warning("cannot check %s's IPFS node's consortium marker now: %s", msp, exc)
    except BaseException:
        close()
        raise
    hospitals = [msp for msp, _ in swarm.nodes]
    home = next((m for m, url in swarm.nodes if url == profile.storage_url), hospitals[0])
    stores = {msp: KuboStore(c) for msp, c in clients.items()}
    return ReplicatedStore(home, stores, hospitals, swarm.replicas), close


def _load_node_key(path: Path) -> KGCNodeKey:
    return KGCNodeKey.from_secret_bytes(read_key_file(path))


@dataclass
class _Services:
    kgc: list[KgcNode]
    proxies: dict[str, ReencryptionProxy]  # in-process proxies by ledger identity


class Runtime(Closing):
    """A consortium's ledger, store and in-process services, opened from its profile: what
    one application process needs to hand out sessions (:func:`connect` opens one per
    session; :class:`~ehrshare.provisioning.Consortium` keeps one for its members)."""

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
        self.proxies = services.proxies
        self.clock = clock
        self._closers = list(closers)
        self._labels = profile.labels()
        self._closed = False

    @property
    def remote_services(self) -> bool:
        """True when any KGC node or proxy is reached over gRPC (a separate process)."""
        return any(not p.service.embedded for p in self.profile.proxies) or any(
            not n.service.embedded for n in self.profile.kgc_nodes
        )

    @classmethod
    def open(
        cls, profile: Profile | str | os.PathLike[str], *, clock: Clock | None = None
    ) -> Runtime:
        """Open the backends of a profile (a path, a consortium directory or a parsed
        :class:`Profile`)."""
        prof = profile if isinstance(profile, Profile) else Profile.load(profile_file(profile))
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
        """Close the services, the store client and the ledger."""
        if self._closed:
            return
        self._closed = True
        for c in self._closers:
            try:
                c()
            except Exception as exc:
                _log.warning("closing the consortium: %s", exc)

    def session(
        self,
        identity: Identity,
        signer: Signer,
        wallet: Wallet | None,
        on_close: Callable[[], None] | None = None,
    ) -> Session:
        """A session for one member on these backends (``on_close`` runs after it closed what
        it opened)."""
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
                store=self._store_for(identity),
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

    def _store_for(self, identity: Identity) -> BlobStore:
        """In a private swarm, a member reads and writes through its own hospital's node."""
        store = self.store
        if isinstance(store, ReplicatedStore) and identity.msp_id in store.stores:
            return store.for_home(identity.msp_id)
        return store

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
                    proxy = InProcessProxyClient(self.proxies[ibe_id], caller=identity.ibe_id)
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


def _ledger_wants_tls(profile: Profile, wallet: Wallet | None) -> bool:
    """Whether a gateway presents a TLS client certificate to the ledger: on Fabric, when the
    profile requires it (``ledger.client_auth``) or the wallet has one."""
    fabric = profile.fabric  # set only for ledger: fabric
    return fabric is not None and (fabric.client_auth or (wallet is not None and wallet.has_tls))


def _service_ledger_tls(profile: Profile, wallet: Wallet) -> ClientTlsPair | None:
    """An in-process service's TLS client certificate for Fabric peers and orderers (its
    wallet's; see :meth:`Runtime._tls_pair`), None on the embedded ledger."""
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
    runtime = Runtime.open(profile, clock=clock)
    try:
        w = wallet if isinstance(wallet, Wallet) else runtime.profile.wallet(os.fspath(wallet))
        identity, signer = w.load_identity()
        # A wallet refused here (say, an unreadable ibe.key) must not leave the ledger open.
        return runtime.session(identity, signer, w, on_close=runtime.close)
    except BaseException:
        runtime.close()
        raise
