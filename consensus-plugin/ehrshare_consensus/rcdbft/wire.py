"""RC-DBFT on the wire: the message kinds, vote and signer sizes, and view-change reports.

Sizes here are what the simulator charges on the network; changing one changes every result.
This module must not hold protocol state.
"""

from __future__ import annotations

from enum import StrEnum

from ..core import HEADER_BYTES, SIG_BYTES

__all__ = [
    "QC_WINDOW",
    "SIGNER",
    "VOTE",
    "Kind",
    "Report",
    "report_bytes",
    "report_size",
    "report_verifies",
]

VOTE = HEADER_BYTES + SIG_BYTES
SIGNER = SIG_BYTES + 4
# Commit QCs that reach the primary up to this many heights late still count for participation.
QC_WINDOW = 8

# A member's signed view-change report: (member, last executed height, its digest,
# prepared (view, digest) at the next height or None, signatures in that prepared certificate).
Report = tuple[int, int, int, tuple[int, int] | None, int]


class Kind(StrEnum):
    """Every RC-DBFT message kind. A `str`, so that message counts and signed-vote records
    read (and serialise) as before: ``Kind.PV == "PV"``."""

    # normal case
    PP = "PP"  # PRE-PREPARE: primary -> leaders
    FWD = "FWD"  # the proposal, leader -> its members
    PV = "PV"  # PREPARE vote, member -> its leader
    PQC = "PQC"  # cluster prepare QC, leader -> leaders
    PREP = "PREP"  # prepared certificate, leader -> its members
    CV = "CV"  # COMMIT vote, member -> its leader
    CQC = "CQC"  # cluster commit QC (with participants), leader -> leaders
    DEC = "DEC"  # DECIDE with the commit certificate, leader -> members and observers
    # participation
    RCPT = "RCPT"  # a member's own COMMIT vote left out of every participant list
    QCB = "QCB"  # a leaving leader's commit QCs and receipts, handed to the new primary
    # cluster leader change
    LC = "LC"  # a member's complaint about its leader
    NL = "NL"  # a new leader announces itself with the complaints
    # top-level view change
    TVI = "TVI"  # a leader's intent to enter a view
    VCN = "VCN"  # leader -> members: the view change, the intents seen so far
    VCR = "VCR"  # a member's signed report
    TVC = "TVC"  # a leader's view-change certificate: a cluster quorum of reports
    TNV = "TNV"  # NEW-VIEW from the new primary
    TNVQ = "TNVQ"  # a leader asks the new primary for its NEW-VIEW again
    NVF = "NVF"  # a leader forwards the NEW-VIEW to its members
    NVQ = "NVQ"  # a member asks its leader for the NEW-VIEW
    # state transfer
    FETCH = "FETCH"
    BLOCKS = "BLOCKS"


def report_size(rep: Report) -> int:
    """Wire size of one member's signed report (VCR)."""
    return VOTE + 16 + SIGNER * rep[4]


def report_bytes(reps: list[Report] | tuple[Report, ...]) -> int:
    """Wire size of view-change reports: each report's own signature and fields, plus each
    distinct prepared certificate once (reports claiming the same (view, digest) share it)."""
    certs = {(r[1] + 1, r[3]): r[4] for r in reps if r[3] is not None}
    return len(reps) * (VOTE + 16) + SIGNER * sum(certs.values())


def report_verifies(reps: list[Report] | tuple[Report, ...]) -> int:
    certs = {(r[1] + 1, r[3]): r[4] for r in reps if r[3] is not None}
    return len(reps) + sum(certs.values())
