"""The profile switch ``ledger.client: gateway | peer``: its default by the binaries' version,
how ``consortium init`` refuses the Gateway where Fabric has none, what a backend connects
through, failover across peers' Gateway services (fake Gateways over TLS), and the gossip view
the launcher waits for. No real Fabric binary runs here: stand-ins answer ``peer version``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from fabric_protos.gateway import gateway_pb2 as gw
from fabric_protos.gateway import gateway_pb2_grpc as gw_grpc
from fabric_protos.peer import transaction_pb2 as txpb
from test_gateway_client_fake_gateway import CHAINCODE, CHANNEL, FakeGateway, abort_with_details
from typer.testing import CliRunner

from ehrshare.identity import LocalCA
from ehrshare.ledger.errors import EndorseError, GatewayError
from ehrshare.ledger.fabric import service
from ehrshare.ledger.fabric.service import GatewayServiceCalls, connect_peers
from ehrshare.ledger.peer import LocalGateway, PeerEndpoint
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.ledgers import FabricBackend
from ehrshare.network.fabric import FabricNet, FabricNetSpec, default_client
from ehrshare.network.fabric.gossip import current_view, missing_members
from ehrshare.profile import Profile, ProfileError
from ehrshare.provisioning import Consortium, FabricOptions
from ehrshare.runtime import ConsortiumError
from ehrshare.services.tls import issue_tls_certificate

MSPS = ("HospitalAMSP", "HospitalBMSP", "HospitalCMSP")


# --- the default by version ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "client"),
    [
        ((2, 3, 2), "peer"),
        ((2, 3, 99), "peer"),
        ((2, 4, 0), "gateway"),
        ((2, 5, 16), "gateway"),
        ((3, 1, 5), "gateway"),
    ],
)
def test_the_gateway_is_the_default_from_fabric_2_4(
    version: tuple[int, int, int], client: str
) -> None:
    assert default_client(version) == client


_CONFIGTXGEN = """#!/bin/sh
while [ $# -gt 0 ]; do
  if [ "$1" = -outputBlock ]; then printf 'genesis' > "$2"; fi
  shift
done
"""


def _stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> Path:
    """A ``peer`` whose ``version`` says ``version``, a configtxgen that writes a placeholder
    block, an orderer that fails, and a minimal sampleconfig."""
    bin_dir = tmp_path / f"bin-{version}"
    bin_dir.mkdir()
    (bin_dir / "peer").write_text(
        f"#!/bin/sh\necho 'peer:'\necho ' Version: {version}'\necho ' Commit SHA: 0'\n"
    )
    (bin_dir / "configtxgen").write_text(_CONFIGTXGEN)
    (bin_dir / "orderer").write_text("#!/bin/sh\nexit 1\n")
    for name in ("peer", "configtxgen", "orderer"):
        (bin_dir / name).chmod(0o755)
    sample = tmp_path / "sampleconfig"
    sample.mkdir(exist_ok=True)
    (sample / "core.yaml").write_text(
        "vm: {endpoint: unix:///var/run/docker.sock}\nchaincode: {}\n"
    )
    (sample / "orderer.yaml").write_text("General: {}\n")
    monkeypatch.setenv("EHRSHARE_FABRIC_SAMPLECONFIG", str(sample))
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(bin_dir))
    return bin_dir


@pytest.mark.parametrize(
    ("version", "client"), [("2.3.2", "peer"), ("2.5.16", "gateway"), ("3.1.5", "gateway")]
)
def test_a_created_network_tells_clients_to_use_the_gateway_where_its_peers_have_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, client: str
) -> None:
    bin_dir = _stand_ins(tmp_path, monkeypatch, version)
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    net = FabricNet.create(FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=bin_dir))
    assert net.connection()["client"] == client
    assert FabricNet.load(tmp_path).connection()["client"] == client  # also after a reload
    assert FabricBackend.from_connection(net.connection()).client == client


# --- consortium init refuses the Gateway on 2.3 -------------------------------------------------


def test_the_gateway_client_on_fabric_2_3_is_refused_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stand_ins(tmp_path, monkeypatch, "2.3.2")
    with pytest.raises(ConsortiumError, match=r"Gateway client needs Fabric 2\.4 .* 2\.3\.2"):
        Consortium.init(tmp_path / "c", ledger="fabric", fabric=FabricOptions(client="gateway"))
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConsortiumError, match="client 'rest' is not gateway or peer"):
        Consortium.init(tmp_path / "c", ledger="fabric", fabric=FabricOptions(client="rest"))
    assert not (tmp_path / "c").exists()


def test_the_cli_refuses_a_gateway_fabric_has_not_with_its_exit_code_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ehrshare.cli import app

    _stand_ins(tmp_path, monkeypatch, "2.3.2")
    args = ["consortium", "init", str(tmp_path / "c"), "--ledger", "fabric"]
    result = CliRunner().invoke(app, [*args, "--client", "gateway"])
    assert result.exit_code == ConsortiumError.exit_code == 3, result.output
    assert "Gateway client needs Fabric 2.4" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c").exists()
    wrong = CliRunner().invoke(app, [*args, "--client", "rest"])
    assert wrong.exit_code == 2 and "--client 'rest' is not gateway or peer" in wrong.output
    assert not (tmp_path / "c").exists()


# --- the profile key ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The profile an embedded consortium's init wrote (tests replace its ledger section)."""
    root = tmp_path_factory.mktemp("consortium")
    with Consortium.init(root / "c", clock=ManualClock()) as consortium:
        assert consortium.profile.path is not None
        return consortium.profile.path


def _fabric_profile(base: Path, client: str | None) -> Path:
    root = base.parent
    ca = LocalCA.create("HospitalAMSP")
    (root / "ca.pem").write_bytes(ca.certificate_pem)
    ledger: dict[str, object] = {
        "backend": "fabric",
        "peers": [
            {"address": f"127.0.0.1:{7051 + i}", "tls_ca": "ca.pem", "msp": msp}
            for i, msp in enumerate(MSPS)
        ],
        "orderers": [{"address": "127.0.0.1:7050", "tls_ca": "ca.pem"}],
    }
    if client is not None:
        ledger["client"] = client
    data = yaml.safe_load(base.read_text())
    data["ledger"] = ledger
    path = root / "fabric-profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("written", "read"), [(None, "peer"), ("peer", "peer"), ("gateway", "gateway")]
)
def test_the_profile_says_which_client_and_an_old_profile_keeps_the_peer_client(
    embedded_profile: Path, written: str | None, read: str
) -> None:
    profile = Profile.load(_fabric_profile(embedded_profile, written))
    assert profile.fabric is not None and profile.fabric.client == read
    assert profile.to_dict()["ledger"]["client"] == read


