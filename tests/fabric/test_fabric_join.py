"""'consortium add-hospital' on a real Fabric network: a hospital made in its own directory joins
mid-life. The member admins' 'sign-update' files carry Fabric ConfigSignatures, the channel's
config update (its anchor peer in it) is submitted with a majority of them, the new peer is
started from the hospital's directory, joins with the genesis block fetched from the orderer,
catches up, the chaincode is approved for its organisation, it endorses (the channel's MAJORITY
now counts four organisations: three endorsements), and its clinician reads a record granted
afterwards. A minority of signatures is refused by us and by the orderer, changing nothing;
kill -9 after the config, after the peer started, after it joined and after the whole peer step
leaves a state the next run completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.hospital import init_hospital
from ehrshare.membership import MembershipUpdate
from ehrshare.network.fabric import FabricNet, FabricNetError
from ehrshare.network.fabric.config_update import msp_root_certs
from ehrshare.network.fabric.new_org import fetch_config, submit_update
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.wallet import PASSPHRASE_ENV, Wallet

pytestmark = [pytest.mark.fabric, pytest.mark.slow]

MSPS = ["HospitalAMSP", "HospitalBMSP", "HospitalCMSP"]
NEW = "HospitalDMSP"
DR_DEE = "HospitalDMSP/drdee"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three hospitals on Fabric (alice: one lab record; admins of A and B), the network
    running, and a new hospital D at ``hd`` in its own directory."""
    base = tmp_path_factory.mktemp("fabjoin")
    root = base / "c"
    with Consortium.init(root, ledger="fabric") as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("admin-b", "HospitalB", "admin")
        with c.session(Wallet(root / "wallets" / "alice", use_env=False)) as alice:
            alice.enroll()
            alice.publish_type_keys()
            ref = alice.put_record(lab_observation())
        (base / "record").write_text(ref.record_id, encoding="utf-8")
    net = FabricNet.load(root)
    net.start()
    try:
        init_hospital(base / "hd", "HospitalD")
        yield base
    finally:
        FabricNet.load(root).stop()


def ehrshare(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, PASSPHRASE_ENV)}
    env["COLUMNS"] = "200"
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )


