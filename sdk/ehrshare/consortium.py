"""A local consortium on the embedded backend, and :func:`connect` (profile → Session).

:meth:`Consortium.init` creates, in one directory, everything a hospital consortium needs to run
on one machine: one certificate authority per hospital, an embedded ledger admitting them, the
content store (or a Kubo URL), the consortium's type-label key, one KGC node per hospital (node
key outside its state directory, service identity registered with role ``kgc``), a distributed
key generation over the ledger board (mpk on chain), a re-encryption proxy, and ``profile.yaml``
pointing at all of it. :meth:`Consortium.add_member` enrols patients, clinicians and auditors into
wallets; :meth:`Consortium.session` opens a :class:`~ehrshare.session.Session` that shares the
consortium's ledger and services (the demo, the tests, the benchmark).

:func:`connect` is what hospital apps and the CLI call: it reads a profile and a wallet and opens
the backends the profile names. With the in-process services of the embedded backend, the
process that connects also runs the KGC nodes and the proxy from their state directories — a
single-machine setup for development and demos; a deployment points the profile at gRPC
addresses instead (not wired in this SDK yet).

This module must not log secrets, and must not write key material anywhere but mode-0600 files.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from ehrshare.hazmat.dkg import new_session_nonce
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.embedded import connect as ledger_connect
from ehrshare.ledger.store import EmbeddedLedger
from ehrshare.profile import (
    FABRIC_UNAVAILABLE,
    BackendUnavailable,
    Profile,
    ProfileError,
    Wallet,
)
from ehrshare.services.kgc import InProcessKgcClient, KgcNode, run_local_dkg
from ehrshare.services.proxy import InProcessProxyClient, ReencryptionProxy
from ehrshare.services.vault import read_key_file, write_key_file
from ehrshare.session import Session
from ehrshare.storage import BlobStore, EmbeddedStore, KuboClient, KuboStore

__all__ = [
    "DEFAULT_HOSPITALS",
    "Consortium",
    "ConsortiumError",
    "connect",
]

_log = logging.getLogger(__name__)

DEFAULT_HOSPITALS: Final = ("HospitalA", "HospitalB", "HospitalC")
ROLES: Final = ("patient", "clinician", "auditor", "admin")
Clock = Callable[[], int]
Progress = Callable[[str], None]


class ConsortiumError(ValueError):
    """A consortium directory cannot be created or opened; the message says what to do."""


def _msp(hospital: str) -> str:
    return hospital if hospital.endswith("MSP") else f"{hospital}MSP"


def _open_store(profile: Profile) -> tuple[BlobStore, Callable[[], None]]:
    if profile.storage_backend == "kubo":
        assert profile.storage_url is not None
        client = KuboClient(profile.storage_url, timeout=profile.storage_timeout)
        return KuboStore(client), client.close
    assert profile.storage_path is not None
    return EmbeddedStore(profile.storage_path), lambda: None


def _load_node_key(path: Path) -> KGCNodeKey:
    return KGCNodeKey.from_secret_bytes(read_key_file(path))


@dataclass
class _Services:
    kgc: list[KgcNode]
    proxy: ReencryptionProxy


class Consortium:
    """A consortium's ledger, store and in-process services, opened from its profile."""

    def __init__(
        self,
        profile: Profile,
        ledger: EmbeddedLedger,
        store: BlobStore,
        services: _Services,
        *,
        clock: Clock | None,
        closers: Sequence[Callable[[], None]],
    ) -> None:
        self.profile = profile
        self.ledger = ledger
        self.store = store
        self.kgc_nodes = services.kgc
        self.proxy = services.proxy
        self.clock = clock
        self._closers = list(closers)
        self._labels = profile.labels()
        self._closed = False

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
        clock: Clock | None = None,
        progress: Progress | None = None,
    ) -> Consortium:
        """Create a consortium in an empty (or new) directory and run its DKG.

        Refuses a directory that already holds a profile (nothing is overwritten).
        """
        say = progress or (lambda _msg: None)
        if ledger == "fabric":
            raise BackendUnavailable(FABRIC_UNAVAILABLE)
        if ledger != "embedded":
            raise ConsortiumError(f"ledger backend {ledger!r} is not embedded or fabric")
        if storage not in ("embedded", "kubo"):
            raise ConsortiumError(f"storage backend {storage!r} is not embedded or kubo")
        if len(hospitals) < 2 or len(set(hospitals)) != len(hospitals):
            raise ConsortiumError("a consortium needs at least two distinct hospitals")
        if not 2 <= threshold <= len(hospitals):
            raise ConsortiumError(
                f"threshold {threshold} must be between 2 and the {len(hospitals)} KGC nodes"
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
            return cls._create(root, hospitals, threshold, storage, kubo_url, clock, say)
        except BaseException:
            # Nothing half-made stays behind: the directory was new or empty.
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
        profile_data: dict[str, Any] = {
            "version": 1,
            "name": root.name,
            "channel": "ehrshare",
            "chaincode": "ehrshare",
            "ledger": {"backend": "embedded", "path": "ledger"},
            "storage": (
                {"backend": "embedded", "path": "store"}
                if storage == "embedded"
                else {"backend": "kubo", "url": kubo_url}
            ),
            "kgc": {"threshold": threshold, "roster": "kgc/roster.json", "nodes": nodes_cfg},
            "proxy": {"state": "proxy", "key": "keys/proxy.key", "wallet": "wallets/proxy"},
            "types": {"label_key": "labels.key", "default": "general"},
            "limits": {"max_record_bytes": 32 * 1024 * 1024},
            "wallets": "wallets",
        }
        say(f"creating certificate authorities for {', '.join(hospitals)}")
        ledger_obj = EmbeddedLedger.open(root / "ledger", channel="ehrshare")
        try:
            for hospital in hospitals:
                ca = LocalCA.create(_msp(hospital))
                ca.save(root / "ca" / _msp(hospital))
                ledger_obj.add_organization(ca.msp_id, ca.certificate_pem)
            say("issuing KGC node and proxy identities")
            for node in nodes_cfg:
                write_key_file(root / node["key"], KGCNodeKey.generate().to_secret_bytes())
                cls._issue(root, node["msp"], f"kgc{node['index']}", "kgc", root / node["wallet"])
            write_key_file(root / "keys/proxy.key", X25519KeyPair.generate().to_secret_bytes())
            cls._issue(root, _msp(hospitals[0]), "proxy", "proxy", root / "wallets/proxy")
        finally:
            ledger_obj.close()
        roster = [
            {
                "index": n["index"],
                "msp": n["msp"],
                "public_key": _load_node_key(root / n["key"]).public_key.to_bytes().hex(),
            }
            for n in nodes_cfg
        ]
        (root / "kgc").mkdir(exist_ok=True)
        (root / "kgc/roster.json").write_text(json.dumps(roster, indent=2), encoding="utf-8")
        (root / "profile.yaml").write_text(
            "# ehrshare connection profile (created by 'ehrshare consortium init').\n"
            "# Switch storage to Kubo with: storage: {backend: kubo, url: http://127.0.0.1:5001}\n"
            + yaml.safe_dump(profile_data, sort_keys=False),
            encoding="utf-8",
        )
        consortium = cls.open(root / "profile.yaml", clock=clock)
        try:
            for kgc_node in consortium.kgc_nodes:
                _register_service(consortium, f"kgc{kgc_node.index}")
            _register_service(consortium, "proxy")
            say(f"running the DKG among {len(hospitals)} KGC nodes (threshold {threshold})")
            run_local_dkg(consortium.kgc_nodes, nonce=new_session_nonce(), threshold=threshold)
        except BaseException:
            consortium.close()
            raise
        return consortium

    @staticmethod
    def _issue(root: Path, msp: str, name: str, role: str, wallet_dir: Path) -> Wallet:
        ca = LocalCA.load(root / "ca" / msp)
        identity, signer = ca.issue(name, role=role)
        wallet = Wallet(wallet_dir)
        wallet.save_identity(identity, signer)
        return wallet

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, profile: Profile | str | os.PathLike[str], *, clock: Clock | None = None
    ) -> Consortium:
        """Open a consortium from its profile (a path or a parsed :class:`Profile`)."""
        prof = profile if isinstance(profile, Profile) else Profile.load(_profile_path(profile))
        if not prof.ledger_path.exists():
            raise ConsortiumError(
                f"ledger directory {prof.ledger_path} does not exist; create a consortium with "
                "'ehrshare consortium init'"
            )
        ledger = EmbeddedLedger.open(prof.ledger_path, channel=prof.channel)
        closers: list[Callable[[], None]] = []
        try:
            store, close_store = _open_store(prof)
            closers.append(close_store)
            services = _open_services(prof, ledger, clock)
            closers.append(services.proxy.close)
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

    def __enter__(self) -> Consortium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dkg_result(self) -> dict[str, Any]:
        """The latest DKG result on chain (mpk, public polynomial, QUAL), read as the proxy."""
        with self.session(Wallet(self.profile.proxy.wallet or Path())) as s:
            result: dict[str, Any] = s._evaluate("GetDKGResult", "")
        return result

    # --- members -----------------------------------------------------------------------------

    def add_member(self, name: str, hospital: str, role: str) -> Wallet:
        """Issue a certificate for ``name`` at ``hospital``'s CA into a new wallet."""
        if role not in ROLES:
            raise ConsortiumError(f"role {role!r} is not one of {', '.join(ROLES)}")
        msp = _msp(hospital)
        if not (self.directory / "ca" / msp).is_dir():
            known = sorted(p.name for p in (self.directory / "ca").iterdir())
            raise ConsortiumError(f"hospital {hospital!r} is not in this consortium ({known})")
        wallet = self.profile.wallet(name)
        if wallet.exists:
            raise ConsortiumError(f"wallet {wallet.directory} already exists")
        return self._issue(self.directory, msp, name, role, wallet.directory)

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
        gateway = ledger_connect(identity, signer, self.ledger, clock=self.clock)
        contract = gateway.get_network(self.profile.channel).get_contract(self.profile.chaincode)
        return Session(
            identity=identity,
            signer=signer,
            contract=contract,
            store=self.store,
            kgc=[InProcessKgcClient(n, requester=identity.ibe_id) for n in self.kgc_nodes],
            roster=[n.public_key for n in self.kgc_nodes],
            proxy=InProcessProxyClient(self.proxy, caller=identity.ibe_id),
            labels=self._labels,
            mapping=self.profile.mapping,
            max_record_bytes=self.profile.max_record_bytes,
            wallet=wallet,
            clock=self.clock,
            on_close=on_close,
            ledger_check=self.ledger.verify,
        )


