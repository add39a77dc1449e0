"""Commit loop run as a subprocess by test_crash.py, which kills it with SIGKILL mid-way.

Prints one JSON line per committed transaction (after commit returned), so the parent knows what
was committed before the kill.
"""

from __future__ import annotations

import base64
import json
import sys

from ehrshare.ledger.sandbox import Sandbox

CAPSULE = base64.b64encode(b"\x05" * 64).decode()


def main() -> None:
    directory, run = sys.argv[1], sys.argv[2]
    sb = Sandbox.open(directory)
    clinician = sb.member("Org2MSP", f"doc{run}", "clinician")
    proxy = sb.member("Org2MSP", f"proxy{run}", "proxy").ibe_id
    patients = [sb.member("Org1MSP", f"pat{run}-{k}", "patient") for k in range(8)]
    print(json.dumps({"ready": True}), flush=True)
    i = 0
    while True:
        # One block per transaction...
        p = patients[i % len(patients)]
        rec = f"r{run}-{i}"
        tx = clinician.contract.new_proposal(
            "RegisterRecord", rec, p.ibe_id, "lab", "bafyrecord0001", "cd" * 32, CAPSULE, "1"
        )
        status = tx.endorse().submit().get_status()
        print(json.dumps({"tx": status.tx_id, "code": status.code}), flush=True)
        g = p.contract.new_proposal(
            "GrantAccess", "lab", clinician.ibe_id, "4000000000", "0", "", "", proxy
        )
        print(
            json.dumps({"tx": g.transaction_id, "code": g.endorse().submit().get_status().code}),
            flush=True,
        )
        # ...and one block of many, one transaction per patient (so none conflicts).
        batch = [
            clinician.contract.new_proposal("RequestAccess", f"r{run}-{j}").endorse().endorsed
            for j in range(max(0, i - len(patients) + 1), i + 1)
        ]
        for st in sb.ledger.commit(batch):
            print(json.dumps({"tx": st.tx_id, "code": st.code}), flush=True)
        i += 1


if __name__ == "__main__":
    main()
