"""Test identities, types and a keyring derived from one toy master key (tests only)."""

from __future__ import annotations

from ehrshare.hazmat.tipre import (
    IdentitySecretKey,
    MasterPublicKey,
    MasterSecret,
    TypeSecretKey,
    VerifiedTypePublicKey,
)

IDENTITIES = ("patient:alice", "doctor:bob", "doctor:carol", "doctor:dave", "doctor:erin")
TYPES = ("lab-result", "imaging", "clinical-note")


class Keyring:
    """Keys of every test identity for every test type, derived once per session."""

    def __init__(self) -> None:
        self.master = MasterSecret.generate()
        self.mpk: MasterPublicKey = self.master.public_key()
        self.sk: dict[str, IdentitySecretKey] = {i: self.master.extract(i) for i in IDENTITIES}
        self.tsk: dict[tuple[str, str], TypeSecretKey] = {
            (i, t): self.sk[i].type_secret(t) for i in IDENTITIES for t in TYPES
        }
        self.tpk: dict[tuple[str, str], VerifiedTypePublicKey] = {
            key: tsk.public_key(self.mpk) for key, tsk in self.tsk.items()
        }
