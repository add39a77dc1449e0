"""Which TLS client certificate reaches Fabric peers and orderers, checked without Fabric.

A profile with ``ledger.client_auth`` (what ``consortium init --ledger fabric`` writes: its
network requires mutual TLS) refuses a gateway without a TLS client certificate before dialling,
a member wallet without one with the way to re-issue it, and ``kgc serve`` without
``--ledger-tls-cert``; the service command lines pass the service wallet's TLS pair; the peer
client refuses a certificate without clientAuth (a ledger signing certificate). What a real
peer and orderer do with these certificates is tests/fabric/test_fabric_mtls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from ehrshare.commands.services import ServeOptions, _gateway
from ehrshare.identity import LocalCA
from ehrshare.ledger.fabric.service import connect_peers
from ehrshare.ledger.peer import OrdererEndpoint, PeerEndpoint
from ehrshare.ledger.peer import connect as peer_connect
from ehrshare.ledgers import FabricBackend, open_ledger
from ehrshare.network.services import service_commands
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import Profile, ProfileError
from ehrshare.provisioning import Consortium
from ehrshare.runtime import connect
from ehrshare.services.tls import issue_tls_certificate
from ehrshare.wallet import Wallet, WalletError


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium with its services as processes, its profile then pointed at a Fabric
    channel that requires mutual TLS (nothing listens there: nothing here dials)."""
    root = tmp_path_factory.mktemp("ctls") / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)) as c:
        c.add_member("alice", "HospitalA", "patient")
        c.add_member("old", "HospitalA", "patient")
    for name in ("tls-cert.pem", "tls-key.pem"):  # a wallet that lost its TLS pair
        (root / "wallets" / "old" / name).unlink()
    path = root / "profile.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    ports = free_loopback_ports(2)
    data["ledger"] = {
        "backend": "fabric",
        "peers": [
            {
                "address": f"127.0.0.1:{ports[0]}",
                "msp": "HospitalAMSP",
                "tls_ca": "ca/HospitalAMSP/ca-cert.pem",
            }
        ],
        "orderers": [{"address": f"127.0.0.1:{ports[1]}", "tls_ca": "ca/HospitalAMSP/ca-cert.pem"}],
        "client_auth": True,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return root


def test_client_auth_is_parsed_and_checked(consortium: Path) -> None:
    profile = Profile.load(consortium / "profile.yaml")
    assert profile.fabric is not None and profile.fabric.client_auth is True
    data = yaml.safe_load((consortium / "profile.yaml").read_text(encoding="utf-8"))
    for value, expected in ((False, False), (None, False), ("yes", "must be true or false")):
        if value is None:
            del data["ledger"]["client_auth"]
        else:
            data["ledger"]["client_auth"] = value
        other = consortium / "other.yaml"
        other.write_text(yaml.safe_dump(data), encoding="utf-8")
        if isinstance(expected, str):
            with pytest.raises(ProfileError, match=rf"ledger\.client_auth.*{expected}"):
                Profile.load(other)
        else:
            loaded = Profile.load(other).fabric
            assert loaded is not None and loaded.client_auth is expected


def test_the_orderer_quorum_is_parsed_checked_and_reaches_the_backend(consortium: Path) -> None:
    data = yaml.safe_load((consortium / "profile.yaml").read_text(encoding="utf-8"))
    other = consortium / "other.yaml"
    for value, expected in ((1, 1), (None, None), (2, "between 1 and 1"), (True, "between")):
        if value is None:
            data["ledger"].pop("orderer_quorum", None)
        else:
            data["ledger"]["orderer_quorum"] = value
        other.write_text(yaml.safe_dump(data), encoding="utf-8")
        if isinstance(expected, str):
            with pytest.raises(ProfileError, match=rf"ledger\.orderer_quorum.*{expected}"):
                Profile.load(other)
            continue
        profile = Profile.load(other)
        assert profile.fabric is not None and profile.fabric.orderer_quorum == expected
        backend = open_ledger(profile)
        assert isinstance(backend, FabricBackend) and backend.orderer_quorum == expected
        # Written back as read.
        assert profile.to_dict()["ledger"].get("orderer_quorum") == expected


def test_a_gateway_without_a_tls_certificate_is_refused_before_dialling(consortium: Path) -> None:
    backend = open_ledger(Profile.load(consortium / "profile.yaml"))
    assert isinstance(backend, FabricBackend)
    identity, signer = Wallet(consortium / "wallets" / "alice").load_identity()
    try:
        with pytest.raises(ProfileError, match=r"HospitalAMSP/alice: .* require mutual TLS"):
            backend.connect(identity, signer)
        tls_identity, tls_signer = Wallet(consortium / "wallets" / "alice").load_tls()
        pair = (tls_identity.credentials, tls_signer.to_secret_bytes())
        backend.connect(identity, signer, client_tls=pair).close()  # gRPC dials lazily
    finally:
        backend.close()


def test_a_member_wallet_without_a_tls_certificate_says_how_to_reissue_it(
    consortium: Path,
) -> None:
    with pytest.raises(WalletError, match="re-issue it with 'ehrshare consortium reissue-tls old"):
        connect(consortium, "old")
    # The member's own wallet opens a session (its TLS pair goes to the Fabric client).
    connect(consortium, "alice").close()


def test_the_peer_client_refuses_a_certificate_without_client_auth() -> None:
    ca = LocalCA.create("Org1MSP")
    identity, signer = ca.issue("alice", role="patient")
    endpoints: dict[str, Any] = {
        "peers": [PeerEndpoint("127.0.0.1:1", "Org1MSP", ca.certificate_pem)],
        "orderers": [OrdererEndpoint("127.0.0.1:2", ca.certificate_pem)],
    }
    server_only = issue_tls_certificate(ca, "server")
    for pair, what in (
        ((identity.credentials, signer.to_secret_bytes()), "no clientAuth"),
        (server_only, "no clientAuth"),
        ((b"not a certificate", signer.to_secret_bytes()), "not a PEM X.509 certificate"),
    ):
        with pytest.raises(ValueError, match=f"client_tls: .*{what}"):
            peer_connect(identity, signer, client_tls=pair, **endpoints)
        # The Gateway-service client (profile client: gateway) refuses it the same way.
        with pytest.raises(ValueError, match=f"client_tls: .*{what}"):
            connect_peers(identity, signer, client_tls=pair, peers=endpoints["peers"])
    tls_identity, tls_signer = ca.issue_tls_client("alice")
    pair = (tls_identity.credentials, tls_signer.to_secret_bytes())
    peer_connect(identity, signer, client_tls=pair, **endpoints).close()
    connect_peers(identity, signer, client_tls=pair, peers=endpoints["peers"]).close()
    # A node certificate that also has clientAuth (what peers and orderers dial each other with).
    peer_connect(
        identity, signer, client_tls=issue_tls_certificate(ca, "n", client_auth=True), **endpoints
    ).close()


def test_service_commands_pass_the_service_wallets_tls_pair(consortium: Path) -> None:
    commands = service_commands(Profile.load(consortium / "profile.yaml"))
    assert len(commands) == 6
    for command in commands:
        args = list(command.args)
        wallet = Path(args[args.index("--cert") + 1]).parent
        assert args[args.index("--profile") + 1] == str(consortium / "profile.yaml")
        assert args[args.index("--ledger-tls-cert") + 1] == str(wallet / "tls-cert.pem")
        assert args[args.index("--ledger-tls-key") + 1] == str(wallet / "tls-key.pem")


def _serve_options(consortium: Path, **changes: Any) -> ServeOptions:
    wallet = consortium / "wallets" / "kgc1"
    fields: dict[str, Any] = {
        "state_dir": consortium / "kgc" / "1",
        "msp_id": "HospitalAMSP",
        "cert": wallet / "cert.pem",
        "key": wallet / "key.pem",
        "profile": consortium / "profile.yaml",
        "tls_cert": consortium / "tls" / "kgc1.pem",
        "tls_key": consortium / "keys" / "kgc1-tls.key",
        **changes,
    }
    return ServeOptions(**fields)


def test_serve_needs_a_ledger_tls_certificate_for_a_client_auth_profile(
    consortium: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wallet = consortium / "wallets" / "kgc1"
    cert, key = wallet / "tls-cert.pem", wallet / "tls-key.pem"
    for changes, message in (
        ({}, "require mutual TLS"),
        ({"ledger_tls_cert": cert}, "give both --ledger-tls-cert and --ledger-tls-key"),
        (
            {"ledger_tls_cert": cert, "ledger_tls_key": key, "profile": None, "ledger": wallet},
            "are for a Fabric ledger",
        ),
        ({"ledger_tls_cert": wallet / "cert.pem", "ledger_tls_key": key}, "no clientAuth"),
    ):
        with pytest.raises(typer.Exit):
            _gateway(_serve_options(consortium, **changes))
        assert message in " ".join(capsys.readouterr().err.split()), changes
    gateway, close = _gateway(_serve_options(consortium, ledger_tls_cert=cert, ledger_tls_key=key))
    gateway.close()
    close()


def test_serve_takes_the_endorsement_count_its_command_line_gives(
    consortium: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The service command lines carry the peer client's ledger.endorsers (--ledger-endorsers),
    # so a join that changes it restarts the services; a count the profile's peers cannot give,
    # or one for the Gateway client (which plans endorsements itself), is refused (exit 2).
    wallet = consortium / "wallets" / "kgc1"
    tls = {"ledger_tls_cert": wallet / "tls-cert.pem", "ledger_tls_key": wallet / "tls-key.pem"}
    with pytest.raises(typer.Exit) as refused:
        _gateway(_serve_options(consortium, ledger_endorsers=2, **tls))
    assert refused.value.exit_code == 2
    assert "the profile's peers are of 1 orgs" in " ".join(capsys.readouterr().err.split())
    data = yaml.safe_load((consortium / "profile.yaml").read_text(encoding="utf-8"))
    data["ledger"]["client"] = "gateway"
    gateway_profile = consortium / "gateway.yaml"
    gateway_profile.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(typer.Exit) as refused:
        _gateway(_serve_options(consortium, profile=gateway_profile, ledger_endorsers=1, **tls))
    assert refused.value.exit_code == 2
    assert "reached without a Gateway" in " ".join(capsys.readouterr().err.split())
    gateway, close = _gateway(_serve_options(consortium, ledger_endorsers=1, **tls))
    gateway.close()
    close()
