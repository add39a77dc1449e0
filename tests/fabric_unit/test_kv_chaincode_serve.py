"""``ehrshare chaincode serve --contract kv``: the trivial chaincode of bench fabric served by the
same ccaas server as the contract, as a real process reached over gRPC by the in-repo peer
stand-in (``ehrshare.bench.fake_peer``); a Put is committed, a Get reads it, the contract's
functions are not there. An unknown ``--contract`` is a usage error with no traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from ehrshare.bench.fake_peer import FakePeer, TxOutcome
from ehrshare.errors import EXIT_USAGE
from ehrshare.identity import LocalCA
from ehrshare.ledger.envelope import serialize_identity
from ehrshare.ledger.fabric import signed_proposal

PACKAGE_ID = "ehrshare-kv_1:" + "ab" * 32
NAMESPACE = "ehrshare-kv"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


async def _drive(target: str) -> list[TxOutcome]:
    identity, signer = LocalCA.create("Org1MSP").issue("kv-user", role="patient")
    creator = serialize_identity(identity)
    peer = FakePeer(target, namespace=NAMESPACE)
    await peer.open()
    out = []
    try:
        for function, args, commit in (
            ("Put", (b"k-1", b"hello"), True),
            ("Get", (b"k-1",), False),
            ("RegisterIdentity", (), True),
        ):
            txid, signed = signed_proposal(
                creator,
                signer,
                channel="ehrshare",
                chaincode=NAMESPACE,
                function=function,
                args=args,
                timestamp_ns=time.time_ns(),
            )
            out.append(
                await peer.execute(
                    signed, txid, function, list(args), channel="ehrshare", commit=commit
                )
            )
    finally:
        await peer.close()
    assert peer.state == {"k-1": b"hello"}
    return out


def test_kv_contract_puts_and_gets_and_has_no_contract_functions(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    cmd = [sys.executable, "-m", "ehrshare", "chaincode", "serve", "--contract", "kv"]
    cmd += ["--package-id", PACKAGE_ID, "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60  # start-up guard, not a timing assertion
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the server did not start listening"
            time.sleep(0.05)
        put, get, other = asyncio.run(_drive(f"127.0.0.1:{int(port_file.read_text())}"))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert (put.status, put.payload) == (200, b"")
    assert (get.status, get.payload) == (200, b"hello")
    assert other.status == 500
    assert other.message == "function RegisterIdentity does not exist in the kv chaincode"


def test_unknown_contract_is_a_usage_error_without_traceback() -> None:
    cmd = [sys.executable, "-m", "ehrshare", "chaincode", "serve", "--contract", "nope"]
    cmd += ["--package-id", PACKAGE_ID, "--listen", "127.0.0.1:0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == EXIT_USAGE
    assert "--contract 'nope' is not one of ehrshare, kv" in done.stderr
    assert "Traceback" not in done.stderr
