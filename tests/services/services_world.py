"""A consortium with three KGC nodes (τ=2), a proxy and users, on the embedded ledger.

Everything is real: certificates from the sandbox's local CAs, signed transactions on the SQLite
ledger, a DKG through the chaincode board, pairings. The module-scoped world is built once per
test module; tests that change state build on their own records and grants.
"""

from __future__ import annotations

import base64
import itertools
import os
import signal
import subprocess
import sys
import time
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
from ehrshare.key_extraction import ExtractionOutcome, extract_identity_key
from ehrshare.ledger.sandbox import ManualClock, Member, Sandbox
from ehrshare.services.extract_auth import certificate_der
from ehrshare.services.kgc import (
    InProcessKgcClient,
    KgcNode,
    run_local_dkg,
)
from ehrshare.services.proxy import ReencryptionProxy
from ehrshare.services.tls import ClientTls, issue_tls_certificate

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
        type_epoch = self.current_type_epoch(owner, record_type)
        pk = (
            self.key_of(owner).type_secret(record_type, type_epoch).public_key(self.mpk)
            if type_epoch
            else self.type_public(owner, record_type).verify(
                owner=self.m[owner].ibe_id, type_label=record_type, mpk=self.mpk
            )
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
            str(type_epoch),
        )
        return record_id, m, capsule

    def current_type_epoch(self, owner: str, record_type: str) -> int:
        """The owner's type-key epoch, its key published first if a revocation left it without
        one (as the owner's session does)."""
        me = self.m[owner]
        state = me.evaluate("GetTypeKeyEpoch", me.ibe_id, record_type)
        n = int(state["type_epoch"])
        if n and not state["key"]:
            pk = self.key_of(owner).type_secret(record_type, n).public_key(self.mpk)
            key = base64.b64encode(pk.to_bytes()).decode()
            me.submit("RotateTypeKey", record_type, str(n), key, "1")
        return n

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


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


class Procs:
    """World members as `ehrshare kgc serve` / `proxy serve` processes on 127.0.0.1, over the
    world's embedded ledger; stopped by pid."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.secrets = world.root / "proc-secrets"
        self.ca_files = [
            _write(self.secrets / f"{msp}-ca.pem", ca.certificate_pem, 0o644)
            for msp, ca in world.sandbox.cas.items()
        ]
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def identity_args(self, member: str, tls_name: str) -> list[str]:
        m = self.w.m[member]
        cert = _write(self.secrets / f"{member}.pem", m.identity.credentials, 0o644)
        key = _write(self.secrets / f"{member}.key", m.signer.to_secret_bytes())
        tls_cert, tls_key = issue_tls_certificate(self.w.sandbox.cas[m.identity.msp_id], tls_name)
        tc = _write(self.secrets / f"{tls_name}.pem", tls_cert, 0o644)
        tk = _write(self.secrets / f"{tls_name}.key", tls_key)
        args = ["--msp-id", m.identity.msp_id, "--cert", str(cert), "--key", str(key)]
        args += ["--ledger", str(self.w.root / "sandbox" / "ledger")]
        args += ["--tls-cert", str(tc), "--tls-key", str(tk), "--listen", "127.0.0.1:0"]
        for ca in self.ca_files:
            args += ["--client-ca", str(ca)]
        return args

    def start(self, name: str, args: list[str]) -> str:
        port_file = self.secrets / f"{name}.port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ehrshare", *args, "--port-file", str(port_file)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.running[name] = proc
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise RuntimeError(f"{name} exited with {proc.returncode}: {err.decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start listening")
            time.sleep(0.05)
        return f"127.0.0.1:{port_file.read_text().strip()}"

    def start_kgc(self, i: int) -> str:
        node_key = _write(
            self.secrets / f"kgc{i}.nodekey", self.w.node_keys[i - 1].to_secret_bytes()
        )
        args = ["kgc", "serve", "--state-dir", str(self.w.nodes[i - 1].state_dir)]
        args += ["--index", str(i), "--node-key-file", str(node_key)]
        return self.start(f"kgc{i}", args + self.identity_args(f"kgc{i}", f"kgc{i}-tls"))

    def start_proxy(self) -> str:
        args = ["proxy", "serve", "--state-dir", str(self.w.root / "proxy-proc")]
        args += ["--key-file", str(self.w.proxy_key_file), "--name", "proxy-proc"]
        return self.start("proxy", args + self.identity_args("proxy", "proxy-tls"))

    def stop(self, name: str) -> int:
        """SIGTERM by pid, then its exit code (SIGKILL if it does not exit within 30 s)."""
        proc = self.running.pop(name)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def tls_for(self, member: str) -> ClientTls:
        m = self.w.m[member]
        roots = [ca.certificate_pem for ca in self.w.sandbox.cas.values()]
        ca = self.w.sandbox.cas[m.identity.msp_id]
        return ClientTls.for_member(*ca.issue_tls_client(m.identity.enrollment_id), roots)
