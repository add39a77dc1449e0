"""A hospital joining a consortium whose store is a private IPFS swarm gets its own Kubo node
(repository, and so its libp2p key, in its own directory), peered with the running nodes; a
record granted to its clinician afterwards is pinned at its node and read through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from ehrshare.demo import lab_observation
from ehrshare.faults import FAULT_ENV
from ehrshare.hospital import init_hospital
from ehrshare.joining import add_hospital, compute_update
from ehrshare.membership import sign_update
from ehrshare.network.supervisor import pid_alive
from ehrshare.network.swarm import KuboSwarm
from ehrshare.profile import Profile
from ehrshare.provisioning import Consortium
from ehrshare.storage import KuboClient

pytestmark = [pytest.mark.ipfs, pytest.mark.slow]


def test_a_joining_hospital_gets_a_swarm_node_and_its_clinician_reads_through_it(
    kubo_binary: Path, tmp_path: Path
) -> None:
    del kubo_binary  # installed (EHRSHARE_BIN_DIR) before the swarm looks for it
    root = tmp_path / "c"
    c = Consortium.init(root, storage="swarm", replicas=1)
    pids: list[int] = []
    try:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("admin-b", "HospitalB", "admin")
        with c.session("alice") as alice:
            alice.enroll()
            alice.publish_type_keys(["lab"])
            ref = alice.put_record(lab_observation())
        hospital = init_hospital(tmp_path / "hd", "HospitalD")
        profile = Profile.load(root / "profile.yaml")
        update = compute_update(profile, hospital.request_file)
        for admin in ("admin", "admin-b"):
            update = sign_update(update, *profile.wallet(admin).load_identity())
        started = time.perf_counter()
        outcome = add_hospital(
            root / "profile.yaml", update, hospital, admin_wallet=profile.wallet("admin")
        )
        joined_s = time.perf_counter() - started
        assert outcome.performed == ("config", "register", "storage", "profile", "reshare")
        swarm = KuboSwarm.load(root / "ipfs")
        pids = list(swarm.pids().values())
        node = swarm.node("HospitalDMSP")
        assert Path(node.repo) == (tmp_path / "hd" / "ipfs").resolve()
        assert (tmp_path / "hd" / "ipfs" / "swarm.key").is_file()
        assert not (root / "ipfs" / "HospitalDMSP").exists()  # its key is not in ours
        swarm.wait_connected()
        assert dict(Profile.load(root / "profile.yaml").swarm.nodes)["HospitalDMSP"] == (  # type: ignore[union-attr]
            node.api_url
        )
        dee = hospital.issue_member("drdee", "clinician")
        with Consortium.open(root / "profile.yaml") as joined:
            with joined.session(dee) as s:
                s.enroll()
                s.publish_type_keys(["lab"])
            with joined.session("alice") as alice:
                alice.grant("HospitalDMSP/drdee", "lab", expires=int(time.time()) + 3600)
            with KuboClient(node.api_url, timeout=10) as client:
                assert client.has(ref.cid)  # the grant pinned it at the grantee's hospital
            with joined.session(dee) as s:
                assert s.read_record(ref.record_id).valueQuantity.value == Decimal("13.2")  # type: ignore[union-attr]
        print(f"the join with its Kubo node: {joined_s:.1f} s")
    finally:
        c.close()
        KuboSwarm.load(root / "ipfs").stop()
        time.sleep(0.5)
        assert not [p for p in pids if pid_alive(p)], "a swarm node outlived the test"


def test_a_join_killed_after_its_swarm_node_was_made_finishes_on_the_next_run(
    kubo_binary: Path, tmp_path: Path
) -> None:
    del kubo_binary
    root = tmp_path / "c"
    c = Consortium.init(root, storage="swarm", replicas=1)
    try:
        c.add_member("admin-b", "HospitalB", "admin")
        init_hospital(tmp_path / "hd", "HospitalD")
        request = str(tmp_path / "hd" / "join-request.json")
        argv = [sys.executable, "-m", "ehrshare", "consortium", "add-hospital", request]
        argv += ["--sign-with", "admin", "--sign-with", "admin-b", "-p", str(root), "--json"]
        env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
        killed = subprocess.run(
            argv,
            env={**env, FAULT_ENV: "add_hospital.after_storage"},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # The node exists and runs, but the profile does not name it yet: nothing uses it.
        assert "HospitalDMSP" in KuboSwarm.load(root / "ipfs").nodes
        assert "HospitalDMSP" not in dict(Profile.load(root / "profile.yaml").swarm.nodes)  # type: ignore[union-attr]
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["performed"] == ["profile", "reshare"]
        assert "HospitalDMSP" in dict(Profile.load(root / "profile.yaml").swarm.nodes)  # type: ignore[union-attr]
        KuboSwarm.load(root / "ipfs").wait_connected()
    finally:
        c.close()
        KuboSwarm.load(root / "ipfs").stop()
