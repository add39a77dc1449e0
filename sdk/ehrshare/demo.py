"""The end-to-end story, as a library function the CLI, the tests and the docs share.

:func:`run_demo` sets up a three-hospital consortium on the embedded backend or — with
``ledger="fabric"`` — on a real Fabric network built for it (one peer per hospital, a Raft
orderer, the chaincode as a service; stopped by pid at the end), with the embedded content store
or Kubo, each hospital with a KGC node and a re-encryption proxy, in-process or —
``services="processes"`` — as real ``ehrshare kgc serve`` / ``ehrshare proxy serve`` processes
over gRPC and mutual TLS (then one KGC node is killed after the first enrolments and hospital B's
proxy is restarted mid-story). Alice's grant to Dr Baker puts its re-key at hospital B's proxy,
Dr Baker's referral to Dr Chen at hospital C's; Dr Chen's read visits both in order. It runs the
DKG, enrols a patient, two clinicians and a specialist, and walks the paper's flows: store three
FHIR records, grant "lab" with two hops, read, refer, read at the second hop, type isolation
(imaging stays unreadable), revoke, a denied and logged request, the audit trail and its
verification, and tampering being caught: a careful edit (a decision changed and every hash
after it recomputed — on the embedded ledger in a copy of its SQLite file, with and without the
ordering key; on Fabric in one hospital's peer's block file, stopped and restarted, then put
back) named by ``ledger verify`` at its block, a cut tail caught against a head Alice signed
before, and a naive edit (on the embedded ledger an entry edited in its SQLite file; on Fabric
an edited exported copy of the trail, checked against the chain).
Each step is reported to a callback with its timing; the outcome is a :class:`DemoResult`
whose ``checks`` say whether every claim of the story held.

This module must not print (the CLI renders the steps) and must not leave files behind unless
asked to keep its directory.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehrshare.demo_hosts import DemoHosts
from ehrshare.network.services import ServiceProcesses
from ehrshare.network.supervisor import free_loopback_ports, pid_alive
from ehrshare.provisioning import Consortium
from ehrshare.session import AccessDenied, Session

__all__ = ["DemoResult", "DemoStep", "lab_observation", "run_demo"]

_OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
SECRET_MARKER = "HAEMOGLOBIN-DEMO-7f3a"  # noqa: S105 - a text marker, not a password


def lab_observation(value: float = 13.2, marker: str = SECRET_MARKER) -> dict[str, Any]:
    """A FHIR R4 laboratory Observation (haemoglobin) with a recognisable text marker."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": _OBS_CAT, "code": "laboratory"}]}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "718-7"}],
            "text": f"Haemoglobin {marker}",
        },
        "subject": {"reference": "Patient/alice"},
        "effectiveDateTime": "2026-11-20T08:30:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }


def imaging_study() -> dict[str, Any]:
    """A FHIR R4 ImagingStudy (chest CT)."""
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/alice"},
        "started": "2026-11-19T14:00:00Z",
        "numberOfSeries": 1,
        "numberOfInstances": 120,
        "description": "CT chest without contrast",
    }


def medication_request() -> dict[str, Any]:
    """A FHIR R4 MedicationRequest (iron supplement)."""
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Ferrous sulfate 200 mg"},
        "subject": {"reference": "Patient/alice"},
        "dosageInstruction": [{"text": "one tablet daily"}],
    }


@dataclass
class DemoStep:
    """One step of the story: what happened, how long it took, and whether it went as told."""

    number: int
    title: str
    ms: float = 0.0
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "step": self.number,
            "title": self.title,
            "ms": round(self.ms, 2),
            "ok": self.ok,
            "lines": self.lines,
        }


@dataclass
class DemoResult:
    """The whole run: steps, the checks of the story, the audit trail, the total time."""

    steps: list[DemoStep] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    total_ms: float = 0.0
    directory: str = ""
    ledger: str = "embedded"
    storage: str = "embedded"
    services: str = "in-process"

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return all(self.checks.values()) and all(s.ok for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "ok": self.ok,
            "backend": {"ledger": self.ledger, "storage": self.storage, "services": self.services},
            "total_ms": round(self.total_ms, 1),
            "checks": self.checks,
            "steps": [s.to_dict() for s in self.steps],
            "audit_entries": len(self.audit),
            "directory": self.directory,
        }