def test_an_unknown_client_in_the_profile_is_refused_naming_the_key(
    embedded_profile: Path,
) -> None:
    with pytest.raises(ProfileError, match=r"ledger\.client.*'rest'; use gateway or peer"):
        Profile.load(_fabric_profile(embedded_profile, "rest"))


@pytest.mark.parametrize(
    ("client", "calls"), [("gateway", GatewayServiceCalls), ("peer", LocalGateway)]
)
def test_a_backend_connects_through_the_client_the_profile_names(
    embedded_profile: Path, client: str, calls: type
) -> None:
    backend = FabricBackend.from_profile(Profile.load(_fabric_profile(embedded_profile, client)))
    identity, signer = LocalCA.create("HospitalBMSP").issue("bob", role="patient")
    gateway = backend.connect(identity, signer)
    try:
        assert type(gateway._calls) is calls
        if client == "gateway":
            # The caller's own hospital's peer's Gateway is asked first.
            assert gateway._calls.current.msp_id == "HospitalBMSP"
    finally:
        backend.close()
    assert gateway.closed


# --- failover across the peers' Gateway services ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Peers:
    def __init__(self) -> None:
        self.ca = LocalCA.create("Org1MSP")
        self.servers: list[grpc.Server] = []
        self.fakes: list[FakeGateway] = []

    def serve(self, fake: FakeGateway) -> PeerEndpoint:
        cert, key = issue_tls_certificate(self.ca, "peer0")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        gw_grpc.add_GatewayServicer_to_server(fake, server)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
        server.start()
        self.servers.append(server)
        self.fakes.append(fake)
        return PeerEndpoint(f"127.0.0.1:{port}", "Org1MSP", self.ca.certificate_pem)

    def dead(self, msp: str = "Org1MSP") -> PeerEndpoint:
        return PeerEndpoint(f"127.0.0.1:{_free_port()}", msp, self.ca.certificate_pem)


