"""Conditional creates (FHIR R4 ``If-None-Exist``, a transaction entry's ``request.ifNoneExist``):
the condition parsed and checked, a filter on the chain's pointers, and one on decrypted
resources.

A condition is a search on the new resource's type within its patient's records, evaluated by
the gateway over what the caller may read (its own records as a patient, its grants' records as
a clinician): no match, the resource is created; one, nothing is created and the answer is that
record; more, 412. Supported parameters: ``identifier`` (a token: ``system|value``, ``|value``
for an identifier without a system, ``value`` in any system; commas separate alternatives) and
``_id`` (record ids, commas separate alternatives); several parameters must all hold. The chain
does not know identifiers, so ``_id``, the patient and the resource type (a pointer's ``kind``,
on records registered since pointers carry one) are decided on the pointers and the
identifiers on the decrypted resource. A condition of one identifier with its system stated
(``system|value`` or ``|value``, nothing else) also names an on-chain claim
(:meth:`Condition.claimed_identifier`): the gateway registers the record with it, so two
creates under that condition cannot both commit. Must not do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from ehrshare.contract import RecordRef
from ehrshare.fhirapi.outcome import FhirError

__all__ = ["CONDITION_PARAMS", "Condition", "parse_condition"]

CONDITION_PARAMS: Final = ("identifier", "_id")
MAX_CONDITION: Final = 2048  # characters: a condition names a few identifiers, not a document


@dataclass(frozen=True, slots=True)
class _Identifier:
    system: str | None  # None: any system; "": no system
    value: str

    def matches(self, identifier: Any) -> bool:
        if not isinstance(identifier, dict) or identifier.get("value") != self.value:
            return False
        return self.system is None or (identifier.get("system") or "") == self.system


@dataclass(frozen=True, slots=True)
class Condition:
    """A checked condition: every parameter must hold, one of its alternatives each."""

    resource_type: str
    text: str  # as given, for messages
    identifiers: tuple[tuple[_Identifier, ...], ...]
    ids: tuple[frozenset[str], ...]

    def claimed_identifier(self) -> tuple[str, str] | None:
        """The (system, value) a create under this condition claims on chain, or None: only a
        condition of exactly one identifier with its system stated claims (a value in any
        system, alternatives or ``_id`` would need several claims or none decides)."""
        if self.ids or len(self.identifiers) != 1 or len(self.identifiers[0]) != 1:
            return None
        token = self.identifiers[0][0]
        return None if token.system is None else (token.system, token.value)

    def admits_pointer(self, ref: RecordRef, patient: str, kind: str = "") -> bool:
        """Whether the record's pointer can belong to a match (decided without decrypting):
        the patient's record, of the condition's resource type where the pointer names one
        (``kind``: that type's label), and one of the ids ``_id`` names."""
        if ref.kind and kind and ref.kind != kind:
            return False
        return ref.owner == patient and all(ref.record_id in ids for ids in self.ids)

    def admits_resource(self, data: Mapping[str, Any]) -> bool:
        """Whether a decrypted resource matches: its resourceType and its identifiers."""
        if data.get("resourceType") != self.resource_type:
            return False
        have = data.get("identifier")
        have = have if isinstance(have, list) else []
        return all(any(t.matches(i) for t in alts for i in have) for alts in self.identifiers)


def _bad(status: int, where: str, text: str, why: str) -> FhirError:
    return FhirError(status, f"{where} {text!r}: {why}")


def parse_condition(
    resource_type: str, text: str, where: str, *, unsupported_status: int = 400
) -> Condition:
    """Check a condition (``identifier=…&_id=…``, optionally after ``Type?``): 400 for a
    malformed one, ``unsupported_status`` for a parameter this server does not evaluate (a
    transaction entry answers 422 for a feature it does not offer, as for other request
    elements). ``where`` names it in messages (``If-None-Exist``,
    ``entry[2].request.ifNoneExist``)."""
    if len(text) > MAX_CONDITION:
        raise _bad(400, where, text[:40] + "…", f"longer than {MAX_CONDITION} characters")
    query = text.strip()
    head, question, tail = query.partition("?")
    if question:
        named = head.rsplit("/", 1)[-1]
        if named != resource_type:
            raise _bad(
                400, where, text, f"names type {named!r}; the resource created is {resource_type}"
            )
        query = tail
    if not query:
        raise _bad(400, where, text, "give a search such as identifier=system|value")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise _bad(400, where, text, "not a search query (name=value joined by &)") from None
    unknown = sorted({name for name, _ in pairs} - set(CONDITION_PARAMS))
    if unknown:
        raise _bad(
            unsupported_status,
            where,
            text,
            f"unsupported parameter(s) {', '.join(unknown)} (a condition here takes "
            f"{' and '.join(CONDITION_PARAMS)}; the patient is the resource's own)",
        )
    identifiers: list[tuple[_Identifier, ...]] = []
    ids: list[frozenset[str]] = []
    for name, value in pairs:
        if not value or "\\" in value:
            why = "an empty value" if not value else "escaped characters (\\) are not supported"
            raise _bad(400, where, text, f"{name}: {why}")
        alternatives = value.split(",")
        if not all(alternatives):
            raise _bad(400, where, text, f"{name}: an empty alternative")
        if name == "_id":
            ids.append(frozenset(alternatives))
            continue
        tokens = []
        for alt in alternatives:
            system, bar, code = alt.rpartition("|")
            if not code:
                raise _bad(400, where, text, f"identifier {alt!r}: give a value after the |")
            tokens.append(_Identifier(system if bar else None, code))
        identifiers.append(tuple(tokens))
    return Condition(resource_type, text, tuple(identifiers), tuple(ids))
