"""Store maintenance: compare the ciphertexts a store holds with the records the ledger names.

``ehrshare store check`` reports records whose ciphertext is missing, ciphertexts no record
names (orphans: a ``record put`` killed between the store write and ``RegisterRecord``, or a
registration the ledger refused and whose unpin failed) and ciphertexts whose bytes no longer
hash to what the ledger recorded. ``ehrshare store gc`` removes orphans older than a grace
period — never a ciphertext any version of a committed record names, and never a young one,
which may belong to a put that has stored its ciphertext and not yet registered it.

The referenced set comes from the chaincode's ``ListRecordVersions`` (every version of every
record, paginated), asked as an org admin or auditor wallet (default: the consortium's
``admin`` wallet) on either backend, embedded or Fabric. For
a Kubo store, "held" means pinned recursively, and an orphan's age is counted from the first
check or gc that saw it unreferenced (Kubo keeps no pin times), kept in
``run/store-unreferenced.json`` next to the profile.

This module must not delete anything but unreferenced ciphertexts, and must not read keys.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from ehrshare.contract import EhrContract
from ehrshare.contract.types import GrantPins, Page, RecordVersion
from ehrshare.ledgers import open_ledger
from ehrshare.profile import Profile
from ehrshare.provisioning import ADMIN_WALLET
from ehrshare.runtime import ConsortiumError, _service_ledger_tls, open_store
from ehrshare.storage import (
    BlobStore,
    ContentNotFound,
    EmbeddedStore,
    IntegrityError,
    KuboStore,
    StorageError,
    sha256_hex,
)
from ehrshare.storage.replicated import ReplicatedStore
from ehrshare.volumes import KUBO_MARKER
from ehrshare.wallet import Wallet

__all__ = [
    "DEFAULT_GRACE_S",
    "StoreReport",
    "check_store",
    "gc_store",
    "grant_pins",
    "merge_grant_parts",
    "parse_duration",
    "record_versions",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_GRACE_S: Final = 3600
_PAGE: Final = 100  # the chaincode's largest page
_SEEN_FILE: Final = "store-unreferenced.json"
# 'ipfs init' pins the empty UnixFS directory in every repository; it is nobody's ciphertext.
_EMPTY_DIR: Final = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``1h``, ``2d`` or a bare number of seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration (like 90s, 30m, 1h, 2d or 0)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class RecordPointer:
    """One version of a record as the ledger holds it."""

    record_id: str
    version: int
    cid: str
    sha256: str


@dataclass
class StoreReport:
    """What ``store check`` found (and ``store gc`` removed)."""

    records: int = 0
    blobs: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)
    altered: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No missing, orphan or altered ciphertext."""
        return not (self.missing or self.orphans or self.altered)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "clean": self.clean,
            "record_versions": self.records,
            "ciphertexts": self.blobs,
            "missing": self.missing,
            "orphans": self.orphans,
            "altered": self.altered,
            "removed": self.removed,
        }


def _pointers(profile: Profile, wallet: Wallet | None) -> list[RecordPointer]:
    """Every version of every record on the ledger (see :func:`record_versions`)."""
    return [
        RecordPointer(v.record_id, v.version, v.cid, v.sha256)
        for v in record_versions(profile, wallet)
    ]


def record_versions(profile: Profile, wallet: Wallet | None) -> list[RecordVersion]:
    """Every version of every record on the ledger (``ListRecordVersions``, page by page), asked
    as ``wallet`` (an org admin or auditor; default the consortium's ``admin`` wallet)."""
    return _every_page(
        profile, wallet, lambda chain, bm: chain.list_record_versions(page_size=_PAGE, bookmark=bm)
    )


def grant_pins(
    profile: Profile, wallet: Wallet | None, *, page_size: int = _PAGE
) -> list[GrantPins]:
    """Every grant valid now with its grantee's hospital and the records it covers
    (``ListGrantPins``, pages of ``page_size`` records), asked as :func:`record_versions`
    asks; a grant whose records the chaincode split across pages is given once, its parts
    merged."""
    return merge_grant_parts(
        _every_page(
            profile,
            wallet,
            lambda chain, bm: chain.list_grant_pins(page_size=page_size, bookmark=bm),
        )
    )


def merge_grant_parts(parts: list[GrantPins]) -> list[GrantPins]:
    """``ListGrantPins``' pages' grants, one per grant, in the order first seen: the parts of a
    grant split across pages (the same ``grant_id``, ``grantee_msp`` and ``expiry``, each
    with some of its records) joined in order, a record named twice kept once."""
    merged: dict[str, GrantPins] = {}
    for part in parts:
        before = merged.get(part.grant_id)
        if before is None:
            merged[part.grant_id] = part
            continue
        known = {r[0] for r in before.records}
        extra = tuple(r for r in part.records if r[0] not in known)
        merged[part.grant_id] = replace(before, records=before.records + extra)
    return list(merged.values())


def _every_page(
    profile: Profile, wallet: Wallet | None, page: Callable[[EhrContract, str], Page[_T]]
) -> list[_T]:
    if wallet is None:
        wallet = profile.wallet(ADMIN_WALLET)
    identity, signer = wallet.load_identity()
    backend = open_ledger(profile)  # an embedded ledger: checks its volume's consortium id
    try:
        gateway = backend.connect(identity, signer, client_tls=_service_ledger_tls(profile, wallet))
        try:
            chain = EhrContract(
                gateway.get_network(profile.channel).get_contract(profile.chaincode)
            )
            out: list[_T] = []
            bookmark = ""
            while True:
                got = page(chain, bookmark)
                out += got.items
                bookmark = got.bookmark
                if not bookmark:
                    return out
        finally:
            gateway.close()
    finally:
        backend.close()


