"""The ledger a profile names, opened once per process: gateways per identity on top of it.

The SDK talks to a ledger only through :mod:`ehrshare.ledger.api`; this module is the one place
that turns a profile's ``ledger:`` section into something that hands out those gateways:

- ``embedded``: one :class:`~ehrshare.ledger.store.EmbeddedLedger` directory, shared by every
  gateway of the process (and by other processes through its file lock); it can also verify its
  own block and history integrity, which :meth:`LedgerBackend.verify` exposes.
- ``fabric``: a Fabric channel reached through its peers and orderers, by the profile's
  ``ledger.client``: ``gateway`` (:func:`ehrshare.ledger.fabric.service.connect_peers`: the
  peers' Gateway service, Fabric >= 2.4) or ``peer`` (:func:`ehrshare.ledger.peer.connect`:
  the client endorses on the peers, broadcasts to the orderers and waits for the commit on a
  peer's Deliver stream). Each gateway owns its gRPC
  channels and presents the TLS client certificate its caller gives (a member's wallet's; peers
  and orderers that require mutual TLS refuse a client without one, and with the profile's
  ``ledger.client_auth`` such a gateway is refused here, before dialling);
  :meth:`LedgerBackend.close` closes every gateway this backend opened. Integrity is the
  peers' business (block hashes, endorsement and MVCC validation), so :meth:`verify` is None.

It must not read wallets or keys (callers pass an identity and a signer, and the TLS client
certificate and key as PEM) and must not log transaction arguments or key material.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ehrshare.identity import Identity, Signer
from ehrshare.ledger import api
from ehrshare.profile import FabricEndpoint, Profile, ProfileError

if TYPE_CHECKING:
    from ehrshare.ledger.fabric import FabricGateway
    from ehrshare.ledger.peer import OrdererEndpoint, PeerEndpoint

__all__ = ["ClientTlsPair", "EmbeddedBackend", "FabricBackend", "LedgerBackend", "open_ledger"]

_log = logging.getLogger(__name__)
# compare_answers: how often, and how far apart, the peers are asked before a difference counts
_COMPARE_ATTEMPTS = 4
_COMPARE_PAUSE_S = 0.5

Clock = Callable[[], int]
ClientTlsPair = tuple[bytes, bytes]
"""A TLS client certificate and its key, both PEM (what ``Wallet.load_tls`` holds)."""


class LedgerBackend(Protocol):
    """Hands out gateways for identities on one ledger; closing it closes them all."""

    kind: str

    def connect(
        self, identity: Identity, signer: Signer, *, client_tls: ClientTlsPair | None = None
    ) -> api.Gateway:
        """A gateway acting as ``identity`` (close it, or let :meth:`close` do it);
        ``client_tls`` is the TLS client certificate and key it presents, where the ledger
        is reached over TLS."""
        ...

    @property
    def verify(self) -> Callable[..., dict[str, Any]] | None:
        """The ledger's own integrity check, where the backend has one."""
        ...

    def close(self) -> None:
        """Close the ledger and every gateway opened from it."""
        ...


class EmbeddedBackend:
    """An embedded ledger directory (see :mod:`ehrshare.ledger.store`)."""

    kind = "embedded"

    def __init__(self, directory: Path, *, channel: str, clock: Clock | None) -> None:
        from ehrshare.ledger.store import EmbeddedLedger

        self.ledger = EmbeddedLedger.open(directory, channel=channel, clock=clock, create=False)
        self._clock = clock

    def connect(
        self, identity: Identity, signer: Signer, *, client_tls: ClientTlsPair | None = None
    ) -> api.Gateway:
        """A gateway on the shared ledger (nothing to close per gateway; no network, so
        ``client_tls`` is not used)."""
        from ehrshare.ledger.embedded import connect

        del client_tls

        return connect(identity, signer, self.ledger, clock=self._clock)

    @property
    def verify(self) -> Callable[..., dict[str, Any]] | None:
        """Signed blocks, a replay of every transaction, history and state (and, with
        ``against=``, witnessed heads): :meth:`EmbeddedLedger.verify`."""
        return self.ledger.verify

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{what}: TLS CA file {path} cannot be read ({exc.strerror})") from None