def _register_service(consortium: Consortium, wallet_name: str) -> None:
    """Register a service identity (role from its certificate) on the ledger."""
    with consortium.session(wallet_name) as s:
        s.register()


def _profile_path(value: str | os.PathLike[str]) -> Path:
    p = Path(value)
    return p / "profile.yaml" if p.is_dir() else p


def _open_services(profile: Profile, ledger: EmbeddedLedger, clock: Clock | None) -> _Services:
    if any(not n.service.embedded for n in profile.kgc_nodes) or not profile.proxy.embedded:
        raise ProfileError(
            "gRPC service addresses in the profile are not wired into the SDK yet; use "
            "in-process services (state/key/wallet) on the embedded backend"
        )
    nodes = []
    for n in profile.kgc_nodes:
        svc = n.service
        assert svc.state is not None and svc.key_file is not None and svc.wallet is not None
        identity, signer = Wallet(svc.wallet).load_identity()
        gateway = ledger_connect(identity, signer, ledger, clock=clock)
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
            )
        )
    psvc = profile.proxy
    assert psvc.state is not None and psvc.key_file is not None and psvc.wallet is not None
    identity, signer = Wallet(psvc.wallet).load_identity()
    gateway = ledger_connect(identity, signer, ledger, clock=clock)
    contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
    try:
        pkey = X25519KeyPair.from_secret_bytes(read_key_file(psvc.key_file))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"proxy: {exc}") from None
    proxy = ReencryptionProxy(state_dir=psvc.state, contract=contract, key=pkey)
    return _Services(nodes, proxy)


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
    Raises :class:`~ehrshare.profile.BackendUnavailable` for ``ledger: fabric``.
    """
    consortium = Consortium.open(profile, clock=clock)
    try:
        w = wallet if isinstance(wallet, Wallet) else consortium.profile.wallet(os.fspath(wallet))
        identity, signer = w.load_identity()
    except BaseException:
        consortium.close()
        raise
    return consortium._session(identity, signer, w, on_close=consortium.close)
