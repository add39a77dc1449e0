"""The contract's function table: each transaction function declared once, with its kind.

A contract method named as a verb is declared with :func:`submit` (it may change state; every
change is logged) or :func:`evaluate` (it only reads: no write, no log entry, no event).
:func:`function_table` turns the declarations and the method signatures into one
:class:`FunctionSpec` per function; the dispatcher runs only what that table lists, and clients
read it to decide between submitting and evaluating. This module must not name any function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "KINDS",
    "FunctionSpec",
    "Kind",
    "evaluate",
    "function_table",
    "keys_read",
    "preparation",
    "prepare",
    "reads",
    "submit",
]

Kind = Literal["submit", "evaluate"]
KINDS: tuple[Kind, ...] = ("submit", "evaluate")

_KIND_ATTRIBUTE = "__ehrshare_kind__"
_READS_ATTRIBUTE = "__ehrshare_reads__"
_PREPARE_ATTRIBUTE = "__ehrshare_prepare__"
ReadKeys = Callable[..., Iterable[tuple[str, ...]]]
"""From a function's arguments (strings, optional ones defaulting to ``""``): the keys
``(object type, *attributes)`` it reads on every path that succeeds."""
_Method = TypeVar("_Method", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One transaction function: its name, its kind and its argument names in call order.

    Every argument travels as a string; the trailing ``optional`` ones may be left out and then
    mean ``""``. Use ``kind`` to choose ``submit_transaction`` or ``evaluate_transaction``.
    """

    name: str
    kind: Kind
    args: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        """The arguments every call must pass."""
        return self.args[: len(self.args) - len(self.optional)]


def submit(method: _Method) -> _Method:
    """Declare a transaction function that may change state (and logs every change)."""
    setattr(method, _KIND_ATTRIBUTE, "submit")
    return method


def evaluate(method: _Method) -> _Method:
    """Declare a transaction function that only reads: it writes nothing and logs nothing."""
    setattr(method, _KIND_ATTRIBUTE, "evaluate")
    return method


def reads(keys: ReadKeys) -> Callable[[_Method], _Method]:
    """Declare keys a transaction function reads whatever happens, known from its arguments.

    The dispatcher hands them to the stub as a prefetch hint before resolving the caller, so a
    Fabric >= 3.1 peer answers them with the caller's identity in one request
    (:meth:`~ehrshare_chaincode.stub.ChaincodeStub.prefetch`). Name only keys that every
    successful run reads, or the transaction's read set grows.
    """

    def mark(method: _Method) -> _Method:
        setattr(method, _READS_ATTRIBUTE, keys)
        return method

    return mark


def prepare(hook: Callable[..., None]) -> Callable[[_Method], _Method]:
    """Declare a step run before the caller is resolved: ``hook(ctx, *args)``, for a function
    whose arguments carry hints of what it will read (RequestAccess's ``owner`` and
    ``record_type``). The dispatcher runs it after the :func:`reads` keys are declared and
    before the caller's identity is read, so whatever it declares rides in the same request.
    It may only read: a scan whose answer the function reuses if its own arguments turn out to
    match, and prefetch hints. A hint it follows that turns out wrong can only add keys or a
    range to the read set, never remove one the function reads (docs/chaincode.md).
    """

    def mark(method: _Method) -> _Method:
        setattr(method, _PREPARE_ATTRIBUTE, hook)
        return method

    return mark


def preparation(method: Callable[..., Any]) -> Callable[..., None] | None:
    """The step declared with :func:`prepare` for ``method``, if any."""
    found: Callable[..., None] | None = getattr(method, _PREPARE_ATTRIBUTE, None)
    return found


def keys_read(method: Callable[..., Any]) -> ReadKeys | None:
    """The keys declared with :func:`reads` for ``method``, if any."""
    found: ReadKeys | None = getattr(method, _READS_ATTRIBUTE, None)
    return found


def function_table(contract_type: type) -> dict[str, FunctionSpec]:
    """Every declared function of ``contract_type`` by name, read from its methods
    ``(self, ctx, *args)``.

    Raises :class:`TypeError` for a method named as a verb without a declaration, a declared
    method not named as one, or an argument that is not a plain string parameter (optional ones
    default to ``""``): a function the table misses would be one no client can call.
    """
    table: dict[str, FunctionSpec] = {}
    for name, method in inspect.getmembers(contract_type, inspect.isfunction):
        kind = getattr(method, _KIND_ATTRIBUTE, None)
        where = f"{contract_type.__name__}.{name}"
        if not name[:1].isupper():
            if kind is not None:
                raise TypeError(f"{where} is declared {kind} but is not named as a verb")
            continue
        if kind not in KINDS:
            raise TypeError(f"{where} is named as a verb but declared neither submit nor evaluate")
        params = list(inspect.signature(method).parameters.values())[2:]  # self, ctx
        for p in params:
            if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or p.default not in (
                inspect.Parameter.empty,
                "",
            ):
                raise TypeError(f"{where}: argument {p.name} must be a string, optional as ''")
        table[name] = FunctionSpec(
            name=name,
            kind=kind,
            args=tuple(p.name for p in params),
            optional=tuple(p.name for p in params if p.default is not inspect.Parameter.empty),
        )
    return table
