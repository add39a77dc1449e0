"""Record pointers: register, amend, read, list. The record itself is ciphertext off chain.

A pointer holds the CID, its SHA-256, the capsule (opaque base64) and the master-key epoch the
capsule was sealed under; every version is kept. A pointer registered with a ``kind`` also holds
that label of what the record is (the SDK's opaque label of its FHIR resourceType, so that a
search by resource type reads only the records it returns); the contract only checks its form
and keeps it across versions. A registration with a ``claim`` (an opaque string the SDK derives
from a conditional create's identifier) also writes the key (owner, claim) naming the record,
and is refused when that key exists: a FHIR conditional create holds across gateways and
members because two registrations with one claim cannot both commit. The pointer itself does
not carry the claim.
"""

from __future__ import annotations

from typing import Any

from .. import canonical
from ..stub import ChaincodeError
from .checks import (
    CID_RE,
    MAX_CAPSULE_BYTES,
    SHA256_RE,
    check_b64,
    check_bookmark,
    check_ibe,
    check_id,
    check_int,
    check_page_size,
    check_type,
    check_version,
)
from .context import ADMIN, AUDITOR, CLINICIAN, PATIENT, PROXY, Caller, TxContext
from .functions import evaluate, reads, submit
from .grants import grant_problem, load_grant, valid_grant
from .identities import fresh_type_key_epoch, load_identity
from .keys import (
    K_CLAIM,
    K_DKG_LATEST,
    K_GRANT,
    K_IBE,
    K_LOG_HEAD,
    K_RECORD,
    K_RECORD_BY_OWNER,
    K_RECORD_VERSION,
    K_TYPE_EPOCH,
    K_TYPEKEY,
    seq,
)
from .type_epochs import record_type_epoch

__all__ = ["MAX_WRITES", "Records", "load_record"]


