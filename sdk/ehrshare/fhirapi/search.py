"""Record searches (``GET [base]/{type}?patient=&category=&_lastUpdated=``): the parameters
parsed and checked, a filter on the chain's pointers, and a filter on decrypted resources.

The chain holds, per record, its owner, its opaque type label (the clinical record type), the
opaque label of its resourceType (its ``kind``, on records registered since the chaincode took
one) and when each version was registered — not its FHIR categories (they would say in clear
what the opaque labels hide). So the resource type, ``_lastUpdated``, ``patient`` and a category
in the record-type system (``urn:ehrshare:record-type|lab``) are decided on the pointers and
nothing else is decrypted; a FHIR category code (``laboratory``) narrows the record types to
those the consortium's type mapping could give such a resource, and is then checked on the
decrypted resource, as the resourceType is for a record without a kind. Must not do I/O.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ehrshare.contract import RecordRef
from ehrshare.fhir import TypeMapping, codings
from ehrshare.fhirapi.outcome import FhirError

__all__ = ["RECORD_TYPE_SYSTEM", "SEARCH_PARAMS", "RecordSearch", "parse_search"]

RECORD_TYPE_SYSTEM: Final = "urn:ehrshare:record-type"
SEARCH_PARAMS: Final = ("patient", "subject", "category", "_lastUpdated")
_TYPE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # as ehrshare.fhir checks them
_PREFIXES: Final = ("eq", "ne", "gt", "lt", "ge", "le")
_DATE: Final = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True, slots=True)
class _Token:
    system: str | None  # None: any system
    code: str

    def matches(self, system: str, code: str) -> bool:
        return code == self.code and (self.system is None or self.system == system)


@dataclass(frozen=True, slots=True)
class _DateBound:
    prefix: str
    lo: float  # the value's range, [lo, hi) in seconds since the epoch
    hi: float

    def admits(self, t: float) -> bool:
        if self.prefix == "eq":
            return self.lo <= t < self.hi
        if self.prefix == "ne":
            return not self.lo <= t < self.hi
        if self.prefix == "gt":
            return t >= self.hi
        if self.prefix == "ge":
            return t >= self.lo
        if self.prefix == "lt":
            return t < self.lo
        return t < self.hi  # le


@dataclass(frozen=True, slots=True)
class RecordSearch:
    """A checked search: every ``category`` parameter must match (one of its comma-separated
    tokens each), every ``_lastUpdated`` bound must hold."""

    resource_type: str
    patient: str | None
    categories: tuple[tuple[_Token, ...], ...]
    updated: tuple[_DateBound, ...]

    def possible_labels(
        self, mapping: TypeMapping, label_of: Callable[[str], str]
    ) -> frozenset[str] | None:
        """The on-chain labels a match can have (None: any), from the category parameters;
        ``label_of`` maps a record type to its opaque label."""
        allowed: frozenset[str] | None = None
        for alternatives in self.categories:
            types: set[str] = set()
            for token in alternatives:
                types |= _types_for(mapping, self.resource_type, token)
            labels = {label_of(t) for t in types}
            allowed = frozenset(labels) if allowed is None else allowed & labels
        return allowed

    def admits_pointer(self, ref: RecordRef, labels: frozenset[str] | None, kind: str = "") -> bool:
        """Whether the record's pointer can belong to a match (decided without decrypting);
        ``kind`` is the label of :attr:`resource_type` (a pointer that names another is no
        match; one that names none may be)."""
        if self.patient is not None and ref.owner != self.patient:
            return False
        if kind and ref.kind and ref.kind != kind:
            return False
        if labels is not None and ref.label not in labels:
            return False
        updated = ref.updated_at or ref.created_at
        return all(b.admits(updated) for b in self.updated)

    def admits_resource(
        self, data: Mapping[str, Any], ref: RecordRef, label_of: Callable[[str], str]
    ) -> bool:
        """Whether a decrypted resource (of a pointer :meth:`admits_pointer` let through)
        matches: its resourceType, and its categories for FHIR category codes."""
        if data.get("resourceType") != self.resource_type:
            return False
        have = codings(data.get("category", []))
        for alternatives in self.categories:
            if not any(
                (t.system == RECORD_TYPE_SYSTEM and ref.label == label_of(t.code))
                or any(t.matches(s, c) for s, c in have)
                for t in alternatives
            ):
                return False
        return True


def _types_for(mapping: TypeMapping, resource_type: str, token: _Token) -> set[str]:
    """The record types a ``resource_type`` resource with category ``token`` may be stored
    under. A resource may carry several categories and security labels, so any rule that can
    apply to the resourceType is possible, up to the first rule that always applies."""
    if token.system == RECORD_TYPE_SYSTEM:
        return {token.code}
    out: set[str] = set()
    for rule in [r for r in mapping.rules if r.security] + [
        r for r in mapping.rules if not r.security
    ]:
        if rule.resource and resource_type not in rule.resource:
            continue
        out.add(rule.type)
        certain = not rule.security and (
            not rule.category
            or any(
                c == token.code and (token.system is None or s in ("", token.system))
                for s, c in rule.category
            )
        )
        if certain:
            return out
    out.add(mapping.default_type)
    return out


def _token(text: str) -> _Token:
    system, bar, code = text.rpartition("|")
    if not code:
        raise FhirError(400, f"category={text!r}: give a code (code, system|code or |code)")
    if system == RECORD_TYPE_SYSTEM and not _TYPE_NAME.fullmatch(code):
        raise FhirError(400, f"category={text!r}: {code!r} is not a record type name (a-z, 0-9, -)")
    return _Token(system if bar else None, code)


def _date_bound(text: str) -> _DateBound:
    prefix, value = (text[:2], text[2:]) if text[:2] in _PREFIXES else ("eq", text)
    m = _DATE.fullmatch(value)
    if m is None:
        raise FhirError(
            400,
            f"_lastUpdated={text!r}: not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.fff]] with Z or ±hh:mm) after an optional prefix "
            f"({', '.join(_PREFIXES)})",
        )
    g = m.groupdict()
    if g["H"] is not None and g["z"] is None:
        raise FhirError(400, f"_lastUpdated={text!r}: a time needs a zone (Z or ±hh:mm)")
    try:
        zone = _dt.UTC
        if g["z"] not in (None, "Z"):
            sign = -1 if g["z"][0] == "-" else 1
            hours, minutes = int(g["z"][1:3]), int(g["z"][4:6])
            zone = _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes))
        year, month, day = int(g["y"]), int(g["m"] or 1), int(g["d"] or 1)
        start = _dt.datetime(
            year,
            month,
            day,
            int(g["H"] or 0),
            int(g["M"] or 0),
            int(g["S"] or 0),
            int((g["f"] or "0").ljust(6, "0")[:6]),
            tzinfo=zone,
        )
    except (ValueError, OverflowError) as exc:
        raise FhirError(400, f"_lastUpdated={text!r}: {exc}") from None
    lo = start.timestamp()
    if g["m"] is None:
        hi = start.replace(year=year + 1).timestamp() if year < 9999 else float("inf")
    elif g["d"] is None:
        nxt = start.replace(year=year + month // 12, month=month % 12 + 1) if year < 9999 else None
        hi = nxt.timestamp() if nxt is not None else float("inf")
    elif g["H"] is None:
        hi = lo + 86400
    elif g["S"] is None:
        hi = lo + 60
    elif g["f"] is None:
        hi = lo + 1
    else:
        hi = lo + 10.0 ** -len(g["f"])
    return _DateBound(prefix, lo, hi)


def parse_search(
    resource_type: str, query: Mapping[str, Sequence[str]], patient: str | None
) -> RecordSearch:
    """Check a record search's parameters (``patient`` already resolved by the caller); 400
    for an unknown parameter or a bad value."""
    unknown = set(query) - set(SEARCH_PARAMS)
    if unknown:
        raise FhirError(
            400,
            f"unsupported search parameter(s): {', '.join(sorted(unknown))} (this server "
            f"searches records by {', '.join(SEARCH_PARAMS)})",
        )
    categories = tuple(
        tuple(_token(t) for t in value.split(",")) for value in query.get("category", [])
    )
    updated = tuple(_date_bound(v) for v in query.get("_lastUpdated", []))
    return RecordSearch(resource_type, patient, categories, updated)
