"""KGC and proxy over real gRPC/TLS servers on 127.0.0.1 (in this process), client-cert auth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from services_world import FAR, World

from ehrshare.hazmat.tipre import Capsule, decrypt, generate_rekey
from ehrshare.identity import LocalCA
from ehrshare.key_extraction import ExtractionFailed
from ehrshare.ledger import EndorseError
from ehrshare.ledger.embedded import connect
from ehrshare.rekey_delivery import seal_rekey
from ehrshare.services.kgc import (
    IdentityNotRegistered,
    KgcNode,
    KgcUnavailable,
    NotAuthorised,
    RateLimited,
)
from ehrshare.services.proxy import (
    ApprovalConsumed,
    ApprovalRefused,
    NoReKey,
    ProxyUnavailable,
)
from ehrshare.services.proxy import NotAuthorised as ProxyNotAuthorised
from ehrshare.services.rpc import GrpcKgcClient, GrpcProxyClient, serve_kgc, serve_proxy
from ehrshare.services.tls import ClientTls, ClientTrust, ServerTls, issue_tls_certificate

LAB = "lab"


@dataclass
class Net:
    world: World
    servers: list[grpc.Server]
    targets: list[str]
    proxy_target: str
    roots: list[bytes]

    def tls_for(self, name: str) -> ClientTls:
        """The member's TLS client certificate and key (not its ledger signing key)."""
        m = self.world.m[name]
        ca = self.world.sandbox.cas[m.identity.msp_id]
        return ClientTls.for_member(*ca.issue_tls_client(m.identity.enrollment_id), self.roots)

    def kgc_clients(self, name: str) -> list[GrpcKgcClient]:
        tls = self.tls_for(name)
        return [GrpcKgcClient(t, index=i + 1, tls=tls) for i, t in enumerate(self.targets)]


@pytest.fixture(scope="module")
def net(world: World) -> Iterator[Net]:
    cas = world.sandbox.cas
    roots = [ca.certificate_pem for ca in cas.values()]
    trust = ClientTrust([(msp, ca.certificate_pem) for msp, ca in cas.items()])
    servers: list[grpc.Server] = []
    targets: list[str] = []
    for i, node in enumerate(world.nodes):
        msp = "Org2MSP" if i == 1 else "Org1MSP"
        cert, key = issue_tls_certificate(cas[msp], f"kgc{i + 1}.tls")
        # A fresh node object on the same sealed state, with a small rate limit for the test.
        served = KgcNode(
            index=node.index,
            node_key=world.node_keys[i],
            state_dir=node.state_dir,
            contract=node.contract,
            rate_limit_per_minute=5,
            clock=world.kgc_clock,
            wall_clock=world.clock,
        )
        server, port = serve_kgc(served, listen="127.0.0.1:0", tls=ServerTls(cert, key, trust))
        servers.append(server)
        targets.append(f"127.0.0.1:{port}")
    cert, key = issue_tls_certificate(cas["Org1MSP"], "proxy.tls")
    proxy = world.open_proxy()
    server, port = serve_proxy(proxy, listen="127.0.0.1:0", tls=ServerTls(cert, key, trust))
    servers.append(server)
    yield Net(world, servers, targets, f"127.0.0.1:{port}", roots)
    for s in servers:
        s.stop(None)
    proxy.close()


def test_extraction_over_grpc_tls_tau_of_n(net: Net) -> None:
    w = net.world
    outcome = w.extract(net.kgc_clients("alice")[1:], "alice")
    outcome.secret_key.check(w.mpk)


def test_caller_identity_comes_from_the_certificate(net: Net) -> None:
    w = net.world
    client = net.kgc_clients("bob")[0]
    with pytest.raises(NotAuthorised) as info:
        client.extract(w.request("alice", 1)[0])
    assert str(info.value) == "identity Org1MSP/bob may not extract the key of Org1MSP/alice"


def test_unregistered_identity_refused_over_grpc(net: Net) -> None:
    stranger = net.world.m["stranger"].ibe_id
    with pytest.raises(IdentityNotRegistered, match=f"identity {stranger} is not registered"):
        net.kgc_clients("stranger")[0].extract(net.world.request("stranger", 1)[0])


def test_rate_limit_over_grpc(net: Net) -> None:
    w = net.world
    client = net.kgc_clients("dan")[2]
    for _ in range(5):
        client.extract(w.request("dan", 3)[0])
    with pytest.raises(RateLimited, match="exceeded 5 extractions per minute at KGC node 3"):
        client.extract(w.request("dan", 3)[0])