def add_hospital(base: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    req = str(base / "hd" / "join-request.json")
    args = ("consortium", "add-hospital", req, "--hospital-dir", str(base / "hd"))
    return ehrshare(*args, "-p", str(base / "c"), "--json", fault=fault)


def channel_orgs(base: Path) -> list[str]:
    net = FabricNet.load(base / "c")
    return sorted(msp_root_certs(fetch_config(net, MSPS[0], base / "cfg.block")))


def test_a_new_hospital_joins_on_fabric_endorses_and_its_clinician_reads_afterwards(
    world: Path,
) -> None:
    profile_file = world / "c" / "profile.yaml"
    update_file = world / "hd" / "join-request.update.json"
    # A peer endpoint this loopback network cannot run the peer at: refused (exit 3) before
    # any update is made.
    far = init_hospital(world / "he", "HospitalE", endpoints={"peer": "10.9.9.9:7051"})
    refused = ehrshare(
        "consortium",
        "add-hospital",
        str(far.request_file),
        "-p",
        str(world / "c"),
    )
    assert refused.returncode == 3, refused.stderr
    assert "10.9.9.9" in refused.stderr and "Traceback" not in refused.stderr
    assert not far.request_file.with_suffix(".update.json").exists()
    first = add_hospital(world)
    assert first.returncode == 1, first.stderr  # the update is written; no signature yet
    update = MembershipUpdate.load(update_file)
    assert update.config_update is not None and update.anchor_peer is not None
    assert sorted(update.base) == MSPS

    # A minority: one admin signs. We refuse (exit 1) and nothing changes.
    signed = ehrshare("consortium", "sign-update", str(update_file), "-p", str(world / "c"))
    assert signed.returncode == 2, signed.stderr  # no --wallet: a usage error
    signed = ehrshare(
        "consortium", "sign-update", str(update_file), "-p", str(world / "c"), "-w", "admin"
    )
    assert signed.returncode == 0, signed.stderr
    profile_before = profile_file.read_text(encoding="utf-8")
    network_before = (world / "c" / "fabric" / "network.json").read_text(encoding="utf-8")
    refused = add_hospital(world)
    assert refused.returncode == 1, refused.stderr
    assert "1 of the 3 member hospitals' admins signed" in refused.stderr
    # The orderer itself refuses it too (our check bypassed): the submitter's organisation is
    # the signer's, so one organisation of three.
    update = MembershipUpdate.load(update_file)
    assert update.config_update is not None
    net = FabricNet.load(world / "c")
    with pytest.raises(FabricNetError, match="policy"):
        submit_update(
            net,
            update.config_update,
            update.config_signatures(["HospitalAMSP"]),
            submitter="HospitalAMSP",
            work=world / "work",
        )
    assert channel_orgs(world) == MSPS
    assert profile_file.read_text(encoding="utf-8") == profile_before
    assert (world / "c" / "fabric" / "network.json").read_text(encoding="utf-8") == network_before
    assert not (world / "hd" / "fabric").exists()

    # A majority: B's admin signs too. Killed right after the config update committed.
    signed = ehrshare(
        "consortium", "sign-update", str(update_file), "-p", str(world / "c"), "-w", "admin-b"
    )
    assert signed.returncode == 0, signed.stderr
    started = time.perf_counter()
    killed = add_hospital(world, fault="add_hospital.after_config")
    assert killed.returncode == -9, killed.stderr
    assert channel_orgs(world) == [*MSPS, NEW]
    # A majority of 4 for the peer client; the Gateway plans endorsement itself (no count).
    gateway = Profile.load(profile_file).fabric.client == "gateway"  # type: ignore[union-attr]
    endorsers = None if gateway else 3
    assert Profile.load(profile_file).fabric.endorsers == endorsers  # type: ignore[union-attr]

    # Killed right after the new peer started (before it joined the channel), then right after
    # it joined (before catching up and the chaincode approval), then once all that was done.
    killed = add_hospital(world, fault="add_hospital.peer_started")
    assert killed.returncode == -9, killed.stderr
    done = json.loads((world / "c" / "fabric" / "network.json").read_text("utf-8"))["done"]
    assert f"peer-{NEW}" in FabricNet.load(world / "c").live() and f"join:{NEW}" not in done
    killed = add_hospital(world, fault="add_hospital.peer_joined")
    assert killed.returncode == -9, killed.stderr
    done = json.loads((world / "c" / "fabric" / "network.json").read_text("utf-8"))["done"]
    assert f"join:{NEW}" in done and f"approve:{NEW}" not in done
    killed = add_hospital(world, fault="add_hospital.after_peer")
    assert killed.returncode == -9, killed.stderr
    net = FabricNet.load(world / "c")
    assert f"peer-{NEW}" in net.live()
    heights = net.heights()
    assert heights[NEW] >= min(heights[m] for m in MSPS) - 1, heights

    joined = add_hospital(world)
    assert joined.returncode == 0, joined.stderr
    elapsed = time.perf_counter() - started
    outcome = json.loads(joined.stdout)
    assert outcome["performed"] == ["register", "profile", "reshare"]
    assert "HospitalDMSP/kgc" in outcome["committee"]
    print(f"join on Fabric (config, peer, register, profile, reshare; four kills): {elapsed:.1f} s")
    fabric = Profile.load(profile_file).fabric
    assert fabric is not None
    assert [p.msp_id for p in fabric.peers] == [*MSPS, NEW] and fabric.endorsers == endorsers
    # The new hospital's keys stayed in its directory.
    assert (world / "hd" / "fabric" / "peer" / "msp" / "keystore" / "key.pem").is_file()
    assert not (world / "c" / "fabric" / "orgs" / NEW).exists()
    ccp = json.loads((world / "c" / "fabric" / "connection-HospitalAMSP.json").read_text("utf-8"))
    assert (
        NEW in ccp["organizations"]
        and (world / "c" / "fabric" / f"connection-{NEW}.json").is_file()
    )

    # The new peer endorses, and MAJORITY of four needs three: A and D are not enough.
    net = FabricNet.load(world / "c")
    with pytest.raises(FabricNetError, match="ENDORSEMENT_POLICY_FAILURE"):
        net.invoke(NEW, ["RegisterIdentity"], endorsers=["HospitalAMSP", NEW])
    net.invoke(NEW, ["RegisterIdentity"], endorsers=["HospitalBMSP", "HospitalCMSP", NEW])

    # Dr Dee of the new hospital enrols, alice grants her lab records, Dr Dee reads one.
    c = str(world / "c")
    dee = world / "hd" / "wallets" / "drdee"
    issued = ehrshare("hospital", "add-member", str(world / "hd"), "drdee", "--role", "clinician")
    assert issued.returncode == 0, issued.stderr
    enrolled = ehrshare("enroll", "-p", c, "-w", str(dee))
    assert enrolled.returncode == 0, enrolled.stderr
    granted = ehrshare("grant", "give", DR_DEE, "lab", "--days", "1", "-p", c, "-w", "alice")
    assert granted.returncode == 0, granted.stderr
    assert "re-key at HospitalDMSP/proxy" in granted.stderr
    record = (world / "record").read_text(encoding="utf-8")
    read = ehrshare("record", "get", record, "-p", c, "-w", str(dee), "--json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["valueQuantity"]["value"] == 13.2

    again = add_hospital(world)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["performed"] == []

    # `ledger verify` checks the config block that admitted the new hospital (signed by a
    # majority of the admins in force before it), and Dr Dee's hospital may witness heads.
    verified = ehrshare("ledger", "verify", "-p", c, "-w", "alice")
    assert verified.returncode == 0, verified.stderr
    assert f"{NEW} admitted, signed by the admins of HospitalAMSP, HospitalBMSP" in (
        verified.stderr
    )
    head = world / "dee-head.json"
    witnessed = ehrshare("ledger", "head", "--out", str(head), "-p", c, "-w", str(dee))
    assert witnessed.returncode == 0, witnessed.stderr
    verified = ehrshare(
        "ledger", "verify", "--against", str(head), "-p", c, "-w", "alice", "--json"
    )
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["organisations"] == [*MSPS, NEW]
    assert [w["witness"] for w in report["witnesses"]] == [DR_DEE]


def test_join_time_on_fabric_with_records(tmp_path: Path) -> None:
    """A hospital joins a consortium holding ``$EHRSHARE_JOIN_RECORDS`` records (default 20; the
    figure in docs/benchmarks.md is at 1,000): config update, peer catch-up over every block,
    chaincode approval and reshare, each step's seconds from ``--json``."""
    records = int(os.environ.get("EHRSHARE_JOIN_RECORDS", "20"))
    root = tmp_path / "c"
    put_started = time.perf_counter()
    with Consortium.init(root, ledger="fabric") as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("admin-b", "HospitalB", "admin")
        with c.session(Wallet(root / "wallets" / "alice", use_env=False)) as alice:
            alice.enroll()
            alice.publish_type_keys()
            for _ in range(records):
                alice.put_record(lab_observation())
    put_seconds = time.perf_counter() - put_started
    net = FabricNet.load(root)
    net.start()
    try:
        height = max(net.heights().values())
        init_hospital(tmp_path / "hd", "HospitalD")
        assert add_hospital(tmp_path).returncode == 1
        update_file = tmp_path / "hd" / "join-request.update.json"
        for admin in ("admin", "admin-b"):
            signed = ehrshare(
                "consortium", "sign-update", str(update_file), "-p", str(root), "-w", admin
            )
            assert signed.returncode == 0, signed.stderr
        started = time.perf_counter()
        joined = add_hospital(tmp_path)
        elapsed = time.perf_counter() - started
        assert joined.returncode == 0, joined.stderr
        outcome = json.loads(joined.stdout)
        assert outcome["performed"] == ["config", "peer", "register", "profile", "reshare"]
        joined_net = FabricNet.load(root)
        assert joined_net.height(NEW) >= height
        print(
            f"\njoin on Fabric at {records} records (height {height}, setup {put_seconds:.0f} s):"
            f" {elapsed:.1f} s in all; steps {outcome['seconds']}"
        )
    finally:
        FabricNet.load(root).stop()