class Records:
    """RegisterRecord, AmendRecord and the record reads."""

    @submit
    @reads(
        lambda record_id, owner, record_type, *rest: _register_reads(
            record_id, owner, record_type, rest[6] if len(rest) > 6 else ""
        )
    )
    def RegisterRecord(
        self,
        ctx: TxContext,
        record_id: str,
        owner: str,
        record_type: str,
        cid: str,
        sha256: str,
        capsule_b64: str,
        format_version: str,
        type_epoch: str = "",
        kind: str = "",
        claim: str = "",
    ) -> Any:
        """Register a record pointer; the patient itself or a clinician of any member hospital.

        ``type_epoch`` is the owner's type-key epoch the capsule is sealed under; it must be
        the current one (:func:`~.type_epochs.record_type_epoch`). ``kind``, when given, is a
        label of what the record is (a record type's form), kept by every version. ``claim``,
        when given (a type label's form), is taken for the owner: refused if a record of the
        owner holds it already (:meth:`FindClaim`)."""
        caller = ctx.registered()
        return _register(
            ctx,
            caller,
            record_id,
            owner,
            record_type,
            cid,
            sha256,
            capsule_b64,
            format_version,
            type_epoch,
            kind,
            claim,
        )

    @submit
    def AmendRecord(
        self,
        ctx: TxContext,
        record_id: str,
        cid: str,
        sha256: str,
        capsule_b64: str,
        format_version: str,
        type_epoch: str = "",
        expected_version: str = "",
    ) -> Any:
        """A new version of a record (owner or original creator); older versions stay readable.
        ``type_epoch`` as for :meth:`RegisterRecord`; ``expected_version``, when given, must be
        the record's current version (an update based on an older one is refused: If-Match)."""
        caller = ctx.registered()
        return _amend(
            ctx,
            caller,
            record_id,
            cid,
            sha256,
            capsule_b64,
            format_version,
            type_epoch,
            expected_version,
        )

    @submit
    @reads(lambda writes: _writes_read(writes))
    def WriteRecords(self, ctx: TxContext, writes: str) -> Any:
        """Several record writes in one transaction, all or nothing: ``writes`` is a JSON list
        of at most :data:`MAX_WRITES` writes, each ``["RegisterRecord", *its arguments]`` or
        ``["AmendRecord", *its arguments]`` exactly as those functions take them. Each is
        checked as that function checks it, logs the same entry (its action is
        ``RegisterRecord`` or ``AmendRecord``) and writes the same keys; the first that fails
        fails the transaction (``write N: <that function's reason>``) and nothing is written.
        A record is written at most once per call. Returns the records written, in order."""
        caller = ctx.registered()
        written = []
        for i, (function, args) in enumerate(_parsed_writes(writes)):
            where = f"write {i}"
            try:
                if function == "RegisterRecord":
                    written.append(_register(ctx, caller, *args))
                else:
                    written.append(_amend(ctx, caller, *args))
            except ChaincodeError as exc:
                raise ChaincodeError(f"{where}: {exc.message}") from None
        return written

    def _may_read(self, ctx: TxContext, caller: Caller, record: dict[str, Any]) -> bool:
        # The proxy reads pointers to check that a capsule it is given belongs to the record.
        if caller.role in (AUDITOR, PROXY) or caller.name in (record["owner"], record["creator"]):
            return True
        assert caller.ibe_id is not None
        grant, _ = valid_grant(ctx, record["owner"], record["type"], caller.ibe_id)
        return grant is not None

    @evaluate
    def GetRecord(self, ctx: TxContext, record_id: str, version: str = "") -> Any:
        """A record pointer (latest or a given version): owner, creator, grantee, auditor, proxy."""
        caller = ctx.registered()
        record = load_record(ctx, record_id)
        if not self._may_read(ctx, caller, record):
            raise ChaincodeError(f"identity {caller.name} may not read record {record_id}")
        if version == "":
            return record
        n = check_int(version, "version", 1, int(record["version"]))
        return ctx.get_json(K_RECORD_VERSION, record_id, seq(n))

    @evaluate
    def FindClaim(self, ctx: TxContext, owner: str, claim: str) -> Any:
        """Which record of ``owner`` holds ``claim``: ``{record_id, record}``, ``record`` its
        pointer when the caller may read it, else null; ``record_id`` empty when none does.
        Only who may register records for ``owner`` asks (the patient itself, a clinician):
        a registration with the claim would name the record anyway. Admins, auditors, proxies
        and other patients are refused."""
        caller = ctx.registered()
        check_ibe(owner, "owner")
        check_type(claim, "record claim")
        if not (caller.role == CLINICIAN or (caller.role == PATIENT and caller.ibe_id == owner)):
            raise ChaincodeError(f"identity {caller.name} may not look up claims of {owner}")
        held = ctx.get_json(K_CLAIM, owner, claim)
        if held is None:
            return {"record_id": "", "record": None}
        record = load_record(ctx, str(held["record_id"]))
        readable = self._may_read(ctx, caller, record)
        return {"record_id": record["record_id"], "record": record if readable else None}

    @evaluate
    def GetRecordHistory(self, ctx: TxContext, record_id: str) -> Any:
        """Every version of a record, oldest first."""
        caller = ctx.registered()
        record = load_record(ctx, record_id)
        if not self._may_read(ctx, caller, record):
            raise ChaincodeError(f"identity {caller.name} may not read record {record_id}")
        rows = ctx.stub.get_state_by_partial_composite_key(K_RECORD_VERSION, [record_id])
        return [canonical.loads(kv.value, "stored record") for kv in rows]

    @evaluate
    def ListRecords(
        self, ctx: TxContext, patient: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of a patient's records (the patient or an auditor)."""
        caller = ctx.registered()
        check_ibe(patient, "patient")
        if caller.name != patient and caller.role != AUDITOR:
            raise ChaincodeError(f"identity {caller.name} may not list records of {patient}")
        records, next_bm = ctx.index_page(K_RECORD_BY_OWNER, patient, K_RECORD, page_size, bookmark)
        return {"records": records, "bookmark": next_bm}

    @evaluate
    def ListRecordVersions(self, ctx: TxContext, page_size: str = "", bookmark: str = "") -> Any:
        """One page of every version of every record, as ``{record_id, version, cid, sha256,
        epoch, creator_msp}`` in key order: what a store must hold and where (``ehrshare store
        check/gc/status/repair``). Org admins and auditors only; it names no owner or type."""
        ctx.registered(ADMIN, AUDITOR)
        check_bookmark(bookmark, K_RECORD_VERSION)
        rows, next_bm = ctx.stub.get_state_by_partial_composite_key_with_pagination(
            K_RECORD_VERSION, [], check_page_size(page_size), bookmark
        )
        versions = []
        for kv in rows:
            rec = canonical.loads(kv.value, f"stored {K_RECORD_VERSION}")
            versions.append(
                {
                    "record_id": rec["record_id"],
                    "version": rec["version"],
                    "cid": rec["cid"],
                    "sha256": rec["sha256"],
                    "epoch": rec.get("epoch", ""),
                    "creator_msp": rec.get("creator_msp", ""),
                }
            )
        return {"versions": versions, "bookmark": next_bm}

    @evaluate
    def ListGrantedRecords(
        self, ctx: TxContext, grant_id: str, page_size: str = "", bookmark: str = ""
    ) -> Any:
        """One page of the records a grant lets its grantee read now: the owner's records of
        the grant's type (the grantee only, while the grant and its chain are valid). A page
        may hold fewer records than asked for; follow the bookmark until it is empty."""
        caller = ctx.registered()
        grant = load_grant(ctx, grant_id)
        if grant["grantee"] != caller.ibe_id:
            raise ChaincodeError(f"identity {caller.name} is not the grantee of grant {grant_id}")
        problem = grant_problem(ctx, grant)
        if problem is not None:
            raise ChaincodeError(problem)
        records, next_bm = ctx.index_page(
            K_RECORD_BY_OWNER, grant["owner"], K_RECORD, page_size, bookmark
        )
        return {"records": [r for r in records if covers(grant, r)], "bookmark": next_bm}

    @evaluate
    def ListGrantPins(self, ctx: TxContext, page_size: str = "", bookmark: str = "") -> Any:
        """One page of the grants valid now (not revoked, not expired, their chain valid), in
        key order, as ``{grant_id, grantee_msp, expiry, records: [{record_id, version, cid}]}``:
        the hospital of the grantee (from the member registry) and the latest version of each
        record the grant lets its grantee read (:meth:`ListGrantedRecords`' rule). Where ``ehrshare
        store status/repair`` expect a grantee's hospital to pin; org admins and auditors only,
        and like :meth:`ListRecordVersions` it names no owner, grantee or type.

        A page visits at most ``page_size`` grants and at most ``page_size`` entries of their
        owners' record indexes, so it holds at most that many records: a grant whose owner has
        more is split across pages, each part with the same ``grant_id``, ``grantee_msp`` and
        ``expiry`` and the records of that part (:func:`grant_pins_page`). A page may hold fewer
        grants and records than asked (grants not valid are left out); follow the bookmark."""
        ctx.registered(ADMIN, AUDITOR)
        grants, next_bm = grant_pins_page(ctx, check_page_size(page_size), bookmark)
        return {"grants": grants, "bookmark": next_bm}


def grant_pins_page(ctx: TxContext, budget: int, bookmark: str) -> tuple[list[Any], str]:
    """:meth:`Records.ListGrantPins`' page: its grants and the next page's bookmark.

    The bookmark is a composite key of :data:`K_GRANT`: the key of the grant the next page
    starts at (what a plain scan of the grants gives), or, to resume inside a grant's records,
    that grant's id and the record id its owner's index resumes at as two attributes. Anything
    else is refused."""
    grant_bm, resume = _pins_bookmark(ctx, bookmark)
    rows, after = ctx.stub.get_state_by_partial_composite_key_with_pagination(
        K_GRANT, [], budget, grant_bm
    )
    grants: list[Any] = []
    scans = budget  # owners' index entries this page may still read
    for i, kv in enumerate(rows):
        grant = canonical.loads(kv.value, f"stored {K_GRANT}")
        index_bm = resume if kv.key == grant_bm else ""
        if grant_problem(ctx, grant) is not None:
            continue
        owner = grant["owner"]
        index_rows, index_next = ctx.stub.get_state_by_partial_composite_key_with_pagination(
            K_RECORD_BY_OWNER, [owner], scans, index_bm
        )
        scans -= len(index_rows)
        records = []
        for row in index_rows:
            _, attrs = ctx.stub.split_composite_key(row.key)
            rec = ctx.get_json(K_RECORD, *attrs[1:])
            if rec is not None and covers(grant, rec):
                records.append(
                    {"record_id": rec["record_id"], "version": rec["version"], "cid": rec["cid"]}
                )
        if records or not index_bm:  # a later part without records of the grant adds nothing
            grants.append(
                {
                    "grant_id": grant["grant_id"],
                    "grantee_msp": load_identity(ctx, grant["grantee"])["msp_id"],
                    "expiry": int(grant["expiry"]),
                    "records": records,
                }
            )
        if index_next:
            _, attrs = ctx.stub.split_composite_key(index_next)
            return grants, ctx.key(K_GRANT, grant["grant_id"], attrs[-1])
        if scans == 0:
            return grants, rows[i + 1].key if i + 1 < len(rows) else after
    return grants, after


def _pins_bookmark(ctx: TxContext, bookmark: str) -> tuple[str, str]:
    """A ListGrantPins bookmark as (the grant key its scan of grants starts at, the key of the
    grant owner's record index the first grant's records resume at or ``""``)."""
    check_bookmark(bookmark, K_GRANT)
    if bookmark == "":
        return "", ""
    bad = ChaincodeError("bookmark does not belong to this query")
    try:
        _, attrs = ctx.stub.split_composite_key(bookmark)
        if len(attrs) == 1:
            return bookmark, ""  # a grant key: the next page starts at a grant
        if len(attrs) != 2:
            raise bad
        grant_id, record_id = attrs
        check_id(grant_id, "bookmark's grant id")
        check_id(record_id, "bookmark's record id")
        grant_key = ctx.key(K_GRANT, grant_id)
    except ChaincodeError:
        raise bad from None
    grant = ctx.get_json(K_GRANT, grant_id)
    if grant is None:
        raise ChaincodeError(f"bookmark names grant {grant_id}, which does not exist")
    return grant_key, ctx.key(K_RECORD_BY_OWNER, grant["owner"], record_id)


def covers(grant: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``grant`` (valid) lets its grantee read ``record`` of the grant's owner: the
    records of its type (every one the owner has, also those written after the grant)."""
    return bool(record["type"] == grant["type"])


def load_record(ctx: TxContext, record_id: str) -> dict[str, Any]:
    check_id(record_id, "record id")
    record = ctx.get_json(K_RECORD, record_id)
    if record is None:
        raise ChaincodeError(f"record {record_id} does not exist")
    result: dict[str, Any] = record
    return result


MAX_WRITES = 100  # writes per WriteRecords call (the FHIR API's transaction Bundle limit)
# The arguments (without the function's name) each write of WriteRecords takes: min, max.
_WRITE_ARITY = {"RegisterRecord": (7, 10), "AmendRecord": (5, 7)}


def _parsed_writes(writes: str) -> list[tuple[str, list[str]]]:
    """``WriteRecords``' argument as (function, its arguments) pairs, each checked for shape
    (a known function, its number of arguments, each record once); raises
    :class:`ChaincodeError` naming the first bad write."""
    items = canonical.loads(writes, "writes")
    if not isinstance(items, list) or not items:
        raise ChaincodeError("writes must be a non-empty json list")
    if len(items) > MAX_WRITES:
        raise ChaincodeError(f"at most {MAX_WRITES} writes per transaction, got {len(items)}")
    seen: set[str] = set()
    claims: set[tuple[str, str]] = set()
    parsed = []
    for i, item in enumerate(items):
        where = f"write {i}"
        if not isinstance(item, list) or not all(isinstance(a, str) for a in item) or not item:
            raise ChaincodeError(f"{where} is not a json list of strings")
        function, args = item[0], item[1:]
        arity = _WRITE_ARITY.get(function)
        if arity is None:
            raise ChaincodeError(f"{where}: {function!r} is not RegisterRecord or AmendRecord")
        if not arity[0] <= len(args) <= arity[1]:
            raise ChaincodeError(
                f"{where}: {function} takes {arity[0]} to {arity[1]} arguments, got {len(args)}"
            )
        if args[0] in seen:
            raise ChaincodeError(f"{where}: record {args[0]} is written twice in one call")
        seen.add(args[0])
        claim = (args[1], args[9]) if function == "RegisterRecord" and len(args) > 9 else None
        if claim is not None and claim[1]:
            if claim in claims:  # a transaction does not read its own writes: refuse here
                raise ChaincodeError(f"{where}: claim {claim[1]} is taken twice in one call")
            claims.add(claim)
        parsed.append((function, args))
    return parsed


def _register_reads(
    record_id: str, owner: str, record_type: str, claim: str = ""
) -> list[tuple[str, ...]]:
    """The keys RegisterRecord reads on every successful run (its ``@reads`` declaration)."""
    return ([(K_CLAIM, owner, claim)] if claim else []) + [
        (K_IBE, owner),
        (K_RECORD, record_id),
        (K_DKG_LATEST,),
        (K_TYPEKEY, owner, record_type),
        (K_TYPE_EPOCH, owner, record_type),
        (K_LOG_HEAD, owner),
    ]


def _writes_read(writes: str) -> list[tuple[str, ...]]:
    """The keys :meth:`Records.WriteRecords` reads on every successful run: each
    registration's as :meth:`Records.RegisterRecord` declares them, each amended record's
    pointer. Malformed ``writes`` name none (the call then fails on its own)."""
    try:
        parsed = _parsed_writes(writes)
    except ChaincodeError:
        return []
    keys: dict[tuple[str, ...], None] = {}
    for function, args in parsed:
        if function == "RegisterRecord":
            claim = args[9] if len(args) > 9 else ""
            keys.update(dict.fromkeys(_register_reads(args[0], args[1], args[2], claim)))
        else:
            keys[(K_RECORD, args[0])] = None
    return list(keys)


def _register(
    ctx: TxContext,
    caller: Caller,
    record_id: str,
    owner: str,
    record_type: str,
    cid: str,
    sha256: str,
    capsule_b64: str,
    format_version: str,
    type_epoch: str = "",
    kind: str = "",
    claim: str = "",
) -> dict[str, Any]:
    """RegisterRecord's checks and writes (also one write of WriteRecords)."""
    check_id(record_id, "record id")
    check_ibe(owner, "owner")
    check_type(record_type)
    if kind:
        check_type(kind, "record kind")
    if claim:
        check_type(claim, "record claim")
    if not CID_RE.fullmatch(cid):
        raise ChaincodeError(f"cid {cid!r} is not a content identifier")
    if not SHA256_RE.fullmatch(sha256):
        raise ChaincodeError("sha256 must be 64 lower-case hex digits")
    check_b64(capsule_b64, "capsule", MAX_CAPSULE_BYTES)
    version = check_version(format_version)
    if not (caller.role == CLINICIAN or (caller.role == PATIENT and caller.ibe_id == owner)):
        raise ChaincodeError(f"identity {caller.name} may not create records for {owner}")
    owner_ident = ctx.get_json(K_IBE, owner)
    if owner_ident is None:
        raise ChaincodeError(f"patient {owner} is not registered")
    if load_identity(ctx, owner)["role"] != PATIENT:
        raise ChaincodeError(f"identity {owner} is not a patient")
    if ctx.stub.get_state(ctx.key(K_RECORD, record_id)) is not None:
        raise ChaincodeError(f"record {record_id} already exists")
    if claim:
        # Read even when absent: on Fabric a concurrent registration with the same claim then
        # fails validation (MVCC_READ_CONFLICT), and re-simulated it fails here.
        held = ctx.get_json(K_CLAIM, owner, claim)
        if held is not None:
            raise ChaincodeError(f"claim {claim} of {owner} is held by record {held['record_id']}")
    epoch = fresh_type_key_epoch(ctx, owner, record_type)
    t_epoch = record_type_epoch(ctx, owner, record_type, type_epoch)
    record = {
        "record_id": record_id,
        "owner": owner,
        "type": record_type,
        "cid": cid,
        "sha256": sha256,
        "capsule": capsule_b64,
        "format_version": version,
        "epoch": epoch,
        "type_epoch": t_epoch,
        "creator": caller.name,
        "creator_msp": caller.msp_id,
        "version": 1,
        "created_at": ctx.now,
        "updated_at": ctx.now,
        "tx_id": ctx.tx_id,
    }
    if kind:  # absent, not empty, when not given: older pointers stay byte for byte the same
        record["kind"] = kind
    ctx.put_json(record, K_RECORD, record_id)
    ctx.put_json(record, K_RECORD_VERSION, record_id, seq(1))
    ctx.put_index(K_RECORD_BY_OWNER, owner, record_id)
    if claim:
        ctx.put_json(
            {"claim": claim, "owner": owner, "record_id": record_id}, K_CLAIM, owner, claim
        )
    ctx.log(
        owner,
        "RegisterRecord",
        "ok",
        record_id=record_id,
        detail={"type": record_type, "version": 1, "cid": cid},
    )
    return record


def _amend(
    ctx: TxContext,
    caller: Caller,
    record_id: str,
    cid: str,
    sha256: str,
    capsule_b64: str,
    format_version: str,
    type_epoch: str = "",
    expected_version: str = "",
) -> dict[str, Any]:
    """AmendRecord's checks and writes (also one write of WriteRecords)."""
    record = load_record(ctx, record_id)
    if caller.name not in (record["owner"], record["creator"]):
        raise ChaincodeError(f"identity {caller.name} may not amend record {record_id}")
    if expected_version and (
        not expected_version.isdigit() or int(expected_version) != int(record["version"])
    ):
        raise ChaincodeError(
            f"record {record_id} is at version {record['version']}, not {expected_version}"
        )
    if not CID_RE.fullmatch(cid):
        raise ChaincodeError(f"cid {cid!r} is not a content identifier")
    if not SHA256_RE.fullmatch(sha256):
        raise ChaincodeError("sha256 must be 64 lower-case hex digits")
    check_b64(capsule_b64, "capsule", MAX_CAPSULE_BYTES)
    epoch = fresh_type_key_epoch(ctx, str(record["owner"]), str(record["type"]))
    t_epoch = record_type_epoch(ctx, str(record["owner"]), str(record["type"]), type_epoch)
    amended = dict(record)
    amended.update(
        {
            "epoch": epoch,
            "type_epoch": t_epoch,
            "cid": cid,
            "sha256": sha256,
            "capsule": capsule_b64,
            "format_version": check_version(format_version),
            "version": int(record["version"]) + 1,
            "updated_at": ctx.now,
            "amended_by": caller.name,
            "tx_id": ctx.tx_id,
        }
    )
    ctx.put_json(amended, K_RECORD, record_id)
    ctx.put_json(amended, K_RECORD_VERSION, record_id, seq(amended["version"]))
    ctx.log(
        record["owner"],
        "AmendRecord",
        "ok",
        record_id=record_id,
        detail={"version": amended["version"], "cid": cid},
    )
    return amended
