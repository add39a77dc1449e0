"""A consortium with three KGC nodes (τ=2), a proxy and users, on the embedded ledger.

Everything is real: certificates from the sandbox's local CAs, signed transactions on the SQLite
ledger, a DKG through the chaincode board, pairings. The module-scoped world is built once per
test module; tests that change state build on their own records and grants.
"""

from __future__ import annotations

import base64
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from ehrshare.hazmat.dkg import DKGResult
from ehrshare.hazmat.extract import SignedExtractionRequest
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.hazmat.pairing import GT
from ehrshare.hazmat.tipre import (
    IdentitySecretKey,
    MasterPublicKey,
    TypePublicKey,
    encrypt,
)
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare.services.extract_auth import certificate_der
from ehrshare.services.kgc import (
    ExtractionOutcome,
    InProcessKgcClient,
    KgcNode,
    extract_identity_key,
    run_local_dkg,
)
from ehrshare.services.proxy import ReencryptionProxy

T0 = 1_900_000_000
FAR = str(T0 + 10**7)
NONCE = bytes(range(32))


class FakeClock:
    """Seconds for the rate limiter, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    root: Path
    sandbox: Sandbox
    clock: ManualClock
    m: dict[str, Member]
    node_keys: list[KGCNodeKey]
    nodes: list[KgcNode]
    kgc_clock: FakeClock
    dkg: DKGResult
    proxy_key: X25519KeyPair
    proxy_key_file: Path
    proxy_state: Path
    keys: dict[str, IdentitySecretKey] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def mpk(self) -> MasterPublicKey:
        return MasterPublicKey(self.dkg.public.mpk)

    @property
    def roster(self) -> list[object]:
        return [n.public_key for n in self.nodes]

    def key_of(self, name: str) -> IdentitySecretKey:
        if name not in self.keys:
            member = self.m[name]
            clients = [InProcessKgcClient(n, requester=member.ibe_id) for n in self.nodes]
            outcome = extract_identity_key(
                clients,
                member.identity,
                member.signer,
                public=self.dkg.public,
                roster=[n.public_key for n in self.nodes],
                clock=self.clock,
            )
            self.keys[name] = outcome.secret_key
        return self.keys[name]

    def extract(self, clients: list[object], name: str, **kwargs: object) -> ExtractionOutcome:
        """extract_identity_key for member ``name``, signed with its ledger key and stamped with
        the world's clock."""
        member = self.m[name]
        options: dict[str, object] = {
            "public": self.dkg.public,
            "roster": self.roster,
            "clock": self.clock,
        }
        options.update(kwargs)
        return extract_identity_key(
            clients,  # type: ignore[arg-type]
            member.identity,
            member.signer,
            **options,  # type: ignore[arg-type]
        )

    def request(
        self,
        name: str,
        node_index: int,
        *,
        timestamp: int | None = None,
        certificate: Identity | None = None,
        signer: Signer | None = None,
    ) -> tuple[bytes, X25519KeyPair]:
        """A signed extraction request (format 2) for member ``name``'s key at node
        ``node_index``, stamped with the world's clock. By default it carries the member's
        ledger certificate and is signed with its ledger key; ``certificate`` / ``signer``
        put another certificate in or sign with another key (the attacks)."""
        member = self.m[name]
        reply = X25519KeyPair.generate()
        unsigned = SignedExtractionRequest.unsigned(
            identity=member.ibe_id,
            reply_key=reply.public_bytes,
            node_index=node_index,
            mpk=self.dkg.public.mpk.to_bytes(),
            timestamp=self.clock.seconds if timestamp is None else timestamp,
            certificate=certificate_der(certificate or member.identity),
        )
        key = signer or member.signer
        return unsigned.with_signature(key.sign(unsigned.signing_payload())).to_bytes(), reply

    def publish_type_key(self, name: str, record_type: str) -> None:
        sk = self.key_of(name).type_secret(record_type)
        pk = sk.public_key(self.mpk)
        self.m[name].submit(
            "PublishTypeKey", record_type, base64.b64encode(pk.to_bytes()).decode(), "1"
        )

    def type_public(self, name: str, record_type: str) -> TypePublicKey:
        row = self.m[name].evaluate("GetTypeKey", self.m[name].ibe_id, record_type)
        return TypePublicKey.from_bytes(base64.b64decode(row["key"]))

    def new_record(self, owner: str = "alice", record_type: str = "lab") -> tuple[str, GT, bytes]:
        """A record whose capsule encapsulates a random GT element m (returned for checking)."""
        record_id = f"r-{next(self.counter)}"
        pk = self.type_public(owner, record_type).verify(
            owner=self.m[owner].ibe_id, type_label=record_type
        )
        m = GT.random()
        capsule = encrypt(m, pk).to_bytes()
        self.m[owner].submit(
            "RegisterRecord",
            record_id,
            self.m[owner].ibe_id,
            record_type,
            "bafyrecord" + f"{next(self.counter):06d}",
            "0" * 64,
            base64.b64encode(capsule).decode(),
            "1",
        )
        return record_id, m, capsule

    def open_proxy(self) -> ReencryptionProxy:
        return ReencryptionProxy(
            state_dir=self.proxy_state,
            contract=self.m["proxy"].contract,
            key=self.proxy_key,
            ibe_id=self.m["proxy"].ibe_id,
            name="proxy-org1",
        )


def build_world(root: Path) -> World:
    clock = ManualClock(T0)
    sb = Sandbox.open(root / "sandbox", clock=clock)
    m = {
        "kgc1": sb.member("Org1MSP", "kgc1", "kgc"),
        "kgc2": sb.member("Org2MSP", "kgc2", "kgc"),
        "kgc3": sb.member("Org1MSP", "kgc3", "kgc"),
        "alice": sb.member("Org1MSP", "alice", "patient"),
        "bob": sb.member("Org1MSP", "bob", "clinician"),
        "carol": sb.member("Org2MSP", "carol", "clinician"),
        "dan": sb.member("Org2MSP", "dan", "clinician"),
        "proxy": sb.member("Org1MSP", "pete", "proxy"),
        "stranger": sb.member("Org2MSP", "stranger", "clinician", register=False),
        "admin": sb.member("Org1MSP", "admin", node_ou="admin"),
    }
    kgc_clock = FakeClock()
    keys = [KGCNodeKey.generate() for _ in range(3)]
    nodes = [
        KgcNode(
            index=i + 1,
            node_key=keys[i],
            state_dir=root / f"kgc{i + 1}",
            contract=m[f"kgc{i + 1}"].contract,
            rate_limit_per_minute=1000,
            clock=kgc_clock,
            wall_clock=clock,
        )
        for i in range(3)
    ]
    dkg = run_local_dkg(nodes, nonce=NONCE, threshold=2, admin=m["admin"].contract)
    proxy_key = X25519KeyPair.generate()
    key_file = root / "secrets" / "proxy.key"
    key_file.parent.mkdir()
    key_file.write_bytes(proxy_key.to_secret_bytes())
    os.chmod(key_file, 0o600)
    return World(
        root=root,
        sandbox=sb,
        clock=clock,
        m=m,
        node_keys=keys,
        nodes=nodes,
        kgc_clock=kgc_clock,
        dkg=dkg,
        proxy_key=proxy_key,
        proxy_key_file=key_file,
        proxy_state=root / "proxy-state",
    )
