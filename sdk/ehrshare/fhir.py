"""FHIR R4 records in and out of the SDK, and the record type each one is encrypted under.

Use :func:`parse_resource` to validate what a hospital app hands in (a ``fhir.resources.R4B``
model, a dict or JSON) and to validate what comes back out of a decryption;
:class:`TypeMapping` to pick the clinical record type ("lab", "imaging", ...) from a resource's
``meta.security`` labels and its category; :class:`TypeLabels` to turn that clinical type into
the opaque label that goes on chain and into the PRE capsule.

Opaque labels: the chain stores ``t-`` + the first 16 bytes of HMAC-SHA256(consortium label key,
type) in hex. Someone who reads the ledger without the key (an orderer operator, a backup, a
leaked block) cannot tell a psychiatry record from a lab result. What stays visible: which records
share a type (labels are deterministic, so they link), how many records and grants each patient
has, who created and read what and when, and the grant graph. Every consortium member holds the
key and can map labels back (there are only a handful of types), so it hides the type from
outsiders, not from members.

This module must not do I/O or cryptography beyond the HMAC, and must not log resource contents.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from ehrshare.errors import InvalidInput
from ehrshare.jsontext import too_deep

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_TYPE",
    "LABEL_KEY_SIZE",
    "FhirValidationError",
    "TypeLabels",
    "TypeMapping",
    "TypeRule",
    "UnknownRecordType",
    "codings",
    "parse_resource",
    "resource_bytes",
]

LABEL_KEY_SIZE: Final = 32
# Deeper JSON is refused before validation: real resources nest a few dozen levels at most,
# and a deeper document would exhaust the parser's and the validator's recursion.
MAX_DEPTH: Final = 100
DEFAULT_TYPE: Final = "general"
_TYPE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_OPAQUE_RE: Final = re.compile(r"t-[0-9a-f]{32}")
_LABEL_DST: Final = b"ehrshare/v1/type-label"
_KIND_DST: Final = b"ehrshare/v1/resource-kind"
_CLAIM_DST: Final = b"ehrshare/v1/identifier-claim"
_RESOURCE_TYPE_RE: Final = re.compile(r"[A-Z][A-Za-z]{0,63}")

_OBS_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
_DIAG_SERVICE: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


class FhirValidationError(InvalidInput):
    """The input is not a valid FHIR R4 resource; the message names the failing fields."""


class UnknownRecordType(InvalidInput):
    """A record type name that the consortium's type mapping does not know."""


def _check_type_name(name: str) -> str:
    if not isinstance(name, str) or not _TYPE_NAME_RE.fullmatch(name):
        raise UnknownRecordType(
            f"record type {name!r} is invalid: use 1-32 lower-case letters, digits or '-'"
        )
    return name


def _too_deep() -> str:
    return f"resource is nested more than {MAX_DEPTH} levels deep, deeper than any FHIR resource"


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether JSON-like ``obj`` nests more than ``limit`` containers (iteratively: a deep
    object must not exhaust the stack while it is measured)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "(resource)"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_resource(data: FHIRAbstractModel | Mapping[str, Any] | str | bytes) -> FHIRAbstractModel:
    """Validate ``data`` as a FHIR R4 (R4B models) resource and return the model.

    A model instance is re-validated from its dump, so one built with ``model_construct`` (which
    skips validation) cannot slip through. Raises :class:`FhirValidationError`.
    """
    obj: Any
    if isinstance(data, FHIRAbstractModel):
        obj = json.loads(data.model_dump_json(exclude_none=True))
    elif isinstance(data, str | bytes):
        # Before parsing: the C JSON decoder recurses per level, and a deep enough document can
        # exhaust the C stack before any RecursionError (a segfault, seen with 100,000 levels).
        if too_deep(data, MAX_DEPTH):
            raise FhirValidationError(_too_deep())
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FhirValidationError(f"resource is not valid JSON: {exc}") from None
        except RecursionError:
            raise FhirValidationError(_too_deep()) from None
    elif isinstance(data, Mapping):
        obj = dict(data)
    else:
        raise FhirValidationError(
            f"a FHIR resource must be a fhir.resources model, dict or JSON, got "
            f"{type(data).__name__}"
        )
    if not isinstance(obj, dict):
        raise FhirValidationError("a FHIR resource must be a JSON object")
    if _depth_exceeds(obj, MAX_DEPTH):
        raise FhirValidationError(_too_deep())
    resource_type = obj.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirValidationError("resource has no resourceType")
    try:
        model_class = get_fhir_model_class(resource_type)
    except ValueError:
        raise FhirValidationError(
            f"resourceType {resource_type!r} is not a FHIR R4 resource"
        ) from None
    if not hasattr(model_class, "get_resource_type") or resource_type in ("Resource",):
        raise FhirValidationError(f"resourceType {resource_type!r} is not a FHIR R4 resource")
    try:
        return model_class.model_validate(obj)
    except ValidationError as exc:
        raise FhirValidationError(f"invalid FHIR {resource_type}: {_summarise(exc)}") from None


