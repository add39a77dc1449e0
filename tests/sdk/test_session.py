"""Session behaviour: the flows, service failures, and bad input that must change nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sdk_people import People

from ehrshare import connect
from ehrshare.demo import imaging_study, lab_observation
from ehrshare.hazmat.dkg import KeyShare
from ehrshare.hazmat.extract import SignedExtractionRequest, extract_partial_key
from ehrshare.hazmat.pairing import Scalar
from ehrshare.ledger.errors import LedgerError
from ehrshare.provisioning import Consortium
from ehrshare.runtime import _load_node_key
from ehrshare.services.kgc import KgcUnavailable
from ehrshare.session import (
    AccessDenied,
    EnrollmentError,
    GrantNotServed,
    LedgerUnreachable,
    NoSuchMember,
    NotEnrolledError,
    ProxyError,
    ProxyUnreachable,
    RecordStorageError,
    RecordTooLarge,
    RequestRejected,
    SdkError,
    Session,
    records,
)
from ehrshare.storage import StorageUnavailable

DAY = dt.timedelta(days=1)


def fingerprint(c: Consortium) -> tuple[str, int]:
    return c.ledger.state_digest(), c.ledger.height()


class DownNode:
    def __init__(self, index: int) -> None:
        self.index = index

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        raise KgcUnavailable(f"KGC node {self.index} is not answering")


class BadShareNode:
    """Signs with the real node key but uses a wrong share: its partial key fails the check."""

    def __init__(self, index: int, consortium: Consortium) -> None:
        self.index = index
        svc = consortium.profile.kgc_nodes[index - 1].service
        assert svc.key_file is not None
        self._key = _load_node_key(svc.key_file)

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        request = SignedExtractionRequest.from_bytes(request_bytes)
        wrong = KeyShare(self.index, Scalar.random())
        return extract_partial_key(wrong, self._key, request).to_bytes()


def new_member(c: Consortium, name: str, role: str = "clinician") -> Session:
    c.add_member(name, "HospitalB", role)
    return c.session(name)


def test_full_flow_two_hops_and_revocation(people: People) -> None:
    p = people
    ref = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    assert (ref.type, ref.owner, ref.creator) == ("lab", p.alice.ibe_id, p.adams.ibe_id)
    assert ref.label.startswith("t-") and "lab" not in ref.label
    grant = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=1)
    assert p.baker.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    fwd = p.baker.forward(ref, p.chen.ibe_id)
    assert (fwd.hop, fwd.parent_grant_id, fwd.max_hops) == (1, grant.grant_id, 0)
    assert p.chen.read_record(ref).valueQuantity.value == Decimal("13.2")  # type: ignore[attr-defined]
    # One proxy per hospital: each re-key sits at the proxy of its grantee's hospital.
    proxies = p.consortium.proxies
    assert (grant.proxy, fwd.proxy) == ("HospitalBMSP/proxy", "HospitalCMSP/proxy")
    assert proxies[grant.proxy].holds(grant.grant_id)
    assert proxies[fwd.proxy].holds(fwd.grant_id)
    assert not proxies["HospitalAMSP/proxy"].holds(grant.grant_id)
    p.alice.revoke(grant)
    assert not any(px.holds(g) for px in proxies.values() for g in (grant.grant_id, fwd.grant_id))
    for reader in (p.baker, p.chen):
        with pytest.raises(AccessDenied, match=f"grant {grant.grant_id} is revoked"):
            reader.read_record(ref)
    decisions = [
        (e["detail"]["requester"], e["outcome"])
        for e in p.alice.audit().entries
        if e["action"] == "AccessDecision"
    ]
    assert decisions == [
        (p.baker.ibe_id, "allow"),
        (p.chen.ibe_id, "allow"),
        (p.baker.ibe_id, "deny"),
        (p.chen.ibe_id, "deny"),
    ]
    assert p.alice.verify_audit().valid


def test_owner_reads_own_record_and_the_read_is_logged(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    assert people.alice.read_record(ref.record_id).status == "final"  # type: ignore[attr-defined]
    trail = people.alice.audit(record=ref.record_id)
    assert [e["action"] for e in trail.entries] == [
        "RegisterRecord",
        "RequestAccess",
        "AccessDecision",
    ]


def test_creator_without_grant_cannot_read(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    with pytest.raises(AccessDenied, match="has no grant for type 'lab'"):
        people.adams.read_record(ref)


def test_type_isolation(people: People) -> None:
    img = people.adams.put_record(imaging_study(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    with pytest.raises(AccessDenied, match="no grant for type 'imaging'"):
        people.baker.read_record(img)


def test_expired_grant_is_denied_and_logged(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    people.baker.read_record(ref)
    people.clock.advance(2 * 86400)
    with pytest.raises(AccessDenied, match="expired at"):
        people.baker.read_record(ref)
    assert people.alice.audit().entries[-1]["outcome"] == "deny"


def test_wallet_keeps_the_key_for_a_new_connection(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    wallet = people.consortium.profile.wallet("alice")
    assert (wallet.directory / "ibe.key").stat().st_mode & 0o777 == 0o600
    assert people.consortium.profile.path is not None
    with connect(people.consortium.profile.path, "alice") as again:
        assert again.enrolled
        assert again.read_record(ref).status == "final"  # type: ignore[attr-defined]


def test_unenrolled_member_gets_a_clear_error(consortium: Consortium) -> None:
    s = new_member(consortium, "newbie")
    with pytest.raises(NotEnrolledError, match="call enroll"):
        s.grant("HospitalAMSP/x", "lab", expires=DAY)


def test_patient_without_type_keys_is_named(people: People) -> None:
    bob = new_member(people.consortium, "bob", "patient")
    bob.register()
    with pytest.raises(RequestRejected, match="HospitalBMSP/bob has not published a key"):
        people.adams.put_record(lab_observation(), patient=bob.ibe_id)


# --- service failures -------------------------------------------------------------------------


def test_one_kgc_node_down_still_enrols(consortium: Consortium) -> None:
    s = new_member(consortium, "dora")
    real = list(s.kgc)
    s.kgc = (DownNode(1), real[1], real[2])
    result = s.enroll()
    assert result.used == (2, 3)
    assert set(result.failed) == {1} and "not answering" in result.failed[1]
    s.publish_type_keys(["lab"])  # the combined key works


def test_too_many_nodes_down_names_them(consortium: Consortium) -> None:
    s = new_member(consortium, "eve")
    s.kgc = (DownNode(1), DownNode(2), list(s.kgc)[2])
    with pytest.raises(EnrollmentError) as info:
        s.enroll()
    assert set(info.value.failed) == {1, 2}
    assert "node 1" in str(info.value) and "node 2" in str(info.value)
    assert not s.enrolled
    assert not (consortium.profile.wallet("eve").directory / "ibe.key").exists()


def test_bad_share_is_named_and_excluded(consortium: Consortium) -> None:
    s = new_member(consortium, "fred")
    real = list(s.kgc)
    s.kgc = (BadShareNode(1, consortium), real[1], real[2])
    result = s.enroll()
    assert result.invalid == (1,)
    assert result.used == (2, 3)
    s.publish_type_keys(["lab"])


def test_proxy_restart_mid_flow(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    profile = people.consortium.profile
    people.consortium.close()  # stops the proxy (and the KGC nodes, the ledger)
    with Consortium.open(profile, clock=people.clock) as again, again.session("baker") as baker:
        assert baker.read_record(ref).status == "final"  # type: ignore[attr-defined]


class RefusingProxy:
    def public_key(self) -> bytes:
        raise ConnectionError("proxy is down")

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        raise AssertionError("unreachable")

    def reencrypt(self, **kwargs: Any) -> bytes:
        raise ConnectionError("proxy is down")

    def revoke(self, grant_id: str) -> None:
        raise ConnectionError("proxy is down")


def test_proxy_down_at_grant_changes_nothing(people: People) -> None:
    people.alice.proxy = RefusingProxy()
    before = fingerprint(people.consortium)
    with pytest.raises(ProxyError, match="nothing was granted"):
        people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    assert fingerprint(people.consortium) == before


class KeyOnlyProxy(RefusingProxy):
    """Answers with its key, then fails to take the re-key (e.g. it crashed in between)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def public_key(self) -> bytes:
        return self._key

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        raise ConnectionError("connection reset")


