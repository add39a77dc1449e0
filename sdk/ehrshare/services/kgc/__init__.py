"""The key generation centre, service side: one hospital's KGC node and how it takes part in DKGs.

Modules by concern: :mod:`~ehrshare.services.kgc.errors` (one class per refusal),
:mod:`~ehrshare.services.kgc.board` (the chaincode as DKG board and phaser),
:mod:`~ehrshare.services.kgc.node` (shares, sealing, promotion, catch-up),
:mod:`~ehrshare.services.kgc.participation` (a node's part in a DKG or a resharing),
:mod:`~ehrshare.services.kgc.extraction` (answering extraction requests),
:mod:`~ehrshare.services.kgc.follower` (``ehrshare kgc serve``'s event follower),
:mod:`~ehrshare.services.kgc.local` (opening sessions, running them in process). Every chaincode
call goes through :class:`ehrshare.contract.dkg.DkgBoardClient`; the user side of extraction is
:mod:`ehrshare.key_extraction`. This package re-exports its public API and nothing else.
"""

from __future__ import annotations

from ehrshare.contract.dkg import (
    BUNDLE_FORMAT_VERSION,
    DEFAULT_PHASE_TIMEOUT_S,
    PHASE_DONE,
    PHASE_FAILED,
    RosterKeys,
    dkg_config_from_chain,
    failure_text,
    phase_closed,
    public_polynomial_from_chain,
    reshare_config_from_chain,
    roster_from_chain,
)
from ehrshare.services.kgc.board import LedgerBoard, LedgerPhaser
from ehrshare.services.kgc.errors import (
    BadRequest,
    BadSignature,
    DKGSessionFailed,
    IdentityNotRegistered,
    KgcError,
    KgcUnavailable,
    NoShare,
    NotAuthorised,
    OutdatedRequest,
    RateLimited,
    ReplayedRequest,
    StaleRequest,
    UnregisteredCertificate,
)
from ehrshare.services.kgc.extraction import InProcessKgcClient
from ehrshare.services.kgc.follower import DkgFollower
from ehrshare.services.kgc.local import (
    open_dkg_session,
    open_reshare_session,
    run_local_dkg,
    run_local_reshare,
)
from ehrshare.services.kgc.node import KgcNode
from ehrshare.services.kgc.participation import DkgParticipation, ReshareParticipation

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "DEFAULT_PHASE_TIMEOUT_S",
    "PHASE_DONE",
    "PHASE_FAILED",
    "BadRequest",
    "BadSignature",
    "DKGSessionFailed",
    "DkgFollower",
    "DkgParticipation",
    "IdentityNotRegistered",
    "InProcessKgcClient",
    "KgcError",
    "KgcNode",
    "KgcUnavailable",
    "LedgerBoard",
    "LedgerPhaser",
    "NoShare",
    "NotAuthorised",
    "OutdatedRequest",
    "RateLimited",
    "ReplayedRequest",
    "ReshareParticipation",
    "RosterKeys",
    "StaleRequest",
    "UnregisteredCertificate",
    "dkg_config_from_chain",
    "failure_text",
    "open_dkg_session",
    "open_reshare_session",
    "phase_closed",
    "public_polynomial_from_chain",
    "reshare_config_from_chain",
    "roster_from_chain",
    "run_local_dkg",
    "run_local_reshare",
]
