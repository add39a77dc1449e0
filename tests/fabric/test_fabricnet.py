"""A real multi-organisation Fabric 2.3 network built from the consortium's own CAs.

`ehrshare.network.fabric` turns three hospital CAs (as `consortium init` saves them) into MSPs,
peer, orderer and admin identities, a Raft ordering service (1 or 3 nodes, each with its own admin
endpoint), a channel joined through the channel participation API with a MAJORITY endorsement
policy, and our chaincode server deployed as ccaas. The `peer` CLI, signing as each
hospital's admin from those MSP directories, drives the contract; every process is stopped by
pid at the end, also when a start fails.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.faults import FAULT_ENV
from ehrshare.identity import LocalCA
from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
from ehrshare.network.fabric import (
    ORDERER_MSP,
    FabricNet,
    FabricNetError,
    FabricNetSpec,
    fabric_version,
)
from ehrshare.network.fabric.channel import _JOINED
from ehrshare.network.supervisor import pid_alive

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


def _consortium(root: Path) -> Path:
    assert (default_bin_dir() / "peer").is_file(), "Fabric 2.3 is not built: run `make tools`"
    for msp in MSPS:
        LocalCA.create(msp).save(root / "ca" / msp)
    return root


def _processes_of(net_dir: Path) -> list[int]:
    """Live processes (of this user) whose command line or environment names the network
    directory: the chaincode server by its arguments, orderers and peers by FABRIC_CFG_PATH."""
    found = []
    needle = str(net_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            seen = needle in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if seen and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _all_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(pid_alive(p) for p in pids)


@pytest.fixture
def networks() -> Iterator[list[FabricNet]]:
    """Networks a test created; each is stopped by pid afterwards, whatever happened."""
    nets: list[FabricNet] = []
    yield nets
    for net in nets:
        net.stop()


def _register_ca(net: FabricNet, msp: str, endorsers: list[str]) -> None:
    ca_pem = (net.root / "ca" / msp / "ca-cert.pem").read_text(encoding="utf-8")
    net.invoke(msp, ["RegisterOrgCA", ca_pem], endorsers=endorsers)
    # --waitForEvent waited for the endorsing peers only; later reads go to any peer.
    net.wait_synced()


def _org_ca(net: FabricNet, msp: str, *, on_peer_of: str) -> dict[str, str]:
    out = net.query(on_peer_of, ["GetOrgCA", msp])
    record: dict[str, str] = json.loads(out)
    return record


def _ccaas_ready_lines(net: FabricNet, peers: int, *, timeout: float) -> list[str]:
    """The chaincode server's "registered and ready" lines, once there is one per peer (or
    what there is after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        log = (net.dir / "logs" / "ccaas.log").read_text(encoding="utf-8")
        ready = [line for line in log.splitlines() if "registered and ready" in line]
        if len(ready) >= peers or time.monotonic() > deadline:
            return ready
        time.sleep(0.2)