def test_proxy_failing_to_take_the_rekey_leaves_no_grant_on_chain(people: People) -> None:
    # The re-key goes to the proxy before GrantAccess: a proxy failing then changes nothing.
    people.alice.proxy = KeyOnlyProxy(people.consortium.proxy.public_key())
    before = fingerprint(people.consortium)
    with pytest.raises(ProxyError, match=r"did not take the re-key .*; nothing was granted"):
        people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    assert fingerprint(people.consortium) == before
    assert people.alice.grants() == []


def test_proxy_down_at_read_is_a_clear_error(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    people.baker.proxy = RefusingProxy()
    with pytest.raises(
        ProxyUnreachable, match="is unreachable; it holds the re-key of grant"
    ) as info:
        people.baker.read_record(ref)
    assert info.value.msp_id == "HospitalBMSP" and len(info.value.grant_ids) == 1


class DownStore:
    def put(self, data: object) -> str:
        raise StorageUnavailable("Kubo RPC at http://127.0.0.1:5001 is not reachable")

    def get(self, cid: str) -> bytes:
        raise StorageUnavailable("down")


def test_store_down_leaves_nothing_on_chain(people: People) -> None:
    before = fingerprint(people.consortium)
    people.adams.store = DownStore()  # type: ignore[assignment]
    with pytest.raises(RecordStorageError, match="nothing was registered on chain"):
        people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    assert fingerprint(people.consortium) == before


# --- bad input changes nothing ----------------------------------------------------------------


def _bad_inputs(p: People) -> list[tuple[str, Callable[[], object], type[Exception], str]]:
    bad_fhir = lab_observation()
    del bad_fhir["status"]
    return [
        (
            "invalid FHIR",
            lambda: p.adams.put_record(bad_fhir, patient=p.alice.ibe_id),
            ValueError,
            "invalid FHIR Observation: status",
        ),
        (
            "unknown grantee",
            lambda: p.alice.grant("HospitalBMSP/nobody", "lab", expires=DAY),
            NoSuchMember,
            "^no such member: HospitalBMSP/nobody is not registered",
        ),
        (
            "expiry in the past",
            lambda: p.alice.grant(p.baker.ibe_id, "lab", expires=-DAY),
            RequestRejected,
            "is not after the transaction time",
        ),
        (
            "foreign record id",
            lambda: p.baker.read_record("r-0000000000000000000000000000dead"),
            RequestRejected,
            "record r-0000000000000000000000000000dead does not exist",
        ),
        (
            "oversized payload",
            lambda: p.adams.put_record(
                {"resourceType": "Binary", "contentType": "x/y", "data": "QUFB" * 4096},
                patient=p.alice.ibe_id,
            ),
            RecordTooLarge,
            "this profile's limit is 8192",
        ),
        (
            "unknown type",
            lambda: p.alice.grant(p.baker.ibe_id, "dental", expires=DAY),
            ValueError,
            "'dental' is not configured",
        ),
        (
            "forward of an unknown grant",
            lambda: p.baker.forward("g-" + "0" * 32, p.chen.ibe_id),
            RequestRejected,
            "does not exist",
        ),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_input_changes_nothing(people: People, case: int) -> None:
    people.adams.max_record_bytes = 8192
    name, call, error, message = _bad_inputs(people)[case]
    before = fingerprint(people.consortium)
    with pytest.raises(error, match=message):
        call()
    assert fingerprint(people.consortium) == before, name


def test_forward_beyond_hops_is_refused_without_change(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY, max_hops=0)
    before = fingerprint(people.consortium)
    with pytest.raises(RequestRejected, match="allows no further hops"):
        people.baker.forward(ref, people.chen.ibe_id)
    assert fingerprint(people.consortium) == before


def test_exported_trail_edit_is_detected(people: People) -> None:
    people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    trail = people.alice.audit()
    assert people.alice.verify_audit(trail=trail).valid
    entries = [dict(e) for e in trail.entries]
    entries[2] = {**entries[2], "actor": "HospitalCMSP/mallory"}
    forged = type(trail)(trail.chain, tuple(entries))
    verdict = people.alice.verify_audit(trail=forged)
    assert not verdict.valid
    assert verdict.first_bad_seq == 3
    assert verdict.checks["chaincode"]["valid"]  # the ledger itself is intact


def test_async_variants_run_concurrently(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY, max_hops=1)

    async def main() -> list[Any]:
        return await asyncio.gather(
            people.baker.aread_record(ref),
            people.baker.aread_record(ref),
            people.alice.aread_record(ref),
        )

    results = asyncio.run(main())
    assert {r.status for r in results} == {"final"}

    async def refer_and_check() -> bool:
        await people.baker.aforward(ref, people.chen.ibe_id)
        await people.chen.aread_record(ref)
        return (await people.alice.averify_audit()).valid

    assert asyncio.run(refer_and_check())


def test_async_mirrors_take_the_sync_arguments(people: People) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)

    async def main() -> str:
        g = await people.alice.agrant(
            people.baker.ibe_id, "lab", expires=DAY, max_hops=1, allowed_next=[people.chen.ibe_id]
        )
        await people.baker.aread_record(ref, grant=g)
        await people.baker.aforward(g, people.chen.ibe_id, allowed_next=())
        return str((await people.chen.aread_record(ref)).status)

    assert asyncio.run(main()) == "final"


def test_every_async_mirror_has_its_sync_signature() -> None:
    # The class and the area classes it is assembled from (session/records.py, ...).
    members = {n: m for cls in reversed(Session.__mro__) for n, m in vars(cls).items()}
    mirrors = {
        name[1:]: member
        for name, member in members.items()
        if name.startswith("a") and not name.startswith("_") and name[1:] in members
    }
    assert {"grant", "forward", "read_record", "put_record", "enroll"} <= mirrors.keys()
    for name, mirror in mirrors.items():
        sync = getattr(Session, name)
        assert inspect.iscoroutinefunction(mirror), name
        assert inspect.signature(mirror) == inspect.signature(sync), name


def test_a_foreign_key_in_the_wallet_is_refused(people: People, tmp_path: Path) -> None:
    other = Consortium.init(tmp_path / "other")
    try:
        other.add_member("alice", "HospitalA", "patient")
        with other.session("alice") as foreign:
            foreign.enroll()
        foreign_key = other.profile.wallet("alice").directory / "ibe.key"
        own = people.consortium.profile.wallet("alice").directory / "ibe.key"
        own.write_bytes(foreign_key.read_bytes())
    finally:
        other.close()
    with (
        people.consortium.session("alice") as alice,
        pytest.raises(NotEnrolledError, match="does not belong to it"),
    ):
        alice.publish_type_keys(["lab"])


def test_failed_init_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ehrshare.provisioning as module

    def broken_dkg(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a KGC node crashed during the DKG")

    monkeypatch.setattr(module, "run_local_dkg", broken_dkg)
    with pytest.raises(RuntimeError, match="crashed during the DKG"):
        Consortium.init(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        Consortium.init(tmp_path / "d")
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


class UnreachableLedger:
    """A ledger client whose peers never answer (as the Fabric client reports it)."""

    chaincode_name = "ehrshare"

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        raise LedgerError("could not reach any peer to endorse", unreachable=True)

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        raise LedgerError("could not reach any peer to evaluate", unreachable=True)


def test_an_unreachable_ledger_is_named_not_taken_for_a_refusal(people: People) -> None:
    real = people.alice.contract
    people.alice.contract = UnreachableLedger()
    try:
        with pytest.raises(LedgerUnreachable, match="could not reach any peer to evaluate"):
            people.alice.audit()
        with pytest.raises(LedgerUnreachable, match="could not reach any peer"):
            people.alice.grant(people.baker.ibe_id, "lab", expires=dt.timedelta(days=1))
        with pytest.raises(LedgerUnreachable, match="could not reach any peer to endorse"):
            people.alice._call("RevokeAccess", "g-" + "0" * 32)
    finally:
        people.alice.contract = real
    # A refusal by the chaincode stays a refusal.
    with pytest.raises(RequestRejected):
        people.alice.revoke("g-" + "0" * 32)


def test_revoking_again_finishes_a_revocation_the_proxies_missed(people: People) -> None:
    # RevokeAccess committed by a process that died before it told the proxies: the chain
    # refuses already; running the revocation again succeeds and deletes the re-key.
    g = people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    proxy = people.consortium.proxies[g.proxy]
    people.alice._call("RevokeAccess", g.grant_id)
    assert proxy.holds(g.grant_id)
    assert people.alice.revoke(g.grant_id).state == "revoked"
    assert not proxy.holds(g.grant_id)
    with pytest.raises(RequestRejected, match="does not exist"):
        people.alice.revoke("g-" + "1" * 32)


class RefusingRekeyProxy(KeyOnlyProxy):
    """Up, but refuses every re-key it is handed (as a proxy refuses one that does not match)."""

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        from ehrshare.services.proxy import InvalidReKey

        raise InvalidReKey(f"the re-key for grant {grant_id} does not match it")

    def revoke(self, grant_id: str) -> None:
        pass


def test_repair_that_the_proxy_refuses_revokes_the_grant(people: People) -> None:
    g = people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    real = people.alice.proxies
    people.alice.proxy = RefusingRekeyProxy(people.consortium.proxy.public_key())
    try:
        with pytest.raises(GrantNotServed, match=r"refused the re-key .* is revoked now"):
            people.alice.repair_grant(g.grant_id)
    finally:
        people.alice.proxies = real
    assert people.alice.get_grant(g.grant_id).state == "revoked"


def test_repair_with_the_proxy_down_changes_nothing(people: People) -> None:
    g = people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    real = people.alice.proxies
    people.alice.proxy = RefusingProxy()
    before = fingerprint(people.consortium)
    try:
        with pytest.raises(ProxyError, match=f"not reachable .*; grant {g.grant_id} is unchanged"):
            people.alice.repair_grant(g.grant_id)
    finally:
        people.alice.proxies = real
    assert fingerprint(people.consortium) == before


# --- the JSON read the FHIR server answers from ------------------------------------------------


def test_open_record_json_is_the_validated_resource_as_open_record_reads_it(
    people: People,
) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    for reader in (people.alice, people.baker):
        read_ref, model = reader.open_record(ref)
        json_ref, data = reader.open_record_json(ref)
        assert json_ref == read_ref
        assert data == json.loads(model.model_dump_json(exclude_none=True))


def test_open_record_json_refuses_a_decryption_that_is_not_fhir(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    not_fhir = b'{"resourceType": "Observation", "code": {"text": "no status"}}'
    monkeypatch.setattr(records.crypto, "decrypt_record", lambda *a, **k: not_fhir)
    with pytest.raises(SdkError, match=f"record {ref.record_id} decrypted to invalid FHIR"):
        people.alice.open_record_json(ref)


def test_a_pointer_sends_request_access_its_owner_and_label_as_hints_and_an_id_none(
    people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hints only save round trips on a Fabric >= 3.1 peer (docs/chaincode.md); the answer
    # is the same either way. A bare id the session has not seen a pointer of sends the two
    # arguments every chaincode takes; once seen (a read's answer, a pointer passed in), its
    # owner and label go with later reads by id too.
    ref = people.adams.put_record(lab_observation(), patient=people.alice.ibe_id)
    people.alice.grant(people.baker.ibe_id, "lab", expires=DAY)
    sent: list[tuple[str, ...]] = []
    call = people.baker.chain.call

    def recording(function: str, *args: str) -> Any:
        if function == "RequestAccess":
            sent.append(args)
        return call(function, *args)

    monkeypatch.setattr(people.baker.chain, "call", recording)
    first = people.baker.read_record(ref.record_id)
    by_ref = people.baker.read_record(ref)
    again = people.baker.read_record(ref.record_id)
    assert first == by_ref == again
    hinted = (ref.record_id, "", people.alice.ibe_id, ref.label)
    assert sent == [(ref.record_id, ""), hinted, hinted]