@pytest.fixture
def peers() -> Iterator[_Peers]:
    rig = _Peers()
    try:
        yield rig
    finally:
        for server in rig.servers:
            server.stop(0)


def test_a_call_that_cannot_reach_the_first_gateway_goes_to_the_next_and_stays_there(
    peers: _Peers,
) -> None:
    down = peers.dead()
    up = peers.serve(FakeGateway())
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[down, up]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        assert json.loads(contract.submit_transaction("Put", "k")) == ["Put", "k"]
        assert json.loads(contract.evaluate_transaction("Get", "k")) == ["Get", "k"]
        assert gateway._calls.current == up
    assert peers.fakes[0].problems == []
    assert len(peers.fakes[0].submitted) == 1


def test_the_gateways_own_unavailable_answer_is_not_sent_to_another_peer(peers: _Peers) -> None:
    first = peers.serve(FakeGateway(no_endorsers="Org2MSP"))
    second = peers.serve(FakeGateway())
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[first, second]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(EndorseError, match="answered that it cannot endorse now") as info:
            contract.submit_transaction("Put", "k")
    assert not info.value.unreachable and info.value.exit_code == 4
    assert peers.fakes[1].proposals == []  # the second Gateway was never asked


def test_no_gateway_reachable_is_unreachable_naming_every_peer(peers: _Peers) -> None:
    down = [peers.dead(), peers.dead("Org2MSP")]
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=down) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(
            GatewayError,
            match=r"could not reach any peer.s Gateway to evaluate: no peer.s Gateway answered "
            r"\(2 tried\)",
        ) as info:
            contract.evaluate_transaction("Get", "k")
    assert info.value.unreachable
    assert {d.split(" ")[0] for d in info.value.details} == {"Org1MSP", "Org2MSP"}


def test_a_gateway_that_refuses_our_tls_is_a_refusal_not_an_outage(peers: _Peers) -> None:
    up = peers.serve(FakeGateway())
    stranger = PeerEndpoint(up.address, "Org1MSP", LocalCA.create("Org9MSP").certificate_pem)
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[stranger]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(GatewayError, match="every TLS handshake failed") as info:
            contract.evaluate_transaction("Get", "k")
    assert info.value.creator_refused and not info.value.unreachable


