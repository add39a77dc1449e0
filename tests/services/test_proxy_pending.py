"""Re-keys delivered ahead of their grant: kept pending, taken into use once the grant commits.

This is what makes a grant atomic: the grantor delivers the re-key under the grant id it chose,
then submits GrantAccess with that id, so a committed grant always has its re-key at its proxy.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from typing import Any

import pytest
from services_world import FAR, World
from test_proxy import LAB, fresh_clinician, make_rekey, read_as

from ehrshare.hazmat.kgc_keys import X25519KeyPair
from ehrshare.ledger.api import ChaincodeEvent
from ehrshare.rekey_delivery import rekey_id, seal_rekey
from ehrshare.services.proxy import (
    InProcessProxyClient,
    InvalidReKey,
    NoReKey,
    NotAuthorised,
    ReencryptionProxy,
)
from ehrshare.services.proxy import service as proxy_mod


@pytest.fixture(scope="module")
def lab(world: World) -> World:
    for name in ("alice", "bob", "carol", "dan"):
        world.publish_type_key(name, LAB)
    return world


def new_id() -> str:
    return "g-" + secrets.token_hex(16)


def deliver_ahead(w: World, proxy: ReencryptionProxy, grantor: str, grantee: str) -> str:
    """Deliver a new grant's re-keys ahead of it: one per type-key epoch of the owner so far
    (revocations earlier in this module rotated alice's type), as a session does."""
    gid = new_id()
    client = InProcessProxyClient(proxy, caller=w.m[grantor].ibe_id)
    for n in range(w.current_type_epoch(grantor, LAB) + 1):
        name = rekey_id(gid, n)
        rekey = make_rekey(w, grantor, grantee, n)
        client.store_rekey(name, seal_rekey(proxy.public_key(), name, rekey))
    return gid


def commit(w: World, grantor: str, grantee: str, gid: str, *, proxy: str = "") -> dict[str, Any]:
    named = proxy or w.m["proxy"].ibe_id
    row: dict[str, Any] = w.m[grantor].submit(
        "GrantAccess", LAB, w.m[grantee].ibe_id, FAR, "0", "", "", named, gid
    )
    return row


def read(w: World, proxy: ReencryptionProxy, who: str, record_id: str) -> bytes:
    access = w.m[who].submit("RequestAccess", record_id)
    assert access["decision"] == "allow", access
    return proxy.reencrypt(
        record_id=record_id, requester=w.m[who].ibe_id, approval_id=access["access_id"]
    )


def test_a_rekey_delivered_before_its_grant_serves_once_the_grant_commits(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
        assert proxy.rekey_status(gid) == "pending"
        with pytest.raises(NoReKey):  # nothing to serve before the grant commits
            proxy._verified_rekey(gid)
        assert commit(w, "alice", who, gid)["grant_id"] == gid
        record_id, message, _ = w.new_record()
        out = read(w, proxy, who, record_id)  # activates the pending re-key on first use
        assert read_as(w, who, out) == message
        assert proxy.rekey_status(gid) == "held"


def test_a_pending_rekey_survives_a_proxy_restart(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
    commit(w, "alice", who, gid)
    with w.open_proxy() as again:
        record_id, message, _ = w.new_record()
        assert read_as(w, who, read(w, again, who, record_id)) == message


def test_the_grant_event_activates_a_pending_rekey(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
        row = commit(w, "alice", who, gid)
        payload = json.dumps({"entries": [{"action": "GrantAccess", "grant_id": gid}]}).encode()
        proxy.handle_event(ChaincodeEvent(7, row["tx_id"], "ehrshare", "GrantAccess", payload))
        assert proxy.rekey_status(gid) == "held"
        assert proxy.checkpoint() == (7, row["tx_id"])


def test_a_pending_rekey_must_come_from_the_depositor(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = new_id()
        sealed = seal_rekey(proxy.public_key(), gid, make_rekey(w, "alice", "bob"))
        with pytest.raises(NotAuthorised, match=f"re-key for grant {gid} is not from identity"):
            InProcessProxyClient(proxy, caller=w.m["carol"].ibe_id).store_rekey(gid, sealed)
        foreign = seal_rekey(
            X25519KeyPair.generate().public_bytes, gid, make_rekey(w, "alice", "bob")
        )
        with pytest.raises(InvalidReKey, match="does not open with this proxy's key"):
            InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).store_rekey(gid, foreign)
        with pytest.raises(InvalidReKey, match="needs a grant id of 'g-' and 32"):
            InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).store_rekey("g-1", sealed)
        assert proxy.rekey_status(gid) == "missing"


def test_a_pending_rekey_of_a_grant_that_commits_otherwise_is_dropped(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        # Delivered for one grantee, committed for another: the re-key does not match.
        gid = deliver_ahead(w, proxy, "alice", "bob")
        commit(w, "alice", who, gid)
        assert not proxy.activate(gid)
        assert proxy.rekey_status(gid) == "missing"


def test_a_grant_revoked_before_activation_never_gets_its_rekey(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
        commit(w, "alice", who, gid)
        w.m["alice"].submit("RevokeAccess", gid)
        assert not proxy.activate(gid)
        assert proxy.rekey_status(gid) == "missing"


def test_the_depositor_withdraws_a_delivery_whose_grant_was_refused(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        gid = deliver_ahead(w, proxy, "alice", "bob")
        InProcessProxyClient(proxy, caller=w.m["carol"].ibe_id).revoke(gid)  # not carol's
        assert proxy.rekey_status(gid) == "pending"
        InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).revoke(gid)
        assert proxy.rekey_status(gid) == "missing"


def test_stale_pending_rekeys_are_swept(lab: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        never = deliver_ahead(w, proxy, "alice", "bob")  # its grant never commits
        late = deliver_ahead(w, proxy, "alice", who)
        commit(w, "alice", who, late)  # committed, not yet used
        later = time.time() + proxy_mod.PENDING_TTL_S + 1
        monkeypatch.setattr(proxy_mod.time, "time", lambda: later)
        deliver_ahead(w, proxy, "alice", "carol")  # a delivery sweeps old ones
        assert proxy.rekey_status(never) == "missing"
        assert proxy.rekey_status(late) == "held"


def test_pending_rekeys_are_sealed_at_rest(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        rekey = make_rekey(w, "alice", "dan")
        gid = new_id()
        InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).store_rekey(
            gid, seal_rekey(proxy.public_key(), gid, rekey)
        )
        db = (proxy.state_dir / "proxy.db").read_bytes()
        wal = proxy.state_dir / "proxy.db-wal"
        raw = rekey.to_secret_bytes()
        assert raw not in db and (not wal.exists() or raw not in wal.read_bytes())


def test_a_party_to_a_grant_asks_whether_its_rekey_is_held(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
        with pytest.raises(NoReKey, match=f"grant {gid} does not exist"):
            InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).rekey_status(gid)
        commit(w, "alice", who, gid)
        with pytest.raises(NotAuthorised, match=f"may not ask about grant {gid}"):
            InProcessProxyClient(proxy, caller=w.m["carol"].ibe_id).rekey_status(gid)
        assert proxy.rekey_status(gid) == "pending"
        # A party's question takes a committed grant's pending re-key into use.
        assert InProcessProxyClient(proxy, caller=w.m[who].ibe_id).rekey_status(gid) == "held"
        w.m["alice"].submit("RevokeAccess", gid)
        InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).revoke(gid)
        assert InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id).rekey_status(gid) == (
            "missing"
        )


def test_an_altered_pending_rekey_is_never_used_and_a_new_delivery_repairs(lab: World) -> None:
    w = lab
    with w.open_proxy() as proxy:
        who = fresh_clinician(w)
        gid = deliver_ahead(w, proxy, "alice", who)
        # The re-key a new record needs: the one of alice's current type-key epoch.
        n = w.current_type_epoch("alice", LAB)
        name = rekey_id(gid, n)
        db = sqlite3.connect(proxy.state_dir / "proxy.db")
        try:
            with db:
                (blob,) = db.execute(
                    "SELECT sealed FROM pending_rekeys WHERE grant_id = ?", (name,)
                ).fetchone()
                flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
                db.execute(
                    "UPDATE pending_rekeys SET sealed = ? WHERE grant_id = ?", (flipped, name)
                )
        finally:
            db.close()
        commit(w, "alice", who, gid)
        record_id, message, _ = w.new_record()
        with pytest.raises(NoReKey, match=f"no re-key for grant {name}"):
            read(w, proxy, who, record_id)
        assert proxy.rekey_status(name) == "missing"
        # The grantor delivers again (what 'grant repair' does): the grant is served.
        client = InProcessProxyClient(proxy, caller=w.m["alice"].ibe_id)
        rekey = make_rekey(w, "alice", who, n)
        client.store_rekey(name, seal_rekey(proxy.public_key(), name, rekey))
        assert read_as(w, who, read(w, proxy, who, record_id)) == message
