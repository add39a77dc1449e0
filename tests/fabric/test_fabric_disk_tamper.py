"""A hospital's operator edits its own peer's block file on disk; `ehrshare ledger verify` and
`audit verify` name that hospital and the first bad block (exit 5).

Real Fabric (2.3.2 in CI), three hospitals: a consortium made with
``Consortium.init(ledger="fabric")``.
A peer is stopped by pid (SIGTERM), its ``ledgersData/chains/chains/<channel>/blockfile_000000``
edited in place (same length, so the peer's block index still points at every block), and the
peer started again (``FabricNet.repair``). What the peer itself notices: nothing at start (it
does not re-hash blocks it already committed, and serves them over Deliver as stored); only a
*new* block whose previous hash does not match its edited head is refused when it commits
(checked at the end of the second case).

Three edits:

1. bytes flipped inside a transaction's payload of a late block (naive): the block's data hash
   no longer matches its data;
2. a careful edit: a write in a transaction of a late block changed, the block's data hash
   recomputed and every later block's previous hash rewritten (all a person without the
   orderer's key can recompute): the orderer's signature over the edited header fails;
3. a valid transaction marked invalid in the block's metadata (its validation code, which each
   peer writes for itself and nothing signs): the copies of the other hospitals disagree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ehrshare.identity import Identity, Signer
from ehrshare.ledger.fabric_blocks import block_hash, common, data_hash, fetch_blocks
from ehrshare.network.fabric import FabricNet
from ehrshare.network.supervisor import pid_alive
from ehrshare.provisioning import Consortium

pytestmark = [pytest.mark.fabric, pytest.mark.slow]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EHRSHARE_PROFILE": "", "EHRSHARE_WALLET": "", "COLUMNS": "200"},
    )


def _blocks(net: FabricNet, msp: str) -> list[Any]:
    msp_dir = net.admin_msp(msp)
    key = serialization.load_pem_private_key(
        (msp_dir / "keystore" / "key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    identity = Identity(msp, (msp_dir / "signcerts" / "cert.pem").read_bytes())
    cert, tls_key = net.admin_tls(msp)
    return fetch_blocks(
        address=net.peer_address(msp),
        tls_ca_pem=net.tls_ca(msp).read_bytes(),
        server_name=net.server_name(msp),
        channel=net.spec.channel,
        identity=identity,
        signer=Signer(key),
        client_tls=(cert.read_bytes(), tls_key.read_bytes()),
    )


def _block_file(net: FabricNet, msp: str) -> Path:
    path = net.dir / "peers" / msp / "ledgersData" / "chains" / "chains" / net.spec.channel
    return path / "blockfile_000000"


def _stop_peer(net: FabricNet, msp: str) -> None:
    pid = net.pids()[f"peer-{msp}"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), f"the peer of {msp} (pid {pid}) did not stop"


def _replace_once(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old != new
    assert raw.count(old) == 1, f"{len(old)} bytes found {raw.count(old)} times in the block file"
    return raw.replace(old, new)


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = raw[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _validation_code_offset(raw: bytes, number: int, tx: int = 0) -> int:
    """Where transaction ``tx``'s validation code of block ``number`` is in a block file.

    Fabric's block file (``fsblkstorage/blockserialization.go``): per block a varint length,
    then the number (varint), data hash and previous hash (each varint length + bytes), the
    envelopes (a varint count, each length + bytes) and the metadata entries likewise; entry 2
    (TRANSACTIONS_FILTER) holds one validation code per transaction."""
    i = 0
    while i < len(raw):
        length, i = _varint(raw, i)
        end = i + length
        n, j = _varint(raw, i)
        for _ in range(2):
            size, j = _varint(raw, j)
            j += size
        for entry in range(2):  # the envelopes, then the metadata
            count, j = _varint(raw, j)
            for k in range(count):
                size, j = _varint(raw, j)
                if entry == 1 and k == 2 and n == number:
                    assert tx < size
                    return j + tx
                j += size
        i = end
    raise LookupError(f"block {number} is not in the block file")


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    with Consortium.init(tmp_path / "c", ledger="fabric") as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("bob", "HospitalB", "patient")
        for who in ("alice", "bob"):
            with c.session(who) as s:
                s.enroll()
        assert c.network is not None
        c.network.wait_synced()
        network = c.network
        yield c
    pids = list(network.pids().values())
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids), "the network left processes running"


def _verify(
    root: Path,
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    ledger = _cli("ledger", "verify", "-p", str(root), "-w", "alice", "--json")
    audit = _cli("audit", "verify", "-p", str(root), "-w", "alice", "--json")
    return ledger, audit


def test_an_edited_block_file_on_one_peer_is_named_by_ledger_and_audit_verify(
    consortium: Consortium,
) -> None:
    net = consortium.network
    assert net is not None
    root = consortium.directory
    good = _blocks(net, "HospitalAMSP")
    height = len(good)
    assert height >= 5
    ledger, audit = _verify(root)
    assert ledger.returncode == 0, ledger.stderr
    report = json.loads(ledger.stdout)
    assert report["valid"] and report["height"] == height
    assert report["peers"] == dict.fromkeys(
        ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"], height
    )
    assert audit.returncode == 0, audit.stderr
    print(f"ledger verify on Fabric: {height} blocks, 3 peers, {report['seconds']} s")

    # 1. Hospital B's operator flips bytes inside a transaction's payload of a late block.
    target = height - 2
    envelope = bytes(good[target].data.data[0])
    payload = common.Envelope.FromString(envelope).payload
    at = envelope.index(payload) + len(payload) // 2
    flipped = envelope[:at] + bytes([envelope[at] ^ 0xFF]) + envelope[at + 1 :]
    b_file = _block_file(net, "HospitalBMSP")
    original_b = b_file.read_bytes()
    _stop_peer(net, "HospitalBMSP")
    b_file.write_bytes(_replace_once(original_b, envelope, flipped))
    assert net.repair() == ["peer-HospitalBMSP"]  # the peer starts on the edited file

    ledger, audit = _verify(root)
    assert ledger.returncode == 5, ledger.stderr
    report = json.loads(ledger.stdout)
    assert report["valid"] is False and report["first_bad_block"] == target
    assert report["reason"] == f"HospitalBMSP: block {target} data does not match its hash"
    text = _cli("ledger", "verify", "-p", str(root), "-w", "alice")
    assert text.returncode == 5 and "Traceback" not in text.stderr
    assert (
        f"ledger does NOT verify at block {target}: HospitalBMSP: block {target} data does not "
        "match its hash"
    ) in " ".join(text.stderr.split())
    assert audit.returncode == 5, audit.stderr
    checked = json.loads(audit.stdout)
    assert checked["valid"] is False
    assert checked["checks"]["ledger"]["first_bad_block"] == target
    assert f"HospitalBMSP: block {target} data does not match its hash" in checked["reason"]

    # Put B's file back: the channel verifies again.
    _stop_peer(net, "HospitalBMSP")
    b_file.write_bytes(original_b)
    assert net.repair() == ["peer-HospitalBMSP"]
    ledger, _ = _verify(root)
    assert ledger.returncode == 0, ledger.stdout

    # 3. Hospital B's operator marks a valid transaction of a late block invalid (a grant or a
    # decision that "never took effect" on its peer): a validation code in the block's
    # metadata, which the peer writes itself and neither the header nor the orderer signs.
    target = height - 2
    at = _validation_code_offset(original_b, target)
    assert original_b[at] == 0  # VALID
    _stop_peer(net, "HospitalBMSP")
    b_file.write_bytes(original_b[:at] + bytes([11]) + original_b[at + 1 :])  # MVCC conflict
    assert net.repair() == ["peer-HospitalBMSP"]
    ledger, audit = _verify(root)
    assert ledger.returncode == 5, ledger.stderr
    report = json.loads(ledger.stdout)
    assert report["first_bad_block"] == target
    assert report["reason"] == (
        f"HospitalBMSP: block {target}: its transactions' validation codes differ from the "
        "other peers' copies"
    )
    assert audit.returncode == 5, audit.stderr
    assert json.loads(audit.stdout)["checks"]["ledger"]["first_bad_block"] == target
    _stop_peer(net, "HospitalBMSP")
    b_file.write_bytes(original_b)
    assert net.repair() == ["peer-HospitalBMSP"]

    # 2. Hospital C's operator changes a write of a late block's transaction and recomputes what
    # needs no key: that block's data hash, and the previous hash of every block after it.
    target = height - 3
    envelope = bytes(good[target].data.data[0])
    payload = common.Envelope.FromString(envelope).payload
    at = envelope.index(payload) + len(payload) // 2
    forged = [common.Block.FromString(b.SerializeToString()) for b in good]
    forged[target].data.data[0] = envelope[:at] + bytes([envelope[at] ^ 0x01]) + envelope[at + 1 :]
    forged[target].header.data_hash = data_hash(forged[target])
    for n in range(target + 1, height):
        forged[n].header.previous_hash = block_hash(forged[n - 1])
    c_file = _block_file(net, "HospitalCMSP")
    raw = c_file.read_bytes()
    raw = _replace_once(raw, envelope, bytes(forged[target].data.data[0]))
    raw = _replace_once(raw, bytes(good[target].header.data_hash), forged[target].header.data_hash)
    for n in range(target + 1, height):
        raw = _replace_once(
            raw, bytes(good[n].header.previous_hash), bytes(forged[n].header.previous_hash)
        )
    _stop_peer(net, "HospitalCMSP")
    c_file.write_bytes(raw)
    assert net.repair() == ["peer-HospitalCMSP"]
    # The peer serves the forged chain as it is stored: every link and data hash holds.
    served = _blocks(net, "HospitalCMSP")
    assert [b.SerializeToString() for b in served] == [b.SerializeToString() for b in forged]

    ledger, audit = _verify(root)
    assert ledger.returncode == 5, ledger.stderr
    report = json.loads(ledger.stdout)
    assert report["first_bad_block"] == target
    assert (
        report["reason"] == f"HospitalCMSP: block {target}: its orderer signature does not verify"
    )
    assert audit.returncode == 5, audit.stderr
    checked = json.loads(audit.stdout)
    assert checked["checks"]["ledger"]["first_bad_block"] == target
    assert "HospitalCMSP: block" in checked["reason"]

    # The peer itself notices only when the next block arrives: its previous hash names the
    # real head, not the forged one, and C's peer never commits it. Fabric 2.x peers panic
    # (and then the channel cannot be read from C at all: exit 4, not a clean report); 3.x
    # peers verify each delivered block against their own head, refuse it and keep asking,
    # so C stays up at the forged height and the ledger check still names the forgery.
    pid = net.pids()["peer-HospitalCMSP"]
    log_path = net.dir / "logs" / "peer-HospitalCMSP.log"
    consortium.add_member("carol", "HospitalA", "patient")
    with consortium.session("carol") as s:
        s.enroll()  # registers carol's identity: a new block
    assert len(_blocks(net, "HospitalAMSP")) > height
    if net.version[0] >= 3:
        refusal = f"Header.PreviousHash of block [{height}] is different"
        deadline = time.monotonic() + 30
        while refusal not in log_path.read_text(encoding="utf-8", errors="replace"):
            assert time.monotonic() < deadline, f"C's peer never logged: {refusal}"
            time.sleep(0.1)
        assert pid_alive(pid)
        assert len(_blocks(net, "HospitalCMSP")) == height  # nothing on top of the forged head
        still, _ = _verify(root)
        assert still.returncode == 5, still.stderr
        assert json.loads(still.stdout)["first_bad_block"] == target
        return
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the peer committed a block on top of a forged head"
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert "Cannot commit block to the ledger due to unexpected Previous block hash" in log
    down, _ = _verify(root)
    assert down.returncode == 4, down.stderr
    assert net.pids()["peer-HospitalCMSP"] == pid  # stopped by its own panic, not by us
