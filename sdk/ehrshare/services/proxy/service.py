"""The re-encryption proxy service: holds re-keys, re-encrypts capsules after committed approvals.

A :class:`ReencryptionProxy` receives re-encryption keys sealed to its X25519 key
(:func:`~ehrshare.rekey_delivery.seal_rekey` on the patient's or forwarding grantee's side),
checks each against its grant on chain (GetGrant: the grantor, grantee and type the re-key must
carry), and stores it re-sealed at rest in an SQLite database in its state directory (see
:mod:`ehrshare.services.vault`).

It re-encrypts a record's capsule only after the chaincode confirms a **committed** access
approval (CheckApproval by access id) for exactly that record, requester and grant, and only once
per approval and hop run (a chain that comes back to this proxy after another is served per run):
the approval id is written to the database (a committed SQLite transaction, ``synchronous=FULL``)
*before* the capsule leaves, so a restart at any point never releases a capsule twice without a
new approval — at worst the requester must request access again. Each re-encryption is reported
to the operation log (ReportReencryption).

One proxy per hospital: every grant names on chain the proxy that holds its re-key, and a proxy
accepts only re-keys of grants that name it (:attr:`ReencryptionProxy.ibe_id`). Multi-hop: the
hops of a forwarding chain may sit at different proxies (owner→B at B's hospital, B→C at C's).
The requester visits them in chain order; each proxy checks the committed approval (which the
chaincode shows only to a proxy the chain names), applies its own run of consecutive hops, and
reports the hash of the capsule it released (ReportReencryption ``applied``/``capsule_sha256``).
The proxy of a later hop accepts a partly re-encrypted capsule only when its hash is the one the
previous hop's proxy reported on chain for that approval, so nobody can slip it another capsule
(for instance one of the forwarding grantee's own records) to convert.

Atomic grants: a grantor delivers the re-key *before* the grant commits, under the grant id it
chose (GrantAccess takes it). While no grant of that id is on chain the proxy keeps the re-key
as *pending* (sealed at rest, keyed by grant id and depositor, checked to open, parse and come
from the depositor). It becomes a held re-key when the committed grant is first seen — its
GrantAccess event, a re-encryption that needs it, or a second delivery — after the same checks
as a direct delivery (the grant names this proxy, its grantor is the depositor, the re-key goes
from grantor to grantee for the grant's type). So a committed grant always has its re-key here,
whatever is killed when; a delivery whose grant never commits is dropped after
:data:`PENDING_TTL_S`.

Type-key epochs: a root grant's re-key of the owner's epoch n ≥ 1 is ``<grant id>#<n>``, pending
until the grant lists n (RekeyGrant), and re-encrypts the root hop of records of epoch n.

Revocation: :meth:`ReencryptionProxy.revoke` deletes a grant's re-key and those of every grant
forwarded from it; :class:`RevocationFollower` does so for every RevokeAccess chaincode event,
resuming from a checkpoint kept in the same database.

What this module must not do: log or raise with a re-key or capsule bytes; take the requester
from anywhere but the authenticated caller when one is given; return a capsule before the
approval is recorded as consumed; store a re-key unsealed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Final

from ehrshare.closing import Closing
from ehrshare.contract import EhrContract, Grant
from ehrshare.contract.types import Access, StoredRecord
from ehrshare.hazmat.errors import DecryptionError, EncodingError
from ehrshare.hazmat.kgc_keys import X25519KeyPair, open_sealed
from ehrshare.hazmat.tipre import (
    Capsule,
    ReKey,
    VerifiedCapsule,
    VerifiedReKey,
    identity_tag,
    reencrypt,
)
from ehrshare.ledger.api import ChaincodeEvent, Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare.rekey_delivery import rekey_delivery_aad, rekey_id
from ehrshare.services.protocols import (
    ApprovalConsumed,
    ApprovalRefused,
    InvalidReKey,
    NoReKey,
    NotAuthorised,
    ProxyError,
)
from ehrshare.services.proxy.epochs import covers as _covers
from ehrshare.services.proxy.epochs import grant_of as _grant_of
from ehrshare.services.proxy.store import (
    DB_NAME,
    SCHEMA,
    KeyedLocks,
    doomed_rekeys,
    pending_purpose,
    read_checkpoint,
    rekey_purpose,
    write_checkpoint,
)
from ehrshare.services.vault import open_state, seal_state

__all__ = ["PENDING_TTL_S", "ReencryptionProxy"]

_log = logging.getLogger(__name__)

_REKEY_CACHE_SIZE: Final = 1024
PENDING_TTL_S: Final = 3600.0
"""How long a re-key delivered ahead of its grant waits for the grant to commit. The grantor
submits the grant right after the delivery, so an hour is far beyond any commit latency."""
_MAX_PENDING_PER_DEPOSITOR: Final = 256
_SWEEP_ROWS: Final = 16
_GRANT_ID_PATTERN: Final = re.compile(r"g-[0-9a-f]{32}")


def _chain_reason(exc: LedgerError) -> str:
    return exc.message


class ReencryptionProxy(Closing):
    """Receives re-keys sealed to it, stores them encrypted at rest, re-encrypts only after
    verifying a committed approval (chaincode CheckApproval) for exactly that record, requester
    and grant, reports the re-encryption (chaincode ReportReencryption), deletes re-keys on
    revocation. Restart-safe.

    ``contract`` is called with the proxy's own (role ``proxy``) identity, ``ibe_id`` (what
    grants name as their proxy); ``key`` is the proxy's long-term X25519 key (loaded from a key
    file kept outside ``state_dir``).
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        contract: Contract,
        key: X25519KeyPair,
        ibe_id: str,
        name: str = "proxy",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ibe_id = ibe_id
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = name
        self._chain = EhrContract(contract)
        self._key = key
        # _lock guards the shared SQLite connection only (short, no chain calls under it);
        # re-encryptions hold a per-approval lock instead.
        self._lock = threading.RLock()
        self._approval_locks = KeyedLocks()
        # grant id -> (its row as read from the database, the re-key unsealed and verified).
        self._rekey_cache: dict[str, tuple[tuple[str, str, str, bytes], VerifiedReKey]] = {}
        self._db = sqlite3.connect(
            self.state_dir / DB_NAME, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a consumed approval is on disk when the transaction returns (restart safety).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        (self.state_dir / DB_NAME).chmod(0o600)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"ReencryptionProxy(name={self.name!r}, state_dir={str(self.state_dir)!r})"

    # --- keys ---------------------------------------------------------------------------------

    def public_key(self) -> bytes:
        """The X25519 public key grantors seal re-keys to
        (:func:`~ehrshare.rekey_delivery.seal_rekey`)."""
        return self._key.public_bytes

    def _grant(self, grant_id: str) -> Grant:
        try:
            return self._chain.get_grant(grant_id)
        except LedgerError as exc:
            raise NoReKey(f"grant {grant_id}: {_chain_reason(exc)}") from None

    def holds(self, grant_id: str) -> bool:
        """True when a re-key for ``grant_id`` is stored here."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM rekeys WHERE grant_id = ?", (grant_id,))
            return row.fetchone() is not None

    def _committed_grant(self, grant_id: str) -> Grant | None:
        """The grant on chain (of a grant or re-key id), or None when no grant of that id has
        committed (yet)."""
        grant_id = _grant_of(grant_id)
        try:
            return self._chain.get_grant(grant_id)
        except LedgerError as exc:
            if exc.message == f"grant {grant_id} does not exist":
                return None
            if exc.unreachable:
                raise ProxyError(
                    f"the ledger is unreachable, so grant {grant_id} cannot be checked: "
                    f"{_chain_reason(exc)}"
                ) from None
            raise NoReKey(f"grant {grant_id}: {_chain_reason(exc)}") from None

    def store_rekey(self, grant_id: str, sealed_rekey: bytes, *, caller: str | None = None) -> None:
        """Accept a re-key sealed to this proxy for a grant: one on chain and active, or one
        not committed yet (kept pending until it is, see the module docstring).

        ``caller`` (the authenticated client, when there is one) must be the grant's grantor.
        The grant must name this proxy; the re-key must go from the grantor to the grantee for
        the grant's type. Delivering the re-key of a grant whose re-key is already held here
        is a no-op (a retried delivery, or ``grant repair`` of a grant that is fine).
        """
        grant = self._committed_grant(grant_id)
        if grant is None:
            self._store_pending(grant_id, sealed_rekey, caller)
            return
        if grant.state != "active":
            raise InvalidReKey(f"grant {grant_id} is {grant.state}; no re-key is accepted")
        if caller is not None and caller != grant.grantor:
            raise NotAuthorised(f"identity {caller} is not the grantor of grant {grant_id}")
        try:
            raw = open_sealed(self._key, sealed_rekey, aad=rekey_delivery_aad(grant_id))
        except DecryptionError:
            raise InvalidReKey(
                f"the re-key for grant {grant_id} does not open with this proxy's key"
            ) from None
        if self.holds(grant_id):
            self._drop_pending(grant_id)
            return
        if not _covers(grant, grant_id):
            # The owner delivers first, then RekeyGrant commits: pending until it has.
            self._store_pending(grant_id, sealed_rekey, caller)
            return
        self._insert_rekey(grant_id, grant, raw)

    def _insert_rekey(self, grant_id: str, grant: Grant, raw: bytes) -> None:
        """Check a re-key against its committed grant and store it; drop its pending copies in
        the same database transaction."""
        named = grant.proxy
        if named != self.ibe_id:
            raise InvalidReKey(
                f"grant {grant_id} names proxy {named or '(none)'}, not this proxy "
                f"({self.ibe_id}); deliver its re-key to the proxy it names"
            )
        parent = grant.parent_grant_id
        # Every grant above this one, read from chain now: the parents' re-keys may sit at other
        # proxies, and revoking any of them must delete this re-key here.
        ancestors = self._ancestors(grant.grant_id, parent)
        if grant_id != grant.grant_id:
            ancestors.insert(0, grant.grant_id)  # an epoch's re-key goes with its grant
        try:
            ReKey.from_secret_bytes(raw).verify(
                delegator=grant.grantor, delegatee=grant.grantee, type_label=grant.label
            )
        except (EncodingError, ValueError) as exc:
            raise InvalidReKey(
                f"the re-key for grant {grant_id} does not match it: {exc}"
            ) from None
        sealed = seal_state(self._key, rekey_purpose(grant_id), raw)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO rekeys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        grant_id,
                        parent,
                        grant.owner,
                        grant.grantor,
                        grant.grantee,
                        grant.label,
                        sealed,
                        time.time(),
                    ),
                )
                self._db.executemany(
                    "INSERT INTO rekey_ancestors VALUES (?, ?)", [(grant_id, a) for a in ancestors]
                )
                self._db.execute("DELETE FROM pending_rekeys WHERE grant_id = ?", (grant_id,))
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise InvalidReKey(f"grant {grant_id} already has a re-key here") from None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        _log.info(
            "proxy %s stored the re-key of grant %s (%s -> %s, type %s)",
            self.name,
            grant_id,
            grant.grantor,
            grant.grantee,
            grant.label,
        )

    def _store_pending(self, grant_id: str, sealed_rekey: bytes, caller: str | None) -> None:
        """Keep the re-key of a grant that has not committed yet (see the module docstring)."""
        if not _GRANT_ID_PATTERN.fullmatch(_grant_of(grant_id)):
            raise InvalidReKey(
                f"grant {grant_id!r} does not exist, and a re-key delivered ahead of its grant "
                "needs a grant id of 'g-' and 32 lower-case hex digits"
            )
        try:
            raw = open_sealed(self._key, sealed_rekey, aad=rekey_delivery_aad(grant_id))
        except DecryptionError:
            raise InvalidReKey(
                f"the re-key for grant {grant_id} does not open with this proxy's key"
            ) from None
        try:
            rekey = ReKey.from_secret_bytes(raw)
        except (EncodingError, ValueError) as exc:
            raise InvalidReKey(f"the re-key for grant {grant_id} is malformed: {exc}") from None
        depositor = caller or ""
        if caller is not None and rekey.delegator_tag != identity_tag(caller):
            raise NotAuthorised(f"the re-key for grant {grant_id} is not from identity {caller}")
        self._sweep_pending()
        sealed = seal_state(self._key, pending_purpose(grant_id, depositor), raw)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (count,) = self._db.execute(
                    "SELECT COUNT(*) FROM pending_rekeys WHERE depositor = ? AND grant_id != ?",
                    (depositor, grant_id),
                ).fetchone()
                if int(count) >= _MAX_PENDING_PER_DEPOSITOR:
                    raise InvalidReKey(
                        f"identity {depositor or '(unauthenticated)'} has {count} re-keys here "
                        "whose grants have not committed; commit or withdraw those first"
                    )
                self._db.execute(
                    "INSERT OR REPLACE INTO pending_rekeys VALUES (?, ?, ?, ?)",
                    (grant_id, depositor, sealed, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        _log.info(
            "proxy %s holds the re-key of grant %s pending its commit (from %s)",
            self.name,
            grant_id,
            depositor or "(unauthenticated)",
        )

    def _drop_pending(
        self, grant_id: str, depositor: str | None = None, *, with_epochs: bool = False
    ) -> int:
        # ``with_epochs``: also the re-keys of the grant's type-key epochs (<grant id>#<n>).
        like = grant_id + "#%" if with_epochs else grant_id
        with self._lock:
            if depositor is None:
                cur = self._db.execute(
                    "DELETE FROM pending_rekeys WHERE grant_id = ? OR grant_id LIKE ?",
                    (grant_id, like),
                )
            else:
                cur = self._db.execute(
                    "DELETE FROM pending_rekeys WHERE (grant_id = ? OR grant_id LIKE ?) "
                    "AND depositor = ?",
                    (grant_id, like, depositor),
                )
            return int(cur.rowcount)

    def activate(self, grant_id: str) -> bool:
        """Turn a pending re-key into a held one if its grant has committed (idempotent).

        True when the re-key of ``grant_id`` is held here afterwards. A pending re-key whose
        grant is revoked, names another proxy, has another grantor or does not match is
        dropped; one whose grant has not committed stays pending.
        """
        if self.holds(grant_id):
            return True
        with self._lock:
            rows = self._db.execute(
                "SELECT depositor, sealed FROM pending_rekeys WHERE grant_id = ? "
                "ORDER BY depositor",
                (grant_id,),
            ).fetchall()
        if not rows:
            return False
        grant = self._committed_grant(grant_id)
        if grant is None:
            return False
        if grant.state == "active" and not _covers(grant, grant_id):
            return False  # its RekeyGrant has not committed (yet)
        for depositor, blob in rows:
            depositor = str(depositor)
            usable = grant.state == "active" and depositor in ("", grant.grantor)
            if usable:
                try:
                    raw = open_state(self._key, pending_purpose(grant_id, depositor), bytes(blob))
                except DecryptionError:
                    # Altered at rest: never used; the grantor re-delivers (grant repair).
                    _log.error("proxy %s: the pending re-key of %s is altered", self.name, grant_id)
                    self._drop_pending(grant_id, depositor)
                    continue
                try:
                    self._insert_rekey(grant_id, grant, raw)
                    return True
                except InvalidReKey as exc:
                    if self.holds(grant_id):  # activated concurrently
                        return True
                    _log.warning("proxy %s: dropping a pending re-key: %s", self.name, exc)
            self._drop_pending(grant_id, depositor)
        return False

    def _sweep_pending(self) -> None:
        """Activate or drop a few pending re-keys older than :data:`PENDING_TTL_S`."""
        cutoff = time.time() - PENDING_TTL_S
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT grant_id FROM pending_rekeys WHERE stored_at < ? "
                "ORDER BY stored_at LIMIT ?",
                (cutoff, _SWEEP_ROWS),
            ).fetchall()
        for (gid,) in rows:
            try:
                if self._committed_grant(str(gid)) is None:
                    dropped = self._drop_pending(str(gid), with_epochs=True)
                    _log.info(
                        "proxy %s: grant %s never committed; dropped %d pending re-key(s)",
                        self.name,
                        gid,
                        dropped,
                    )
                else:
                    self.activate(str(gid))
            except ProxyError as exc:
                _log.warning("proxy %s: pending re-key of %s: %s", self.name, gid, exc)
                return

    def rekey_status(self, grant_id: str, *, caller: str | None = None) -> str:
        """``held`` (usable), ``pending`` (delivered, its grant not seen committed) or
        ``missing``.

        ``caller`` (the authenticated client, when there is one) must be a party to the grant
        on chain (owner, grantor or grantee); a pending grant is taken into use first.
        """
        if caller is not None:
            grant = self._committed_grant(grant_id)
            if grant is None:
                raise NoReKey(f"grant {grant_id} does not exist")
            if caller not in (grant.owner, grant.grantor, grant.grantee):
                raise NotAuthorised(f"identity {caller} may not ask about grant {grant_id}")
            self.activate(grant_id)
        if self.holds(grant_id):
            return "held"
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM pending_rekeys WHERE grant_id = ?", (grant_id,)
            ).fetchone()
        return "pending" if row is not None else "missing"

    def _ancestors(self, grant_id: str, parent: str) -> list[str]:
        out: list[str] = []
        current = parent
        while current:
            if current in out or current == grant_id:
                raise InvalidReKey(f"grant {grant_id} has a cycle in its forwarding chain")
            out.append(current)
            above = self._grant(current)
            if above.state != "active":
                # Its revocation may have been handled here already: keep nothing below it.
                raise InvalidReKey(f"grant {current} above grant {grant_id} is {above.state}")
            current = above.parent_grant_id
        return out

    def _rekey_row(self, grant_id: str) -> tuple[str, str, str, bytes]:
        """(grantor, grantee, type, sealed re-key) of a grant whose re-key is held here."""
        with self._lock:
            row = self._db.execute(
                "SELECT grantor, grantee, type, sealed FROM rekeys WHERE grant_id = ?",
                (grant_id,),
            ).fetchone()
        if row is None:
            raise NoReKey(f"this proxy holds no re-key for grant {grant_id}")
        return str(row[0]), str(row[1]), str(row[2]), bytes(row[3])

    def _verified_rekey(self, grant_id: str) -> VerifiedReKey:
        """The re-key of a grant held here, unsealed and checked against its row.

        The row is read from the database on every use, so a re-key deleted on revocation is
        gone at once (also when another process sharing the state directory deleted it). What
        is remembered is only the result of unsealing and parsing the very same row: its bytes
        were checked when the re-key was stored and are sealed under this proxy's key at rest,
        so parsing them again would only repeat the GT subgroup check (~0.5 ms a hop). The
        proxy's own key, in memory anyway, opens every re-key it holds, so keeping a few
        unsealed in memory exposes nothing new to someone who can read that memory.
        """
        try:
            row = self._rekey_row(grant_id)
        except NoReKey:
            # Delivered ahead of its grant: the committed approval shows the grant is on chain.
            if not self.activate(grant_id):
                raise
            row = self._rekey_row(grant_id)
        with self._lock:
            hit = self._rekey_cache.get(grant_id)
        if hit is not None and hit[0] == row:
            return hit[1]
        grantor, grantee, type_label, sealed = row
        raw = open_state(self._key, rekey_purpose(grant_id), sealed)
        rekey = ReKey.from_secret_bytes(raw).verify(
            delegator=grantor, delegatee=grantee, type_label=type_label
        )
        with self._lock:
            self._rekey_cache[grant_id] = (row, rekey)
            while len(self._rekey_cache) > _REKEY_CACHE_SIZE:
                del self._rekey_cache[next(iter(self._rekey_cache))]  # the oldest entry
        return rekey

    # --- re-encryption ------------------------------------------------------------------------

    def reencrypt(
        self,
        *,
        record_id: str,
        requester: str,
        approval_id: str,
        grant_id: str | None = None,
        capsule: bytes | None = None,
    ) -> bytes:
        """Apply this proxy's hops of a committed, unused approval to a record's capsule.

        ``approval_id`` is the ``access_id`` RequestAccess returned; ``grant_id``, when given,
        must be the grant it approved. The approval's grant chain (root first) says which proxy
        holds each hop's re-key. ``capsule`` is what the requester has so far: the record's own
        capsule (or none: it is read from chain at the approved version and checked against the
        approval's ``capsule_sha256``), or the capsule the proxy of the previous hop released,
        whose hash must be the one that proxy reported on chain. This proxy applies the run of
        consecutive hops from there that name it, reports the result, and returns the capsule;
        when later hops name other proxies the requester takes it on to them.
        """
        # One lock per approval, not one for the proxy: chain calls for different approvals run
        # in parallel, while two calls quoting the same approval are serialised so the second
        # sees the first one's consumed row. The PRIMARY KEY insert below is what makes single
        # use airtight (also across processes sharing the state directory); the lock only
        # spares the loser the chain round trips.
        with self._approval_locks.hold(approval_id):
            access = self._find_approval(record_id, requester, approval_id, grant_id)
            chain = [(h.grant_id, h.proxy) for h in access.chain]
            source = self._input_capsule(access, capsule)
            start = source.hops
            if start >= len(chain):
                raise ApprovalRefused(
                    f"the capsule sent already carries all {len(chain)} hop(s) of approval "
                    f"{approval_id}"
                )
            if chain[start][1] != self.ibe_id:
                raise ApprovalRefused(
                    f"hop {start + 1} of approval {approval_id} is for proxy "
                    f"{chain[start][1] or '(none)'}, not this proxy ({self.ibe_id})"
                )
            end = start
            while end < len(chain) and chain[end][1] == self.ibe_id:
                end += 1
            # The first run keeps the bare approval id as its key (as before multi-proxy
            # chains); a later run of the same approval at this proxy gets its own.
            use_key = approval_id if start == 0 else f"{approval_id}#{start}"
            if self._is_consumed(use_key):
                raise ApprovalConsumed(
                    f"approval {approval_id} was already used; request access again"
                )
            current: VerifiedCapsule = source
            for position, (gid, _proxy) in enumerate(chain[start:end], start):
                # The root hop's re-key is the one of the record's type-key epoch.
                rekey = self._verified_rekey(
                    rekey_id(gid, access.type_epoch) if position == 0 else gid
                )
                try:
                    current = reencrypt(current, rekey)
                except (EncodingError, ValueError) as exc:
                    raise ApprovalRefused(
                        f"hop {start + 1} of approval {approval_id} does not apply to the capsule "
                        f"sent: {exc}"
                    ) from None
            out = current.to_bytes()
            chosen = access.grant_id
            try:
                with self._lock:
                    self._db.execute(
                        "INSERT INTO consumed VALUES (?, ?, ?, ?, ?)",
                        (use_key, record_id, requester, chosen, time.time()),
                    )
            except sqlite3.IntegrityError:
                raise ApprovalConsumed(
                    f"approval {approval_id} was already used; request access again"
                ) from None
        try:
            self._chain.report_reencryption(
                approval_id,
                "ok",
                f"hops {start + 1}-{end} of {len(chain)} by {self.name}",
                applied=end,
                capsule_sha256=hashlib.sha256(out).hexdigest(),
            )
        except LedgerError as exc:
            _log.error(
                "proxy %s: re-encryption for approval %s could not be reported: %s",
                self.name,
                approval_id,
                exc,
            )
            raise ProxyError(
                f"the re-encryption for approval {approval_id} could not be reported to the "
                f"operation log ({_chain_reason(exc)}); nothing was released, request access again"
            ) from None
        _log.info(
            "proxy %s re-encrypted record %s for %s (approval %s, grant %s, hops %d-%d of %d)",
            self.name,
            record_id,
            requester,
            approval_id,
            chosen,
            start + 1,
            end,
            len(chain),
        )
        return out

    def _is_consumed(self, use_key: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM consumed WHERE approval_id = ?", (use_key,)
            ).fetchone()
        return row is not None

    def _find_approval(
        self, record_id: str, requester: str, approval_id: str, grant_id: str | None
    ) -> Access:
        try:
            access = self._chain.check_approval(approval_id)
        except LedgerError as exc:
            raise ApprovalRefused(
                f"no committed approval {approval_id} for record {record_id} and requester "
                f"{requester}: {_chain_reason(exc)}"
            ) from None
        mismatches = [
            f"{what} {theirs} (not {ours})"
            for what, theirs, ours in (
                ("access id", access.access_id, approval_id),
                ("decision", access.decision, "allow"),
                ("record", access.record_id, record_id),
                ("requester", access.requester, requester),
                (
                    "grant",
                    access.grant_id,
                    access.grant_id if grant_id is None else grant_id,
                ),
            )
            if theirs != ours
        ]
        if mismatches:
            raise ApprovalRefused(
                f"approval {approval_id} does not match the request: it is for "
                + ", ".join(mismatches)
            )
        if not access.chain:
            raise ApprovalRefused(f"approval {approval_id} has no grant chain to re-encrypt along")
        return access

    def _input_capsule(self, access: Access, given: bytes | None) -> VerifiedCapsule:
        """The capsule to start from: the record's own, or the previous hop's reported output.

        The hash is checked before the capsule is parsed, and it is parsed (every group element
        checked) once: parsing costs a GT subgroup check per layer, the largest cost of a
        multi-hop read.
        """
        record_id = access.record_id
        if given is None:
            return self._capsule(access, None)
        digest = hashlib.sha256(given).hexdigest()
        hops = given[1] if len(given) > 1 else 0  # the header's hop count; parsed fully below
        if hops == 0:
            expected = access.capsule_sha256
            if expected is None:
                return self._capsule(access, given)  # an approval from before capsule hashes
            if digest != expected:
                raise ApprovalRefused(f"the capsule sent is not the capsule of record {record_id}")
            # The chaincode hashed the record's capsule at this version when it approved: an
            # equal hash is that capsule, so reading the record pointer again adds nothing.
        else:
            self._check_reported(access, digest, hops)
        try:
            return Capsule.from_bytes(given).verify(owner=access.owner, type_label=access.label)
        except (EncodingError, ValueError) as exc:
            raise ApprovalRefused(f"capsule of record {record_id}: {exc}") from None

    def _check_reported(self, access: Access, digest: str, hops: int) -> None:
        reported = {r.applied: r for r in access.reports}
        report = reported.get(hops)
        if report is None:
            raise ApprovalRefused(
                f"no proxy reported hop {hops} of approval {access.access_id}; visit the "
                "proxies of the grant chain in order"
            )
        if digest != report.capsule_sha256:
            raise ApprovalRefused(
                f"the capsule sent is not the one proxy {report.proxy} released for hop "
                f"{hops} of approval {access.access_id}"
            )

    def _capsule(self, access: Access, given: bytes | None) -> VerifiedCapsule:
        record_id = access.record_id
        try:
            stored: StoredRecord = self._chain.get_record(record_id, access.record_version)
        except LedgerError as exc:
            raise ProxyError(
                f"record {record_id} could not be read: {_chain_reason(exc)}"
            ) from None
        data = stored.capsule
        expected = access.capsule_sha256
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ApprovalRefused(
                f"the capsule of record {record_id} is not the one approval "
                f"{access.access_id} was given for"
            )
        if given is not None and given != data:
            raise ApprovalRefused(f"the capsule sent is not the capsule of record {record_id}")
        try:
            parsed = Capsule.from_bytes(data)
            verified = parsed.verify(owner=access.owner, type_label=access.label)
        except (EncodingError, ValueError) as exc:
            raise ApprovalRefused(f"capsule of record {record_id}: {exc}") from None
        if verified.hops != 0:
            raise ApprovalRefused(f"capsule of record {record_id} is already re-encrypted")
        return verified

    # --- revocation ---------------------------------------------------------------------------

    def revoke(self, grant_id: str, *, caller: str | None = None) -> int:
        """Delete the re-key of ``grant_id`` and of every grant forwarded from it.

        ``caller`` (authenticated client) must be the grant's owner or grantor, unless the
        grant is already revoked on chain. For a grant that has not committed, only the
        caller's own pending delivery is withdrawn. Returns how many re-keys were deleted.
        """
        if caller is not None:
            grant = self._committed_grant(grant_id)
            if grant is None:
                return self._drop_pending(grant_id, caller, with_epochs=True)
            if grant.state == "active" and caller not in (grant.owner, grant.grantor):
                raise NotAuthorised(f"identity {caller} may not revoke grant {grant_id}")
        with self._lock:
            doomed = doomed_rekeys(self._db, grant_id)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = 0
                for gid in doomed:
                    deleted += self._db.execute(
                        "DELETE FROM rekeys WHERE grant_id = ?", (gid,)
                    ).rowcount
                    self._db.execute("DELETE FROM rekey_ancestors WHERE grant_id = ?", (gid,))
                    deleted += self._db.execute(
                        "DELETE FROM pending_rekeys WHERE grant_id = ? OR grant_id LIKE ?",
                        (gid, gid + "#%"),
                    ).rowcount
                    self._rekey_cache.pop(gid, None)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if deleted:
            # The freed pages may still hold the sealed blobs; they are sealed, but reclaim them.
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _log.info("proxy %s: revoked grant %s, deleted %d re-key(s)", self.name, grant_id, deleted)
        return deleted

    # --- event checkpoint ---------------------------------------------------------------------

    def checkpoint(self) -> tuple[int | None, str | None]:
        """(block, transaction id) of the last chaincode event handled by the follower."""
        with self._lock:
            return read_checkpoint(self._db)

    def handle_event(self, event: ChaincodeEvent, *, checkpoint: bool = True) -> int:
        """Apply one chaincode event (RevokeAccess deletes re-keys, GrantAccess and RekeyGrant
        activate a re-key delivered ahead of them), then checkpoint it (unless told not to: a
        batch checkpoints its last event with :meth:`save_checkpoint`)."""
        deleted = 0
        handled = ("GrantAccess", "RevokeAccess", "RekeyGrant")
        payload = json.loads(event.payload) if event.event_name in handled else {}
        for entry in payload.get("entries", []):
            action, gid = entry.get("action"), str(entry.get("grant_id") or "")
            if action == "RevokeAccess" and gid:
                deleted += self.revoke(gid)
            elif action in ("GrantAccess", "RekeyGrant") and gid:
                epoch = int((entry.get("detail") or {}).get("type_epoch", 0))
                name = rekey_id(gid, epoch if action == "RekeyGrant" else 0)
                try:
                    if self.rekey_status(name) == "pending":
                        self.activate(name)
                except ProxyError as exc:  # taken into use at its first read instead
                    _log.warning("proxy %s: re-key %s stays pending: %s", self.name, name, exc)
        if checkpoint:
            self.save_checkpoint(event)
        return deleted

    def save_checkpoint(self, event: ChaincodeEvent) -> None:
        """Record ``event`` as the last one handled."""
        with self._lock:
            write_checkpoint(self._db, event.block_number, event.transaction_id)