def test_three_hospitals_commit_under_majority_and_survive_a_restart(
    tmp_path: Path, networks: list[FabricNet]
) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    networks.append(net)
    conn = net.connection()
    assert [p["msp"] for p in conn["peers"]] == list(MSPS)
    assert conn["endorsers"] == 2 and len(conn["orderers"]) == 1
    assert not net.running()

    steps: list[str] = []
    net.start(progress=steps.append)
    assert net.running() and net.deployed
    assert any("approving" in s for s in steps)
    pids = list(net.pids().values())
    assert len(pids) == 1 + 1 + len(MSPS)
    # The chaincode server uses Fabric 3.1's batched messages exactly when the peers offer them
    # in READY (core.yaml's chaincode.runtimeParams, on by default from 3.1). Each peer connects
    # to the chaincode server on its own, after start() returned (its lifecycle launches the
    # committed chaincode in the background), so each peer's READY is awaited.
    ready = _ccaas_ready_lines(net, len(MSPS), timeout=60.0)
    offer = "the peer offers write batches of up to 1000 and multiple gets of up to 1000 keys"
    expected = offer if fabric_version() >= (3, 1, 0) else "no batched messages"
    assert ready and all(expected in line for line in ready), ready

    # HospitalA's admin registers its CA, endorsed by A's and B's peers (a majority); the
    # contract checked that this CA issued the admin's certificate. C's peer reads it.
    _register_ca(net, "HospitalAMSP", ["HospitalAMSP", "HospitalBMSP"])
    record = _org_ca(net, "HospitalAMSP", on_peer_of="HospitalCMSP")
    ca_pem = (root / "ca" / "HospitalAMSP" / "ca-cert.pem").read_text(encoding="utf-8")
    assert record["msp_id"] == "HospitalAMSP" and record["ca_pem"] == ca_pem

    # One organisation's endorsement is not a majority: the orderer orders it, the peers
    # invalidate it, and nothing is written.
    with pytest.raises(FabricNetError, match="ENDORSEMENT_POLICY_FAILURE"):
        _register_ca(net, "HospitalBMSP", ["HospitalBMSP"])
    net.wait_synced()  # every peer has the block with the invalidated transaction
    with pytest.raises(FabricNetError, match="the ca of HospitalBMSP is not registered"):
        _org_ca(net, "HospitalBMSP", on_peer_of="HospitalAMSP")

    # Restart from the same directories: no re-create, no re-deploy; the ledger is kept and
    # new transactions commit.
    net.stop()
    assert not net.running() and _all_gone(pids)
    net = FabricNet.load(root)
    networks.append(net)
    steps.clear()
    net.start(progress=steps.append)
    assert not any("approving" in s or "creating" in s for s in steps)
    assert _org_ca(net, "HospitalAMSP", on_peer_of="HospitalBMSP")["ca_pem"] == ca_pem
    _register_ca(net, "HospitalCMSP", ["HospitalBMSP", "HospitalCMSP"])
    assert _org_ca(net, "HospitalCMSP", on_peer_of="HospitalAMSP")["msp_id"] == "HospitalCMSP"

    restarted = list(net.pids().values())
    net.stop()
    net.stop()  # idempotent
    assert _all_gone(pids + restarted) and _processes_of(net.dir) == []
    assert not FabricNet.load(root).running()


