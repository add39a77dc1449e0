"""Profiles (backend selection, validation) and wallets."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.hazmat.tipre import MasterSecret
from ehrshare.identity import LocalCA
from ehrshare.profile import FabricLedger, Profile, ProfileError
from ehrshare.wallet import Wallet, WalletError


def base() -> dict[str, Any]:
    return {
        "version": 1,
        "ledger": {"backend": "embedded", "path": "ledger"},
        "storage": {"backend": "embedded", "path": "store"},
        "kgc": {
            "threshold": 2,
            "nodes": [
                {"index": i, "state": f"kgc/{i}", "key": f"keys/{i}", "wallet": f"w/{i}"}
                for i in (1, 2, 3)
            ],
        },
        "proxies": [{"name": "proxy", "state": "proxy", "key": "keys/proxy", "wallet": "w/proxy"}],
    }


def load(tmp_path: Path, data: Any) -> Profile:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return Profile.load(path)


def test_relative_paths_resolve_against_the_profile(tmp_path: Path) -> None:
    p = load(tmp_path, base())
    assert p.ledger_path == tmp_path.resolve() / "ledger"
    assert p.kgc_nodes[1].service.state == tmp_path.resolve() / "kgc/2"
    assert p.storage_backend == "embedded"
    assert p.mapping.types == (
        "general",
        "imaging",
        "lab",
        "medication",
        "restricted",
        "sensitive",
        "vital-signs",
    )


def fabric_ledger() -> dict[str, Any]:
    return {
        "backend": "fabric",
        "peers": [
            {"address": f"127.0.0.1:{7100 + i}", "msp": f"H{i}MSP", "tls_ca": f"tls/p{i}.pem"}
            for i in range(3)
        ],
        "orderers": [
            {"address": "127.0.0.1:7200", "tls_ca": "tls/o.pem", "server_name": "orderer0"}
        ],
        "endorsers": 2,
        "network": "fabric",
    }


def test_a_fabric_ledger_names_its_peers_and_orderers(tmp_path: Path) -> None:
    data = base()
    data["ledger"] = fabric_ledger()
    p = load(tmp_path, data)
    assert p.ledger_backend == "fabric" and p.fabric is not None
    assert [(e.address, e.msp_id) for e in p.fabric.peers] == [
        ("127.0.0.1:7100", "H0MSP"),
        ("127.0.0.1:7101", "H1MSP"),
        ("127.0.0.1:7102", "H2MSP"),
    ]
    assert p.fabric.peers[1].tls_ca == tmp_path.resolve() / "tls/p1.pem"
    assert p.fabric.orderers[0].server_name == "orderer0"
    assert (p.fabric.endorsers, p.fabric.network) == (2, tmp_path.resolve() / "fabric")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(backend="besu"), "ledger.backend is 'besu'; use embedded or fabric"),
        (lambda d: d.pop("peers"), "ledger.peers must list at least one endpoint"),
        (lambda d: d.update(peers=["x:7051"]), r"ledger.peers\[0\] must be a mapping"),
        (lambda d: d["peers"][0].pop("msp"), r"ledger.peers\[0\].msp must name the peer's"),
        (lambda d: d["orderers"][0].pop("tls_ca"), r"ledger.orderers\[0\] needs tls_ca"),
        (
            lambda d: d["orderers"][0].update(address="nohost"),
            r"ledger.orderers\[0\].address 'nohost' is not host:port",
        ),
        (lambda d: d.update(endorsers=4), "ledger.endorsers must be an integer between 1 and 3"),
    ],
)
def test_a_wrong_fabric_ledger_is_refused_naming_the_key(
    tmp_path: Path, change: Any, message: str
) -> None:
    data = base()
    data["ledger"] = fabric_ledger()
    change(data["ledger"])
    with pytest.raises(ProfileError, match=message):
        load(tmp_path, data)


@pytest.mark.parametrize(("key", "value"), [("endorsers", 2), ("orderer_quorum", 1)])
def test_peer_client_keys_are_refused_with_the_gateway_client(
    tmp_path: Path, key: str, value: int
) -> None:
    # The peers' Gateway service picks endorsers and orderers itself: these keys would be
    # ignored without a word, so naming one with client: gateway is a configuration error.
    data = base()
    ledger = {k: v for k, v in fabric_ledger().items() if k != "endorsers"}
    data["ledger"] = {**ledger, key: value, "client": "gateway"}
    with pytest.raises(ProfileError, match=rf"ledger.{key} applies to ledger.client: peer only"):
        load(tmp_path, data)
    data["ledger"] = {**ledger, key: value, "client": "peer"}
    assert getattr(load(tmp_path, data).fabric, key) == value


def test_the_gateway_client_loads_without_the_peer_client_keys(tmp_path: Path) -> None:
    data = base()
    data["ledger"] = {**fabric_ledger(), "client": "gateway"}
    del data["ledger"]["endorsers"]
    fabric = load(tmp_path, data).fabric
    assert fabric is not None
    assert (fabric.client, fabric.endorsers, fabric.orderer_quorum) == ("gateway", None, None)


@pytest.mark.parametrize(("client", "kept"), [("gateway", (None, None)), ("peer", (2, 3))])
def test_a_network_connection_keeps_endorsers_and_quorum_for_the_peer_client_only(
    tmp_path: Path, client: str, kept: tuple[int | None, int | None]
) -> None:
    connection = {
        "peers": [{"address": "127.0.0.1:7100", "msp": "H0MSP", "tls_ca": "/t/p.pem"}],
        "orderers": [{"address": "127.0.0.1:7200", "tls_ca": "/t/o.pem"}],
        "endorsers": 2,
        "orderer_quorum": 3,
        "client": client,
    }
    ledger = FabricLedger.from_connection(connection, tmp_path / "fabric")
    assert (ledger.endorsers, ledger.orderer_quorum) == kept


def test_kubo_storage_is_independent_of_the_ledger(tmp_path: Path) -> None:
    data = base()
    data["storage"] = {"backend": "kubo", "url": "http://127.0.0.1:5999"}
    p = load(tmp_path, data)
    assert (p.storage_backend, p.storage_url, p.storage_path) == (
        "kubo",
        "http://127.0.0.1:5999",
        None,
    )


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"version": 2}, "version is 2"),
        ({"storage": {"backend": "s3"}}, "storage.backend is 's3'"),
        ({"storage": {"backend": "kubo", "url": "ftp://x"}}, "storage.url 'ftp://x'"),
        ({"ledger": {"backend": "oracle"}}, "ledger.backend is 'oracle'"),
        ({"kgc": {"threshold": 2, "nodes": []}}, "kgc.nodes must list at least one node"),
        ({"proxies": [{"name": "p", "state": "p"}]}, r"proxies\[0\] needs key, wallet"),
        ({"proxy": {"state": "p"}}, "proxy is not a profile key; list every proxy under proxies"),
        ({"limits": {"max_record_bytes": 10}}, "at least 1024"),
        ({"types": {"rules": [{"type": "BAD TYPE", "resource": "X"}]}}, "types is invalid"),
    ],
)
def test_bad_profiles_name_the_key(tmp_path: Path, patch: dict[str, Any], message: str) -> None:
    data = base()
    data.update(patch)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(")):
        load(tmp_path, data)


def test_threshold_out_of_range(tmp_path: Path) -> None:
    data = base()
    data["kgc"]["threshold"] = 4
    with pytest.raises(ProfileError, match=r"kgc\.threshold must be an integer between 2 and 3"):
        load(tmp_path, data)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist; create a local consortium"):
        Profile.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ledger: [unclosed", encoding="utf-8")
    with pytest.raises(ProfileError, match="not valid YAML"):
        Profile.load(bad)


def test_wallet_roundtrip_and_modes(tmp_path: Path) -> None:
    ca = LocalCA.create("Org1MSP")
    identity, signer = ca.issue("bob", role="patient")
    w = Wallet(tmp_path / "bob")
    assert not w.exists
    with pytest.raises(WalletError, match="holds no identity"):
        w.load_identity()
    w.save_identity(identity, signer)
    loaded, loaded_signer = w.load_identity()
    assert loaded == identity
    assert loaded_signer.public_key.public_numbers() == signer.public_key.public_numbers()
    assert (tmp_path / "bob/key.pem").stat().st_mode & 0o777 == 0o600
    assert w.load_secret_key() is None
    (tmp_path / "bob/ibe.key").write_bytes(b"\x01garbage")
    with pytest.raises(WalletError, match="does not hold an identity secret key"):
        w.load_secret_key()
    # A key saved before format version 2 (H1 was mcl's legacy map) says what to do.
    v2 = MasterSecret.generate().extract("HospitalA/bob").to_secret_bytes()
    (tmp_path / "bob/ibe.key").write_bytes(b"\x01" + v2[1:])
    with pytest.raises(WalletError, match=r"it is a version 1 key.*enrol again"):
        w.load_secret_key()


profile_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.sampled_from(["", "embedded", "kubo", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["backend", "path", "url", "index", "state"]), inner)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["version", "ledger", "storage", "kgc", "proxies", "types", "limits"]),
        profile_values,
    )
)
def test_profile_parser_only_raises_profile_errors(data: dict[str, Any]) -> None:
    with contextlib.suppress(ProfileError):
        Profile.from_dict(data, base=Path("/tmp"))