@pytest.mark.parametrize("kind", ["self-signed", "other-ca", "server-cert-as-client"])
def test_client_without_a_consortium_certificate_is_refused(net: Net, kind: str) -> None:
    w = net.world
    if kind == "self-signed":
        rogue = LocalCA.create("Org1MSP")  # same MSP name, different key: not trusted
        identity, signer = rogue.issue_tls_client("alice")
        tls = ClientTls.for_member(identity, signer, net.roots)
    elif kind == "other-ca":
        identity, signer = LocalCA.create("EvilMSP").issue_tls_client("mallory")
        tls = ClientTls.for_member(identity, signer, net.roots)
    else:
        cert, key = issue_tls_certificate(LocalCA.create("Org9MSP"), "x")
        tls = ClientTls(b"".join(net.roots), cert, key)
    client = GrpcKgcClient(net.targets[0], index=1, tls=tls)
    with pytest.raises(KgcUnavailable, match=r"KGC node 1 at 127\.0\.0\.1:\d+ is unavailable"):
        client.extract(w.request("alice", 1)[0], timeout=5)
    proxy = GrpcProxyClient(net.proxy_target, tls=tls, timeout=5)
    with pytest.raises(ProxyUnavailable):
        proxy.public_key()


def test_health_answers_over_mutual_tls_and_names_the_service(net: Net) -> None:
    tls = net.tls_for("carol")
    for i, target in enumerate(net.targets):
        assert GrpcKgcClient(target, index=i + 1, tls=tls).health() == {
            "service": "kgc",
            "index": i + 1,
        }
    assert GrpcProxyClient(net.proxy_target, tls=tls).health() == {
        "service": "proxy",
        "name": "proxy-org1",
    }


def test_health_refuses_a_stranger_and_says_who_does_not_answer(net: Net) -> None:
    identity, signer = LocalCA.create("EvilMSP").issue_tls_client("mallory")
    rogue = ClientTls.for_member(identity, signer, net.roots)
    with pytest.raises(KgcUnavailable, match=r"KGC node 1 at 127\.0\.0\.1:\d+ does not answer"):
        GrpcKgcClient(net.targets[0], index=1, tls=rogue).health(timeout=5)
    with pytest.raises(ProxyUnavailable):
        GrpcProxyClient(net.proxy_target, tls=rogue).health(timeout=5)
    nobody = GrpcKgcClient("127.0.0.1:1", index=4, tls=net.tls_for("carol"))
    with pytest.raises(
        KgcUnavailable, match=r"KGC node 4 at 127\.0\.0\.1:1 does not answer: UNAVAILABLE"
    ):
        nobody.health(timeout=2)


def test_nodes_down_over_grpc(net: Net) -> None:
    w = net.world
    clients = net.kgc_clients("carol")
    # A node nobody listens on is "down".
    dead = GrpcKgcClient("127.0.0.1:1", index=1, tls=net.tls_for("carol"))
    outcome = w.extract([dead, *clients[1:]], "carol")
    outcome.secret_key.check(w.mpk)
    assert list(outcome.unavailable) == [1]
    with pytest.raises(ExtractionFailed, match="need 2 verified partial keys, have 1"):
        w.extract([dead, clients[1]], "carol", timeout=2)


def test_proxy_over_grpc(net: Net) -> None:
    w = net.world
    w.publish_type_key("alice", LAB)
    alice_proxy = GrpcProxyClient(net.proxy_target, tls=net.tls_for("alice"))
    bob_proxy = GrpcProxyClient(net.proxy_target, tls=net.tls_for("bob"))
    carol_proxy = GrpcProxyClient(net.proxy_target, tls=net.tls_for("carol"))
    name = f"clin{next(w.counter)}"
    w.m[name] = w.sandbox.member("Org2MSP", name, "clinician")
    w.publish_type_key(name, LAB)
    grantee = GrpcProxyClient(net.proxy_target, tls=net.tls_for(name))
    pete = w.m["proxy"].ibe_id
    gid = w.m["alice"].submit("GrantAccess", LAB, w.m[name].ibe_id, FAR, "0", "", "", pete)
    gid = gid["grant_id"]
    sk = w.key_of("alice").type_secret(LAB)
    pk = w.type_public(name, LAB).verify(owner=w.m[name].ibe_id, type_label=LAB, mpk=w.mpk)
    sealed = seal_rekey(alice_proxy.public_key(), gid, generate_rekey(sk, pk))
    with pytest.raises(ProxyNotAuthorised, match=f"is not the grantor of grant {gid}"):
        bob_proxy.store_rekey(gid, sealed)
    alice_proxy.store_rekey(gid, sealed)
    record_id, m, capsule = w.new_record()
    approval = w.m[name].submit("RequestAccess", record_id)["access_id"]
    who = w.m[name].ibe_id
    with pytest.raises(ProxyNotAuthorised, match="may not ask for"):
        carol_proxy.reencrypt(
            record_id=record_id, requester=who, approval_id=approval, capsule=capsule
        )
    with pytest.raises(ApprovalRefused):
        carol_proxy.reencrypt(
            record_id=record_id,
            requester=w.m["carol"].ibe_id,
            approval_id=approval,
            grant_id=gid,
            capsule=capsule,
        )
    out = grantee.reencrypt(
        record_id=record_id, requester=who, approval_id=approval, capsule=capsule
    )
    verified = Capsule.from_bytes(out).verify(owner=w.m["alice"].ibe_id, type_label=LAB)
    assert decrypt(verified, w.key_of(name).type_secret(LAB)) == m
    with pytest.raises(ApprovalConsumed):
        grantee.reencrypt(record_id=record_id, requester=who, approval_id=approval, capsule=capsule)
    with pytest.raises(ProxyNotAuthorised):
        bob_proxy.revoke(gid)
    alice_proxy.revoke(gid)
    again = w.m[name].submit("RequestAccess", record_id)["access_id"]
    with pytest.raises(NoReKey, match="no re-key"):
        grantee.reencrypt(record_id=record_id, requester=who, approval_id=again, capsule=capsule)


