"""Connection profiles (one YAML file per deployment) and wallets (one directory per user).

A profile says where the ledger, the content store, the KGC nodes and the re-encryption proxy
are, and how record types map to opaque labels; switching backends is one setting in it. Paths in
a profile are relative to the profile file. A wallet holds one member's certificate, signing key
and (after enrolment) identity secret key, each secret file with mode 0600.

Backends: ``ledger.backend`` is ``embedded`` (the default: a directory, ``ledger.path``) or
``fabric``: a Fabric channel reached through its peers and orderers (``ledger.peers`` and
``ledger.orderers``, each with ``address``, ``tls_ca`` — the PEM file of the CA that issued its TLS
server certificate — and optionally ``server_name``; peers also name their ``msp``),
``ledger.endorsers`` (how many organisations' peers endorse a transaction; default all),
``ledger.client_auth`` (true when the peers and orderers require mutual TLS: every gateway must
then present a TLS client certificate — a member's wallet's ``tls-cert.pem`` — and one without is
refused before dialling; default false: presented when there is one) and optionally
``ledger.network``, the directory of the local Fabric network this consortium runs
(:mod:`ehrshare.fabricnet`, which requires mutual TLS; ``ehrshare network up`` starts it).
``storage.backend`` is
``embedded`` or ``kubo`` (a real Kubo RPC URL), independent of the ledger.

Proxies: one re-encryption proxy per hospital, listed under ``proxies:`` (each with a ``name``,
its hospital's ``msp`` and optionally ``id``, the ledger identity grants name it by; without
``id`` it is read from the proxy's wallet). A session grants through the proxy of the grantee's
hospital.

Services: each KGC node and each proxy is either *in-process* (``state``, ``key``, ``wallet``: the
connecting process runs it) or *remote* (``address: host:port`` plus ``tls_ca``, the PEM file of
the CA certificates that issued its TLS server certificate, and optionally ``server_name``): the
session then dials it over gRPC with mutual TLS, presenting the wallet's certificate. A remote
entry may also keep ``state``, ``key``, ``wallet``, ``tls_cert`` and ``tls_key`` — what
``ehrshare kgc serve`` / ``ehrshare proxy serve`` need to start it (see
:mod:`ehrshare.processes`); the session ignores them.

Wallet keys at rest: ``key.pem`` and ``ibe.key`` are mode 0600; with a passphrase (argument, or
``EHRSHARE_WALLET_PASSPHRASE``) they are also encrypted (scrypt → AES-256-GCM, the file name as
associated data). Reading an encrypted wallet without the passphrase fails with a clear error.
Changing every key of a wallet (encrypt, decrypt, new passphrase) is all-or-nothing: the new
wallet is built beside the old one and swapped in by renames with a recovery rule (see
:meth:`Wallet.recover`), so a crash leaves the old or the new wallet, never a mix.

This module must not open a ledger, a store or a service (the session does) and must never log or
print the contents of secret files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ehrshare.errors import ConfigurationError
from ehrshare.faults import fault_point
from ehrshare.fhir import DEFAULT_RULES, LABEL_KEY_SIZE, TypeLabels, TypeMapping, TypeRule
from ehrshare.hazmat.tipre import TIPRE_VERSION, IdentitySecretKey
from ehrshare.identity import Identity, Signer

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "PASSPHRASE_ENV",
    "BackendUnavailable",
    "FabricEndpoint",
    "FabricLedger",
    "KgcNodeConfig",
    "Profile",
    "ProfileError",
    "ProxyConfig",
    "ServiceConfig",
    "Wallet",
    "WalletError",
    "is_sealed_wallet_file",
    "open_wallet_file",
    "profile_file",
    "seal_wallet_file",
]

DEFAULT_MAX_RECORD_BYTES: Final = 32 * 1024 * 1024
DEFAULT_STORAGE_TIMEOUT: Final = 30
PROFILE_VERSION: Final = 1
PASSPHRASE_ENV: Final = "EHRSHARE_WALLET_PASSPHRASE"  # noqa: S105 - a variable name


class ProfileError(ConfigurationError, ValueError):
    """A profile file is missing, unreadable or wrong; the message names the file and the key."""


class BackendUnavailable(ProfileError):
    """The profile asks for a backend this installation cannot run."""


class WalletError(ConfigurationError, ValueError):
    """A wallet directory is missing files or holds something unreadable."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Where a service runs: in-process from a state directory, or at a gRPC address.

    In-process services also name their long-term key file (kept outside the state directory)
    and the wallet of the ledger identity they act with. Remote services name the CA
    certificates (``tls_ca``) their TLS server certificate chains to, and optionally the name to
    check it against (``server_name``); ``tls_cert`` / ``tls_key`` are for starting the process.
    """

    state: Path | None = None
    address: str | None = None
    key_file: Path | None = None
    wallet: Path | None = None
    tls_ca: Path | None = None
    server_name: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def embedded(self) -> bool:
        """True when the service runs in this process from :attr:`state`."""
        return self.address is None

    def to_dict(self, rel: _PathText) -> dict[str, Any]:
        """The keys :func:`_service` reads (an in-process service: only those it reads)."""
        if self.address is None:
            return {"state": rel(self.state), "key": rel(self.key_file), "wallet": rel(self.wallet)}
        out: dict[str, Any] = {"address": self.address, "tls_ca": rel(self.tls_ca)}
        if self.server_name is not None:
            out["server_name"] = self.server_name
        for key, value in (
            ("state", self.state),
            ("key", self.key_file),
            ("wallet", self.wallet),
            ("tls_cert", self.tls_cert),
            ("tls_key", self.tls_key),
        ):
            if value is not None:
                out[key] = rel(value)
        return out


@dataclass(frozen=True, slots=True)
class KgcNodeConfig:
    """One KGC node of the roster (1-based ``index`` as in the DKG)."""

    index: int
    service: ServiceConfig
    msp_id: str = ""

    def to_dict(self, rel: _PathText) -> dict[str, Any]:
        """A ``kgc.nodes`` entry."""
        out: dict[str, Any] = {"index": self.index}
        if self.msp_id:
            out["msp"] = self.msp_id
        return out | self.service.to_dict(rel)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """One hospital's re-encryption proxy: ``name`` (process and log name), the ``msp_id`` of
    its hospital, ``ibe_id`` (the ledger identity grants name it by; empty: read it from the
    wallet) and where it runs."""

    name: str
    service: ServiceConfig
    msp_id: str = ""
    ibe_id: str = ""

    def to_dict(self, rel: _PathText) -> dict[str, Any]:
        """A ``proxies`` entry."""
        out: dict[str, Any] = {"name": self.name}
        if self.msp_id:
            out["msp"] = self.msp_id
        if self.ibe_id:
            out["id"] = self.ibe_id
        return out | self.service.to_dict(rel)


@dataclass(frozen=True, slots=True)
class FabricEndpoint:
    """A peer or an orderer: its gRPC address, the CA file its TLS certificate chains to, the
    name to check that certificate against, and (peers) the organisation it belongs to."""

    address: str
    tls_ca: Path
    server_name: str | None = None
    msp_id: str = ""

    def to_dict(self, rel: _PathText) -> dict[str, Any]:
        """A ``ledger.peers`` or ``ledger.orderers`` entry."""
        out: dict[str, Any] = {"address": self.address, "tls_ca": rel(self.tls_ca)}
        if self.server_name:
            out["server_name"] = self.server_name
        if self.msp_id:
            out["msp"] = self.msp_id
        return out


@dataclass(frozen=True, slots=True)
class FabricLedger:
    """A Fabric channel's endpoints: ``endorsers`` organisations' peers endorse each
    transaction (None: every listed peer); ``client_auth``: the peers and orderers require a
    TLS client certificate; ``network`` is the local network's directory."""

    peers: tuple[FabricEndpoint, ...]
    orderers: tuple[FabricEndpoint, ...]
    endorsers: int | None = None
    network: Path | None = None
    client_auth: bool = False

    @classmethod
    def from_connection(cls, connection: Mapping[str, Any], network: Path) -> FabricLedger:
        """The channel of a local network under ``network`` as
        :meth:`ehrshare.fabricnet.FabricNet.connection` describes it (absolute paths)."""

        def endpoint(e: Mapping[str, Any]) -> FabricEndpoint:
            return FabricEndpoint(
                address=e["address"],
                tls_ca=Path(e["tls_ca"]),
                server_name=e.get("server_name") or None,
                msp_id=e.get("msp") or "",
            )

        return cls(
            peers=tuple(endpoint(p) for p in connection["peers"]),
            orderers=tuple(endpoint(o) for o in connection["orderers"]),
            endorsers=connection.get("endorsers") or None,
            network=network,
            # The network requires mutual TLS: a wallet without a TLS certificate is refused
            # with the way to re-issue one, instead of failing in the TLS handshake.
            client_auth=bool(connection.get("client_auth")),
        )

    def to_dict(self, rel: _PathText) -> dict[str, Any]:
        """The Fabric keys of the ``ledger`` section."""
        out: dict[str, Any] = {
            "peers": [p.to_dict(rel) for p in self.peers],
            "orderers": [o.to_dict(rel) for o in self.orderers],
        }
        if self.network is not None:
            out["network"] = rel(self.network)
        if self.endorsers is not None:
            out["endorsers"] = self.endorsers
        if self.client_auth:
            out["client_auth"] = True
        return out


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed profile; build it with :meth:`load` (or :meth:`from_dict` in tests)."""

    path: Path | None
    name: str
    channel: str
    chaincode: str
    ledger_path: Path
    storage_backend: str
    storage_path: Path | None
    storage_url: str | None
    storage_timeout: float
    kgc_threshold: int
    kgc_nodes: tuple[KgcNodeConfig, ...]
    proxies: tuple[ProxyConfig, ...]
    label_key_file: Path
    mapping: TypeMapping
    max_record_bytes: int
    wallets: Path
    ca_files: tuple[Path, ...] = ()
    ledger_backend: str = "embedded"
    fabric: FabricLedger | None = None
    # The consortium's id (``id:``), written by 'consortium init' into the ledger and the store
    # as well; opening either checks it (see :mod:`ehrshare.volumes`). Empty: not given.
    consortium_id: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def proxy(self) -> ServiceConfig:
        """The first proxy's service."""
        return self.proxies[0].service

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """The profile as the YAML document :meth:`from_dict` reads back to an equal profile.

        Paths under ``base`` (default: the profile file's directory) are written relative to
        it. Optional keys at their default are left out, except those 'consortium init'
        writes (the storage and ledger paths, the type defaults and the record limit).
        """
        if base is None:
            if self.path is None:
                raise ProfileError("a profile without a file needs a base directory to write")
            base = self.path.parent.resolve()
        rel = _path_text(base)
        ledger: dict[str, Any] = {"backend": self.ledger_backend}
        if self.fabric is None or self.ledger_path != base / "ledger":
            ledger["path"] = rel(self.ledger_path)
        if self.fabric is not None:
            ledger |= self.fabric.to_dict(rel)
        storage: dict[str, Any] = {"backend": self.storage_backend}
        if self.storage_backend == "kubo":
            storage["url"] = self.storage_url
        else:
            storage["path"] = rel(self.storage_path)
        if self.storage_timeout != DEFAULT_STORAGE_TIMEOUT:
            storage["timeout"] = self.storage_timeout
        types: dict[str, Any] = {
            "label_key": rel(self.label_key_file),
            "default": self.mapping.default_type,
        }
        if self.mapping.rules != DEFAULT_RULES:
            types["rules"] = [_rule_dict(r) for r in self.mapping.rules]
        if self.mapping.extra_types:
            types["extra"] = list(self.mapping.extra_types)
        data: dict[str, Any] = {"version": PROFILE_VERSION}
        if self.consortium_id:
            data["id"] = self.consortium_id
        data |= {
            "name": self.name,
            "channel": self.channel,
            "chaincode": self.chaincode,
            "ledger": ledger,
            "storage": storage,
            "kgc": {
                "threshold": self.kgc_threshold,
                "nodes": [n.to_dict(rel) for n in self.kgc_nodes],
            },
            "proxies": [p.to_dict(rel) for p in self.proxies],
            "types": types,
            "limits": {"max_record_bytes": self.max_record_bytes},
            "wallets": rel(self.wallets),
        }
        if self.ca_files:
            data["cas"] = [rel(c) for c in self.ca_files]
        return data

    def to_yaml(self, header: str = "", base: Path | None = None) -> str:
        """The profile file's text: ``header`` (comment lines) and :meth:`to_dict` as YAML."""
        return header + yaml.safe_dump(self.to_dict(base), sort_keys=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read and check a profile file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(
                f"profile {p} does not exist; create a local consortium with "
                "'ehrshare consortium init <dir>' or pass --profile"
            ) from None
        except OSError as exc:
            raise ProfileError(f"profile {p} cannot be read: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProfileError(f"profile {p} is not valid YAML: {exc}") from None
        return cls.from_dict(data, base=p.parent.resolve(), path=p)

    @classmethod
    def from_dict(cls, data: Any, *, base: Path, path: Path | None = None) -> Profile:
        """Check a profile's content; relative paths are resolved against ``base``."""
        where = str(path) if path else "profile"
        if not isinstance(data, Mapping):
            raise ProfileError(f"{where}: the top level must be a mapping")

        def fail(key: str, why: str) -> ProfileError:
            return ProfileError(f"{where}: {key} {why}")

        def section(name: str) -> Mapping[str, Any]:
            value = data.get(name, {})
            if isinstance(value, str):
                value = {"backend": value}
            if not isinstance(value, Mapping):
                raise fail(name, "must be a mapping")
            return value

        def rel(value: Any, key: str) -> Path:
            if not isinstance(value, str) or not value:
                raise fail(key, "must be a path")
            q = Path(value).expanduser()
            return q if q.is_absolute() else base / q

        version = data.get("version", PROFILE_VERSION)
        if version != PROFILE_VERSION:
            raise fail("version", f"is {version!r}; this SDK reads version {PROFILE_VERSION}")

        ledger = section("ledger")
        backend = ledger.get("backend", "embedded")
        if backend not in ("embedded", "fabric"):
            raise fail("ledger.backend", f"is {backend!r}; use embedded or fabric")
        ledger_path = rel(ledger.get("path", "ledger"), "ledger.path")
        fabric = _fabric(ledger, rel, fail) if backend == "fabric" else None

        storage = section("storage")
        s_backend = storage.get("backend", "embedded")
        s_path: Path | None = None
        s_url: str | None = None
        if s_backend == "embedded":
            s_path = rel(storage.get("path", "store"), "storage.path")
        elif s_backend == "kubo":
            s_url = storage.get("url", "http://127.0.0.1:5001")
            if not isinstance(s_url, str) or not s_url.startswith(("http://", "https://")):
                raise fail("storage.url", f"{s_url!r} is not an http(s) URL of a Kubo RPC API")
        else:
            raise fail("storage.backend", f"is {s_backend!r}; use embedded or kubo")
        timeout = storage.get("timeout", DEFAULT_STORAGE_TIMEOUT)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise fail("storage.timeout", "must be a positive number of seconds")

        kgc = section("kgc")
        nodes_raw = kgc.get("nodes", [])
        if not isinstance(nodes_raw, list) or not nodes_raw:
            raise fail("kgc.nodes", "must list at least one node")
        nodes = []
        for i, n in enumerate(nodes_raw):
            if not isinstance(n, Mapping) or not isinstance(n.get("index"), int):
                raise fail(f"kgc.nodes[{i}]", "must be a mapping with an integer index")
            nodes.append(
                KgcNodeConfig(
                    index=n["index"],
                    service=_service(n, f"kgc.nodes[{i}]", rel, fail),
                    msp_id=str(n.get("msp", "")),
                )
            )
        indices = [n.index for n in nodes]
        if len(set(indices)) != len(indices) or min(indices) < 1:
            raise fail("kgc.nodes", f"indices {indices} must be distinct and at least 1")
        threshold = kgc.get("threshold")
        if not isinstance(threshold, int) or not 2 <= threshold <= len(nodes):
            raise fail("kgc.threshold", f"must be an integer between 2 and {len(nodes)}")

        types = section("types")
        try:
            rules_raw = types.get("rules")
            rules = (
                DEFAULT_RULES
                if rules_raw is None
                else tuple(TypeRule.from_dict(r) for r in rules_raw)
            )
            mapping = TypeMapping(
                rules=rules,
                default_type=str(types.get("default", "general")),
                extra_types=tuple(str(t) for t in types.get("extra", [])),
            )
        except (ValueError, TypeError) as exc:
            raise fail("types", f"is invalid: {exc}") from None

        limits = section("limits")
        max_bytes = limits.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)
        if not isinstance(max_bytes, int) or max_bytes < 1024:
            raise fail("limits.max_record_bytes", "must be an integer of at least 1024")

        cas_raw = data.get("cas", [])
        if not isinstance(cas_raw, list):
            raise fail("cas", "must list the consortium's CA certificate files")
        ca_files = tuple(rel(c, f"cas[{i}]") for i, c in enumerate(cas_raw))

        consortium_id = data.get("id", "")
        if not isinstance(consortium_id, str):
            raise fail("id", "must be a string (the consortium id 'consortium init' wrote)")
        name = data.get("name", "ehrshare")
        channel = data.get("channel", "ehrshare")
        chaincode = data.get("chaincode", "ehrshare")
        for key, value in (("name", name), ("channel", channel), ("chaincode", chaincode)):
            if not isinstance(value, str) or not value:
                raise fail(key, "must be a non-empty string")
        return cls(
            path=path,
            name=name,
            channel=channel,
            chaincode=chaincode,
            ledger_path=ledger_path,
            storage_backend=s_backend,
            storage_path=s_path,
            storage_url=s_url,
            storage_timeout=float(timeout),
            kgc_threshold=threshold,
            kgc_nodes=tuple(sorted(nodes, key=lambda n: n.index)),
            proxies=_proxies(data, section, rel, fail),
            label_key_file=rel(types.get("label_key", "labels.key"), "types.label_key"),
            mapping=mapping,
            max_record_bytes=max_bytes,
            wallets=rel(data.get("wallets", "wallets"), "wallets"),
            ca_files=ca_files,
            ledger_backend=backend,
            fabric=fabric,
            consortium_id=consortium_id,
            raw=dict(data),
        )

    def labels(self) -> TypeLabels:
        """The consortium's type labels (reads the label key file)."""
        try:
            key = self.label_key_file.read_bytes()
        except OSError as exc:
            raise ProfileError(
                f"label key {self.label_key_file} cannot be read ({exc.strerror}); every member "
                "needs the consortium's label key"
            ) from None
        if len(key) != LABEL_KEY_SIZE:
            raise ProfileError(
                f"label key {self.label_key_file} must be {LABEL_KEY_SIZE} bytes, got {len(key)}"
            )
        return TypeLabels(key, self.mapping.types)

    def wallet(self, name: str) -> Wallet:
        """The wallet of ``name`` under the profile's wallet directory (or a path)."""
        candidate = Path(name).expanduser()
        if candidate.is_absolute() or os.sep in name:
            return Wallet(candidate)
        return Wallet(self.wallets / name)


_PathText = Callable[[Path | None], str]


def _path_text(base: Path) -> _PathText:
    """How a profile writes a path: relative to ``base`` when under it, else absolute."""

    def text(path: Path | None) -> str:
        assert path is not None  # the reader gives every written path a value
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    return text


def _rule_dict(rule: TypeRule) -> dict[str, Any]:
    """A ``types.rules`` entry as :meth:`~ehrshare.fhir.TypeRule.from_dict` reads it."""

    def codes(pairs: tuple[tuple[str, str], ...]) -> list[Any]:
        return [{"system": s, "code": c} if "|" in c else f"{s}|{c}" if s else c for s, c in pairs]

    out: dict[str, Any] = {"type": rule.type}
    if rule.resource:
        out["resource"] = list(rule.resource)
    if rule.category:
        out["category"] = codes(rule.category)
    if rule.security:
        out["security"] = codes(rule.security)
    return out


def profile_file(value: str | os.PathLike[str]) -> Path:
    """The profile file a path names: the path itself, or ``profile.yaml`` in a directory."""
    p = Path(value)
    return p / "profile.yaml" if p.is_dir() else p


def _fabric(ledger: Mapping[str, Any], rel: Any, fail: Any) -> FabricLedger:
    def endpoints(key: str, *, peers: bool) -> tuple[FabricEndpoint, ...]:
        raw = ledger.get(key)
        if not isinstance(raw, list) or not raw:
            raise fail(f"ledger.{key}", "must list at least one endpoint (address, tls_ca)")
        out = []
        for i, entry in enumerate(raw):
            where = f"ledger.{key}[{i}]"
            if not isinstance(entry, Mapping):
                raise fail(where, "must be a mapping")
            address = entry.get("address")
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                raise fail(f"{where}.address", f"{address!r} is not host:port")
            if "tls_ca" not in entry:
                raise fail(where, "needs tls_ca (the PEM file of its TLS server certificate's CA)")
            server_name = entry.get("server_name")
            if server_name is not None and (not isinstance(server_name, str) or not server_name):
                raise fail(f"{where}.server_name", "must be a non-empty string")
            msp = entry.get("msp", "")
            if peers and (not isinstance(msp, str) or not msp):
                raise fail(f"{where}.msp", "must name the peer's organisation (its MSP id)")
            out.append(
                FabricEndpoint(address, rel(entry["tls_ca"], f"{where}.tls_ca"), server_name, msp)
            )
        return tuple(out)

    peer_list = endpoints("peers", peers=True)
    endorsers = ledger.get("endorsers")
    orgs = len({p.msp_id for p in peer_list})
    if endorsers is not None and (not isinstance(endorsers, int) or not 1 <= endorsers <= orgs):
        raise fail("ledger.endorsers", f"must be an integer between 1 and {orgs} (the peers' orgs)")
    network = ledger.get("network")
    client_auth = ledger.get("client_auth", False)
    if not isinstance(client_auth, bool):
        raise fail("ledger.client_auth", f"must be true or false, not {client_auth!r}")
    return FabricLedger(
        peers=peer_list,
        orderers=endpoints("orderers", peers=False),
        endorsers=endorsers,
        network=rel(network, "ledger.network") if network is not None else None,
        client_auth=client_auth,
    )


def _proxies(data: Mapping[str, Any], section: Any, rel: Any, fail: Any) -> tuple[ProxyConfig, ...]:
    if "proxy" in data:
        raise fail("proxy", "is not a profile key; list every proxy under proxies")
    raw = data.get("proxies")
    if not isinstance(raw, list) or not raw:
        raise fail("proxies", "must list at least one proxy")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise fail(f"proxies[{i}]", "must be a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"proxies[{i}].name", "must be a non-empty string")
        out.append(_proxy(entry, f"proxies[{i}]", name, rel, fail))
    names = [p.name for p in out]
    ids = [p.ibe_id for p in out if p.ibe_id]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise fail("proxies", f"names {names} and ids {ids} must be distinct")
    return tuple(out)


def _proxy(entry: Mapping[str, Any], key: str, name: str, rel: Any, fail: Any) -> ProxyConfig:
    for opt in ("msp", "id"):
        value = entry.get(opt, "")
        if not isinstance(value, str):
            raise fail(f"{key}.{opt}", "must be a string")
    ibe_id = str(entry.get("id", ""))
    if ibe_id and ibe_id.count("/") != 1:
        raise fail(f"{key}.id", f"{ibe_id!r} is not of the form <msp id>/<enrollment id>")
    return ProxyConfig(
        name=name,
        service=_service(entry, key, rel, fail),
        msp_id=str(entry.get("msp", "")),
        ibe_id=ibe_id,
    )


def _service(value: Mapping[str, Any], key: str, rel: Any, fail: Any) -> ServiceConfig:
    address = value.get("address")
    if address is not None:
        host, _, port = str(address).rpartition(":")
        if not isinstance(address, str) or not host or not port.isdigit() or int(port) > 65535:
            raise fail(f"{key}.address", f"{address!r} is not host:port")
        if "tls_ca" not in value:
            raise fail(
                key,
                "gives an address but no tls_ca (the PEM file of the CA certificates its TLS "
                "server certificate is issued by)",
            )
        server_name = value.get("server_name")
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise fail(f"{key}.server_name", "must be a non-empty string")

        def opt(name: str) -> Path | None:
            return rel(value[name], f"{key}.{name}") if name in value else None

        return ServiceConfig(
            address=address,
            tls_ca=rel(value["tls_ca"], f"{key}.tls_ca"),
            server_name=server_name,
            state=opt("state"),
            key_file=opt("key"),
            wallet=opt("wallet"),
            tls_cert=opt("tls_cert"),
            tls_key=opt("tls_key"),
        )
    missing = [k for k in ("state", "key", "wallet") if k not in value]
    if missing:
        raise fail(
            key,
            f"needs {', '.join(missing)} (in-process: state, key and wallet) or an address (gRPC)",
        )
    return ServiceConfig(
        state=rel(value["state"], f"{key}.state"),
        key_file=rel(value["key"], f"{key}.key"),
        wallet=rel(value["wallet"], f"{key}.wallet"),
    )


_SEALED_MAGIC: Final = b"ehrshare-wallet-v1\n"
_SALT_SIZE: Final = 16
_NONCE_SIZE: Final = 12
# scrypt cost: ~50 ms and 16 MiB per unlock here — slow for guessing, fine for one CLI call.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


def _kek(passphrase: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def seal_wallet_file(data: bytes, passphrase: str, name: str) -> bytes:
    """Encrypt a wallet secret under a passphrase; ``name`` (the file name) is bound as AAD so
    one encrypted file cannot be swapped for another."""
    salt = secrets.token_bytes(_SALT_SIZE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(_kek(passphrase, salt)).encrypt(nonce, data, name.encode())
    return _SEALED_MAGIC + salt + nonce + sealed


def is_sealed_wallet_file(data: bytes) -> bool:
    """Whether wallet file content is passphrase-encrypted."""
    return data.startswith(_SEALED_MAGIC)


def open_wallet_file(data: bytes, passphrase: str, name: str) -> bytes:
    """Decrypt :func:`seal_wallet_file` output; :class:`WalletError` on a wrong passphrase."""
    body = data[len(_SEALED_MAGIC) :]
    if not is_sealed_wallet_file(data) or len(body) < _SALT_SIZE + _NONCE_SIZE + 16:
        raise WalletError(f"{name} is not an encrypted wallet file")
    salt, nonce = body[:_SALT_SIZE], body[_SALT_SIZE : _SALT_SIZE + _NONCE_SIZE]
    try:
        return AESGCM(_kek(passphrase, salt)).decrypt(
            nonce, body[_SALT_SIZE + _NONCE_SIZE :], name.encode()
        )
    except InvalidTag:
        raise WalletError(f"{name}: wrong wallet passphrase (or the file was altered)") from None


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _exists(path: Path) -> bool:
    """``path.exists()``, with a name too long for the file system simply not existing."""
    try:
        return path.exists()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


SECRET_FILES: Final = ("key.pem", "tls-key.pem", "ibe.key")
_EPOCH_RE: Final = re.compile(r"(?:[0-9a-f]{16})?")
_EPOCH_FILE_RE: Final = re.compile(r"ibe-(?:[0-9a-f]{16}|earlier-[0-9a-f]{16})\.key")


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


class Wallet:
    """One member's credentials in a directory: ``msp-id``, ``cert.pem``, ``key.pem``, ``ibe.key``,
    ``tls-cert.pem``, ``tls-key.pem``.

    ``key.pem`` (the ECDSA key that signs ledger transactions), ``tls-key.pem`` (the separate key
    of the TLS client certificate the services authenticate callers by) and ``ibe.key`` (the
    identity secret key from enrolment) are written with mode 0600; anyone who can read them
    can act as this member. With a ``passphrase`` (or, unless ``use_env`` is false,
    ``$EHRSHARE_WALLET_PASSPHRASE``) all three are also encrypted at rest; reading picks the
    format from the file itself. A wallet that lost its two ``tls-`` files works with in-process
    services; :meth:`load_tls` says how to re-issue them.
    Identity keys of every master-key epoch are kept as ``ibe-<epoch>.key`` next to the current
    ``ibe.key`` (:meth:`save_secret_key`).
    """

    def __init__(
        self, directory: Path, *, passphrase: str | None = None, use_env: bool = True
    ) -> None:
        self.directory = directory
        if passphrase is None and use_env:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        if passphrase is not None and not passphrase:
            raise WalletError("a wallet passphrase must not be empty")
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"Wallet({str(self.directory)!r})"

    @property
    def exists(self) -> bool:
        """Whether the wallet holds an identity."""
        try:
            return (self.directory / "cert.pem").is_file()
        except OSError:  # a name too long for the file system, say: no such wallet
            return False

    @property
    def encrypted(self) -> bool:
        """Whether the wallet's signing key is passphrase-encrypted."""
        try:
            with (self.directory / "key.pem").open("rb") as f:
                return is_sealed_wallet_file(f.read(len(_SEALED_MAGIC)))
        except OSError:
            return False

    def with_passphrase(self, passphrase: str) -> Wallet:
        """The same wallet, unlocked with ``passphrase``."""
        return Wallet(self.directory, passphrase=passphrase)

    def _write(self, name: str, data: bytes) -> None:
        if self._passphrase is not None:
            data = seal_wallet_file(data, self._passphrase, name)
        _write_secret(self.directory / name, data)

    def _read(self, name: str) -> bytes:
        data = (self.directory / name).read_bytes()
        if not is_sealed_wallet_file(data):
            return data
        if self._passphrase is None:
            raise WalletError(
                f"wallet {self.directory} is encrypted: set {PASSPHRASE_ENV} (or enter the "
                "passphrase when the CLI asks)"
            )
        return open_wallet_file(data, self._passphrase, name)

    def save_identity(self, identity: Identity, signer: Signer) -> None:
        """Write the certificate and the signing key."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "msp-id").write_text(identity.msp_id, encoding="utf-8")
        (self.directory / "cert.pem").write_bytes(identity.credentials)
        self._write("key.pem", signer.to_secret_bytes())

    @property
    def has_tls(self) -> bool:
        """Whether the wallet holds a TLS client certificate."""
        return (self.directory / "tls-cert.pem").is_file()

    def save_tls(self, identity: Identity, signer: Signer) -> None:
        """Write the TLS client certificate and its key (sealed like ``key.pem``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write("tls-key.pem", signer.to_secret_bytes())
        (self.directory / "tls-cert.pem").write_bytes(identity.credentials)

    def load_tls(self) -> tuple[Identity, Signer]:
        """Read the TLS client certificate and key (for gRPC services)."""
        if not self.has_tls:
            raise WalletError(
                f"wallet {self.directory} has no TLS client certificate (tls-cert.pem is "
                "missing, and the ledger signing key may not be used for TLS): "
                "re-issue it with 'ehrshare consortium reissue-tls "
                f"{self.directory.name} -p <consortium dir>'"
            )
        return self._load_pair("tls-cert.pem", "tls-key.pem")

    def _load_pair(self, cert_name: str, key_name: str) -> tuple[Identity, Signer]:
        try:
            msp = (self.directory / "msp-id").read_text(encoding="utf-8").strip()
            cert = (self.directory / cert_name).read_bytes()
            signer = Signer.from_secret_bytes(self._read(key_name))
        except WalletError:
            raise
        except (OSError, ValueError) as exc:
            raise WalletError(f"wallet {self.directory} is unreadable: {exc}") from None
        identity = Identity(msp, cert)
        try:
            public = identity.certificate.public_key()
            identity.enrollment_id  # noqa: B018 - parses the subject's common name
        except (ValueError, IndexError):
            raise WalletError(
                f"wallet {self.directory}: {cert_name} is not a readable X.509 certificate "
                "(empty, truncated or edited); restore the wallet from its backup"
            ) from None
        if _public_der(public) != _public_der(signer.public_key):
            raise WalletError(
                f"wallet {self.directory}: {cert_name} is not the certificate of its key "
                f"{key_name}; restore the wallet from its backup"
            )
        return identity, signer

    def load_identity(self) -> tuple[Identity, Signer]:
        """Read the certificate and the signing key (first finishing or undoing a change a
        crash interrupted, see :meth:`recover`)."""
        if any(_exists(p) for p in self._staging()):
            self.recover()  # waits for a change in progress elsewhere (the wallet's lock)
        if not self.exists:
            raise WalletError(
                f"wallet {self.directory} holds no identity; create one with "
                "'ehrshare consortium add-member' or 'ehrshare consortium init'"
            )
        return self._load_pair("cert.pem", "key.pem")

    def save_secret_key(self, key: IdentitySecretKey, epoch: str = "") -> None:
        """Keep the enrolled identity secret key as the current one, ``ibe.key`` (mode 0600;
        encrypted with a passphrase), and with ``epoch`` (its master key's, see
        :func:`ehrshare_chaincode.contract.master_key_epoch`) also as ``ibe-<epoch>.key``.

        Keys are never dropped: a current key of another master key that no ``ibe-*.key``
        holds (a wallet from before epochs) is kept as ``ibe-earlier-<digest>.key``, so
        records of an earlier master key stay readable. All files change at once (staged
        directory, see :meth:`recover`).
        """
        if not _EPOCH_RE.fullmatch(epoch):
            raise WalletError(f"{epoch!r} is not a master key epoch (16 hex digits)")
        new = key.to_secret_bytes()
        if not self.exists:  # a bare key directory (no identity): nothing else to keep whole
            self._write("ibe.key", new)
            if epoch:
                self._write(f"ibe-{epoch}.key", new)
            return
        with self._locked():
            self._recover()
            kept = {name: self._read(name) for name in self._secret_names() if "ibe" in name}
            files: dict[str, bytes] = {"ibe.key": new}
            if epoch:
                files[f"ibe-{epoch}.key"] = new
            current = kept.get("ibe.key")
            if (
                current is not None
                and current != new
                and all(data != current for name, data in kept.items() if name != "ibe.key")
            ):
                digest = hashlib.sha256(current).hexdigest()[:16]
                files[f"ibe-earlier-{digest}.key"] = current
            if all(kept.get(name) == data for name, data in files.items()):
                return

            def build(tmp: Path) -> None:
                writer = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                for name, data in sorted(files.items()):
                    writer._write(name, data)

            self._swap_in(build)

    def load_secret_keys(self) -> dict[str, IdentitySecretKey]:
        """Every identity key the wallet kept, by master key epoch (``earlier-<digest>`` for
        keys of an unknown earlier epoch); the current one is :meth:`load_secret_key`."""
        keys: dict[str, IdentitySecretKey] = {}
        for name in self._secret_names():
            if name.startswith("ibe-"):
                try:
                    keys[name[4:-4]] = IdentitySecretKey.from_secret_bytes(self._read(name))
                except WalletError:
                    raise
                except (OSError, ValueError):
                    path = self.directory / name
                    raise WalletError(f"{path} does not hold an identity secret key") from None
        return keys

    def _secret_names(self) -> list[str]:
        """The secret files present: :data:`SECRET_FILES` and every ``ibe-<epoch>.key``."""
        try:
            epochs = sorted(
                p.name for p in self.directory.glob("ibe-*.key") if _EPOCH_FILE_RE.fullmatch(p.name)
            )
        except OSError:
            epochs = []
        return [n for n in SECRET_FILES if (self.directory / n).is_file()] + epochs

    def load_secret_key(self) -> IdentitySecretKey | None:
        """The enrolled key, or None before enrolment."""
        path = self.directory / "ibe.key"
        if not path.exists():
            return None
        try:
            raw = self._read("ibe.key")
            if len(raw) > 1 + 96 and raw[0] == 1:  # the format before RFC 9380 H1
                raise WalletError(
                    f"{path} does not hold an identity secret key of format version "
                    f"{TIPRE_VERSION}: it is a version 1 key, made before H1 became the RFC 9380 "
                    "hash; enrol again (docs/security.md §3.8)"
                )
            return IdentitySecretKey.from_secret_bytes(raw)
        except WalletError:
            raise
        except (OSError, ValueError):
            raise WalletError(f"{path} does not hold an identity secret key") from None

    # --- all-or-nothing changes ---------------------------------------------------------------

    def _staging(self) -> tuple[Path, Path, Path]:
        """Where a change builds (``.name.tmp``), stages (``.name.new``) and retires the old
        wallet (``.name.old``), beside the wallet directory."""
        d = self.directory
        return tuple(d.parent / f".{d.name}.{x}" for x in ("tmp", "new", "old"))  # type: ignore[return-value]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change (or recovery) of a wallet at a time, across processes: a lock on the
        wallets directory itself, so taking it leaves no file behind."""
        try:
            fd = os.open(self.directory.parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise WalletError(f"wallet {self.directory} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def recover(self) -> str | None:
        """Finish or undo a wallet change a crash interrupted; what was done, or None.

        The rule: the wallet directory, when it exists, is always a complete wallet, and
        ``.name.new`` exists only once the new wallet is complete. So a leftover ``.tmp`` or a
        ``.new`` beside the wallet is discarded (the change did not happen), a ``.new`` without
        the wallet is swapped in (it did), a lone ``.old`` is put back, and an ``.old`` beside
        the wallet is removed.
        """
        if not self.directory.parent.is_dir():
            return None
        with self._locked():
            return self._recover()

    def _recover(self) -> str | None:
        tmp, new, old = self._staging()
        done: list[str] = []
        if tmp.exists():
            shutil.rmtree(tmp)
            done.append("discarded an unfinished new wallet")
        if self.directory.exists():
            if new.exists():
                shutil.rmtree(new)
                done.append("discarded a new wallet that was never swapped in")
            if old.exists():
                shutil.rmtree(old)
                done.append("removed the wallet a finished change replaced")
        elif new.exists():
            new.rename(self.directory)
            _fsync_dir(self.directory.parent)
            done.append("swapped in the new wallet of an interrupted change")
            if old.exists():
                shutil.rmtree(old)
        elif old.exists():
            old.rename(self.directory)
            _fsync_dir(self.directory.parent)
            done.append("put back the wallet an interrupted change had moved aside")
        return "; ".join(done) or None

    @property
    def seal_state(self) -> str:
        """``plain``, ``encrypted`` or ``mixed`` (some secret files encrypted, some not: what
        an interrupted encrypt of an older ehrshare left; ``wallet encrypt`` finishes it)."""
        sealed = set()
        for name in self._secret_names():
            try:
                with (self.directory / name).open("rb") as f:
                    sealed.add(is_sealed_wallet_file(f.read(len(_SEALED_MAGIC))))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise WalletError(f"wallet {self.directory} is unreadable: {exc}") from None
        if sealed == {True}:
            return "encrypted"
        return "mixed" if len(sealed) == 2 else "plain"

    def _swap_in(self, build: Callable[[Path], None]) -> None:
        """Copy the wallet to ``.name.tmp``, let ``build`` change the copy, then stage it as
        ``.name.new`` and swap it in (two renames). Hold :meth:`_locked` around it."""
        tmp, new, old = self._staging()
        shutil.copytree(self.directory, tmp, copy_function=shutil.copy2)
        try:
            build(tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fault_point("wallet.after_build")
        tmp.rename(new)
        _fsync_dir(new.parent)
        fault_point("wallet.after_stage")
        self.directory.rename(old)
        fault_point("wallet.after_retire")
        new.rename(self.directory)
        _fsync_dir(self.directory.parent)
        fault_point("wallet.after_swap")
        shutil.rmtree(old)

    def create(
        self, identity: Identity, signer: Signer, tls: tuple[Identity, Signer] | None = None
    ) -> None:
        """Write a new wallet whole: built in ``.name.tmp`` and renamed into place, so a crash
        leaves no wallet rather than half of one. Refuses an existing wallet."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._recover()
            if self.directory.exists():
                raise WalletError(f"wallet {self.directory} already exists")
            tmp = self._staging()[0]
            try:
                staged = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                staged.save_identity(identity, signer)
                if tls is not None:
                    staged.save_tls(*tls)
                _fsync_tree(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fault_point("wallet.after_build")
            tmp.rename(self.directory)
            _fsync_dir(self.directory.parent)

    def replace_tls(self, identity: Identity, signer: Signer) -> None:
        """Replace the TLS client certificate and key together (see :meth:`_swap_in`); sealed
        under this wallet's passphrase when it has one."""
        with self._locked():
            self._recover()
            if not self.exists:
                raise WalletError(f"wallet {self.directory} holds no identity")

            def build(tmp: Path) -> None:
                staged = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                staged._write("tls-key.pem", signer.to_secret_bytes())
                fault_point("wallet.mid_build")
                (tmp / "tls-cert.pem").write_bytes(identity.credentials)

            self._swap_in(build)

    def _rewrite(self, read_with: str | None, write_with: str | None) -> Wallet:
        """Re-write every secret file (read with ``read_with``; plain files need none) sealed
        under ``write_with`` (None: plain), all at once: built in ``.name.tmp``, staged as
        ``.name.new``, swapped in by two renames (see :meth:`recover`)."""
        if write_with is not None and not write_with:
            raise WalletError("a wallet passphrase must not be empty")
        with self._locked():
            self._recover()
            if not self.exists:
                raise WalletError(f"wallet {self.directory} holds no identity")
            reader = Wallet(self.directory, passphrase=read_with or None, use_env=False)
            secrets_now = {n: reader._read(n) for n in self._secret_names()}
            # Check what was read before replacing anything: a wrong passphrase or a damaged
            # file refuses the change (WalletError), the wallet stays as it was.
            try:
                Signer.from_secret_bytes(secrets_now["key.pem"])
            except (KeyError, ValueError) as exc:
                why = f"wallet {self.directory} has no usable key.pem ({exc})"
                raise WalletError(why) from None

            def build(tmp: Path) -> None:
                writer = Wallet(tmp, passphrase=write_with, use_env=False)
                for i, (name, data) in enumerate(sorted(secrets_now.items())):
                    writer._write(name, data)
                    if i == 0:
                        fault_point("wallet.mid_build")

            self._swap_in(build)
        return Wallet(self.directory, passphrase=write_with, use_env=False)

    def encrypt(self, passphrase: str) -> Wallet:
        """Encrypt ``key.pem``, ``tls-key.pem`` and ``ibe.key`` under ``passphrase``, all at
        once; returns the unlocked wallet. A ``mixed`` wallet (see :attr:`seal_state`) is
        finished with the passphrase its encrypted files already use; a wallet opened with a
        passphrase is re-encrypted from that one (as :meth:`change_passphrase`)."""
        return self._rewrite(read_with=self._passphrase or passphrase, write_with=passphrase)

    def decrypt(self, passphrase: str) -> Wallet:
        """Store the secret files unencrypted again (mode 0600), all at once."""
        return self._rewrite(read_with=passphrase, write_with=None)

    def change_passphrase(self, old: str, new: str) -> Wallet:
        """Re-encrypt every secret file under ``new``, all at once."""
        return self._rewrite(read_with=old, write_with=new)
