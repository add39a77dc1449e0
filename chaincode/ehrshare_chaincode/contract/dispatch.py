"""The contract type and its dispatcher: one :class:`EHRContract` composed of the domain parts,
one :data:`FUNCTIONS` table, and :func:`invoke`, which the backends call per transaction.

This module must not hold contract rules; they live in the domain modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .. import canonical
from ..stub import ChaincodeError, ChaincodeStub
from .access import Access
from .audit import Audit
from .context import TxContext
from .dkg_board import DkgBoard
from .dkg_sessions import DkgSessions
from .emergency import Emergency
from .functions import FunctionSpec, function_table, keys_read, preparation
from .grants import Grants
from .guardian_reads import GuardianReads
from .guardians import Guardians
from .identities import Identities
from .minor_guardians import MinorGuardians
from .records import Records
from .recovery import Recovery
from .type_epochs import TypeEpochs

__all__ = ["FUNCTIONS", "EHRContract", "invoke"]


class EHRContract(
    Identities,
    TypeEpochs,
    Records,
    Grants,
    Access,
    DkgSessions,
    DkgBoard,
    Audit,
    Recovery,
    Guardians,
    MinorGuardians,
    GuardianReads,
    Emergency,
):
    """The contract. Its public methods named as verbs are the transaction functions; each is
    declared ``submit`` or ``evaluate`` in its domain module and listed in :data:`FUNCTIONS`."""


FUNCTIONS: Mapping[str, FunctionSpec] = MappingProxyType(function_table(EHRContract))
"""Every transaction function by name: its kind (``submit`` or ``evaluate``) and argument names."""

_CONTRACT = EHRContract()
_METHODS: dict[str, Callable[..., Any]] = {name: getattr(_CONTRACT, name) for name in FUNCTIONS}


def invoke(stub: ChaincodeStub, function: str, args: list[bytes]) -> bytes:
    """Run one transaction function; returns canonical JSON or raises :class:`ChaincodeError`.

    On success the transaction's log entries become its one chaincode event, named after the
    function. On failure the caller must discard every write the stub collected.
    """
    spec = FUNCTIONS.get(function)
    if spec is None:
        raise ChaincodeError(f"function {function} does not exist")
    required, total = len(spec.required), len(spec.args)
    if not required <= len(args) <= total:
        expected = str(required) if required == total else f"{required} to {total}"
        raise ChaincodeError(f"{function} takes {expected} arguments, got {len(args)}")
    texts: list[str] = []
    for i, raw in enumerate(args):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ChaincodeError(f"argument {i + 1} of {function} is not valid utf-8") from None
    ts = stub.get_tx_timestamp()
    ctx = TxContext(stub=stub, function=function, now=int(ts.seconds), tx_id=stub.get_tx_id())
    method = _METHODS[function]
    declared = keys_read(method)
    if declared is not None:
        ctx.prefetch(*declared(*texts))  # fetched with the caller's identity (functions.reads)
    prepared = preparation(method)
    if prepared is not None:
        prepared(ctx, *texts)  # hints followed before the caller is read (functions.prepare)
    # Resolving the caller refuses a certificate that recovery revoked, in every function.
    _ = ctx.caller
    result = method(ctx, *texts)
    if ctx.entries:
        stub.set_event(function, canonical.dumps({"tx_id": ctx.tx_id, "entries": ctx.entries}))
    return canonical.dumps(result)