def resource_bytes(resource: FHIRAbstractModel) -> bytes:
    """The canonical JSON bytes the SDK encrypts (compact, without empty fields)."""
    return resource.model_dump_json(exclude_none=True).encode("utf-8")


def codings(value: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept list, a CodeableConcept or a Coding list."""
    out: list[tuple[str, str]] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        codings = item.get("coding") if "coding" in item else [item]
        for c in codings or []:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                out.append((str(c.get("system") or ""), c["code"]))
    return out


@dataclass(frozen=True, slots=True)
class TypeRule:
    """One mapping rule: if every given condition holds, the record gets ``type``.

    ``resource`` names resourceTypes; ``category`` and ``security`` are ``(system, code)`` pairs
    where an empty system matches any system. Security-label rules are tried before the others,
    so a record labelled as restricted never falls into an ordinary type.
    """

    type: str
    resource: tuple[str, ...] = ()
    category: tuple[tuple[str, str], ...] = ()
    security: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_type_name(self.type)
        if not (self.resource or self.category or self.security):
            raise ValueError(f"rule for type {self.type!r} has no condition")

    @staticmethod
    def _any(wanted: Sequence[tuple[str, str]], have: Sequence[tuple[str, str]]) -> bool:
        return any((s == "" or s == hs) and c == hc for s, c in wanted for hs, hc in have)

    def matches(
        self,
        resource_type: str,
        categories: Sequence[tuple[str, str]],
        security: Sequence[tuple[str, str]],
    ) -> bool:
        """Whether this rule applies to a resource with these codes."""
        if self.resource and resource_type not in self.resource:
            return False
        if self.category and not self._any(self.category, categories):
            return False
        return not (self.security and not self._any(self.security, security))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TypeRule:
        """Parse one rule as written in a profile (``type``, ``resource``, ``category``, ...)."""

        def pairs(key: str) -> tuple[tuple[str, str], ...]:
            raw = data.get(key) or []
            out = []
            for item in raw if isinstance(raw, list) else [raw]:
                if isinstance(item, str):
                    system, _, code = item.rpartition("|")
                    out.append((system, code))
                elif isinstance(item, Mapping) and isinstance(item.get("code"), str):
                    out.append((str(item.get("system") or ""), str(item["code"])))
                else:
                    raise ValueError(f"rule {key} entry {item!r} is not 'system|code' or a map")
            return tuple(out)

        unknown = set(data) - {"type", "resource", "category", "security"}
        if unknown:
            raise ValueError(f"type rule has unknown keys: {', '.join(sorted(unknown))}")
        resource = data.get("resource") or []
        if isinstance(resource, str):
            resource = [resource]
        return cls(
            type=str(data.get("type", "")),
            resource=tuple(str(r) for r in resource),
            category=pairs("category"),
            security=pairs("security"),
        )


DEFAULT_RULES: Final[tuple[TypeRule, ...]] = (
    TypeRule("restricted", security=((_CONFIDENTIALITY, "R"), (_CONFIDENTIALITY, "V"))),
    TypeRule(
        "sensitive",
        security=tuple((_ACT_CODE, c) for c in ("PSY", "HIV", "SUD", "ETH", "SDV", "STD", "SEX")),
    ),
    TypeRule("lab", resource=("Observation",), category=((_OBS_CATEGORY, "laboratory"),)),
    TypeRule("lab", resource=("DiagnosticReport",), category=((_DIAG_SERVICE, "LAB"),)),
    TypeRule("lab", resource=("Specimen",)),
    TypeRule("imaging", resource=("ImagingStudy", "Media")),
    TypeRule("imaging", resource=("Observation",), category=((_OBS_CATEGORY, "imaging"),)),
    TypeRule("imaging", resource=("DiagnosticReport",), category=((_DIAG_SERVICE, "RAD"),)),
    TypeRule(
        "medication",
        resource=(
            "MedicationRequest",
            "MedicationStatement",
            "MedicationAdministration",
            "MedicationDispense",
        ),
    ),
    TypeRule("vital-signs", resource=("Observation",), category=((_OBS_CATEGORY, "vital-signs"),)),
)


@dataclass(frozen=True, slots=True)
class TypeMapping:
    """Which clinical record type a resource is encrypted under (configurable per consortium)."""

    rules: tuple[TypeRule, ...] = DEFAULT_RULES
    default_type: str = DEFAULT_TYPE
    extra_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_type_name(self.default_type)
        for t in self.extra_types:
            _check_type_name(t)

    @property
    def types(self) -> tuple[str, ...]:
        """Every type this mapping can produce, sorted (what members publish keys for)."""
        names = {r.type for r in self.rules} | {self.default_type} | set(self.extra_types)
        return tuple(sorted(names))

    def derive(self, resource: FHIRAbstractModel) -> str | None:
        """The type a rule assigns, or None when no rule matches."""
        data = json.loads(resource.model_dump_json(exclude_none=True))
        resource_type = str(data.get("resourceType", ""))
        categories = codings(data.get("category", []))
        meta = data.get("meta") or {}
        security = codings(meta.get("security", []))
        ordered = [r for r in self.rules if r.security] + [r for r in self.rules if not r.security]
        for rule in ordered:
            if rule.matches(resource_type, categories, security):
                return rule.type
        return None

    def resolve(self, resource: FHIRAbstractModel, requested: str | None = None) -> str:
        """The type to encrypt under: the derived one, or ``requested`` when they agree.

        An explicit type may name a resource that no rule covers; it may not override what the
        resource's own labels say (a mislabelled record would reach the wrong grantees).
        """
        derived = self.derive(resource)
        if requested is None:
            return derived or self.default_type
        self.check(requested)
        if derived is not None and derived != requested:
            raise UnknownRecordType(
                f"record type {requested!r} contradicts the resource's labels, which map it to "
                f"{derived!r}; drop type= or fix the resource's category/meta.security"
            )
        return requested

    def check(self, name: str) -> str:
        """Raise :class:`UnknownRecordType` unless ``name`` is one of :attr:`types`."""
        _check_type_name(name)
        if name not in self.types:
            raise UnknownRecordType(
                f"record type {name!r} is not configured; known types: {', '.join(self.types)}"
            )
        return name


class TypeLabels:
    """Clinical type name ↔ opaque on-chain label, under the consortium's label key.

    The key is a secret shared by members (see the module docstring for what it hides).
    """

    __slots__ = ("_key", "_reverse")

    def __init__(self, key: bytes, types: Iterable[str] = ()) -> None:
        if not isinstance(key, bytes) or len(key) != LABEL_KEY_SIZE:
            raise ValueError(f"label key must be {LABEL_KEY_SIZE} bytes")
        self._key = key
        self._reverse: dict[str, str] = {}
        for t in types:
            self._reverse[self.opaque(t)] = t

    def __repr__(self) -> str:
        return f"TypeLabels(types={sorted(self._reverse.values())}, key=<hidden>)"

    def opaque(self, type_name: str) -> str:
        """The on-chain label of a clinical type."""
        _check_type_name(type_name)
        mac = hmac.new(self._key, _LABEL_DST + type_name.encode(), hashlib.sha256).digest()
        return "t-" + mac[:16].hex()

    def kind(self, resource_type: str) -> str:
        """The on-chain label of a FHIR resourceType (a record's ``kind``): an HMAC under the
        same key as :meth:`opaque`, with its own domain, so members can tell which records are
        Observations without reading them and others cannot."""
        if not _RESOURCE_TYPE_RE.fullmatch(resource_type):
            raise ValueError(f"{resource_type!r} is not a FHIR resource type name")
        mac = hmac.new(self._key, _KIND_DST + resource_type.encode(), hashlib.sha256).digest()
        return "k-" + mac[:16].hex()

    def claim(self, owner: str, resource_type: str, system: str, value: str) -> str:
        """A conditional create's on-chain claim (RegisterRecord's ``claim``): an HMAC under
        the label key, in its own domain, of the owner, the resourceType and the condition's
        identifier (``system`` empty for an identifier without one). Members can compute it,
        and so test a guess of a patient's identifier against the chain (docs/security.md)."""
        if not _RESOURCE_TYPE_RE.fullmatch(resource_type):
            raise ValueError(f"{resource_type!r} is not a FHIR resource type name")
        what = json.dumps([owner, resource_type, system, value], separators=(",", ":"))
        mac = hmac.new(self._key, _CLAIM_DST + what.encode(), hashlib.sha256).digest()
        return "i-" + mac[:16].hex()

    def reveal(self, label: str) -> str | None:
        """The clinical type behind an on-chain label, or None if it is not a configured type."""
        if not _OPAQUE_RE.fullmatch(label):
            return None
        return self._reverse.get(label)
