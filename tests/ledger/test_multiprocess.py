"""Two real processes share one embedded-ledger directory and submit in parallel: nothing is lost,
nothing conflicts, the block log does not fork, and each process's event stream sees the other's
commits (the setting of ``ehrshare proxy serve --ledger DIR`` next to an SDK process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.ledger.sandbox import Sandbox

WORKER = Path(__file__).with_name("multiproc_worker.py")
PER_WORKER = 40


def _start(directory: Path, name: str, patient: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            str(directory),
            name,
            patient,
            str(PER_WORKER),
            str(2 * PER_WORKER),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_submitting_in_parallel_lose_nothing_and_never_fork(tmp_path: Path) -> None:
    directory = tmp_path / "sb"
    with Sandbox.open(directory) as sb:
        patient = sb.member("Org1MSP", "alice", "patient").ibe_id
        start_height = sb.ledger.height()
    workers = {name: _start(directory, name, patient) for name in ("docA", "docB")}
    lines: dict[str, list[dict[str, object]]] = {name: [] for name in workers}
    try:
        for proc in workers.values():
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready and json.loads(ready) == {"ready": True}, proc.stderr
        for proc in workers.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for name, proc in workers.items():
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            lines[name] = [json.loads(x) for x in out.splitlines() if x.strip()]
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    for name in workers:
        codes = [x["code"] for x in lines[name] if "record" in x]
        assert codes == ["VALID"] * PER_WORKER, (name, [c for c in codes if c != "VALID"])

    with Sandbox.open(directory) as sb:
        report = sb.ledger.verify()  # hash chain, tx hashes, state == replay of the history
        # One block per submit (two registrations + 2 × PER_WORKER records), numbered 0..h-1
        # without a gap or a duplicate (verify() checks the numbering and the links).
        assert sb.ledger.height() == start_height + 2 + 2 * PER_WORKER
        assert report["blocks"] == sb.ledger.height()
        auditor = sb.member("Org1MSP", "auditor", "auditor")
        records = auditor.evaluate("ListRecords", patient, "100")["records"]
        assert sorted(r["record_id"] for r in records) == sorted(
            f"{name}-{i}" for name in workers for i in range(PER_WORKER)
        )
        assert auditor.evaluate("VerifyAuditTrail", patient)["valid"] is True
        trail = auditor.evaluate("GetAuditTrail", "patient", patient, "100")["entries"]
        assert [e["seq"] for e in trail] == list(range(1, len(trail) + 1))
        # Each process's live event stream delivered every record event, its own and the other's.
        streams = {
            name: next(x["events"] for x in lines[name] if "events" in x) for name in workers
        }
        assert len(streams["docA"]) == 2 * PER_WORKER
        assert sorted(streams["docA"]) == sorted(streams["docB"])
        blocks = []
        for tx_id in streams["docA"]:
            status = sb.ledger.transaction_status(tx_id)
            assert status is not None and status.code == "VALID"
            blocks.append(status.block_number)
        assert len(set(blocks)) == 2 * PER_WORKER
        # Every stream delivered the events in block order.
        assert blocks == sorted(blocks)
