"""The embedded ledger's checked reads: every state row a committing transaction reads must be
what the transaction it names wrote, in a block the ordering key signed.

:class:`SignedReads` remembers what it verified (block hashes, write sets) for the life of the
process, so the check costs one signature per block and one hash per transaction. It must not
write to the database; the full check of a ledger is :meth:`EmbeddedLedger.verify
<ehrshare.ledger.store.EmbeddedLedger.verify>` (a replay, :mod:`ehrshare.ledger.replay`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable

from ehrshare.ledger.envelope import SignedProposal
from ehrshare.ledger.errors import LedgerIntegrityError
from ehrshare.ledger.ordering import OrderingIdentity
from ehrshare.ledger.records import VALID, _block_hash, _tx_hash, parse_writes, show_key

__all__ = ["SignedReads"]

_VERIFIED_KEPT = 4096  # verified blocks and write sets a process remembers (then starts over)


class SignedReads:
    """Checks state rows against the signed writes they name, for one ledger connection.

    ``ordering`` returns the ledger's ordering identity (read from its database on open).
    """

    def __init__(
        self, conn: sqlite3.Connection, channel: str, ordering: Callable[[], OrderingIdentity]
    ) -> None:
        self._conn = conn
        self.channel = channel
        self._ordering = ordering
        # Verified facts, kept for the life of this process: block number -> its verified hash,
        # and (block, txn) -> the write set of a transaction whose hash that block covers.
        self._signed_blocks: dict[int, bytes] = {}
        self._verified_writes: dict[tuple[int, int], dict[tuple[str, bytes], bytes | None]] = {}

    def check_read(self, ns: str, key: bytes, value: bytes, blk: int, txn: int) -> None:
        """Refuse a state row that is not what transaction (blk, txn) wrote for its key in a
        block the ordering key signed. Cheap: one block signature per block per process, one
        transaction hash and one write-set parse per transaction, both cached once verified.

        Not caught here (``EmbeddedLedger.verify`` catches it): a row set back to an earlier
        signed write of the same key, with the later history rows deleted; a deleted row.
        """
        writes = self._verified_writes.get((blk, txn))
        if writes is None:
            writes = self._verified_tx_writes(ns, key, blk, txn)
        if (ns, key) not in writes or writes[(ns, key)] != value:
            raise LedgerIntegrityError(
                f"world state key {show_key(key)} does not hold what block {blk} transaction "
                f"{txn} wrote: the ledger database was edited; run 'ehrshare ledger verify'",
                block=blk,
                txn=txn,
            )

    def _verified_tx_writes(
        self, ns: str, key: bytes, blk: int, txn: int
    ) -> dict[tuple[str, bytes], bytes | None]:
        row = self._conn.execute(
            "SELECT proposal, signature, writes, response, event_name, event_payload, code, "
            "tx_hash FROM transactions WHERE blk = ? AND txn = ?",
            (blk, txn),
        ).fetchone()
        where = f"world state key {show_key(key)} names block {blk} transaction {txn}"
        if row is None or row[6] != VALID:
            raise LedgerIntegrityError(
                f"{where}, which is not a valid transaction: the ledger database was edited",
                block=blk,
                txn=txn,
            )
        event = None if row[4] is None else (str(row[4]), bytes(row[5]))
        tx_hash = _tx_hash(
            SignedProposal(bytes(row[0]), bytes(row[1])), bytes(row[2]), bytes(row[3]), event, VALID
        )
        if tx_hash != bytes(row[7]):
            raise LedgerIntegrityError(
                f"{where}, whose stored content does not match its hash", block=blk, txn=txn
            )
        self._check_signed_block(blk, where)
        hashes = [
            bytes(r[0])
            for r in self._conn.execute(
                "SELECT tx_hash FROM transactions WHERE blk = ? ORDER BY txn", (blk,)
            )
        ]
        data = hashlib.sha256(b"".join(hashes)).digest()
        if tx_hash not in hashes or data != self._signed_data_hash(blk):
            raise LedgerIntegrityError(
                f"{where}, which the signed block does not contain", block=blk, txn=txn
            )
        writes = parse_writes(bytes(row[2]))
        if len(self._verified_writes) >= _VERIFIED_KEPT:
            self._verified_writes.clear()
        self._verified_writes[(blk, txn)] = writes
        return writes

    def _signed_data_hash(self, number: int) -> bytes:
        row = self._conn.execute(
            "SELECT data_hash FROM blocks WHERE number = ?", (number,)
        ).fetchone()
        return b"" if row is None else bytes(row[0])

    def _check_signed_block(self, number: int, where: str) -> None:
        row = self._conn.execute(
            "SELECT b.prev_hash, b.data_hash, b.hash, s.signature FROM blocks b "
            "LEFT JOIN block_sigs s ON s.number = b.number WHERE b.number = ?",
            (number,),
        ).fetchone()
        if row is None or row[3] is None:
            raise LedgerIntegrityError(f"{where}, which is missing or unsigned", block=number)
        block_hash = _block_hash(number, bytes(row[0]), bytes(row[1]))
        if self._signed_blocks.get(number) == block_hash:
            return
        if block_hash != bytes(row[2]) or not self._ordering().verify_block(
            self.channel, number, block_hash, bytes(row[3])
        ):
            raise LedgerIntegrityError(
                f"{where}, whose block signature does not verify", block=number
            )
        if len(self._signed_blocks) >= _VERIFIED_KEPT:
            self._signed_blocks.clear()
        self._signed_blocks[number] = block_hash

    # --- commit --------------------------------------------------------------------------------

    def remember(
        self,
        number: int,
        block_hash: bytes,
        writes: dict[int, dict[tuple[str, bytes], bytes | None]],
    ) -> None:
        if len(self._verified_writes) + len(writes) > _VERIFIED_KEPT:
            self._verified_writes.clear()
        if len(self._signed_blocks) >= _VERIFIED_KEPT:
            self._signed_blocks.clear()
        self._signed_blocks[number] = block_hash
        for txn, w in writes.items():
            self._verified_writes[(number, txn)] = w
