"""Connection profiles: one YAML file per deployment, read *and* written here.

A profile says where the ledger, the content store, the KGC nodes and the re-encryption proxy
are, and how record types map to opaque labels; switching backends is one setting in it. Paths in
a profile are relative to the profile file. A profile names the directory of its wallets
(:mod:`ehrshare.wallet`).

Backends: ``ledger.backend`` is ``embedded`` (the default: a directory, ``ledger.path``) or
``fabric``: a Fabric channel reached through its peers and orderers (``ledger.peers`` and
``ledger.orderers``, each with ``address``, ``tls_ca`` — the PEM file of the CA that issued its TLS
server certificate — and optionally ``server_name``; peers also name their ``msp``),
``ledger.endorsers`` (how many organisations' peers endorse a transaction; default all) and
``ledger.orderer_quorum`` (SmartBFT: acknowledgements a broadcast needs), both for ``client: peer``
only (refused with ``client: gateway``, whose Gateway service chooses both itself),
``ledger.client_auth`` (true when the peers and orderers require mutual TLS: every gateway must
then present a TLS client certificate — a member's wallet's ``tls-cert.pem`` — and one without is
refused before dialling; default false: presented when there is one), ``ledger.client``
(``gateway``: the peers' Gateway service, Fabric >= 2.4, which plans endorsements itself;
``peer``: the client endorses on the peers and broadcasts to the orderers itself, all Fabric
has before 2.4; ``consortium init`` writes it by the binaries' version; absent: ``peer``) and
optionally ``ledger.network``, the directory of the local Fabric network this consortium runs
(:mod:`ehrshare.network.fabric`, which requires mutual TLS; ``ehrshare network up`` starts it).
``storage.backend`` is
``embedded`` or ``kubo`` (a real Kubo RPC URL), independent of the ledger; ``kubo`` may name a
private swarm, one node per hospital (:class:`StorageSwarm`: ``storage.swarm``, its directory;
``storage.nodes``, node URL by MSP id; ``storage.replicas``, default 2).

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
:mod:`ehrshare.network.services`); the session ignores them.

Writing: :meth:`Profile.to_dict` / :meth:`Profile.to_yaml` give the document that reads back to an
equal profile ('consortium init' writes its profiles this way, :mod:`ehrshare.provisioning`).

This module must not open a ledger, a store or a service (the session does) and must not read
key files (the label key excepted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from ehrshare.errors import ConfigurationError
from ehrshare.fhir import DEFAULT_RULES, LABEL_KEY_SIZE, TypeLabels, TypeMapping, TypeRule
from ehrshare.wallet import Wallet

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "FABRIC_CLIENTS",
    "PEER_CLIENT_ONLY",
    "BackendUnavailable",
    "FabricEndpoint",
    "FabricLedger",
    "KgcNodeConfig",
    "Profile",
    "ProfileError",
    "ProxyConfig",
    "ServiceConfig",
    "StorageSwarm",
    "profile_file",
]

DEFAULT_MAX_RECORD_BYTES: Final = 32 * 1024 * 1024
DEFAULT_STORAGE_TIMEOUT: Final = 30
PROFILE_VERSION: Final = 1


class ProfileError(ConfigurationError, ValueError):
    """A profile file is missing, unreadable or wrong; the message names the file and the key."""


class BackendUnavailable(ProfileError):
    """The profile asks for a backend this installation cannot run."""


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
    TLS client certificate; ``network`` is the local network's directory; ``orderer_quorum``
    (SmartBFT orderers): a submit goes to every orderer and needs that many acknowledgements
    (None: Raft, one orderer at a time); ``client``: ``gateway`` (the peers' Gateway service)
    or ``peer`` (endorse and broadcast from the client; see :data:`FABRIC_CLIENTS`)."""

    peers: tuple[FabricEndpoint, ...]
    orderers: tuple[FabricEndpoint, ...]
    endorsers: int | None = None
    network: Path | None = None
    client_auth: bool = False
    orderer_quorum: int | None = None
    client: str = "peer"

    @classmethod
    def from_connection(cls, connection: Mapping[str, Any], network: Path) -> FabricLedger:
        """The channel of a local network under ``network`` as
        :meth:`ehrshare.network.fabric.FabricNet.connection` describes it (absolute paths)."""

        def endpoint(e: Mapping[str, Any]) -> FabricEndpoint:
            return FabricEndpoint(
                address=e["address"],
                tls_ca=Path(e["tls_ca"]),
                server_name=e.get("server_name") or None,
                msp_id=e.get("msp") or "",
            )

        client = connection.get("client") or "peer"
        # With the peers' Gateway service the client chooses neither endorsers nor orderers
        # (a profile naming them with client: gateway is refused, see PEER_CLIENT_ONLY).
        steer = client == "peer"
        return cls(
            peers=tuple(endpoint(p) for p in connection["peers"]),
            orderers=tuple(endpoint(o) for o in connection["orderers"]),
            endorsers=(connection.get("endorsers") or None) if steer else None,
            network=network,
            # The network requires mutual TLS: a wallet without a TLS certificate is refused
            # with the way to re-issue one, instead of failing in the TLS handshake.
            client_auth=bool(connection.get("client_auth")),
            orderer_quorum=(connection.get("orderer_quorum") or None) if steer else None,
            client=client,
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
        if self.orderer_quorum is not None:
            out["orderer_quorum"] = self.orderer_quorum
        out["client"] = self.client
        return out


FABRIC_CLIENTS: Final = ("gateway", "peer")
"""``ledger.client`` values: the peers' Gateway service (Fabric >= 2.4) or the client-side one."""

PEER_CLIENT_ONLY: Final = (
    "applies to ledger.client: peer only; with client: gateway the peers' Gateway service "
    "chooses the endorsing peers by the chaincode's endorsement policy and sends to the "
    "orderers itself: remove the key, or set ledger.client: peer"
)
"""Why ``ledger.endorsers`` and ``ledger.orderer_quorum`` are refused with ``client: gateway``."""

DEFAULT_REPLICAS: Final = 2


@dataclass(frozen=True, slots=True)
class StorageSwarm:
    """A private IPFS swarm, one Kubo node per hospital (:mod:`ehrshare.network.swarm`)."""

    path: Path
    nodes: tuple[tuple[str, str], ...]
    """(MSP id, node RPC URL) per hospital, in the order of the hospitals."""
    replicas: int = DEFAULT_REPLICAS
    """How many hospitals besides a record's origin pin it."""


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
    # ``client_cas:``: the directory of the consortium CA certificates (``<MSP id>.pem``) the
    # service processes trust as client CAs and read again when it changes
    # (``--client-ca-dir``); None (a profile written before it): each ``cas`` file is passed
    # as a ``--client-ca`` of its own.
    client_ca_dir: Path | None = None
    ledger_backend: str = "embedded"
    fabric: FabricLedger | None = None
    # The consortium's id (``id:``), written by 'consortium init' into the ledger and the store
    # as well; opening either checks it (see :mod:`ehrshare.volumes`). Empty: not given.
    consortium_id: str = ""
    swarm: StorageSwarm | None = None

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
        if self.swarm is not None:
            storage["swarm"] = rel(self.swarm.path)
            storage["nodes"] = dict(self.swarm.nodes)
            storage["replicas"] = self.swarm.replicas
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
        if self.client_ca_dir is not None:
            data["client_cas"] = rel(self.client_ca_dir)
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
        swarm: StorageSwarm | None = None
        if "swarm" in storage:
            if s_backend != "kubo":
                raise fail("storage.swarm", "needs storage.backend kubo")
            nodes_map = storage.get("nodes")
            urls = dict(nodes_map) if isinstance(nodes_map, Mapping) else {}
            if not urls or not all(str(v).startswith("http") for v in urls.values()):
                raise fail("storage.nodes", "must map each hospital's MSP id to its node's URL")
            replicas = storage.get("replicas", DEFAULT_REPLICAS)
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise fail("storage.replicas", "must be a whole number, 0 or more")
            swarm = StorageSwarm(
                rel(storage["swarm"], "storage.swarm"),
                tuple((str(k), str(v)) for k, v in urls.items()),
                replicas,
            )

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
        client_cas = data.get("client_cas")
        client_ca_dir = None if client_cas is None else rel(client_cas, "client_cas")

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
            client_ca_dir=client_ca_dir,
            ledger_backend=backend,
            fabric=fabric,
            consortium_id=consortium_id,
            swarm=swarm,
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
    orderer_list = endpoints("orderers", peers=False)
    quorum = ledger.get("orderer_quorum")
    if quorum is not None and (
        isinstance(quorum, bool)
        or not isinstance(quorum, int)
        or not 1 <= quorum <= len(orderer_list)
    ):
        raise fail(
            "ledger.orderer_quorum",
            f"must be an integer between 1 and {len(orderer_list)} (the orderers listed)",
        )
    client = ledger.get("client", "peer")
    if client not in FABRIC_CLIENTS:
        raise fail("ledger.client", f"is {client!r}; use gateway or peer")
    if client == "gateway":
        # The peers' Gateway service plans endorsements from the chaincode's policy and sends
        # to the orderers itself; these keys steer the client-side path only and would be
        # ignored without a word.
        for key in ("endorsers", "orderer_quorum"):
            if ledger.get(key) is not None:
                raise fail(f"ledger.{key}", PEER_CLIENT_ONLY)
    return FabricLedger(
        peers=peer_list,
        orderers=orderer_list,
        endorsers=endorsers,
        network=rel(network, "ledger.network") if network is not None else None,
        client_auth=client_auth,
        orderer_quorum=quorum,
        client=client,
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
