"""Submit loop run as a subprocess by test_multiprocess.py: two of these share one ledger directory.

Prints JSON lines: ``{"ready": true}`` once its clinician is registered and its event stream is
open; waits for ``go`` on stdin (so both start together); submits ``count`` RegisterRecord
transactions with ``submit_transaction`` for one shared patient (each writes that patient's
audit-chain head, so any unserialised pair would conflict) and prints ``{"record", "code"}`` for
each; finally prints ``{"events": [...]}``, the transaction ids of every RegisterRecord event its
stream delivered, which must include the other process's.
"""

from __future__ import annotations

import base64
import json
import sys
import threading

from ehrshare.ledger.sandbox import Sandbox

CAPSULE = base64.b64encode(b"\x07" * 64).decode()


def main() -> None:
    directory, name, patient, count, expected = (
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    sb = Sandbox.open(directory)
    clinician = sb.member("Org2MSP", name, "clinician")
    network = clinician.gateway.get_network("ehrshare")
    seen: list[str] = []
    done = threading.Event()
    events = network.get_chaincode_events(
        "ehrshare", start_block=sb.ledger.height(), idle_timeout=60
    )

    def follow() -> None:
        for event in events:
            if event.event_name == "RegisterRecord":
                seen.append(event.transaction_id)
                if len(seen) >= expected:
                    break
        done.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    print(json.dumps({"ready": True}), flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")
    for i in range(count):
        try:
            clinician.contract.submit_transaction(
                "RegisterRecord",
                f"{name}-{i}",
                patient,
                "lab",
                "bafyrecord0001",
                "ab" * 32,
                CAPSULE,
                "1",
            )
            code = "VALID"
        except Exception as exc:  # reported to the parent, which fails the test
            code = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"record": f"{name}-{i}", "code": code}), flush=True)
    done.wait(timeout=60)
    events.close()
    print(json.dumps({"events": seen}), flush=True)
    sb.close()


if __name__ == "__main__":
    main()
