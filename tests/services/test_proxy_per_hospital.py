"""One re-encryption proxy per hospital: each holds the re-keys of the grants that name it, and a
multi-hop read visits the proxies of the grant chain in order, each applying its own hops."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from services_world import FAR, World

from ehrshare.hazmat.kgc_keys import X25519KeyPair
from ehrshare.hazmat.tipre import Capsule, decrypt, generate_rekey
from ehrshare.ledger.sandbox import Member
from ehrshare.rekey_delivery import rekey_id, seal_rekey
from ehrshare.services.proxy import (
    ApprovalConsumed,
    ApprovalRefused,
    InProcessProxyClient,
    InvalidReKey,
    NoReKey,
    ReencryptionProxy,
)

LAB = "lab"


@dataclass
class Hospitals:
    w: World
    proxies: dict[str, ReencryptionProxy]  # by proxy name: p1 (Org1), p2 (Org2), p3 (Org2)
    members: dict[str, Member]


@pytest.fixture(scope="module")
def hospitals(world: World) -> Iterator[Hospitals]:
    world.publish_type_key("alice", LAB)
    members = {
        "p1": world.m["proxy"],
        "p2": world.sandbox.member("Org2MSP", "paula", "proxy"),
        "p3": world.sandbox.member("Org2MSP", "quinn", "proxy"),
    }
    proxies = {
        name: ReencryptionProxy(
            state_dir=world.root / f"hospital-{name}",
            contract=m.contract,
            key=X25519KeyPair.generate(),
            ibe_id=m.ibe_id,
            name=name,
        )
        for name, m in members.items()
    }
    yield Hospitals(world, proxies, members)
    for p in proxies.values():
        p.close()


def clinician(w: World) -> str:
    name = f"hclin{next(w.counter)}"
    w.m[name] = w.sandbox.member("Org2MSP", name, "clinician")
    w.publish_type_key(name, LAB)
    return name


def grant(h: Hospitals, grantor: str, grantee: str, proxy: str, hops: int, parent: str) -> str:
    """Commit a grant naming ``proxy`` and deliver its re-key there (as the grantor)."""
    w = h.w
    named = h.members[proxy].ibe_id
    row = w.m[grantor].submit(
        "GrantAccess", LAB, w.m[grantee].ibe_id, FAR, str(hops), "", parent, named
    )
    gid = str(row["grant_id"])
    pk = w.type_public(grantee, LAB).verify(owner=w.m[grantee].ibe_id, type_label=LAB, mpk=w.mpk)
    client = InProcessProxyClient(h.proxies[proxy], caller=w.m[grantor].ibe_id)
    # A root grant: one re-key per type-key epoch of the owner so far (alice's revocations
    # earlier in this module rotated her type).
    for n in row.get("type_epochs", [0]):
        sk = w.key_of(grantor).type_secret(LAB, n)
        name = rekey_id(gid, n)
        client.store_rekey(name, seal_rekey(client.public_key(), name, generate_rekey(sk, pk)))
    return gid


def chain_of(h: Hospitals, proxies: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """alice → b → c → … with hop i's re-key at ``proxies[i]``; (grantees, grant ids)."""
    who = ["alice"] + [clinician(h.w) for _ in proxies]
    gids: list[str] = []
    for i, proxy in enumerate(proxies):
        parent = gids[-1] if gids else ""
        gids.append(grant(h, who[i], who[i + 1], proxy, len(proxies) - i - 1, parent))
    return who[1:], gids


def request(w: World, who: str, record_id: str, grant_id: str = "") -> dict[str, Any]:
    access: dict[str, Any] = w.m[who].submit("RequestAccess", record_id, grant_id)
    assert access["decision"] == "allow", access
    return access