def _osnadmin_list(net: FabricNet, index: int, tls: tuple[Path, Path]) -> tuple[int, str]:
    """``osnadmin channel list`` against an orderer's admin endpoint: Fabric's own client."""
    done = subprocess.run(
        [
            str(net.bin_dir / "osnadmin"),
            "channel",
            "list",
            "-o",
            net.orderer_admin_address(index),
            "--ca-file",
            str(net.tls_ca(ORDERER_MSP)),
            "--client-cert",
            str(tls[0]),
            "--client-key",
            str(tls[1]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_three_raft_orderers_with_their_own_admin_ports_and_an_any_policy(
    tmp_path: Path, networks: list[FabricNet]
) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS, orderers=3, endorsement="ANY"))
    networks.append(net)
    assert net.connection()["endorsers"] == 1
    net.start()
    pids = list(net.pids().values())
    assert len(pids) == 1 + 3 + len(MSPS)
    # Each orderer has an admin endpoint of its own (left to orderer.yaml, all three would
    # bind 127.0.0.1:9443 and two would die), and each was joined to the channel there.
    admins = [net.orderer_admin_address(i) for i in range(3)]
    assert len(set(admins)) == 3 and "127.0.0.1:9443" not in admins
    for i in range(3):
        code, out = _osnadmin_list(net, i, net.orderer_admin_tls())
        assert code == 0 and "Status: 200" in out, out
        assert [c["name"] for c in json.loads(out[out.index("{") :])["channels"]] == ["ehrshare"]
        assert net.orderer_channels(i) == ["ehrshare"]
    # A hospital admin's TLS certificate opens peers and orderers, not the orderers' admin API.
    code, out = _osnadmin_list(net, 0, net.admin_tls("HospitalAMSP"))
    assert code != 0 and "certificate" in out and "Status: 200" not in out, out
    _register_ca(net, "HospitalBMSP", ["HospitalBMSP"])  # one endorsement is enough here
    assert _org_ca(net, "HospitalBMSP", on_peer_of="HospitalCMSP")["msp_id"] == "HospitalBMSP"
    # Each orderer took part in Raft for the channel (all three learned its leader).
    leader = re.compile(rf"Raft leader changed: \d+ -> [123] channel={net.spec.channel} ")
    for i in (1, 2, 3):
        log = (net.dir / "logs" / f"orderer{i}.log").read_text(encoding="utf-8", errors="replace")
        assert leader.search(log), f"orderer{i} never learned the channel's Raft leader"
    net.stop()
    net.start()
    _register_ca(net, "HospitalAMSP", ["HospitalCMSP"])
    assert _org_ca(net, "HospitalAMSP", on_peer_of="HospitalBMSP")["msp_id"] == "HospitalAMSP"

    # Raft with three nodes survives a crash: kill a follower (not orderer1, which the CLI
    # broadcasts to) and transactions still commit with the other two. (A leader crash loses
    # the transactions forwarded to it until a new one is elected: clients resubmit then.)
    restarted = list(net.pids().values())
    log1 = (net.dir / "logs" / "orderer1.log").read_text(encoding="utf-8", errors="replace")
    leader_id = int(re.findall(r"Raft leader changed: \d+ -> ([123]) channel=ehrshare ", log1)[-1])
    victim = "orderer2" if leader_id == 3 else "orderer3"
    os.kill(net.pids()[victim], signal.SIGKILL)
    assert _all_gone([net.pids()[victim]]) and not net.running()
    _register_ca(net, "HospitalCMSP", ["HospitalAMSP"])
    assert _org_ca(net, "HospitalCMSP", on_peer_of="HospitalBMSP")["msp_id"] == "HospitalCMSP"
    with pytest.raises(FabricNetError, match="partly running: stop it"):
        net.start()
    net.stop()
    assert _all_gone(pids + restarted) and _processes_of(net.dir) == []


def test_a_failed_start_leaves_nothing_running_and_a_later_start_resumes(
    tmp_path: Path, networks: list[FabricNet], caplog: pytest.LogCaptureFixture
) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    networks.append(net)
    port = int(net.peer_address("HospitalCMSP").rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(FabricNetError, match="peer-HospitalCMSP exited while starting"):
            net.start()
        started = json.loads((net.dir / "network.json").read_text())["processes"]
        assert started == {}
    logs = {p.name for p in (net.dir / "logs").iterdir()}
    assert {"ccaas.log", "orderer1.log", "peer-HospitalCMSP.log"} <= logs
    assert not net.running()
    # Every process that did start (the log files name them) was stopped: none is left.
    assert _processes_of(net.dir) == []
    # The next start, with the port free again, creates the channel and deploys.
    net.start()
    assert net.running() and net.deployed
    pids = list(net.pids().values())
    net.stop()
    assert _all_gone(pids) and _processes_of(net.dir) == []

    # A start interrupted after every step but before recording them: the next start finds
    # each one done (the orderer answers "channel already exists", the peers "LedgerID already
    # exists", approvals and definition are committed) and resumes instead of failing.
    state = json.loads((net.dir / "network.json").read_text())
    state["done"] = []
    (net.dir / "network.json").write_text(json.dumps(state))
    net = FabricNet.load(root)
    networks.append(net)
    caplog.set_level(logging.INFO, logger="ehrshare.network")
    net.start()
    assert net.deployed
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("already done")]
    assert sum("channel already exists" in m for m in resumed) == 1, resumed
    assert sum(bool(re.search(_JOINED, m)) for m in resumed) == len(MSPS), resumed
    _register_ca(net, "HospitalAMSP", ["HospitalAMSP", "HospitalCMSP"])
    assert _org_ca(net, "HospitalAMSP", on_peer_of="HospitalBMSP")["msp_id"] == "HospitalAMSP"
    pids = list(net.pids().values())
    net.stop()
    assert _all_gone(pids) and _processes_of(net.dir) == []


def test_the_operations_doc_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, networks: list[FabricNet]
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = doc[doc.index("**Fabric.**") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    monkeypatch.chdir(tmp_path)
    _consortium(tmp_path / "consortium")
    said: list[str] = []
    namespace: dict[str, object] = {"print": said.append}
    try:
        exec(compile(code, "operations.md", "exec"), namespace)  # our own doc
    finally:
        net = namespace.get("net")
        if isinstance(net, FabricNet):
            networks.append(net)
    assert isinstance(net, FabricNet) and not net.running()
    assert any("committing" in s for s in said)
    assert _processes_of(net.dir) == []


def _start_killed_at(root: Path, step: str) -> None:
    """``FabricNet.start`` in a process of its own, killed with SIGKILL at ``step``."""
    code = (
        "import sys; from ehrshare.network.fabric import FabricNet; "
        "FabricNet.load(sys.argv[1]).start()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        env={**os.environ, FAULT_ENV: step},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def test_a_start_killed_after_a_join_resumes_past_the_already_joined_answers(
    tmp_path: Path, networks: list[FabricNet], caplog: pytest.LogCaptureFixture
) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    networks.append(net)

    # Killed after the orderer joined the channel, before that was recorded. Its nodes run on
    # (they are in sessions of their own): the next start refuses until they are stopped.
    _start_killed_at(root, "fabricnet.orderer_join.before_mark")
    net = FabricNet.load(root)
    networks.append(net)
    assert net._state.done == [] and net.orderer_channels(0) == ["ehrshare"]
    with pytest.raises(FabricNetError, match="is already running"):
        net.start()
    net.stop()
    assert _processes_of(net.dir) == []

    # Killed after a peer joined, before that was recorded: the orderer's "channel already
    # exists" was taken as done.
    _start_killed_at(root, "fabricnet.peer_join.before_mark")
    net = FabricNet.load(root)
    networks.append(net)
    assert net._state.done == ["orderer-join:1"] and not net.deployed
    net.stop()
    assert _processes_of(net.dir) == []

    # The third start takes the peer's "LedgerID already exists" as done and deploys.
    caplog.set_level(logging.INFO, logger="ehrshare.network")
    net.start()
    assert net.deployed
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("already done")]
    assert any(re.search(_JOINED, m) for m in resumed), resumed
    _register_ca(net, "HospitalAMSP", ["HospitalAMSP", "HospitalBMSP"])
    assert _org_ca(net, "HospitalAMSP", on_peer_of="HospitalCMSP")["msp_id"] == "HospitalAMSP"
    pids = list(net.pids().values())
    net.stop()
    assert _all_gone(pids) and _processes_of(net.dir) == []


def test_an_altered_genesis_block_starts_nothing(tmp_path: Path, networks: list[FabricNet]) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    networks.append(net)
    original = net.genesis_block.read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    net.genesis_block.write_bytes(bytes(altered))
    with pytest.raises(FabricNetError, match="was changed after the network was created"):
        net.start()
    net.genesis_block.unlink()
    with pytest.raises(FabricNetError, match=r"genesis block .* cannot be read"):
        net.start()
    # Refused before anything ran: no process started, so no log was written.
    assert list((net.dir / "logs").iterdir()) == []
    assert json.loads((net.dir / "network.json").read_text())["processes"] == {}
    net.genesis_block.write_bytes(original)
    net.start()
    assert net.deployed
    pids = list(net.pids().values())
    net.stop()
    assert _all_gone(pids)


def test_a_node_that_panics_at_start_is_reported_by_its_panic_line(
    tmp_path: Path, networks: list[FabricNet]
) -> None:
    root = _consortium(tmp_path / "consortium")
    net = FabricNet.create(FabricNetSpec(root=root, msp_ids=MSPS))
    networks.append(net)
    # A signing certificate that does not parse: the orderer panics setting up its MSP, and
    # Go prints its goroutine stacks after the panic line.
    cert = net.dir / "orgs" / ORDERER_MSP / "orderer1" / "msp" / "signcerts" / "cert.pem"
    original = cert.read_bytes()
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(FabricNetError) as failed:
        net.start()
    message = str(failed.value)
    assert message.startswith("orderer1 exited while starting: "), message
    # 2.x writes "… loadLocalMSP -> PANI 003 Failed …", 3.x "… 0003 PANI [orderer…] … Failed …".
    assert re.search(r"\bPANI\b.* Failed to setup local msp with config: .*malformed", message)
    assert "goroutine" not in message and "\x1b[" not in message, message
    log = (net.dir / "logs" / "orderer1.log").read_text(encoding="utf-8", errors="replace")
    assert "Failed to setup local msp" not in "\n".join(log.strip().splitlines()[-8:])
    assert _processes_of(net.dir) == []
    cert.write_bytes(original)
    net.start()
    assert net.deployed
    pids = list(net.pids().values())
    net.stop()
    assert _all_gone(pids)
