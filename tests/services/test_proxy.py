"""Re-encryption proxy in-process: approvals, single use, restart, revocation, multi-hop."""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import pytest
from services_world import FAR, World

from ehrshare.hazmat.kgc_keys import X25519KeyPair
from ehrshare.hazmat.tipre import Capsule, decrypt, generate_rekey
from ehrshare.ledger.errors import GatewayError
from ehrshare.rekey_delivery import rekey_id, seal_rekey
from ehrshare.services.proxy import (
    ApprovalConsumed,
    ApprovalRefused,
    InProcessProxyClient,
    InvalidReKey,
    NoReKey,
    NotAuthorised,
    ProxyError,
    ReencryptionProxy,
    RevocationFollower,
)

LAB = "lab"


@pytest.fixture(scope="module")
def lab(world: World) -> World:
    for name in ("alice", "bob", "carol", "dan"):
        world.publish_type_key(name, LAB)
    return world


def fresh_clinician(w: World) -> str:
    """A newly registered clinician with a lab type key: no grants left over from other tests."""
    name = f"clin{next(w.counter)}"
    w.m[name] = w.sandbox.member("Org2MSP", name, "clinician")
    w.publish_type_key(name, LAB)
    return name


def grant(w: World, grantor: str, grantee: str, max_hops: int = 0, parent: str = "") -> str:
    proxy = w.m["proxy"].ibe_id
    row = w.m[grantor].submit(
        "GrantAccess", LAB, w.m[grantee].ibe_id, FAR, str(max_hops), "", parent, proxy
    )
    return str(row["grant_id"])


def make_rekey(w: World, grantor: str, grantee: str, type_epoch: int = 0) -> Any:
    sk = w.key_of(grantor).type_secret(LAB, type_epoch)
    pk = w.type_public(grantee, LAB).verify(owner=w.m[grantee].ibe_id, type_label=LAB, mpk=w.mpk)
    return generate_rekey(sk, pk)


def deliver(w: World, proxy: ReencryptionProxy, grantor: str, grantee: str, gid: str) -> Any:
    rekey = make_rekey(w, grantor, grantee)
    client = InProcessProxyClient(proxy, caller=w.m[grantor].ibe_id)
    client.store_rekey(gid, seal_rekey(client.public_key(), gid, rekey))
    # A root grant made after a rotation covers the owner's later type-key epochs too.
    row = w.m[grantor].evaluate("GetGrant", gid)
    for n in row.get("type_epochs", [0])[1:]:
        name = rekey_id(gid, n)
        rk = make_rekey(w, grantor, grantee, n)
        client.store_rekey(name, seal_rekey(client.public_key(), name, rk))
    return rekey


def request(w: World, who: str, record_id: str) -> str:
    access = w.m[who].submit("RequestAccess", record_id)
    assert access["decision"] == "allow", access
    return str(access["access_id"])


def read_as(w: World, who: str, out: bytes) -> Any:
    capsule = Capsule.from_bytes(out).verify(owner=w.m["alice"].ibe_id, type_label=LAB)
    return decrypt(capsule, w.key_of(who).type_secret(LAB))