def visit(h: Hospitals, proxy: str, who: str, record_id: str, approval: str, cap: bytes) -> bytes:
    client = InProcessProxyClient(h.proxies[proxy], caller=h.w.m[who].ibe_id)
    return client.reencrypt(
        record_id=record_id, requester=h.w.m[who].ibe_id, approval_id=approval, capsule=cap
    )


def read(h: Hospitals, who: str, record_id: str, approval: dict[str, Any], cap: bytes) -> Any:
    """Visit each run of the chain's proxies in order, then decrypt."""
    by_id = {m.ibe_id: name for name, m in h.members.items()}
    hops = [by_id[hop["proxy"]] for hop in approval["chain"]]
    runs = [p for i, p in enumerate(hops) if i == 0 or hops[i - 1] != p]
    for proxy in runs:
        cap = visit(h, proxy, who, record_id, approval["access_id"], cap)
    capsule = Capsule.from_bytes(cap).verify(owner=h.w.m["alice"].ibe_id, type_label=LAB)
    assert capsule.hops == len(hops)
    return decrypt(capsule, h.w.key_of(who).type_secret(LAB))


@pytest.mark.parametrize(
    "proxies",
    [("p1", "p2", "p3"), ("p1", "p2", "p1"), ("p2", "p2", "p1")],
    ids=["three-proxies", "back-to-the-first", "two-hops-at-one"],
)
def test_three_hop_read_through_several_proxies(
    hospitals: Hospitals, proxies: tuple[str, ...]
) -> None:
    h = hospitals
    who, gids = chain_of(h, proxies)
    record_id, m, capsule = h.w.new_record()
    # Every grantee along the chain reads, each through the proxies of its own prefix.
    for depth in range(1, 4):
        access = request(h.w, who[depth - 1], record_id)
        assert [hop["grant_id"] for hop in access["chain"]] == gids[:depth]
        assert read(h, who[depth - 1], record_id, access, capsule) == m
    # The deepest read's reports name each proxy run and the hop count of what it released.
    trail = h.w.m["alice"].evaluate("GetAuditTrail", "record", record_id)["entries"]
    reports = [
        (e["detail"]["proxy"], e["detail"]["applied"])
        for e in trail
        if e["action"] == "ReportReencryption" and e["detail"]["access_id"] == access["access_id"]
    ]
    ends = [i + 1 for i in range(3) if i == 2 or proxies[i + 1] != proxies[i]]
    assert reports == [(h.members[proxies[end - 1]].ibe_id, end) for end in ends]


def test_proxies_must_be_visited_in_chain_order(hospitals: Hospitals) -> None:
    h = hospitals
    who, _ = chain_of(h, ("p1", "p2"))
    record_id, m, capsule = h.w.new_record()
    c = who[1]
    access = request(h.w, c, record_id)
    a = access["access_id"]
    p1, p2 = h.members["p1"].ibe_id, h.members["p2"].ibe_id
    # Hop 1 is p1's: p2 refuses the record's own capsule.
    with pytest.raises(ApprovalRefused) as info:
        visit(h, "p2", c, record_id, a, capsule)
    assert str(info.value) == f"hop 1 of approval {a} is for proxy {p1}, not this proxy ({p2})"
    # A capsule one hop along that p1 released for another record is refused by p2.
    r2, _, cap2 = h.w.new_record()
    other = request(h.w, c, r2)
    elsewhere = visit(h, "p1", c, r2, other["access_id"], cap2)
    with pytest.raises(ApprovalRefused) as info:
        visit(h, "p2", c, record_id, a, elsewhere)
    assert str(info.value) == (
        f"no proxy reported hop 1 of approval {a}; visit the proxies of the grant chain in order"
    )
    mid = visit(h, "p1", c, record_id, a, capsule)
    with pytest.raises(ApprovalRefused) as info:
        visit(h, "p2", c, record_id, a, elsewhere)
    assert str(info.value) == (
        f"the capsule sent is not the one proxy {p1} released for hop 1 of approval {a}"
    )
    # Single use per (approval, proxy): p1 again is refused, p2 serves once.
    with pytest.raises(ApprovalConsumed):
        visit(h, "p1", c, record_id, a, capsule)
    out = visit(h, "p2", c, record_id, a, mid)
    with pytest.raises(ApprovalConsumed):
        visit(h, "p2", c, record_id, a, mid)
    final = Capsule.from_bytes(out).verify(owner=h.w.m["alice"].ibe_id, type_label=LAB)
    assert decrypt(final, h.w.key_of(c).type_secret(LAB)) == m