class _LaggingGateway(FakeGateway):
    """A second hospital's Gateway whose peer commits a transaction only when ``release`` is
    set (CommitStatus waits for it, as Fabric's does for its own peer's ledger)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.asked = 0

    def CommitStatus(self, request: Any, context: Any) -> Any:
        self.asked += 1
        if not self.release.wait(context.time_remaining() or 10):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no commit yet")
        return gw.CommitStatusResponse(result=txpb.TxValidationCode.Value("VALID"), block_number=7)


def test_a_commit_waits_for_the_other_hospitals_peers_so_a_read_there_sees_it(
    peers: _Peers,
) -> None:
    own = peers.serve(FakeGateway())
    lagging = _LaggingGateway()
    other = peers.serve(lagging)
    identity, signer = peers.ca.issue("alice", role="patient")
    threading.Timer(0.5, lagging.release.set).start()
    with connect_peers(identity, signer, peers=[own, other]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        start = time.monotonic()
        contract.submit_transaction("Put", "k")
        waited = time.monotonic() - start
    assert lagging.asked == 1 and lagging.release.is_set()
    assert waited >= 0.4, f"the commit returned before the other peer had it ({waited:.2f} s)"


def test_a_peer_that_never_confirms_delays_a_commit_by_the_sync_wait_only(
    peers: _Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "SYNC_WAIT_S", 0.5)
    own = peers.serve(FakeGateway())
    stuck = _LaggingGateway()  # never released
    with connect_peers(
        *peers.ca.issue("alice", role="patient"), peers=[own, peers.serve(stuck), peers.dead()]
    ) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        start = time.monotonic()
        assert json.loads(contract.submit_transaction("Put", "k")) == ["Put", "k"]
        waited = time.monotonic() - start
    assert stuck.asked == 1 and 0.4 <= waited < 5


class _DivergingGateway(FakeGateway):
    """A Gateway whose other organisations' peers answer differently the first ``times``
    times (Fabric's words: its own endorsement collected, not enough others)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.endorse_calls = 0

    def Endorse(self, request: Any, context: Any) -> Any:
        self.endorse_calls += 1
        if self.endorse_calls <= self.times:
            abort_with_details(
                context,
                grpc.StatusCode.ABORTED,
                "failed to collect enough transaction endorsements, see attached details for "
                "more info",
                "chaincode response 500, dkg session s-1 does not exist",
            )
        return super().Endorse(request, context)


def test_endorsements_that_diverge_while_peers_catch_up_are_collected_again(
    peers: _Peers,
) -> None:
    fake = _DivergingGateway(times=2)
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[peers.serve(fake)]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        assert json.loads(contract.submit_transaction("Put", "k")) == ["Put", "k"]
    assert fake.endorse_calls == 3
    assert len(fake.submitted) == 1 and fake.problems == []


def test_endorsements_that_keep_diverging_fail_with_the_peers_message(peers: _Peers) -> None:
    fake = _DivergingGateway(times=100)
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[peers.serve(fake)]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(EndorseError) as info:
            contract.submit_transaction("Put", "k")
    assert info.value.message == "dkg session s-1 does not exist"
    assert fake.endorse_calls == 1 + service.ENDORSE_RETRIES and fake.submitted == {}


def test_a_refusal_by_the_first_endorser_is_not_endorsed_again(peers: _Peers) -> None:
    fake = _DivergingGateway(times=0)
    identity, signer = peers.ca.issue("alice", role="patient")
    with connect_peers(identity, signer, peers=[peers.serve(fake)]) as gateway:
        contract = gateway.get_network(CHANNEL).get_contract(CHAINCODE)
        with pytest.raises(EndorseError, match="record r-17 does not exist"):
            contract.submit_transaction("Fail")
    assert fake.endorse_calls == 1


# --- the gossip view the launcher waits for -----------------------------------------------------

_VIEW = (
    "2026-12-07 02:00:0{n} UTC 0042 INFO [gossip.channel] reportMembershipChanges -> Membership "
    "view has changed. peers went online:  [[{online}]] , current view:  [{view}]\n"
)


def _log(*views: list[str]) -> str:
    text = "2026-12-07 02:00:00 UTC 0001 INFO [nodeCmd] serve -> Started peer with ID=x\n"
    for n, view in enumerate(views):
        items = " ".join(f"[{a}]" for a in view)
        text += _VIEW.format(n=n, online=view[-1] if view else "", view=items)
    return text


def test_the_current_view_is_the_last_one_logged() -> None:
    assert current_view("nothing yet\n") is None
    assert current_view(_log(["127.0.0.1:7052"])) == {"127.0.0.1:7052"}
    both = _log(["127.0.0.1:7052"], ["127.0.0.1:7052", "127.0.0.1:7053"])
    assert current_view(both) == {"127.0.0.1:7052", "127.0.0.1:7053"}
    gone = _log(["127.0.0.1:7052", "127.0.0.1:7053"], ["127.0.0.1:7053"])
    assert current_view(gone) == {"127.0.0.1:7053"}  # a peer that went offline is not seen


def test_every_peer_must_see_every_other_hospitals_peer() -> None:
    addresses = {"A": "127.0.0.1:7051", "B": "127.0.0.1:7052", "C": "127.0.0.1:7053"}
    logs = {
        "A": _log(["127.0.0.1:7052", "127.0.0.1:7053"]),
        "B": _log(["127.0.0.1:7051"]),
        "C": "",
    }
    assert missing_members(logs, addresses) == {
        "B": {"127.0.0.1:7053"},
        "C": {"127.0.0.1:7051", "127.0.0.1:7052"},
    }
    logs["B"] = _log(["127.0.0.1:7051"], ["127.0.0.1:7051", "127.0.0.1:7053"])
    logs["C"] = _log(["127.0.0.1:7051", "127.0.0.1:7052"])
    assert missing_members(logs, addresses) == {}
