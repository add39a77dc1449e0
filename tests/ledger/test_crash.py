"""A process killed with SIGKILL in the middle of a commit loop loses nothing it committed and
leaves nothing partial: reopen, and the block log, the state and every audit chain verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ehrshare.ledger.sandbox import Sandbox

WORKER = Path(__file__).with_name("crash_worker.py")


def _run_and_kill(directory: Path, run: int, after_lines: int) -> list[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(directory), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    committed: list[dict[str, str]] = []
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert json.loads(first) == {"ready": True}, proc.stderr.read() if proc.stderr else ""
        while len(committed) < after_lines:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "worker ended"
            committed.append(json.loads(line))
        os.kill(proc.pid, signal.SIGKILL)
        # Lines written before the kill are still in the pipe: they were committed too.
        rest = proc.stdout.read()
        committed += [json.loads(x) for x in rest.splitlines() if x.strip().endswith("}")]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return committed


@pytest.mark.slow
def test_sigkill_mid_commit_loses_nothing_committed_and_commits_nothing_partial(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sb"
    Sandbox.open(directory).close()
    all_committed: list[dict[str, str]] = []
    for run, after in enumerate((25, 60, 41)):
        all_committed += _run_and_kill(directory, run, after)

        sb = Sandbox.open(directory)
        try:
            report = sb.ledger.verify()  # block chain, tx hashes, state == replay of history
            assert report["transactions"] >= len(all_committed)
            for c in all_committed:
                status = sb.ledger.transaction_status(c["tx"])
                assert status is not None, f"committed transaction {c['tx']} was lost"
                assert status.code == c["code"]
            auditor = sb.member("Org1MSP", f"auditor{run}", "auditor")
            for k in range(8):
                chain = f"Org1MSP/pat{run}-{k}"
                assert auditor.evaluate("VerifyAuditTrail", chain)["valid"] is True
                trail = auditor.evaluate("GetAuditTrail", "patient", chain, "100")["entries"]
                logged = {e["record_id"] for e in trail if e["action"] == "RegisterRecord"}
                listed = {
                    r["record_id"] for r in auditor.evaluate("ListRecords", chain, "100")["records"]
                }
                assert logged == listed
            # The reopened ledger keeps accepting transactions.
            sb.member("Org1MSP", f"late{run}", "auditor")  # registering is a write
        finally:
            sb.close()
