"""DKG through the chaincode board with nodes running on their own (threads, phase deadlines)."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from services_world import World

from ehrshare.hazmat.dkg import BundleKind, DKGResult, new_session_nonce
from ehrshare.hazmat.kgc_keys import KGCNodeKey
from ehrshare.hazmat.tipre import MasterPublicKey
from ehrshare.key_extraction import extract_identity_key
from ehrshare.ledger.errors import LedgerError
from ehrshare.services.kgc import (
    InProcessKgcClient,
    KgcNode,
    LedgerBoard,
    open_dkg_session,
    public_polynomial_from_chain,
    roster_from_chain,
)
from ehrshare.services.vault import check_key_file_outside


def test_nodes_running_independently_agree_and_publish(world: World, tmp_path: Path) -> None:
    members = [world.sandbox.member(f"Org{1 + i % 2}MSP", f"solo{i + 1}", "kgc") for i in range(3)]
    keys = [KGCNodeKey.generate() for _ in range(3)]
    nodes = [
        KgcNode(
            index=i + 1,
            node_key=keys[i],
            state_dir=tmp_path / f"node{i + 1}",
            contract=members[i].contract,
            wall_clock=world.clock,
        )
        for i in range(3)
    ]
    roster = [n.publish_key() for n in nodes]
    nonce = new_session_nonce()
    open_dkg_session(
        world.m["admin"].contract, nonce=nonce, roster=roster, threshold=2, phase_timeout_s=300
    )
    results: dict[int, DKGResult] = {}
    errors: list[BaseException] = []

    def run(node: KgcNode) -> None:
        try:
            # Everyone posts, so each phase closes without waiting for its timeout.
            results[node.index] = node.run_dkg(nonce, poll=0.05)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len({r.public.to_bytes() for r in results.values()}) == 1
    row = world.m["alice"].evaluate("GetDKGResult", nonce.hex())
    assert row["roster"] == roster
    assert row["keys"] == [base64.b64encode(k.public_key.to_bytes()).decode() for k in keys]
    public = public_polynomial_from_chain(row)
    assert public.to_bytes() == results[1].public.to_bytes()
    alice = world.m["alice"]
    clients = [InProcessKgcClient(n, requester=alice.ibe_id) for n in nodes]
    outcome = extract_identity_key(
        clients,
        alice.identity,
        alice.signer,
        public=public,
        roster=roster_from_chain(row),
        clock=world.clock,
    )
    outcome.secret_key.check(MasterPublicKey(public.mpk))


def test_ledger_board_refuses_a_second_bundle_and_non_kgc_posters(world: World) -> None:
    nonce = new_session_nonce()
    kgc1, kgc2 = world.m["kgc1"], world.m["kgc2"]
    open_dkg_session(
        world.m["admin"].contract, nonce=nonce, roster=[kgc1.ibe_id, kgc2.ibe_id], threshold=2
    )
    header = b"\x01\x01" + nonce + (1).to_bytes(2, "big")
    board = LedgerBoard(kgc1.contract)
    board.post(nonce, BundleKind.DEAL, header + b"first")
    with pytest.raises(LedgerError, match="already posted a deal bundle"):
        board.post(nonce, BundleKind.DEAL, header + b"second")
    with pytest.raises(LedgerError, match=f"deal phase of dkg session {nonce.hex()} is not closed"):
        board.read(nonce, BundleKind.DEAL)
    with pytest.raises(LedgerError, match="this needs role kgc"):
        LedgerBoard(world.m["alice"].contract).post(nonce, BundleKind.DEAL, header + b"x")
    with pytest.raises(ValueError, match="session nonce must be 32 bytes, got 3"):
        board.post(b"abc", BundleKind.DEAL, b"x")
    world.clock.advance(61)
    board.wait_closed(nonce, BundleKind.DEAL, give_up=5, now=lambda: world.clock.seconds)
    assert board.read(nonce, BundleKind.DEAL) == [header + b"first"]
    assert board.posted(nonce, BundleKind.DEAL) == [(kgc1.ibe_id, header + b"first")]


def test_key_file_inside_the_state_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is inside the state directory"):
        check_key_file_outside(tmp_path / "state" / "node.key", tmp_path / "state")
    check_key_file_outside(tmp_path / "secrets" / "node.key", tmp_path / "state")


def test_cli_refuses_a_key_file_inside_the_state_directory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app

    runner = CliRunner()
    key = tmp_path / "state" / "node.key"
    key.parent.mkdir()
    created = runner.invoke(app, ["kgc", "keygen", "--out", str(key)])
    assert created.exit_code == 0, created.output
    assert len(bytes.fromhex(created.stdout.strip())) == 66
    assert key.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["kgc", "keygen", "--out", str(key)])
    assert again.exit_code == 2
    base = ["kgc", "serve", "--state-dir", str(tmp_path / "state"), "--index", "1"]
    base += ["--node-key-file", str(key), "--msp-id", "Org1MSP", "--cert", "c", "--key", "k"]
    base += ["--ledger", "l", "--tls-cert", "t", "--tls-key", "k"]
    result = runner.invoke(app, base)
    assert result.exit_code == 2
    assert "is inside the state directory" in " ".join(result.output.split())