def _canonical(cid: str) -> str:
    from ehrshare.storage import CID
    from ehrshare.storage.cid import DAG_PB

    parsed = CID.parse(cid)
    return str(CID(1, DAG_PB, parsed.multihash) if parsed.version == 0 else parsed)


def _held(
    profile: Profile, store: BlobStore, referenced: set[str], now: float
) -> dict[str, tuple[int, float]]:
    """CID -> (size in bytes or -1 if unknown, age in seconds) of every ciphertext held. For
    Kubo the age of an unreferenced pin counts from the first scan that saw it (remembered in
    ``run/store-unreferenced.json``); a referenced pin's age does not matter."""
    if isinstance(store, EmbeddedStore):
        return {b.cid: (b.size, max(0.0, now - b.mtime)) for b in store.blobs()}
    pins: set[str] = set()
    for node in _kubo_nodes(store):  # a private swarm: what any hospital's node pins
        others = [c for c in node.client.files_ls(KUBO_MARKER) if c != profile.consortium_id]
        if others:
            raise ConsortiumError(
                f"the Kubo node at {node.client.api_url} also stores consortia "
                f"{', '.join(others)}: their ciphertexts would look unreferenced here; give "
                "each consortium its own node"
            )
        pins |= {_canonical(c) for c in node.client.pins()} - {_EMPTY_DIR}
    assert profile.path is not None
    seen_file = profile.path.parent / "run" / _SEEN_FILE
    try:
        seen: dict[str, float] = json.loads(seen_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seen = {}
    seen = {c: t for c, t in seen.items() if c in pins and c not in referenced}
    for cid in pins - referenced:
        seen.setdefault(cid, now)
    seen_file.parent.mkdir(exist_ok=True)
    tmp = seen_file.with_name(seen_file.name + ".tmp")
    tmp.write_text(json.dumps(seen, sort_keys=True), encoding="utf-8")
    tmp.replace(seen_file)
    return {c: (-1, now - seen.get(c, now)) for c in pins}


def _kubo_nodes(store: BlobStore) -> list[KuboStore]:
    """The Kubo node of a single-node store, or every hospital's node of a private swarm."""
    if isinstance(store, ReplicatedStore):
        return list(store.stores.values())
    assert isinstance(store, KuboStore)
    return [store]


def _scan(
    profile: Profile,
    store: BlobStore,
    clock: Callable[[], float],
    *,
    verify: bool,
    wallet: Wallet | None,
) -> tuple[StoreReport, dict[str, tuple[int, float]]]:
    pointers = _pointers(profile, wallet)
    referenced = {_canonical(p.cid) for p in pointers}
    ages = _held(profile, store, referenced, clock())
    report = StoreReport(records=len(pointers), blobs=len(ages))
    for p in pointers:
        cid = _canonical(p.cid)
        where = {"record_id": p.record_id, "version": p.version, "cid": cid}
        if cid not in ages:
            report.missing.append(where)
            continue
        if verify:
            try:
                data = store.get(cid)
            except ContentNotFound:
                report.missing.append(where)
                continue
            except IntegrityError as exc:
                report.altered.append({**where, "detail": str(exc)})
                continue
            actual = sha256_hex(data)
            if actual != p.sha256:
                report.altered.append(
                    {**where, "detail": f"sha256 {actual} is not the recorded {p.sha256}"}
                )
    for cid in sorted(set(ages) - referenced):
        size, age = ages[cid]
        orphan: dict[str, Any] = {"cid": cid, "age_s": round(age, 1)}
        if size >= 0:
            orphan["bytes"] = size
        report.orphans.append(orphan)
    return report, ages


def _unpin_everywhere(store: BlobStore, cid: str) -> bool:
    """Unpin ``cid`` (at every node of a swarm); whether any copy was released."""
    released = False
    for node in [store] if isinstance(store, EmbeddedStore) else _kubo_nodes(store):
        try:
            node.unpin(cid)
            released = True
        except ContentNotFound:
            continue
        except StorageError as exc:
            _log.warning("could not remove %s: %s", cid, exc)
    return released


def check_store(
    profile: Profile,
    *,
    wallet: Wallet | None = None,
    clock: Callable[[], float] = time.time,
) -> StoreReport:
    """Read every record version from the ledger (as ``wallet``, an org admin or auditor;
    default the consortium's ``admin`` wallet) and every ciphertext from the store; report
    what is missing, unreferenced or altered (nothing is changed)."""
    store, close = open_store(profile)
    try:
        report, _ = _scan(profile, store, clock, verify=True, wallet=wallet)
        return report
    finally:
        close()


def gc_store(
    profile: Profile,
    *,
    older_than_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    wallet: Wallet | None = None,
    clock: Callable[[], float] = time.time,
) -> StoreReport:
    """Remove ciphertexts no record version names and that are older than ``older_than_s``
    (default one hour: a put in flight between its store write and ``RegisterRecord`` is
    younger). The references are read again just before removing, so a record registered
    meanwhile keeps its ciphertext. ``dry_run`` only reports (``removed`` lists what would go).
    ``wallet`` as for :func:`check_store`.
    """
    store, close = open_store(profile)
    try:
        report, ages = _scan(profile, store, clock, verify=False, wallet=wallet)
        candidates = [o["cid"] for o in report.orphans if ages[o["cid"]][1] >= older_than_s]
        if not candidates:
            return report
        still = {_canonical(p.cid) for p in _pointers(profile, wallet)}
        for cid in candidates:
            if cid in still:
                continue
            if not dry_run and not _unpin_everywhere(store, cid):
                continue
            report.removed.append(cid)
        if not dry_run and not isinstance(store, EmbeddedStore) and report.removed:
            for node in _kubo_nodes(store):
                node.client.repo_gc()
        return report
    finally:
        close()