StepCallback = Callable[[DemoStep], None]


class _Story:
    def __init__(self, on_step: StepCallback | None) -> None:
        self.result = DemoResult()
        self._on_step = on_step

    @contextmanager
    def step(self, title: str) -> Iterator[DemoStep]:
        s = DemoStep(len(self.result.steps) + 1, title)
        t0 = time.perf_counter()
        try:
            yield s
        except Exception as exc:
            s.ok = False
            s.lines.append(f"failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            s.ms = (time.perf_counter() - t0) * 1000.0
            self.result.steps.append(s)
            if self._on_step is not None:
                self._on_step(s)

    def check(self, name: str, value: bool, step: DemoStep) -> None:
        self.result.checks[name] = value
        if not value:
            step.ok = False


def _read_if_there(path: Path) -> bytes:
    # Service processes still run while the demo scans: a file listed a moment ago may have
    # been replaced by an atomic rename since (a checkpoint's temporary file).
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _tamper_log_entry(ledger_dir: Path, requester: str) -> int:
    """Flip a denied access decision to "allow" directly in the ledger's SQLite world state,
    as a rogue database administrator would. Returns the tampered entry's sequence number."""
    import json

    db = sqlite3.connect(ledger_dir / "ledger.sqlite")
    try:
        rows = db.execute(
            "SELECT key, value FROM state WHERE CAST(value AS TEXT) LIKE ? ORDER BY key",
            ('%"action":"AccessDecision"%',),
        ).fetchall()
        for key, value in rows:
            entry = json.loads(bytes(value))
            if entry.get("outcome") == "deny" and entry["detail"].get("requester") == requester:
                entry["outcome"] = "allow"
                new = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
                db.execute("UPDATE state SET value = ? WHERE key = ?", (new, key))
                db.commit()
                return int(entry["seq"])
    finally:
        db.close()
    raise RuntimeError("no denied access decision to tamper with")


def _tamper_exported(entries: tuple[dict[str, Any], ...], requester: str) -> tuple[Any, int]:
    """An exported copy of a trail with one denied decision flipped to "allow" (as someone
    holding the copy would do). Returns the copy and the tampered entry's sequence number."""
    out = [dict(e) for e in entries]
    for entry in out:
        if entry.get("outcome") == "deny" and entry["detail"].get("requester") == requester:
            entry["outcome"] = "allow"
            return tuple(out), int(entry["seq"])
    raise RuntimeError("no denied access decision to tamper with")


def _ledger_copy(ledger_dir: Path, to: Path) -> Path:
    """A consistent copy of an embedded ledger directory (SQLite's backup, and its key files)."""
    to.mkdir(parents=True)
    for path in ledger_dir.iterdir():
        if path.is_file() and not path.name.startswith("ledger.sqlite"):
            shutil.copy2(path, to / path.name)
    src = sqlite3.connect(ledger_dir / "ledger.sqlite")
    dst = sqlite3.connect(to / "ledger.sqlite")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return to


def _verify_copy(directory: Path, channel: str, against: tuple[Any, ...] = ()) -> Exception | None:
    """None when the ledger in ``directory`` verifies, else the integrity error."""
    from ehrshare.ledger.errors import LedgerIntegrityError
    from ehrshare.ledger.store import EmbeddedLedger

    copy = EmbeddedLedger.open(directory, channel=channel, create=False)
    try:
        copy.verify(against=against)
    except LedgerIntegrityError as exc:
        return exc
    finally:
        copy.close()
    return None


def _careful_edits(
    consortium: Consortium, alice: Session, baker: Session, root: Path, s: DemoStep, story: _Story
) -> None:
    """On copies of the embedded ledger: Dr Baker's denied request turned into "allow" with
    Alice's audit chain, the transaction's write set, block hashes and links all recomputed
    (what SHA-256 alone lets an editor redo); and the last blocks cut off after Alice signed
    the head she saw. ``ledger verify`` catches the first at the rewritten block (the ordering
    key's signature) and the second against her witnessed head."""
    from ehrshare.ledger import forge
    from ehrshare.ledger.witness import sign_head

    channel = consortium.profile.channel
    live = consortium.ledger
    height, head = live.head()
    identity, signer = consortium.profile.wallet("alice").load_identity()
    witnessed = sign_head(
        channel=channel,
        height=height,
        head=head,
        orderer=live.ordering.fingerprint,
        identity=identity,
        signer=signer,
        signed_at=int(time.time()),
    )
    s.lines.append(f"Alice signs the head she sees: height {height}, {head.hex()[:16]}…")
    work = root / "tamper"
    named = []
    for name, resign in (("1", False), ("1b", True)):
        forged = _ledger_copy(root / "ledger", work / f"forged-{name}")
        db = forge.open_db(forged)
        try:
            seq, first = forge.flip_decision(db, alice.ibe_id, baker.ibe_id)
            # 1b: also re-signed with the ordering key, as the ledger's own host could.
            forge.rehash(db, first, ledger_dir=forged if resign else None, channel=channel)
        finally:
            db.close()
        s.lines.append(
            f"copy {name}: entry #{seq} 'deny' → 'allow', the chain's later hashes and blocks "
            f"{first}..{height - 1} re-hashed" + (" and re-signed with the ordering key" * resign)
        )
        caught = _verify_copy(forged, channel)
        s.lines.append(f"ledger verify: {'INVALID — ' + str(caught) if caught else 'valid'}")
        named.append(caught is not None and getattr(caught, "block", None) == first)
    story.check("careful_edit_detected", all(named), s)
    cut = _ledger_copy(root / "ledger", work / "cut")
    db = forge.open_db(cut)
    try:
        forge.truncate(db, height - 2)
    finally:
        db.close()
    alone = _verify_copy(cut, channel)
    caught = _verify_copy(cut, channel, (witnessed,))
    s.lines.append(
        f"copy 2: blocks {height - 2}..{height - 1} deleted; alone it "
        f"{'verifies' if alone is None else 'fails'}, against Alice's head: "
        f"{'INVALID — ' + str(caught) if caught else 'valid'}"
    )
    story.check(
        "truncation_detected",
        alone is None and caught is not None and getattr(caught, "block", None) == height - 2,
        s,
    )
    shutil.rmtree(work, ignore_errors=True)


def _replace_once(raw: bytes, old: bytes, new: bytes) -> bytes:
    if len(old) != len(new) or raw.count(old) != 1:
        raise RuntimeError("the block file does not hold the block's bytes exactly once")
    return raw.replace(old, new)


def _careful_edits_fabric(
    consortium: Consortium, baker: Session, s: DemoStep, story: _Story
) -> None:
    """On Fabric: hospital C's operator stops its peer, extends Alice's grant to Dr Baker in
    the peer's block file (same length, in the transaction's write set), recomputes that
    block's data hash and every later block's previous hash (no key needed), and starts the
    peer again; ``ledger verify`` names hospital C and the block (the orderer's signature).
    The file is put back afterwards. Then the peers' copies as delivered, with their last two
    blocks left out, are checked against the head Alice signed before."""
    import re

    from ehrshare.ledger.errors import LedgerIntegrityError
    from ehrshare.ledger.fabric_blocks import block_hash, common, data_hash, verify_copies
    from ehrshare.ledger.witness import sign_head
    from ehrshare.ledgers import FabricBackend

    network = consortium.network
    assert network is not None
    channel = consortium.profile.channel
    wallet = consortium.profile.wallet("alice")
    identity, signer = wallet.load_identity()
    tls_cert, tls_key = wallet.load_tls()
    client_tls = (tls_cert.credentials, tls_key.to_secret_bytes())
    backend = FabricBackend.from_profile(consortium.profile)

    def copies() -> dict[str, list[Any]]:
        return backend.fetch_copies(identity, signer, channel=channel, client_tls=client_tls)

    def verify(against: tuple[Any, ...] = ()) -> LedgerIntegrityError | None:
        try:
            backend.verify_as(
                identity, signer, channel=channel, client_tls=client_tls, against=against
            )
        except LedgerIntegrityError as exc:
            return exc
        return None

    try:
        network.wait_synced()
        good = copies()
        report = verify_copies(good)
        height = int(report["height"])
        witnessed = sign_head(
            channel=channel,
            height=height,
            head=bytes.fromhex(report["head"]),
            orderer=report["orderer"],
            identity=identity,
            signer=signer,
            signed_at=int(time.time()),
        )
        s.lines.append(f"Alice signs the head she sees: height {height}, {report['head'][:16]}…")

        msp = network.spec.msp_ids[-1]
        blocks = [common.Block.FromString(b.SerializeToString()) for b in good[msp]]
        grantee = f'"grantee":"{baker.ibe_id}"'.encode()
        target = next(
            n
            for n in range(len(blocks) - 1, 0, -1)
            if any(grantee in e and b'"GrantAccess"' in e for e in blocks[n].data.data)
        )
        tx = next(
            i for i, e in enumerate(blocks[target].data.data) if grantee in e and b"expiry" in e
        )
        envelope = bytes(blocks[target].data.data[tx])
        # Every "expiry":<10 digits> of the grant in the write set: its first digit + 1.
        forged_envelope = re.sub(
            rb'("expiry":)(\d)(\d{9})',
            lambda m: m.group(1) + str((int(m.group(2)) + 1) % 10).encode() + m.group(3),
            envelope,
        )
        blocks[target].data.data[tx] = forged_envelope
        blocks[target].header.data_hash = data_hash(blocks[target])
        for n in range(target + 1, len(blocks)):
            blocks[n].header.previous_hash = block_hash(blocks[n - 1])
        path = network.dir / "peers" / msp / "ledgersData" / "chains" / "chains" / channel
        path = path / "blockfile_000000"
        original = path.read_bytes()
        raw = _replace_once(original, envelope, forged_envelope)
        raw = _replace_once(
            raw, bytes(good[msp][target].header.data_hash), bytes(blocks[target].header.data_hash)
        )
        for n in range(target + 1, len(blocks)):
            raw = _replace_once(
                raw,
                bytes(good[msp][n].header.previous_hash),
                bytes(blocks[n].header.previous_hash),
            )
        with _expected_reconnects():
            _stop_peer(network, msp)
        try:
            with _expected_reconnects():
                path.write_bytes(raw)
                network.repair()
            s.lines.append(
                f"{msp}'s operator extends Alice's grant to Dr Baker in block {target} of its "
                f"peer's block file, re-hashes blocks {target}..{len(blocks) - 1}, restarts it"
            )
            caught = verify()
            s.lines.append(f"ledger verify: {'INVALID — ' + str(caught) if caught else 'valid'}")
            story.check(
                "careful_edit_detected",
                caught is not None and caught.block == target and msp in caught.message,
                s,
            )
        finally:
            with _expected_reconnects():
                _stop_peer(network, msp)
                path.write_bytes(original)
                network.repair()
        restored = verify()
        s.lines.append(
            "the file put back: " + ("verifies" if restored is None else f"INVALID — {restored}")
        )

        cut = {m: blocks_[: height - 2] for m, blocks_ in good.items()}
        alone = verify_copies(cut)
        try:
            verify_copies(cut, against=[witnessed])
            caught_cut: LedgerIntegrityError | None = None
        except LedgerIntegrityError as exc:
            caught_cut = exc
        s.lines.append(
            f"every peer's copy without blocks {height - 2}..{height - 1}: alone "
            f"{alone['height']} blocks verify; against Alice's head: "
            f"{'INVALID — ' + str(caught_cut) if caught_cut else 'valid'}"
        )
        story.check(
            "truncation_detected",
            restored is None and caught_cut is not None and caught_cut.block == height - 2,
            s,
        )
    finally:
        backend.close()


@contextmanager
def _expected_reconnects() -> Iterator[None]:
    """While the story restarts a peer on purpose, the clients' reconnection warnings (commit
    listeners, the network's restart notice) say nothing the step does not: keep them out of
    the output. Errors still show."""
    import logging

    loggers = [logging.getLogger(n) for n in ("ehrshare.ledger.peer", "ehrshare.network.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _stop_peer(network: Any, msp: str) -> None:
    """Stop one hospital's peer by its pid (SIGTERM) and wait until it is gone."""
    import os
    import signal

    name = f"peer-{msp}"
    pid = network.pids()[name]
    if name in network.live():  # still the process the network started (pid and start time)
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        raise RuntimeError(f"the peer of {msp} (pid {pid}) did not stop")


def _orderers(consortium: Consortium) -> str:
    fabric = consortium.profile.fabric
    n = len(fabric.orderers) if fabric is not None else 0
    return f"{n} Raft orderer" + ("s" if n != 1 else "")


def run_demo(
    directory: str | Path | None = None,
    *,
    storage: str = "embedded",
    kubo_url: str = "http://127.0.0.1:5001",
    on_step: StepCallback | None = None,
    keep: bool = False,
    services: str = "in-process",
    ledger: str = "embedded",
    hosts: str = "local",
) -> DemoResult:
    """Run the story in ``directory`` (a fresh temporary one by default, deleted afterwards
    unless ``keep``). Raises on an unexpected error; a claim that does not hold is a failed
    check in the result, not an exception. With ``services="processes"`` every process the
    demo started is stopped by pid before it returns (or raises); so is the Fabric network
    with ``ledger="fabric"`` (it needs the binaries ``make tools`` builds). ``hosts="netns"``
    (with Fabric; implies a swarm and service processes) puts each hospital on a host of its
    own and adds the steps of :mod:`ehrshare.demo_hosts`; the hosts are removed at the end."""
    story = _Story(on_step)
    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="ehrshare-demo-")
        root = Path(tmp) / "consortium"
    else:
        root = Path(directory)
    story.result.directory = str(root) if keep or tmp is None else ""
    story.result.storage = storage
    story.result.ledger = ledger
    story.result.services = services
    on_hosts = None
    if hosts == "netns":
        storage, services, on_hosts = (
            "swarm",
            "processes",
            DemoHosts(["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"]),
        )
        story.result.storage, story.result.services = storage, services
    processes = services == "processes"
    t_start = time.perf_counter()
    consortium: Consortium | None = None
    procs: ServiceProcesses | None = None
    sessions: list[Session] = []
    try:
        with story.step("Three hospitals form a consortium and run the KGC's DKG") as s:
            consortium = Consortium.init(
                root,
                storage=storage,
                kubo_url=kubo_url,
                threshold=2,
                services=services,
                ports=free_loopback_ports(6) if processes else None,
                ledger=ledger,
                hosts=on_hosts.placements() if on_hosts else None,
            )
            dkg = consortium.dkg_result()
            where = (
                "a Fabric channel (one peer per hospital, MSPs from the hospitals' CAs, "
                f"{_orderers(consortium)})"
                if ledger == "fabric"
                else "embedded ledger"
            )
            s.lines.append(
                "HospitalA, HospitalB, HospitalC: one CA, one KGC node and one re-encryption "
                f"proxy each; {where}, {storage} content store"
            )
            s.lines.append(
                f"DKG finished: threshold 2 of 3, QUAL = {', '.join(dkg['qual'])}; "
                f"mpk on chain ({dkg['mpk'][:16]}…)"
            )
            story.check("dkg_all_qualified", len(dkg["qual"]) == 3, s)
            if on_hosts is not None:
                s.lines.append(
                    f"each on a host of its own (network namespace): {on_hosts.describe()}"
                )
        c = consortium
        if processes:
            with story.step("The KGC nodes and the proxies start as separate processes") as s:
                netns = on_hosts.netns_by_address() if on_hosts else None
                procs = ServiceProcesses(c.profile, root / "run", die_with_parent=True, netns=netns)
                procs.start()
                for name, pid in procs.pids.items():
                    s.lines.append(
                        f"{name}: pid {pid}, gRPC over mutual TLS on {procs.commands[name].address}"
                    )
        with story.step("A patient, two clinicians and a specialist enrol") as s:
            people = {
                "alice": ("HospitalA", "patient"),
                "dr-adams": ("HospitalA", "clinician"),
                "dr-baker": ("HospitalB", "clinician"),
                "dr-chen": ("HospitalC", "clinician"),
            }
            by_name: dict[str, Session] = {}
            for name, (hospital, role) in people.items():
                if procs is not None and name == "dr-baker":
                    pid = procs.pids["kgc1"]
                    procs.stop("kgc1", kill=True)
                    s.lines.append(f"KGC node 1 crashes (SIGKILL, pid {pid}); τ = 2 of 3 remain")
                c.add_member(name, hospital, role)
                sess = c.session(name)
                sessions.append(sess)
                enrolled = sess.enroll()
                sess.publish_type_keys()
                by_name[name] = sess
                s.lines.append(
                    f"{sess.ibe_id} ({role}): key from KGC nodes "
                    f"{', '.join(map(str, enrolled.used))}; type keys published"
                )
                if procs is not None and name in ("dr-baker", "dr-chen"):
                    story.check(
                        f"enrol_{name}_without_node_1",
                        1 in enrolled.failed and 1 not in enrolled.used,
                        s,
                    )
            story.check("members_enrolled", all(x.enrolled for x in by_name.values()), s)
        alice, adams, baker, chen = (by_name[n] for n in people)
        with story.step("Dr Adams (hospital A) stores three FHIR records for Alice") as s:
            lab = adams.put_record(lab_observation(), patient=alice.ibe_id)
            img = adams.put_record(imaging_study(), patient=alice.ibe_id)
            med = adams.put_record(medication_request(), patient=alice.ibe_id)
            for ref, what in (
                (lab, "Observation"),
                (img, "ImagingStudy"),
                (med, "MedicationRequest"),
            ):
                s.lines.append(
                    f"{what} → type {ref.type} (on chain: {ref.label[:12]}…), "
                    f"{ref.record_id[:14]}…, CID {ref.cid[:16]}…"
                )
            story.check(
                "records_typed",
                (lab.type, img.type, med.type) == ("lab", "imaging", "medication"),
                s,
            )
        with story.step("Alice grants 'lab' to Dr Baker (hospital B), 2 hops, 30 days") as s:
            grant = alice.grant(baker.ibe_id, "lab", expires=_dt.timedelta(days=30), max_hops=2)
            s.lines.append(
                f"grant {grant.grant_id[:14]}… committed, naming {grant.proxy}; re-key sealed "
                "to hospital B's proxy (never on chain)"
            )
            story.check("grant_at_b_proxy", grant.proxy == "HospitalBMSP/proxy", s)
        with story.step("Dr Baker reads the lab result (hop 1)") as s:
            obs = baker.read_record(lab)
            value = obs.valueQuantity.value  # type: ignore[attr-defined]
            s.lines.append(f"decrypted Observation: haemoglobin {value} g/dL")
            story.check("hop1_read_lab", float(value) == 13.2, s)
        if procs is not None:
            with story.step("Hospital B's proxy process restarts (SIGTERM, then again)") as s:
                old = procs.pids["proxy-hospitalb"]
                code = procs.stop("proxy-hospitalb")
                procs.start("proxy-hospitalb")
                s.lines.append(
                    f"proxy-hospitalb pid {old} stopped (exit {code}); pid "
                    f"{procs.pids['proxy-hospitalb']} serves the same sealed re-keys from its "
                    "state directory"
                )
                story.check("proxy_clean_stop", code == 0, s)
        with story.step("Dr Baker refers the case to Dr Chen (hospital C)") as s:
            fwd = baker.forward(lab, chen.ibe_id, max_hops=0)
            s.lines.append(
                f"forwarded grant {fwd.grant_id[:14]}… (hop {fwd.hop}, no further hops); re-key "
                f"at hospital C's proxy ({fwd.proxy})"
            )
            story.check("forward_at_c_proxy", fwd.proxy == "HospitalCMSP/proxy", s)
        with story.step("Dr Chen reads the lab result (hop 2)") as s:
            obs2 = chen.read_record(lab)
            value2 = obs2.valueQuantity.value  # type: ignore[attr-defined]
            s.lines.append(
                "decrypted through two re-encryptions (hospital B's proxy, then hospital C's): "
                f"haemoglobin {value2} g/dL"
            )
            story.check("hop2_read_lab", float(value2) == 13.2, s)
        if on_hosts is not None and c.network is not None and c.swarm is not None:
            with story.step("Hospital A's IPFS node stops; Dr Baker still reads the lab") as s:
                on_hosts.origin_node_stopped(c.swarm, baker, lab, s, story.check)
            with story.step("Hospital C is cut off mid-run, then comes back") as s:
                args = (alice.ibe_id, chen, lab, lab_observation(9.9))
                on_hosts.cut_and_back(c.network, adams, *args, s, story.check)
        with story.step("The imaging study stays unreadable to Dr Baker") as s:
            try:
                baker.read_record(img)
                story.check("imaging_denied", False, s)
            except AccessDenied as exc:
                s.lines.append(f"denied and logged: {exc.reason}")
                story.check("imaging_denied", True, s)
        with story.step("Alice revokes Dr Baker's grant") as s:
            revoked = alice.revoke(grant)
            story.check("grant_revoked", revoked.state == "revoked", s)
            s.lines.append(
                "grant revoked on chain; every hospital's proxy is told to delete the re-keys it "
                "holds of it and of grants forwarded from it (B's: Alice's, C's: Dr Baker's "
                "referral)"
            )
        with story.step("Dr Baker's next request is denied and logged") as s:
            try:
                baker.read_record(lab)
                story.check("denied_after_revoke", False, s)
            except AccessDenied as exc:
                s.lines.append(f"denied: {exc.reason} (access {exc.access_id[:14]}…)")
                story.check("denied_after_revoke", True, s)
            try:
                chen.read_record(lab)
                story.check("forward_denied_after_revoke", False, s)
            except AccessDenied as exc:
                s.lines.append(f"Dr Chen too: {exc.reason}")
                story.check("forward_denied_after_revoke", True, s)
        with story.step("Alice's audit trail, verified") as s:
            trail = alice.audit()
            story.result.audit = list(trail.entries)
            for e in trail.entries:
                who = e["detail"].get("requester") or e["actor"]
                s.lines.append(f"#{e['seq']:>2} {e['action']:<18} {e['outcome']:<9} {who}")
            verdict = alice.verify_audit()
            s.lines.append(
                f"hash chain of {verdict.length} entries: "
                + ("valid" if verdict.valid else f"INVALID ({verdict.reason})")
            )
            story.check("audit_valid", verdict.valid, s)
        with story.step("Nothing readable on the ledger or in the store") as s:
            ledger_dir = root / ("fabric" if ledger == "fabric" else "ledger")
            # On Fabric: every peer's and orderer's block files, state and history databases.
            blobs = [p for p in ledger_dir.rglob("*") if p.is_file()]
            # Service state and logs too: KGC shares, the proxy's re-keys, the process logs.
            blobs += [p for d in ("kgc", "proxy", "run") for p in (root / d).rglob("*")]
            blobs = [p for p in blobs if p.is_file()]
            if storage == "embedded":
                blobs += [p for p in (root / "store").rglob("*") if p.is_file()]
            leaked = [str(p.name) for p in blobs if SECRET_MARKER.encode() in _read_if_there(p)]
            s.lines.append(
                f"scanned {len(blobs)} files for the record's text: "
                + ("not found" if not leaked else f"FOUND in {leaked}")
            )
            story.check("no_plaintext_at_rest", not leaked, s)
        title = "A careful editor rewrites a decision and every hash after it; a cut is caught"
        with story.step(title) as s:
            if ledger == "fabric":
                _careful_edits_fabric(consortium, baker, s, story)
            else:
                _careful_edits(consortium, alice, baker, root, s, story)
        if ledger == "fabric":
            title = "Someone edits an exported copy of the trail; verification catches it"
        else:
            title = "Someone edits a log entry in the database; verification catches it"
        with story.step(title) as s:
            if ledger == "fabric":
                # The peers' state is not ours to edit (and every peer keeps its own copy);
                # what an auditor can be handed is an exported trail.
                copy, seq = _tamper_exported(trail.entries, baker.ibe_id)
                s.lines.append(f"entry #{seq} changed from 'deny' to 'allow' in the copy")
                verdict = alice.verify_audit(trail=dataclasses.replace(trail, entries=copy))
            else:
                seq = _tamper_log_entry(root / "ledger", baker.ibe_id)
                s.lines.append(f"entry #{seq} changed from 'deny' to 'allow' directly in SQLite")
                verdict = alice.verify_audit()
            s.lines.append(
                f"verify: {'valid' if verdict.valid else 'INVALID'} — first bad entry "
                f"#{verdict.first_bad_seq}: {verdict.reason}"
            )
            story.check("tamper_detected", (not verdict.valid) and verdict.first_bad_seq == seq, s)
    finally:
        story.result.total_ms = (time.perf_counter() - t_start) * 1000.0
        for sess in sessions:
            sess.close()
        if procs is not None:
            started = list(procs.started_pids)
            procs.stop_all()
            story.result.checks["service_processes_stopped"] = not any(
                pid_alive(pid) for pid in started
            )
        if consortium is not None:
            network = consortium.network
            fabric_pids = list(network.pids().values()) if network is not None else []
            consortium.close()
            if network is not None:
                story.result.checks["fabric_processes_stopped"] = bool(fabric_pids) and not any(
                    pid_alive(pid) for pid in fabric_pids
                )
        if on_hosts is not None:
            on_hosts.close()
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return story.result