def test_a_proxy_refuses_an_approval_whose_chain_does_not_name_it(hospitals: Hospitals) -> None:
    h = hospitals
    who, _ = chain_of(h, ("p1",))
    record_id, _, capsule = h.w.new_record()
    a = request(h.w, who[0], record_id)["access_id"]
    with pytest.raises(ApprovalRefused) as info:
        visit(h, "p3", who[0], record_id, a, capsule)
    assert str(info.value).endswith(f"no grant of access {a} names proxy {h.members['p3'].ibe_id}")


def test_a_rekey_goes_only_to_the_proxy_its_grant_names(hospitals: Hospitals) -> None:
    h = hospitals
    w = h.w
    b = clinician(w)
    p2 = h.members["p2"].ibe_id
    row = w.m["alice"].submit("GrantAccess", LAB, w.m[b].ibe_id, FAR, "0", "", "", p2)
    gid = row["grant_id"]
    sk = w.key_of("alice").type_secret(LAB)
    pk = w.type_public(b, LAB).verify(owner=w.m[b].ibe_id, type_label=LAB, mpk=w.mpk)
    rk = generate_rekey(sk, pk)
    wrong = h.proxies["p1"]
    with pytest.raises(InvalidReKey) as info:
        wrong.store_rekey(gid, seal_rekey(wrong.public_key(), gid, rk), caller=w.m["alice"].ibe_id)
    assert str(info.value) == (
        f"grant {gid} names proxy {p2}, not this proxy ({wrong.ibe_id}); deliver its re-key to "
        "the proxy it names"
    )
    assert not wrong.holds(gid)


def test_revocation_deletes_each_rekey_at_the_proxy_holding_it(hospitals: Hospitals) -> None:
    h = hospitals
    who, gids = chain_of(h, ("p1", "p2", "p1"))
    held = {gid: h.proxies[p] for gid, p in zip(gids, ("p1", "p2", "p1"), strict=True)}
    assert all(proxy.holds(gid) for gid, proxy in held.items())
    # The root is revoked on chain; every proxy is told (the session tells them all, a served
    # proxy's follower sees the RevokeAccess event) and deletes what it holds below the root.
    h.w.m["alice"].submit("RevokeAccess", gids[0])
    deleted = {name: p.revoke(gids[0]) for name, p in h.proxies.items()}
    assert deleted == {"p1": 2, "p2": 1, "p3": 0}
    assert not any(proxy.holds(gid) for gid, proxy in held.items())
    record_id, _, _ = h.w.new_record()
    assert h.w.m[who[2]].submit("RequestAccess", record_id)["decision"] == "deny"


def test_revoking_a_middle_grant_spares_the_hops_above(hospitals: Hospitals) -> None:
    h = hospitals
    who, gids = chain_of(h, ("p1", "p2", "p3"))
    h.w.m[who[0]].submit("RevokeAccess", gids[1])
    for p in h.proxies.values():
        p.revoke(gids[1])
    assert h.proxies["p1"].holds(gids[0])
    assert not h.proxies["p2"].holds(gids[1]) and not h.proxies["p3"].holds(gids[2])
    record_id, m, capsule = h.w.new_record()
    access = request(h.w, who[0], record_id)
    assert read(h, who[0], record_id, access, capsule) == m
    with pytest.raises(NoReKey):
        h.proxies["p3"]._rekey_row(gids[2])
