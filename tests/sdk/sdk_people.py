"""The cast of the SDK tests (imported by conftest and the tests)."""

from __future__ import annotations

from dataclasses import dataclass

from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium
from ehrshare.session import Session


@dataclass
class People:
    consortium: Consortium
    clock: ManualClock
    alice: Session  # patient, hospital A
    adams: Session  # clinician, hospital A
    baker: Session  # clinician, hospital B
    chen: Session  # clinician, hospital C

    def sessions(self) -> list[Session]:
        return [self.alice, self.adams, self.baker, self.chen]


MEMBERS = {
    "alice": ("HospitalA", "patient"),
    "adams": ("HospitalA", "clinician"),
    "baker": ("HospitalB", "clinician"),
    "chen": ("HospitalC", "clinician"),
}
