"""A member's stolen TLS client key is not enough to extract its identity key.

The attacker holds the member's TLS key and certificate (so the TLS layer names it as the
member) and chooses the reply key; what it lacks is the member's ledger signing key. Each KGC
node — in-process and as a real ``ehrshare kgc serve`` process over gRPC — must refuse it, and
also refuse replayed, stale, misaddressed and old-format requests and a request for one
identity signed by another, with an error naming the reason and a log line saying it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from services_world import Procs, World

from ehrshare.hazmat.extract import ExtractionRequest, PartialKeyResponse
from ehrshare.identity import Identity, Signer
from ehrshare.key_extraction import ExtractionFailed, extract_identity_key
from ehrshare.services.kgc import (
    BadRequest,
    BadSignature,
    InProcessKgcClient,
    KgcError,
    KgcNode,
    OutdatedRequest,
    ReplayedRequest,
    StaleRequest,
    UnregisteredCertificate,
)
from ehrshare.services.rpc import GrpcKgcClient
from ehrshare.services.tls import ClientTls

ALICE = "Org1MSP/alice"


def _tls_pair(world: World, name: str) -> tuple[Identity, Signer]:
    """The member's TLS client certificate and key: what the attacker stole."""
    m = world.m[name]
    ca = world.sandbox.cas[m.identity.msp_id]
    return ca.issue_tls_client(m.identity.enrollment_id, now=world.sandbox.now())


def _sha(identity: Identity) -> str:
    return hashlib.sha256(identity.certificate.public_bytes(Encoding.DER)).hexdigest()


# --- in-process --------------------------------------------------------------------------------


def test_stolen_tls_key_cannot_extract_in_process(world: World) -> None:
    node = world.nodes[0]
    tls_cert, tls_key = _tls_pair(world, "alice")
    # Signed with the TLS key, carrying the TLS certificate: not the certificate on chain.
    raw, _ = world.request("alice", 1, certificate=tls_cert, signer=tls_key)
    with pytest.raises(UnregisteredCertificate) as info:
        node.extract(raw, requester=ALICE)
    assert str(info.value) == (
        f"the certificate in the extraction request (sha256 {_sha(tls_cert)[:16]}…) is not the "
        f"one registered on chain for {ALICE} (sha256 {_sha(world.m['alice'].identity)[:16]}…); "
        "requests are signed with the member's ledger key and certificate"
    )
    # Carrying the (public) ledger certificate, signed with the TLS key: bad signature.
    raw, _ = world.request("alice", 1, signer=tls_key)
    with pytest.raises(BadSignature) as sig:
        node.extract(raw, requester=ALICE)
    assert str(sig.value) == (
        f"the extraction request for {ALICE} is not signed by the key of the certificate it "
        "carries (requests are signed with the member's ledger key, not its TLS key)"
    )
    # The whole client flow with the attacker's pair gets no key from any node.
    clients = [InProcessKgcClient(n, requester=ALICE) for n in world.nodes]
    with pytest.raises(ExtractionFailed) as failed:
        extract_identity_key(
            clients,
            tls_cert,
            tls_key,
            public=world.dkg.public,
            roster=world.roster,
            clock=world.clock,
        )
    assert sorted(failed.value.unavailable) == [1, 2, 3]
    assert all(
        "not the one registered on chain" in why for why in failed.value.unavailable.values()
    )
    # The member itself, with its ledger key, still enrols.
    world.extract(clients, "alice").secret_key.check(world.mpk)


def test_request_for_one_identity_signed_by_another_is_refused(world: World) -> None:
    bob = world.m["bob"]
    raw, _ = world.request("alice", 2, certificate=bob.identity, signer=bob.signer)
    # As alice over TLS, and as an in-process caller that trusts the request's identity.
    for requester in (ALICE, None):
        with pytest.raises(UnregisteredCertificate, match=f"registered on chain for {ALICE}"):
            world.nodes[1].extract(raw, requester=requester)


def test_replayed_request_is_refused_even_after_a_restart(world: World) -> None:
    raw, _ = world.request("alice", 3)
    PartialKeyResponse.from_bytes(world.nodes[2].extract(raw, requester=ALICE))
    with pytest.raises(ReplayedRequest, match="was already answered by KGC node 3"):
        world.nodes[2].extract(raw, requester=ALICE)
    restarted = KgcNode(
        index=3,
        node_key=world.node_keys[2],
        state_dir=world.nodes[2].state_dir,
        contract=world.nodes[2].contract,
        wall_clock=world.clock,
    )
    with pytest.raises(ReplayedRequest):
        restarted.extract(raw, requester=ALICE)
    # A fresh request of the same member is answered.
    PartialKeyResponse.from_bytes(restarted.extract(world.request("alice", 3)[0], requester=ALICE))


def test_stale_and_future_timestamps_are_refused(world: World) -> None:
    node = world.nodes[0]
    now = world.clock.seconds
    raw, _ = world.request("alice", 1, timestamp=now - 400)
    with pytest.raises(
        StaleRequest, match=r"is 400 s behind KGC node 1's clock \(\d+\); the limit is 300 s"
    ):
        node.extract(raw, requester=ALICE)
    raw, _ = world.request("alice", 1, timestamp=now + 400)
    with pytest.raises(StaleRequest, match=r"is 400 s ahead of KGC node 1's clock"):
        node.extract(raw, requester=ALICE)


