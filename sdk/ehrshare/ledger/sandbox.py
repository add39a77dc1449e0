"""A local consortium on the embedded ledger: organisations with their CAs, and enrolled members.

Use it for demos, benchmarks and tests: ``Sandbox.open(directory)`` creates (or reopens) a ledger
whose channel admits each organisation's :class:`~ehrshare.identity.LocalCA`, and
:meth:`Sandbox.member` enrols a member with a real certificate and a gateway to the contract. The
CAs' keys are written under ``<directory>/ca/`` (mode 0600) so a reopened sandbox can enrol again.
Not for production: a real deployment gets its identities from Fabric CA or its own PKI.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrshare.closing import Closing
from ehrshare.contract import EhrContract
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.embedded import EmbeddedContract, EmbeddedGateway, connect
from ehrshare.ledger.store import EmbeddedLedger

__all__ = ["CHAINCODE", "CHANNEL", "ManualClock", "Member", "Sandbox"]

CHANNEL = "ehrshare"
CHAINCODE = "ehrshare"


class ManualClock:
    """A clock that moves only when told to (nanoseconds); inject it to test expiry."""

    def __init__(self, start_seconds: int | None = None) -> None:
        self._ns = (int(time.time()) if start_seconds is None else start_seconds) * 1_000_000_000

    def __call__(self) -> int:
        self._ns += 1  # strictly increasing, as proposals' timestamps would be
        return self._ns

    @property
    def seconds(self) -> int:
        """The current time in whole seconds."""
        return self._ns // 1_000_000_000

    def advance(self, seconds: int) -> None:
        """Move forward."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._ns += seconds * 1_000_000_000


@dataclass
class Member:
    """An enrolled member: identity, signer and a contract handle using them."""

    identity: Identity
    signer: Signer
    gateway: EmbeddedGateway
    contract: EmbeddedContract

    @property
    def ibe_id(self) -> str:
        """``<msp id>/<enrollment id>``."""
        return self.identity.ibe_id

    @functools.cached_property
    def ehr(self) -> EhrContract:
        """The typed contract client for this member."""
        return EhrContract(self.contract)

    def submit(self, name: str, *args: str | bytes) -> Any:
        """Submit and decode the JSON result (a function by name, with any arguments: what
        chaincode tests need; applications use :attr:`ehr`)."""
        return json.loads(self.contract.submit_transaction(name, *args))

    def evaluate(self, name: str, *args: str | bytes) -> Any:
        """Evaluate and decode the JSON result."""
        return json.loads(self.contract.evaluate_transaction(name, *args))


class Sandbox(Closing):
    """Organisations, their CAs and one embedded ledger in a directory."""

    def __init__(self, ledger: EmbeddedLedger, cas: dict[str, LocalCA], clock: Any) -> None:
        self.ledger = ledger
        self.cas = cas
        self.clock = clock

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        organizations: tuple[str, ...] = ("Org1MSP", "Org2MSP"),
        clock: Any = None,
        synchronous: str = "NORMAL",
    ) -> Sandbox:
        """Create or reopen a sandbox; organisations missing from the channel are added."""
        path = Path(directory)
        # The ledger's clock-skew check runs against the same clock the members stamp with, so
        # a manual clock moves both and expiry stays testable without disabling the check.
        ledger = EmbeddedLedger.open(
            path / "ledger", channel=CHANNEL, synchronous=synchronous, clock=clock
        )
        members = ledger.organizations()
        cas: dict[str, LocalCA] = {}
        for msp in organizations:
            ca_dir = path / "ca" / msp
            if (ca_dir / "ca-key.pem").exists():
                ca = LocalCA.load(ca_dir)
            else:
                ca = LocalCA.create(msp)
                ca.save(ca_dir)
            cas[msp] = ca
            if msp not in members:
                ledger.add_organization(msp, ca.certificate_pem)
        return cls(ledger, cas, clock)

    def member(
        self,
        msp_id: str,
        name: str,
        role: str | None = None,
        *,
        node_ou: str = "client",
        register: bool = True,
    ) -> Member:
        """Enrol ``name`` at ``msp_id``'s CA; with ``register`` it also runs RegisterIdentity."""
        identity, signer = self.cas[msp_id].issue(name, role=role, node_ou=node_ou, now=self.now())
        return self.connect(identity, signer, register=register)

    def now(self) -> dt.datetime | None:
        """The sandbox clock's time (None without a clock: then the wall clock applies)."""
        if self.clock is None:
            return None
        return dt.datetime.fromtimestamp(self.clock() // 1_000_000_000, dt.UTC)

    def connect(self, identity: Identity, signer: Signer, *, register: bool = False) -> Member:
        """A member handle for an existing identity (e.g. after reopening the ledger)."""
        gateway = connect(identity, signer, self.ledger, clock=self.clock)
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        m = Member(identity, signer, gateway, contract)
        if register:
            m.ehr.register_identity()
        return m

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()