def test_an_atomic_grant_over_grpc(net: Net) -> None:
    # The re-key goes over gRPC before the grant commits, under the id the grantor chose;
    # parties to the grant ask whether it is held, others may not.
    w = net.world
    w.publish_type_key("alice", LAB)
    alice_proxy = GrpcProxyClient(net.proxy_target, tls=net.tls_for("alice"))
    carol_proxy = GrpcProxyClient(net.proxy_target, tls=net.tls_for("carol"))
    name = f"clin{next(w.counter)}"
    w.m[name] = w.sandbox.member("Org2MSP", name, "clinician")
    w.publish_type_key(name, LAB)
    grantee = GrpcProxyClient(net.proxy_target, tls=net.tls_for(name))
    gid = "g-" + "c0" * 16
    sk = w.key_of("alice").type_secret(LAB)
    pk = w.type_public(name, LAB).verify(owner=w.m[name].ibe_id, type_label=LAB, mpk=w.mpk)
    sealed = seal_rekey(alice_proxy.public_key(), gid, generate_rekey(sk, pk))
    with pytest.raises(ProxyNotAuthorised, match=f"re-key for grant {gid} is not from"):
        carol_proxy.store_rekey(gid, sealed)
    alice_proxy.store_rekey(gid, sealed)  # pending: no grant of that id yet
    with pytest.raises(NoReKey, match=f"grant {gid} does not exist"):
        alice_proxy.rekey_status(gid)
    pete = w.m["proxy"].ibe_id
    w.m["alice"].submit("GrantAccess", LAB, w.m[name].ibe_id, FAR, "0", "", "", pete, gid)
    with pytest.raises(ProxyNotAuthorised, match=f"may not ask about grant {gid}"):
        carol_proxy.rekey_status(gid)
    assert grantee.rekey_status(gid) == "held"
    record_id, m, capsule = w.new_record()
    approval = w.m[name].submit("RequestAccess", record_id)["access_id"]
    out = grantee.reencrypt(
        record_id=record_id, requester=w.m[name].ibe_id, approval_id=approval, capsule=capsule
    )
    verified = Capsule.from_bytes(out).verify(owner=w.m["alice"].ibe_id, type_label=LAB)
    assert decrypt(verified, w.key_of(name).type_secret(LAB)) == m


def test_the_ledger_signing_key_is_refused_for_tls(net: Net) -> None:
    w = net.world
    # A ledger signing certificate of alice's (valid now: the world's members are stamped
    # with its manual clock, which TLS would call not yet valid).
    signing_id, signing_key = w.sandbox.cas["Org1MSP"].issue("alice", role="patient")
    with pytest.raises(ValueError, match="no clientAuth extended key usage"):
        ClientTls.for_member(signing_id, signing_key, net.roots)
    # Built by hand past that check: the handshake succeeds (the certificate chains to a
    # consortium CA) but every call is refused, naming the fix.
    signing = ClientTls(b"".join(net.roots), signing_id.credentials, signing_key.to_secret_bytes())
    expected = (
        "client certificate of Org1MSP/alice has no clientAuth extended key usage; the ledger "
        "signing key may not open TLS connections: re-issue the wallet's TLS client "
        "certificate with 'ehrshare consortium reissue-tls <wallet> -p <consortium dir>'"
    )
    with pytest.raises(NotAuthorised) as info:
        GrpcKgcClient(net.targets[0], index=1, tls=signing).extract(w.request("alice", 1)[0])
    assert str(info.value) == expected
    with pytest.raises(ProxyNotAuthorised) as pinfo:
        GrpcProxyClient(net.proxy_target, tls=signing).public_key()
    assert str(pinfo.value) == expected
    # The TLS client certificate of the same member is accepted and names the same caller.
    outcome = w.extract(net.kgc_clients("alice")[:2], "alice")
    outcome.secret_key.check(w.mpk)


def test_a_tls_client_key_cannot_sign_ledger_transactions(net: Net) -> None:
    sb = net.world.sandbox
    identity, signer = sb.cas["Org1MSP"].issue_tls_client("alice")
    with connect(identity, signer, sb.ledger, clock=sb.clock) as gateway:
        contract = gateway.get_network("ehrshare").get_contract("ehrshare")
        with pytest.raises(EndorseError) as info:
            contract.submit_transaction("ListRecords", "Org1MSP/alice")
    assert info.value.message == (
        "creator certificate has no node ou (client, admin, peer or orderer); "
        "a tls client certificate cannot sign transactions"
    )