class FabricBackend:
    """A Fabric channel through a set of peers and orderers: a profile's
    (:meth:`from_profile`) or a running :class:`~ehrshare.network.fabric.FabricNet`'s
    (:meth:`from_connection`)."""

    kind = "fabric"

    def __init__(
        self,
        peers: Sequence[PeerEndpoint],
        orderers: Sequence[OrdererEndpoint],
        *,
        endorsers: int | None,
        client_auth: bool,
        clock: Clock | None = None,
        orderer_quorum: int | None = None,
        client: str = "peer",
    ) -> None:
        self.peers = tuple(peers)
        self.client = client
        self.orderers = tuple(orderers)
        self.endorsers = endorsers
        self.client_auth = client_auth
        self.orderer_quorum = orderer_quorum
        self._clock = clock
        self._open: list[FabricGateway] = []
        self._lock = threading.Lock()

    @classmethod
    def from_profile(cls, profile: Profile, *, clock: Clock | None = None) -> FabricBackend:
        """The peers and orderers of the profile's ``ledger.fabric`` section."""
        cfg = profile.fabric
        assert cfg is not None
        return cls._from_endpoints(
            cfg.peers,
            cfg.orderers,
            endorsers=cfg.endorsers,
            client_auth=cfg.client_auth,
            clock=clock,
            orderer_quorum=cfg.orderer_quorum,
            client=cfg.client,
        )

    @classmethod
    def from_connection(cls, conn: dict[str, Any], *, clock: Clock | None = None) -> FabricBackend:
        """The peers and orderers of :meth:`ehrshare.network.fabric.FabricNet.connection` (a
        network this process started: benchmarks and tests)."""
        return cls._from_endpoints(
            [
                FabricEndpoint(p["address"], Path(p["tls_ca"]), p["server_name"], p["msp"])
                for p in conn["peers"]
            ],
            [
                FabricEndpoint(o["address"], Path(o["tls_ca"]), o["server_name"])
                for o in conn["orderers"]
            ],
            endorsers=conn.get("endorsers"),
            client_auth=bool(conn.get("client_auth", False)),
            clock=clock,
            orderer_quorum=conn.get("orderer_quorum"),
            client=conn.get("client") or "peer",
        )

    @classmethod
    def _from_endpoints(
        cls,
        peers: Sequence[FabricEndpoint],
        orderers: Sequence[FabricEndpoint],
        *,
        endorsers: int | None,
        client_auth: bool,
        clock: Clock | None,
        orderer_quorum: int | None = None,
        client: str = "peer",
    ) -> FabricBackend:
        from ehrshare.ledger.peer import OrdererEndpoint, PeerEndpoint

        cas: dict[Path, bytes] = {}  # every orderer (and each org's peers) share one TLS CA

        def ca(e: FabricEndpoint) -> bytes:
            if e.tls_ca not in cas:
                cas[e.tls_ca] = _read(e.tls_ca, e.address)
            return cas[e.tls_ca]

        return cls(
            [PeerEndpoint(e.address, e.msp_id, ca(e), e.server_name) for e in peers],
            [OrdererEndpoint(e.address, ca(e), e.server_name) for e in orderers],
            endorsers=endorsers,
            client_auth=client_auth,
            clock=clock,
            orderer_quorum=orderer_quorum,
            client=client,
        )

    def connect(
        self, identity: Identity, signer: Signer, *, client_tls: ClientTlsPair | None = None
    ) -> api.Gateway:
        """A gateway with its own gRPC channels to the peers and orderers, presenting
        ``client_tls`` (refused without one when the profile says ``client_auth``): through
        the peers' Gateway service with ``client: gateway``, else endorsing and broadcasting
        from here (:func:`ehrshare.ledger.peer.connect`)."""
        from ehrshare.ledger.fabric.service import connect_peers
        from ehrshare.ledger.peer import connect

        if client_tls is None and self.client_auth:
            raise ProfileError(
                f"{identity.ibe_id}: this profile's Fabric peers and orderers require mutual TLS "
                "(ledger.client_auth), and no TLS client certificate was given (a wallet's "
                "tls-cert.pem and tls-key.pem)"
            )
        gateway = (
            connect_peers(
                identity, signer, peers=self.peers, client_tls=client_tls, clock=self._clock
            )
            if self.client == "gateway"
            else connect(
                identity,
                signer,
                peers=self.peers,
                orderers=self.orderers,
                endorsers=self.endorsers,
                client_tls=client_tls,
                clock=self._clock,
                quorum=self.orderer_quorum,
            )
        )
        with self._lock:
            # Closed gateways (finished sessions) are dropped here, so a long-lived process
            # does not keep every identity and signer it ever connected with.
            self._open = [g for g in self._open if not g.closed]
            self._open.append(gateway)
        return gateway

    @property
    def verify(self) -> Callable[..., dict[str, Any]] | None:
        """None: checking a Fabric channel needs an identity to read blocks with; see
        :meth:`verify_as`."""
        return None

    def peer_per_organisation(self) -> dict[str, PeerEndpoint]:
        """The first peer the profile lists of each organisation: whose copies are compared."""
        first: dict[str, PeerEndpoint] = {}
        for peer in self.peers:
            first.setdefault(peer.msp_id, peer)
        if not first:
            raise ProfileError("the profile names no Fabric peer to read blocks from")
        return first

    def fetch_copies(
        self,
        identity: Identity,
        signer: Signer,
        *,
        channel: str,
        client_tls: ClientTlsPair | None = None,
    ) -> dict[str, list[Any]]:
        """Every block of ``channel`` as one peer of each organisation delivers it, as
        ``identity`` (:func:`ehrshare.ledger.fabric_blocks.fetch_blocks`)."""
        from ehrshare.ledger.fabric_blocks import fetch_blocks

        return {
            msp: fetch_blocks(
                address=p.address,
                tls_ca_pem=p.tls_ca_pem,
                server_name=p.server_name,
                channel=channel,
                identity=identity,
                signer=signer,
                client_tls=client_tls,
            )
            for msp, p in self.peer_per_organisation().items()
        }

    def verify_as(
        self,
        identity: Identity,
        signer: Signer,
        *,
        channel: str,
        client_tls: ClientTlsPair | None = None,
        against: Sequence[Any] = (),
        chaincode: str | None = None,
    ) -> dict[str, Any]:
        """Deliver every block from one peer of each organisation as
        ``identity`` and check each copy's hash chain and orderer signatures and that the
        copies agree (:func:`ehrshare.ledger.fabric_blocks.verify_copies`); raises
        ``LedgerIntegrityError`` naming the first bad block, also when the agreed chain no
        longer holds a witnessed head in ``against``. With ``chaincode``, also the contract's
        ``StateDigest`` of each organisation's peer, compared (:meth:`compare_answers`): a
        peer's state database is not covered by its blocks."""
        from ehrshare.ledger.fabric_blocks import verify_copies

        copies = self.fetch_copies(identity, signer, channel=channel, client_tls=client_tls)
        report = verify_copies(copies, against=against)
        if chaincode is not None:
            report["state"] = self.compare_answers(
                identity,
                signer,
                channel=channel,
                chaincode=chaincode,
                function="StateDigest",
                args=(),
                client_tls=client_tls,
            )
        return report

    def compare_answers(
        self,
        identity: Identity,
        signer: Signer,
        *,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[str],
        client_tls: ClientTlsPair | None = None,
    ) -> dict[str, Any]:
        """Ask one peer of each organisation the same query and compare the answers.

        Blocks are signed and compared by :meth:`verify_as`; a peer's *state database* is not,
        and queries are answered from it. An operator who edits their own peer's state (an
        audit entry, a grant) changes what that peer answers, and only a comparison with the
        other organisations' peers shows it. A peer a block behind answers differently for a
        moment, an edited state for good: the query is asked again a few times before
        ``LedgerIntegrityError`` names the organisations whose answer differs from the
        others' (every one of them when no answer has a majority)."""
        from ehrshare.ledger.errors import LedgerIntegrityError

        first = self.peer_per_organisation()
        for attempt in range(_COMPARE_ATTEMPTS):
            answers = {
                msp: self._ask(
                    identity, signer, endpoint, channel, chaincode, function, args, client_tls
                )
                for msp, endpoint in first.items()
            }
            if len(set(answers.values())) <= 1:
                return {"function": function, "args": list(args), "organisations": sorted(answers)}
            if attempt + 1 < _COMPARE_ATTEMPTS:
                time.sleep(_COMPARE_PAUSE_S)
        counts: dict[bytes, int] = {}
        for answer in answers.values():
            counts[answer] = counts.get(answer, 0) + 1
        top = max(counts.values())
        majority = [a for a, n in counts.items() if n == top]
        odd = sorted(m for m, a in answers.items() if len(majority) > 1 or a != majority[0])
        raise LedgerIntegrityError(
            f"{function}({', '.join(args)}) is answered differently by the peers of "
            f"{', '.join(odd)} than by the other organisations' peers: a peer's state database "
            "differs from what its blocks committed"
        )

    def _ask(
        self,
        identity: Identity,
        signer: Signer,
        endpoint: PeerEndpoint,
        channel: str,
        chaincode: str,
        function: str,
        args: Sequence[str],
        client_tls: ClientTlsPair | None,
    ) -> bytes:
        """``function(*args)`` evaluated on ``endpoint`` alone."""
        from ehrshare.ledger.peer import connect

        gateway = connect(
            identity,
            signer,
            peers=[endpoint],
            orderers=self.orderers,
            endorsers=None,
            client_tls=client_tls,
            clock=self._clock,
            quorum=self.orderer_quorum,
        )
        try:
            return (
                gateway.get_network(channel)
                .get_contract(chaincode)
                .evaluate_transaction(function, *args)
            )
        finally:
            gateway.close()

    def close(self) -> None:
        """Close every gateway opened here."""
        with self._lock:
            gateways, self._open = self._open, []
        for gateway in gateways:
            try:
                gateway.close()
            except Exception as exc:
                _log.warning("closing a Fabric gateway: %s", exc)


def open_ledger(profile: Profile, *, clock: Clock | None = None) -> LedgerBackend:
    """The ledger ``profile`` names (its ``ledger.backend``); an embedded ledger must exist and
    carry the profile's consortium id (:func:`ehrshare.volumes.check_ledger`)."""
    if profile.ledger_backend == "fabric":
        return FabricBackend.from_profile(profile, clock=clock)
    from ehrshare.volumes import check_ledger

    check_ledger(profile)  # missing, empty or another consortium's: refused, nothing created
    return EmbeddedBackend(profile.ledger_path, channel=profile.channel, clock=clock)