def test_reencrypts_after_a_committed_approval_and_reports_it(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        deliver(w, proxy, "alice", "bob", gid)
        record_id, m, _ = w.new_record()
        approval = request(w, "bob", record_id)
        bob = InProcessProxyClient(proxy, caller=w.m["bob"].ibe_id)
        # The SDK's call: no capsule sent, the proxy reads it from chain.
        out = bob.reencrypt(record_id=record_id, requester=w.m["bob"].ibe_id, approval_id=approval)
        assert read_as(w, "bob", out) == m
        trail = w.m["alice"].evaluate("GetAuditTrail", "record", record_id)["entries"]
        reports = [e for e in trail if e["action"] == "ReportReencryption"]
        assert len(reports) == 1
        assert reports[0]["detail"]["access_id"] == approval
        assert reports[0]["grant_id"] == gid


def test_refused_without_a_committed_approval(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        deliver(w, proxy, "alice", "bob", gid)
        record_id, _, capsule = w.new_record()
        bob = w.m["bob"].ibe_id
        with pytest.raises(ApprovalRefused) as info:
            proxy.reencrypt(
                record_id=record_id,
                requester=bob,
                approval_id="a-0123456789abcdef",
                grant_id=gid,
                capsule=capsule,
            )
        assert str(info.value) == (
            f"no committed approval a-0123456789abcdef for record {record_id} and requester "
            f"{bob}: access a-0123456789abcdef has no committed approval"
        )


def test_refused_for_another_requester_record_or_grant(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        other_gid = grant(w, "alice", "bob")
        deliver(w, proxy, "alice", "bob", gid)
        deliver(w, proxy, "alice", "bob", other_gid)
        r1, _, cap1 = w.new_record()
        r2, _, cap2 = w.new_record()
        approval = request(w, "bob", r1)
        bob, carol = w.m["bob"].ibe_id, w.m["carol"].ibe_id
        # Carol holds no grant: bob's approval is not hers, whatever she quotes.
        with pytest.raises(ApprovalRefused, match=f"it is for requester {bob} \\(not {carol}\\)"):
            proxy.reencrypt(record_id=r1, requester=carol, approval_id=approval, capsule=cap1)
        with pytest.raises(ApprovalRefused) as info:
            proxy.reencrypt(
                record_id=r1, requester=carol, approval_id=approval, grant_id=gid, capsule=cap1
            )
        assert f"it is for requester {bob} (not {carol})" in str(info.value)
        # Bob's approval is for r1, not r2.
        with pytest.raises(ApprovalRefused) as info:
            proxy.reencrypt(record_id=r2, requester=bob, approval_id=approval, capsule=cap2)
        assert str(info.value) == (
            f"approval {approval} does not match the request: it is for record {r1} (not {r2})"
        )
        # The approval named the first valid grant; the other grant is refused.
        decided = w.m["alice"].evaluate("GetAuditTrail", "record", r1)["entries"][-1]
        used = decided["grant_id"]
        unused = other_gid if used == gid else gid
        with pytest.raises(ApprovalRefused, match=f"it is for grant {used} \\(not {unused}\\)"):
            proxy.reencrypt(
                record_id=r1, requester=bob, approval_id=approval, grant_id=unused, capsule=cap1
            )
        # An authenticated client cannot act for someone else.
        with pytest.raises(NotAuthorised):
            InProcessProxyClient(proxy, caller=carol).reencrypt(
                record_id=r1, requester=bob, approval_id=approval
            )
        out = proxy.reencrypt(record_id=r1, requester=bob, approval_id=approval, capsule=cap1)
        assert Capsule.from_bytes(out).hops == 1


def test_capsule_of_another_record_is_refused(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        deliver(w, proxy, "alice", "bob", gid)
        r1, _, _ = w.new_record()
        _, _, cap2 = w.new_record()
        approval = request(w, "bob", r1)
        with pytest.raises(ApprovalRefused) as info:
            proxy.reencrypt(
                record_id=r1, requester=w.m["bob"].ibe_id, approval_id=approval, capsule=cap2
            )
        assert str(info.value) == f"the capsule sent is not the capsule of record {r1}"


def test_refused_twice_for_one_approval_and_works_with_a_new_one(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        deliver(w, proxy, "alice", "bob", gid)
        record_id, m, capsule = w.new_record()
        bob = w.m["bob"].ibe_id
        approval = request(w, "bob", record_id)
        proxy.reencrypt(record_id=record_id, requester=bob, approval_id=approval, capsule=capsule)
        with pytest.raises(ApprovalConsumed) as info:
            proxy.reencrypt(
                record_id=record_id, requester=bob, approval_id=approval, capsule=capsule
            )
        assert str(info.value) == f"approval {approval} was already used; request access again"
        again = request(w, "bob", record_id)
        out = proxy.reencrypt(
            record_id=record_id, requester=bob, approval_id=again, capsule=capsule
        )
        assert read_as(w, "bob", out) == m


class _ReportFails:
    """Wraps the proxy's real contract; the report transaction fails (a crash stand-in)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.chaincode_name = inner.chaincode_name

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        return bytes(self._inner.evaluate_transaction(name, *args))

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        if name == "ReportReencryption":
            raise GatewayError("peer went away")
        return bytes(self._inner.submit_transaction(name, *args))


def test_restart_keeps_rekeys_and_consumed_approvals(lab: World) -> None:
    w = lab
    gid = grant(w, "alice", "bob")
    record_id, m, capsule = w.new_record()
    bob = w.m["bob"].ibe_id
    with w.open_proxy() as proxy:
        deliver(w, proxy, "alice", "bob", gid)
    # Restart 1: the re-key is still there, and usable.
    approval = request(w, "bob", record_id)
    with w.open_proxy() as proxy:
        assert proxy.holds(gid)
        out = proxy.reencrypt(
            record_id=record_id, requester=bob, approval_id=approval, capsule=capsule
        )
        assert read_as(w, "bob", out) == m
    # Restart 2: the used approval stays used.
    with w.open_proxy() as proxy, pytest.raises(ApprovalConsumed):
        proxy.reencrypt(record_id=record_id, requester=bob, approval_id=approval, capsule=capsule)
    # Mid-flow failure after the approval was recorded: nothing is released, and after a restart
    # the same approval is still refused.
    approval2 = request(w, "bob", record_id)
    failing = ReencryptionProxy(
        state_dir=w.proxy_state,
        contract=_ReportFails(w.m["proxy"].contract),
        key=w.proxy_key,
        ibe_id=w.m["proxy"].ibe_id,
    )
    with failing, pytest.raises(ProxyError, match="could not be reported"):
        failing.reencrypt(
            record_id=record_id, requester=bob, approval_id=approval2, capsule=capsule
        )
    with w.open_proxy() as proxy:
        with pytest.raises(ApprovalConsumed):
            proxy.reencrypt(
                record_id=record_id, requester=bob, approval_id=approval2, capsule=capsule
            )
        approval3 = request(w, "bob", record_id)
        proxy.reencrypt(record_id=record_id, requester=bob, approval_id=approval3, capsule=capsule)


def test_store_rekey_checks_grantor_grant_and_sealing(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", "bob")
        rekey = make_rekey(w, "alice", "bob")
        sealed = seal_rekey(proxy.public_key(), gid, rekey)
        with pytest.raises(NotAuthorised, match=f"is not the grantor of grant {gid}"):
            InProcessProxyClient(proxy, caller=w.m["carol"].ibe_id).store_rekey(gid, sealed)
        other = grant(w, "alice", "carol")
        with pytest.raises(InvalidReKey, match="does not open with this proxy's key"):
            proxy.store_rekey(other, sealed)
        wrong = seal_rekey(proxy.public_key(), other, rekey)  # bob's re-key for carol's grant
        with pytest.raises(InvalidReKey, match="re-key is not for delegatee"):
            proxy.store_rekey(other, wrong)
        foreign = seal_rekey(X25519KeyPair.generate().public_bytes, gid, rekey)
        with pytest.raises(InvalidReKey):
            proxy.store_rekey(gid, foreign)
        proxy.store_rekey(gid, sealed)
        # A second delivery (a retried one, or 'grant repair' of a grant that is fine) is a
        # no-op: the re-key held stays.
        proxy.store_rekey(gid, sealed)
        assert proxy.rekey_status(gid) == "held"


def test_revocation_event_deletes_the_rekey(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = grant(w, "alice", who)
        deliver(w, proxy, "alice", who, gid)
        record_id, _, capsule = w.new_record()
        approval = request(w, who, record_id)
        network = w.m["proxy"].gateway.get_network("ehrshare")
        follower = RevocationFollower(proxy, network)
        follower.start()
        try:
            w.m["alice"].submit("RevokeAccess", gid)
            deadline = time.monotonic() + 30
            while proxy.holds(gid) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            follower.stop()
        assert not proxy.holds(gid)
        assert proxy.checkpoint()[0] is not None
        with pytest.raises(ApprovalRefused, match=f"grant {gid} is revoked"):
            proxy.reencrypt(
                record_id=record_id,
                requester=w.m[who].ibe_id,
                approval_id=approval,
                grant_id=gid,
                capsule=capsule,
            )


def test_told_revocation_deletes_forwarded_rekeys_too(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        parent = grant(w, "alice", "bob", max_hops=1)
        deliver(w, proxy, "alice", "bob", parent)
        child = grant(w, "bob", "carol", parent=parent)
        deliver(w, proxy, "bob", "carol", child)
        with pytest.raises(NotAuthorised, match=f"may not revoke grant {parent}"):
            InProcessProxyClient(proxy, caller=w.m["dan"].ibe_id).revoke(parent)
        InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).revoke(parent)
        assert not proxy.holds(parent)
        assert not proxy.holds(child)


def test_multi_hop_chain_is_applied_and_decrypts(lab: World) -> None:
    w = lab
    b, c, d = (fresh_clinician(w) for _ in range(3))
    with w.open_proxy() as proxy:
        parent = grant(w, "alice", b, max_hops=2)
        child = grant(w, b, c, max_hops=1, parent=parent)
        # A forwarded grant's re-key goes to the proxy the grant names (here the parent's too);
        # the parent's re-key need not be here first.
        rk = make_rekey(w, b, c)
        proxy.store_rekey(child, seal_rekey(proxy.public_key(), child, rk))
        deliver(w, proxy, "alice", b, parent)
        grandchild = grant(w, c, d, parent=child)
        deliver(w, proxy, c, d, grandchild)
        record_id, m, capsule = w.new_record()
        for who, hops in ((c, 2), (d, 3), (b, 1)):
            approval = request(w, who, record_id)
            out = proxy.reencrypt(
                record_id=record_id,
                requester=w.m[who].ibe_id,
                approval_id=approval,
                capsule=capsule,
            )
            assert Capsule.from_bytes(out).hops == hops
            assert read_as(w, who, out) == m
        # Revoking the middle grant on chain cuts off everyone below it, not above.
        w.m[b].submit("RevokeAccess", child)
        approval = request(w, b, record_id)
        proxy.reencrypt(
            record_id=record_id, requester=w.m[b].ibe_id, approval_id=approval, capsule=capsule
        )
        denied = w.m[d].submit("RequestAccess", record_id)
        assert denied["decision"] == "deny"


def test_no_rekey_in_clear_in_state_or_logs(lab: World, caplog: pytest.LogCaptureFixture) -> None:
    w = lab
    secrets: list[bytes] = []
    with caplog.at_level(logging.DEBUG), w.open_proxy() as proxy:
        for _ in range(2):
            gid = grant(w, "alice", "dan")
            secrets.append(deliver(w, proxy, "alice", "dan", gid).to_secret_bytes())
            record_id, _, capsule = w.new_record()
            approval = request(w, "dan", record_id)
            proxy.reencrypt(
                record_id=record_id,
                requester=w.m["dan"].ibe_id,
                approval_id=approval,
                capsule=capsule,
            )
    blobs = [p.read_bytes() for p in w.proxy_state.rglob("*") if p.is_file()]
    blobs.append(caplog.text.encode())
    assert any(blobs)
    for secret in secrets:
        # The whole re-key and its K component (bytes 97..193) in every plausible encoding.
        for needle in (secret, secret[97:193]):
            forms = (needle, needle.hex().encode(), base64.b64encode(needle))
            for blob in blobs:
                for form in forms:
                    assert form not in blob


# --- approvals keyed by access id, per-approval locking ---------------------------------------


def test_two_concurrent_reads_of_one_record_by_one_member_both_succeed(lab: World) -> None:
    w = lab
    # A fresh grantee: an older alice→bob grant from another test (its re-key not at this
    # proxy) could otherwise be the one RequestAccess picks.
    who = fresh_clinician(w)
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", who)
        deliver(w, proxy, "alice", who, gid)
        record_id, m, _ = w.new_record()
        bob = InProcessProxyClient(proxy, caller=w.m[who].ibe_id)
        # Both requests commit before either reaches the proxy: the second must not cancel
        # the first.
        approvals = [request(w, who, record_id), request(w, who, record_id)]
        outs: dict[str, bytes] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(len(approvals))

        def read(approval: str) -> None:
            try:
                start.wait()
                outs[approval] = bob.reencrypt(
                    record_id=record_id, requester=bob.caller, approval_id=approval
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(a,)) for a in approvals]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert sorted(outs) == sorted(approvals)
        assert all(read_as(w, who, out) == m for out in outs.values())
        # Each approval is still single use.
        for approval in approvals:
            with pytest.raises(ApprovalConsumed):
                bob.reencrypt(record_id=record_id, requester=bob.caller, approval_id=approval)


def test_one_approval_is_released_once_to_racing_threads(lab: World) -> None:
    w = lab
    who = fresh_clinician(w)  # see the test above
    with w.open_proxy() as proxy:
        gid = grant(w, "alice", who)
        deliver(w, proxy, "alice", who, gid)
        record_id, _, _ = w.new_record()
        bob = w.m[who].ibe_id
        approval = request(w, who, record_id)
        released: list[bytes] = []
        refused: list[ApprovalConsumed] = []
        other: list[BaseException] = []
        start = threading.Barrier(8)

        def race() -> None:
            start.wait()
            try:
                released.append(
                    proxy.reencrypt(record_id=record_id, requester=bob, approval_id=approval)
                )
            except ApprovalConsumed as exc:
                refused.append(exc)
            except BaseException as exc:
                other.append(exc)

        threads = [threading.Thread(target=race) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert other == []
        assert (len(released), len(refused)) == (1, 7)
        trail = w.m["alice"].evaluate("GetAuditTrail", "record", record_id)["entries"]
        assert sum(e["action"] == "ReportReencryption" for e in trail) == 1
        assert len(proxy._approval_locks) == 0  # per-approval locks do not pile up


class _HoldsCheck:
    """Wraps the proxy's contract: CheckApproval of one approval waits until told to go on."""

    def __init__(self, inner: Any, held: str) -> None:
        self._inner = inner
        self.chaincode_name = inner.chaincode_name
        self.held = held
        self.inside = threading.Event()
        self.release = threading.Event()
        self.timed_out = False

    def evaluate_transaction(self, name: str, *args: str | bytes) -> bytes:
        if name == "CheckApproval" and args[0] == self.held:
            self.inside.set()
            # Bounded only so a regression (a proxy-wide lock: the other call cannot finish
            # and release us) fails instead of hanging the suite.
            self.timed_out = not self.release.wait(timeout=10)
        return bytes(self._inner.evaluate_transaction(name, *args))

    def submit_transaction(self, name: str, *args: str | bytes) -> bytes:
        return bytes(self._inner.submit_transaction(name, *args))


def test_a_slow_approval_check_does_not_block_other_approvals(lab: World) -> None:
    w = lab
    # A fresh grantee: an older alice→bob grant from another test (its re-key not at this
    # proxy) could otherwise be the one RequestAccess picks.
    who = fresh_clinician(w)
    gid = grant(w, "alice", who)
    record_id, m, _ = w.new_record()
    bob = w.m[who].ibe_id
    slow, fast = request(w, who, record_id), request(w, who, record_id)
    contract = _HoldsCheck(w.m["proxy"].contract, held=slow)
    proxy = ReencryptionProxy(
        state_dir=w.proxy_state, contract=contract, key=w.proxy_key, ibe_id=w.m["proxy"].ibe_id
    )
    with proxy:
        deliver(w, proxy, "alice", who, gid)
        results: dict[str, Any] = {}

        def read_slow() -> None:
            try:
                results["slow"] = proxy.reencrypt(
                    record_id=record_id, requester=bob, approval_id=slow
                )
            except BaseException as exc:
                results["slow"] = exc

        t = threading.Thread(target=read_slow)
        t.start()
        assert contract.inside.wait(timeout=30)
        # The slow approval is inside its chain call: another approval goes through meanwhile
        # (with one proxy-wide lock it would wait for the slow one).
        results["fast"] = proxy.reencrypt(record_id=record_id, requester=bob, approval_id=fast)
        contract.release.set()
        t.join(timeout=60)
        assert contract.timed_out is False
        assert read_as(w, who, results["fast"]) == m
        assert read_as(w, who, results["slow"]) == m


def test_a_rekey_deleted_by_another_process_is_not_used_from_memory(lab: World) -> None:
    # The proxy remembers unsealed re-keys between reads, but reads the re-key's row on every
    # use: a deletion by another process sharing the state directory takes effect at once.
    w = lab
    clin = fresh_clinician(w)
    gid = grant(w, "alice", clin)
    record_id, m, capsule = w.new_record()
    reader = w.m[clin].ibe_id
    with w.open_proxy() as proxy, w.open_proxy() as other:
        deliver(w, proxy, "alice", clin, gid)
        for _ in range(2):  # the second read is served from the remembered re-key
            approval = request(w, clin, record_id)
            out = proxy.reencrypt(
                record_id=record_id, requester=reader, approval_id=approval, capsule=capsule
            )
            assert read_as(w, clin, out) == m
        # Not revoked on chain: only the stored re-keys go (one per type-key epoch).
        epochs = w.m["alice"].evaluate("GetGrant", gid)["type_epochs"]
        assert other.revoke(gid) == len(epochs)
        approval = request(w, clin, record_id)
        with pytest.raises(NoReKey, match=f"this proxy holds no re-key for grant {gid}"):
            proxy.reencrypt(
                record_id=record_id, requester=reader, approval_id=approval, capsule=capsule
            )
