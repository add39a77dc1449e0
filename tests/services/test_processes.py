"""KGC nodes and the proxy as real processes (``ehrshare kgc serve`` / ``ehrshare proxy serve``).

Started through the CLI on 127.0.0.1, stopped by pid with SIGTERM; afterwards the state
directories and logs are scanned for shares, partial keys and re-keys in clear.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator

import pytest
from services_world import FAR, Procs, World

from ehrshare.hazmat.tipre import Capsule, decrypt, generate_rekey, identity_point
from ehrshare.rekey_delivery import seal_rekey
from ehrshare.services.proxy import ApprovalConsumed
from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient

pytestmark = pytest.mark.slow

LAB = "lab"


@pytest.fixture(scope="module")
def procs(world: World) -> Iterator[Procs]:
    p = Procs(world)
    yield p
    p.stop_all()


def test_kgc_processes_extract_and_survive_a_node_going_down(procs: Procs) -> None:
    w = procs.w
    targets = [procs.start_kgc(i) for i in (1, 2, 3)]
    # Each process published its key at start (the same key again: logged as repeated).
    entries, bookmark = [], ""
    while True:
        page = w.m["admin"].evaluate("GetAuditTrail", "patient", "~system", "100", bookmark)
        entries += page["entries"]
        bookmark = page["bookmark"]
        if not bookmark:
            break
    repeated = {
        e["actor"] for e in entries if (e["action"], e["outcome"]) == ("PublishKGCKey", "repeated")
    }
    assert repeated == {w.m[f"kgc{i}"].ibe_id for i in (1, 2, 3)}
    tls = procs.tls_for("alice")
    clients = [GrpcKgcClient(t, index=i + 1, tls=tls) for i, t in enumerate(targets)]
    # The processes check request timestamps against the wall clock, not the world's.
    outcome = w.extract(clients, "alice", clock=time.time_ns)
    outcome.secret_key.check(w.mpk)
    assert procs.stop("kgc1") == 0
    outcome = w.extract(clients, "alice", clock=time.time_ns, timeout=3)
    outcome.secret_key.check(w.mpk)
    assert list(outcome.unavailable) == [1]
    log = (w.nodes[1].state_dir / "kgc.log").read_text()
    assert f"extraction node=2 identity={w.m['alice'].ibe_id} requester=" in log


def test_proxy_process_single_use_across_restart_and_revocation(procs: Procs) -> None:
    w = procs.w
    w.publish_type_key("alice", LAB)
    name = "procclin"
    w.m[name] = w.sandbox.member("Org2MSP", name, "clinician")
    w.publish_type_key(name, LAB)
    who = w.m[name].ibe_id
    target = procs.start_proxy()
    alice = GrpcProxyClient(target, tls=procs.tls_for("alice"))
    pete = w.m["proxy"].ibe_id
    gid = w.m["alice"].submit("GrantAccess", LAB, who, FAR, "0", "", "", pete)["grant_id"]
    pk = w.type_public(name, LAB).verify(owner=who, type_label=LAB, mpk=w.mpk)
    rekey = generate_rekey(w.key_of("alice").type_secret(LAB), pk)
    alice.store_rekey(gid, seal_rekey(alice.public_key(), gid, rekey))
    record_id, m, capsule = w.new_record()
    approval = w.m[name].submit("RequestAccess", record_id)["access_id"]
    client = GrpcProxyClient(target, tls=procs.tls_for(name))
    out = client.reencrypt(
        record_id=record_id, requester=who, approval_id=approval, capsule=capsule
    )
    verified = Capsule.from_bytes(out).verify(owner=w.m["alice"].ibe_id, type_label=LAB)
    assert decrypt(verified, w.key_of(name).type_secret(LAB)) == m

    assert procs.stop("proxy") == 0
    target = procs.start_proxy()
    client = GrpcProxyClient(target, tls=procs.tls_for(name))
    with pytest.raises(ApprovalConsumed):
        client.reencrypt(record_id=record_id, requester=who, approval_id=approval, capsule=capsule)
    again = w.m[name].submit("RequestAccess", record_id)["access_id"]
    out = client.reencrypt(record_id=record_id, requester=who, approval_id=again, capsule=capsule)
    assert Capsule.from_bytes(out).hops == 1

    # Revocation on chain: the proxy process follows the event and deletes the re-key.
    w.m["alice"].submit("RevokeAccess", gid)
    db = w.root / "proxy-proc" / "proxy.db"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            left = conn.execute("SELECT COUNT(*) FROM rekeys WHERE grant_id = ?", (gid,)).fetchone()
        if left[0] == 0:
            break
        time.sleep(0.1)
    assert left[0] == 0
    assert procs.stop("proxy") == 0

    # Nothing secret in clear in any state directory or log.
    procs.stop_all()
    dirs = [n.state_dir for n in w.nodes] + [w.root / "proxy-proc"]
    blobs = [p.read_bytes() for d in dirs for p in d.rglob("*") if p.is_file()]
    assert any(b"extraction node=" in b for b in blobs)
    needles = [rekey.to_secret_bytes(), rekey.to_secret_bytes()[97:193]]
    for node in w.nodes:
        assert node._result is not None
        share = node._result.share
        needles += [share.value.to_bytes(), share.to_secret_bytes()]
        needles.append((identity_point(w.m["alice"].ibe_id) * share.value).to_bytes())
    for needle in needles:
        for form in (needle, needle.hex().encode(), base64.b64encode(needle)):
            assert not any(form in blob for blob in blobs)
