"""Remote-service profiles (gRPC addresses, TLS CAs, serve commands) and passphrase wallets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ehrshare.identity import LocalCA
from ehrshare.network.services import ServiceProcesses, service_commands
from ehrshare.network.supervisor import free_loopback_ports
from ehrshare.profile import Profile, ProfileError
from ehrshare.provisioning import Consortium
from ehrshare.runtime import ConsortiumError, connect
from ehrshare.session import EnrollmentError
from ehrshare.wallet import PASSPHRASE_ENV, Wallet, WalletError


def remote(**proxy: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "kgc": {
            "threshold": 2,
            "nodes": [
                {"index": i, "address": f"127.0.0.1:{7060 + i}", "tls_ca": "ca.pem"}
                for i in (1, 2, 3)
            ],
        },
        "proxies": [
            {"name": "px"}
            | (proxy or {"address": "127.0.0.1:7060", "tls_ca": "ca.pem", "server_name": "px"})
        ],
    }


def load(tmp_path: Path, data: Any) -> Profile:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return Profile.load(path)


def test_remote_services_parse_with_their_tls_ca(tmp_path: Path) -> None:
    p = load(tmp_path, remote())
    assert [n.service.address for n in p.kgc_nodes] == [f"127.0.0.1:{7060 + i}" for i in (1, 2, 3)]
    assert all(not n.service.embedded for n in p.kgc_nodes)
    assert p.kgc_nodes[0].service.tls_ca == tmp_path.resolve() / "ca.pem"
    assert p.proxy.server_name == "px" and not p.proxy.embedded


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"address": "127.0.0.1:7060"}, r"proxies\[0\] gives an address but no tls_ca"),
        ({"address": "localhost", "tls_ca": "ca.pem"}, r"proxies\[0\].address 'localhost' is not"),
        ({"address": "127.0.0.1:99999", "tls_ca": "c"}, r"proxies\[0\].address '127.0.0.1:99999'"),
        ({"address": "h:1", "tls_ca": "c", "server_name": ""}, r"proxies\[0\].server_name must"),
    ],
)
def test_bad_remote_services_name_the_key(
    tmp_path: Path, proxy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        load(tmp_path, remote(**proxy))


def test_a_missing_tls_ca_file_is_named_when_connecting(tmp_path: Path) -> None:
    root = tmp_path / "c"
    c = Consortium.init(root, services="processes", ports=free_loopback_ports(6))
    c.add_member("alice", "HospitalA", "patient")
    (root / "ca" / "HospitalAMSP" / "ca-cert.pem").rename(root / "moved.pem")
    with pytest.raises(
        ProfileError, match=r"TLS CA file .*HospitalAMSP/ca-cert.pem cannot be read"
    ):
        c.session("alice")
    c.close()


def test_init_with_processes_writes_serve_commands_from_the_profile(tmp_path: Path) -> None:
    root = tmp_path / "c"
    ports = free_loopback_ports(6)
    with Consortium.init(root, services="processes", ports=ports) as c:
        assert c.remote_services and c.kgc_nodes == []
        with pytest.raises(ConsortiumError, match="runs as a process"):
            _ = c.proxy
        # The DKG ran before the switch: mpk is on chain and readable through the profile.
        assert c.dkg_result()["qual"]
    profile = Profile.load(root / "profile.yaml")
    assert len(profile.ca_files) == 3
    commands = {cmd.name: cmd for cmd in service_commands(profile)}
    proxies = ["proxy-hospitala", "proxy-hospitalb", "proxy-hospitalc"]
    assert sorted(commands) == ["kgc1", "kgc2", "kgc3", *proxies]
    # One proxy per hospital: the first ports are theirs, in hospital order.
    assert [commands[p].address for p in proxies] == [f"127.0.0.1:{p}" for p in ports[:3]]
    assert [px.ibe_id for px in profile.proxies] == [
        f"Hospital{h}MSP/proxy" for h in ("A", "B", "C")
    ]
    kgc2 = list(commands["kgc2"].args)
    assert kgc2[:4] == ["kgc", "serve", "--index", "2"]
    assert kgc2[kgc2.index("--listen") + 1] == f"127.0.0.1:{ports[4]}"
    # The client CAs: one directory (a copy of each hospital's CA), read again by the running
    # process when it changes, so a hospital's join does not change this command line.
    assert "--client-ca" not in kgc2
    client_cas = Path(kgc2[kgc2.index("--client-ca-dir") + 1])
    assert client_cas == profile.client_ca_dir == root / "client-cas"
    assert sorted(p.read_bytes() for p in client_cas.glob("*.pem")) == sorted(
        ca.read_bytes() for ca in profile.ca_files
    )
    node_key = Path(kgc2[kgc2.index("--node-key-file") + 1])
    state = Path(kgc2[kgc2.index("--state-dir") + 1])
    assert node_key.is_file() and not node_key.is_relative_to(state)
    # The TLS server certificate was issued by the node's own hospital CA, for loopback.
    tls_cert = Path(kgc2[kgc2.index("--tls-cert") + 1]).read_bytes()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(tls_cert)
    ca = LocalCA.load(root / "ca" / "HospitalBMSP")
    cert.verify_directly_issued_by(ca.certificate)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_init_refuses_bad_ports_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConsortiumError, match="give 6 distinct ports"):
        Consortium.init(tmp_path / "a", services="processes", ports=[7000, 7000, 7001, 7002])
    with pytest.raises(ConsortiumError, match="only used with services='processes'"):
        Consortium.init(tmp_path / "b", ports=[1, 2, 3, 4])
    with pytest.raises(ConsortiumError, match="services 'docker' is not"):
        Consortium.init(tmp_path / "c", services="docker")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_service_processes_refuse_an_in_process_profile(tmp_path: Path) -> None:
    with (
        Consortium.init(tmp_path / "c") as c,
        pytest.raises(ProfileError, match="no service to run as a process"),
    ):
        ServiceProcesses(c.profile, tmp_path / "run")


# --- wallets ----------------------------------------------------------------------------------


@pytest.fixture
def member(tmp_path: Path) -> tuple[Any, Any]:
    return LocalCA.create("Org1MSP").issue("alice", role="patient")


def test_passphrase_wallet_encrypts_the_signing_key_at_rest(
    tmp_path: Path, member: tuple[Any, Any]
) -> None:
    identity, signer = member
    w = Wallet(tmp_path / "w", passphrase="correct horse", use_env=False)
    w.save_identity(identity, signer)
    raw = (tmp_path / "w" / "key.pem").read_bytes()
    assert w.encrypted and b"PRIVATE KEY" not in raw and signer.to_secret_bytes() not in raw
    assert (tmp_path / "w" / "key.pem").stat().st_mode & 0o777 == 0o600
    _, loaded = Wallet(tmp_path / "w", passphrase="correct horse").load_identity()
    assert loaded.to_secret_bytes() == signer.to_secret_bytes()

    with pytest.raises(WalletError, match=f"is encrypted: set {PASSPHRASE_ENV}"):
        Wallet(tmp_path / "w", use_env=False).load_identity()
    with pytest.raises(WalletError, match="wrong wallet passphrase"):
        Wallet(tmp_path / "w", passphrase="wrong", use_env=False).load_identity()
    with pytest.raises(WalletError, match="must not be empty"):
        Wallet(tmp_path / "w", passphrase="")


def test_wallet_passphrase_from_the_environment(
    tmp_path: Path, member: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, signer = member
    monkeypatch.setenv(PASSPHRASE_ENV, "from-env")
    Wallet(tmp_path / "w").save_identity(identity, signer)
    assert Wallet(tmp_path / "w").encrypted
    assert Wallet(tmp_path / "w").load_identity()[0].ibe_id == identity.ibe_id
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(WalletError, match="is encrypted"):
        Wallet(tmp_path / "w").load_identity()


def test_encrypted_files_are_bound_to_their_name(tmp_path: Path, member: tuple[Any, Any]) -> None:
    identity, signer = member
    a = Wallet(tmp_path / "a", passphrase="pw")
    a.save_identity(identity, signer)
    # The same ciphertext under another file name does not decrypt (the name is the AAD).
    (tmp_path / "a" / "ibe.key").write_bytes((tmp_path / "a" / "key.pem").read_bytes())
    with pytest.raises(WalletError, match="wrong wallet passphrase"):
        a.load_secret_key()


def test_encrypt_an_existing_wallet_and_enrol_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with Consortium.init(tmp_path / "c") as c:
        plain = c.add_member("alice", "HospitalA", "patient")
        assert not plain.encrypted
        locked = plain.encrypt("s3cret")
        assert locked.encrypted
        with c.session(locked) as s:
            s.enroll()
        ibe = (plain.directory / "ibe.key").read_bytes()
        assert ibe.startswith(b"ehrshare-wallet-v1")
        with pytest.raises(WalletError, match="is encrypted"):
            c.session("alice")
        monkeypatch.setenv(PASSPHRASE_ENV, "s3cret")
        with c.session("alice") as s:
            assert s.enrolled
            s.publish_type_keys()
        # Service wallets are never encrypted: the serve processes read them unattended.
        for name in ("kgc1", "proxy"):
            assert not Wallet(c.directory / "wallets" / name).encrypted


def test_services_that_are_not_running_give_clear_errors(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)) as c:
        c.add_member("alice", "HospitalA", "patient")
    # Nothing listens on the profile's ports: enrolment names every node, nothing is stored.
    with connect(root, "alice") as alice:
        with pytest.raises(EnrollmentError) as caught:
            alice.enroll(timeout=2)
        assert sorted(caught.value.failed) == [1, 2, 3]
        assert not alice.enrolled
    assert not (root / "wallets" / "alice" / "ibe.key").exists()


# --- the TLS client key, separate from the ledger signing key ---------------------------------


def test_members_get_a_separate_tls_client_key_sealed_like_the_signing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    monkeypatch.setenv(PASSPHRASE_ENV, "pw")
    with Consortium.init(tmp_path / "c") as c:
        wallet = c.add_member("alice", "HospitalA", "patient")
    identity, signer = wallet.load_identity()
    tls_identity, tls_signer = wallet.load_tls()
    assert tls_identity.ibe_id == identity.ibe_id == "HospitalAMSP/alice"
    assert tls_signer.public_key.public_numbers() != signer.public_key.public_numbers()
    cert = tls_identity.certificate
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    )
    assert [
        a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ] == ["tls"]
    # Issued by the hospital's CA, like the ledger certificate.
    cert.verify_directly_issued_by(LocalCA.load(tmp_path / "c" / "ca" / "HospitalAMSP").certificate)
    raw = (wallet.directory / "tls-key.pem").read_bytes()
    assert raw.startswith(b"ehrshare-wallet-v1") and b"PRIVATE KEY" not in raw
    assert (wallet.directory / "tls-key.pem").stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(WalletError, match="is encrypted"):
        Wallet(wallet.directory).load_tls()


def test_encrypting_a_wallet_seals_its_tls_key_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with Consortium.init(tmp_path / "c") as c:
        plain = c.add_member("alice", "HospitalA", "patient")
    before = plain.load_tls()[1].to_secret_bytes()
    assert b"PRIVATE KEY" in (plain.directory / "tls-key.pem").read_bytes()
    locked = plain.encrypt("s3cret")
    assert (plain.directory / "tls-key.pem").read_bytes().startswith(b"ehrshare-wallet-v1")
    assert locked.load_tls()[1].to_secret_bytes() == before


def test_a_wallet_without_its_tls_key_is_told_how_to_reissue_it(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with Consortium.init(root, services="processes", ports=free_loopback_ports(6)) as c:
        c.add_member("alice", "HospitalA", "patient")
        # A wallet that lost its TLS pair: only cert.pem and key.pem.
        for name in ("tls-cert.pem", "tls-key.pem"):
            (root / "wallets" / "alice" / name).unlink()
        with pytest.raises(WalletError) as info:
            c.session("alice")
        assert str(info.value) == (
            f"wallet {root / 'wallets' / 'alice'} has no TLS client certificate (tls-cert.pem "
            "is missing, and the ledger signing key may not be used for TLS): "
            "re-issue it with 'ehrshare consortium reissue-tls alice -p <consortium dir>'"
        )
        signing_before = (root / "wallets" / "alice" / "key.pem").read_bytes()
        c.reissue_tls("alice")
        assert (root / "wallets" / "alice" / "key.pem").read_bytes() == signing_before
        with c.session("alice") as s:  # opens its gRPC channels with the new TLS key
            assert s.identity.ibe_id == "HospitalAMSP/alice"


def test_a_wallet_without_its_tls_key_works_with_in_process_services(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c") as c:
        wallet = c.add_member("alice", "HospitalA", "patient")
        for name in ("tls-cert.pem", "tls-key.pem"):
            (wallet.directory / name).unlink()
        with c.session("alice") as s:
            s.enroll()
            assert s.enrolled
