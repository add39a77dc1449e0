"""``transaction`` Bundles (``POST [base]``): all entries are written, or none.

Every entry is checked before anything is written — JSON shape, FHIR R4 validity, the record
type, the patient, the size, and for an update that the record exists, is the caller's to amend
and keeps its type — so a Bundle with one bad entry changes nothing. Then the gateway writes
them all with :meth:`~ehrshare.session.Session.write_records`: every ciphertext is stored, then
ONE ledger transaction (the chaincode's ``WriteRecords``) registers every new record and
version, checking each entry again as ``RegisterRecord`` / ``AmendRecord`` would. A refusal of
any entry there refuses the transaction, and the stored ciphertexts are released. A crash
before the transaction commits leaves ciphertexts that no pointer names (nobody can reach or
decrypt them; ``ehrshare store gc`` removes them); a crash after it leaves every entry written.
A create may carry a condition (``request.ifNoneExist``, :mod:`ehrshare.fhirapi.conditional`):
the gateway evaluates it after every entry's checks, against what was stored before the Bundle,
and an entry it matches is answered with that record instead of being written; an entry whose
condition claims on chain is registered with its claim, and a Bundle refused because another
request took a claim meanwhile is evaluated again.

This module parses and checks a Bundle into :class:`Entry` values; the gateway writes them.
It must not write anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from ehrshare.fhirapi.conditional import Condition, parse_condition
from ehrshare.fhirapi.outcome import FhirError

__all__ = ["MAX_ENTRIES", "Entry", "etag_version", "parse_transaction"]

MAX_ENTRIES: Final = 100
_ETAG: Final = re.compile(r'(?:W/)?"([1-9][0-9]{0,9})"')


def etag_version(if_match: str | None, where: str = "If-Match") -> int | None:
    """The version an If-Match value names (``W/"3"`` or ``"3"``); None for none or ``*``
    (any version: an update needs the record to exist anyway); 400 if malformed."""
    if if_match is None or if_match.strip() == "*":
        return None
    m = _ETAG.fullmatch(if_match.strip())
    if m is None:
        raise FhirError(
            400, f'{where} {if_match!r} is not one version ETag such as W/"3" (from meta)'
        )
    return int(m.group(1))


@dataclass(frozen=True, slots=True)
class Entry:
    """One write of a transaction: ``method`` POST (create) or PUT (update of ``record_id``)."""

    index: int
    method: str
    resource_type: str
    record_id: str
    resource: dict[str, Any]
    if_version: int | None = None  # an update's request.ifMatch
    condition: Condition | None = None  # a create's request.ifNoneExist


def parse_transaction(bundle: Any, not_records: frozenset[str]) -> list[Entry]:
    """The entries of a ``transaction`` Bundle (JSON), or :class:`FhirError` naming the first
    entry that is not a create or update of a record."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base takes a Bundle of type transaction")
    if bundle.get("type") != "transaction":
        raise FhirError(
            422,
            f"Bundle type {bundle.get('type')!r} is not supported here: only 'transaction' "
            "(a batch is not offered)",
        )
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise FhirError(400, "the transaction Bundle has no entries")
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, f"a transaction takes at most {MAX_ENTRIES} entries")
    out = []
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            raise FhirError(400, f"{where} is not an object")
        request = entry.get("request")
        resource = entry.get("resource")
        if not isinstance(request, dict) or not isinstance(resource, dict):
            raise FhirError(400, f"{where} needs request and resource")
        extra = set(request) - {"method", "url", "ifMatch", "ifNoneExist"}
        if extra:
            raise FhirError(
                422,
                f"{where}.request: {', '.join(sorted(extra))} not supported (of the conditions, "
                "ifMatch on updates and ifNoneExist on creates)",
            )
        method, url = request.get("method"), request.get("url")
        if_match = request.get("ifMatch")
        if if_match is not None and (method != "PUT" or not isinstance(if_match, str)):
            raise FhirError(422, f"{where}.request.ifMatch: only an update takes one (a string)")
        if_version = etag_version(if_match, f"{where}.request.ifMatch")
        if_none_exist = request.get("ifNoneExist")
        if if_none_exist is not None and (method != "POST" or not isinstance(if_none_exist, str)):
            raise FhirError(422, f"{where}.request.ifNoneExist: only a create takes one (a string)")
        if not isinstance(url, str):
            raise FhirError(400, f"{where}.request.url is missing")
        parts = [p for p in url.split("?")[0].split("/") if p]
        rtype = parts[0] if parts else ""
        if resource.get("resourceType") != rtype:
            raise FhirError(
                400,
                f"{where}: the resource's type {resource.get('resourceType')!r} is not the "
                f"request url's {rtype!r}",
            )
        if rtype in not_records:
            raise FhirError(
                422, f"{where}: a transaction here holds records only, not {rtype} resources"
            )
        if method == "POST" and len(parts) == 1 and "?" not in url:
            condition = None
            if if_none_exist is not None:
                condition = parse_condition(
                    rtype, if_none_exist, f"{where}.request.ifNoneExist", unsupported_status=422
                )
            out.append(Entry(i, "POST", rtype, "", resource, condition=condition))
        elif method == "PUT" and len(parts) == 2 and "?" not in url:
            if resource.get("id") != parts[1]:
                raise FhirError(400, f"{where}: the resource's id must be the url's {parts[1]!r}")
            out.append(Entry(i, "PUT", rtype, parts[1], resource, if_version))
        else:
            raise FhirError(
                422,
                f"{where}: {method} {url} is not supported in a transaction (POST Type or "
                "PUT Type/id)",
            )
    ids = [e.record_id for e in out if e.record_id]
    if len(ids) != len(set(ids)):
        raise FhirError(422, "a transaction updates each record at most once")
    return out