def test_the_clock_skew_window_is_configurable(world: World) -> None:
    node = KgcNode(
        index=1,
        node_key=world.node_keys[0],
        state_dir=world.nodes[0].state_dir,
        contract=world.nodes[0].contract,
        wall_clock=world.clock,
        max_clock_skew_s=10,
    )
    with pytest.raises(StaleRequest, match="the limit is 10 s"):
        node.extract(world.request("alice", 1, timestamp=world.clock.seconds - 30)[0])
    PartialKeyResponse.from_bytes(
        node.extract(world.request("alice", 1, timestamp=world.clock.seconds - 5)[0])
    )
    with pytest.raises(ValueError, match="max_clock_skew_s must be a positive"):
        KgcNode(
            index=1,
            node_key=world.node_keys[0],
            state_dir=world.nodes[0].state_dir,
            contract=world.nodes[0].contract,
            max_clock_skew_s=0,
        )


def test_old_format_gets_an_upgrade_error_and_misaddressed_requests_are_refused(
    world: World,
) -> None:
    old = ExtractionRequest.create(ALICE)[0].to_bytes()
    with pytest.raises(OutdatedRequest) as info:
        world.nodes[0].extract(old, requester=ALICE)
    assert str(info.value) == (
        "extraction request format 1 (unsigned) is no longer accepted by KGC node 1: it needs "
        "format 2, signed with the member's ledger key; upgrade the ehrshare client"
    )
    raw, _ = world.request("alice", 2)
    with pytest.raises(BadRequest, match="addressed to KGC node 2, not node 1"):
        world.nodes[0].extract(raw, requester=ALICE)


def test_refusals_are_logged_with_their_reason(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    tls_cert, tls_key = _tls_pair(world, "alice")
    node = world.nodes[1]
    attempts = [
        world.request("alice", 2, certificate=tls_cert, signer=tls_key)[0],
        world.request("alice", 2, signer=tls_key)[0],
        world.request("alice", 2, timestamp=world.clock.seconds - 1000)[0],
        ExtractionRequest.create(ALICE)[0].to_bytes(),
    ]
    with caplog.at_level(logging.INFO, logger="ehrshare.services.kgc"):
        for raw in attempts:
            with pytest.raises(KgcError):
                node.extract(raw, requester=ALICE)
    lines = [r.getMessage() for r in caplog.records if r.name == "ehrshare.services.kgc"]
    outcomes = [line.rsplit("outcome=", 1)[1] for line in lines]
    assert outcomes == [
        "refused: unregistered certificate",
        "refused: bad signature",
        "refused: stale timestamp",
        "refused: outdated request format",
    ]
    assert all(f"requester={ALICE}" in line for line in lines)


# --- a real `ehrshare kgc serve` process over gRPC ---------------------------------------------


@pytest.fixture
def kgc_process(world: World) -> Iterator[Procs]:
    p = Procs(world)
    yield p
    p.stop_all()


def test_stolen_tls_key_cannot_extract_from_a_kgc_serve_process(
    world: World, kgc_process: Procs
) -> None:
    target = kgc_process.start_kgc(1)
    roots = [ca.certificate_pem for ca in world.sandbox.cas.values()]
    # The attacker's TLS connection is alice's: the same TLS key and certificate she uses.
    ca = world.sandbox.cas["Org1MSP"]
    tls_cert, tls_key = ca.issue_tls_client("alice")
    client = GrpcKgcClient(target, index=1, tls=ClientTls.for_member(tls_cert, tls_key, roots))
    now = int(time.time())  # the process checks timestamps against the wall clock
    with client:
        stolen, _ = world.request("alice", 1, timestamp=now, certificate=tls_cert, signer=tls_key)
        with pytest.raises(UnregisteredCertificate, match="is not the one registered on chain"):
            client.extract(stolen)
        forged, _ = world.request("alice", 1, timestamp=now, signer=tls_key)
        with pytest.raises(BadSignature, match="not signed by the key of the certificate"):
            client.extract(forged)
        bob = world.m["bob"]
        as_bob, _ = world.request(
            "alice", 1, timestamp=now, certificate=bob.identity, signer=bob.signer
        )
        with pytest.raises(UnregisteredCertificate):
            client.extract(as_bob)
        with pytest.raises(StaleRequest, match="behind KGC node 1's clock"):
            client.extract(world.request("alice", 1, timestamp=now - 3600)[0])
        with pytest.raises(OutdatedRequest, match="upgrade the ehrshare client"):
            client.extract(ExtractionRequest.create(ALICE)[0].to_bytes())
        # Alice herself, over the same TLS connection, signing with her ledger key.
        genuine, _ = world.request("alice", 1, timestamp=now)
        PartialKeyResponse.from_bytes(client.extract(genuine))
        with pytest.raises(ReplayedRequest):
            client.extract(genuine)
    assert kgc_process.stop("kgc1") == 0
    # The nonce outlives the process: a replay to the restarted node is refused too.
    target = kgc_process.start_kgc(1)
    tls = ClientTls.for_member(tls_cert, tls_key, roots)
    with GrpcKgcClient(target, index=1, tls=tls) as c, pytest.raises(ReplayedRequest):
        c.extract(genuine)
    assert kgc_process.stop("kgc1") == 0
    log = (world.nodes[0].state_dir / "kgc.log").read_text()
    for reason in (
        "unregistered certificate",
        "bad signature",
        "stale timestamp",
        "outdated request format",
        "replayed",
    ):
        assert f"requester={ALICE} session=- outcome=refused: {reason}" in log, reason
