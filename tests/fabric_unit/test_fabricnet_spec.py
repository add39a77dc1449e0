"""What `FabricNet.create` refuses before it writes anything, what it writes for a Fabric
version, and what a failed node start reports (no real Fabric binary runs here: stand-in
scripts print a version and write a placeholder block)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehrshare.identity import LocalCA
from ehrshare.network.fabric import (
    FabricNet,
    FabricNetError,
    FabricNetSpec,
    fabric_ca_problem,
    fabric_version,
)
from ehrshare.network.supervisor import log_tail

MSPS = ("HospitalAMSP", "HospitalBMSP")


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Files named like the binaries and a sampleconfig: enough to get past those checks."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("peer", "orderer", "configtxgen"):
        (bin_dir / name).write_text("")
    sample = tmp_path / "sampleconfig"
    sample.mkdir()
    for name in ("core.yaml", "orderer.yaml"):
        (sample / name).write_text("{}")
    monkeypatch.setenv("EHRSHARE_FABRIC_SAMPLECONFIG", str(sample))
    return bin_dir


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"msp_ids": ()}, "at least one hospital MSP"),
        ({"msp_ids": ("HospitalAMSP", "HospitalAMSP")}, "has duplicates"),
        ({"msp_ids": ("Hospital A",)}, "msp id 'Hospital A' must be"),
        ({"msp_ids": ("OrdererMSP",)}, "must be letters, digits and '-' and not OrdererMSP"),
        ({"orderers": 2}, "orderers is 2; Raft runs with 1 or 3"),
        ({"orderers": 4}, "orderers is 4; Raft runs with 1 or 3"),
        ({"orderers": 3, "orderer_type": "BFT"}, "orderers is 3; SmartBFT runs with 4"),
        ({"orderer_type": "solo"}, "orderer_type 'solo' is not etcdraft or BFT"),
        ({"channel": "Bad_Channel"}, "channel name 'Bad_Channel'"),
        ({"channel": "system-channel"}, "may not be named system-channel"),
        ({"chaincode": ""}, "chaincode name ''"),
        ({"batch_timeout": "0.1"}, "batch_timeout '0.1'"),
        ({"max_message_count": 0}, "max_message_count 0"),
        ({"preferred_max_bytes": "512"}, "preferred_max_bytes '512'"),
        ({"endorsement": "ALL"}, "endorsement 'ALL' is not MAJORITY or ANY"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(
    tmp_path: Path, fake_bin: Path, changes: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"msp_ids": MSPS, "bin_dir": fake_bin, **changes}
    spec = FabricNetSpec(root=tmp_path, **fields)  # type: ignore[arg-type]
    with pytest.raises(FabricNetError, match=message):
        FabricNet.create(spec)
    assert not (tmp_path / "fabric").exists()


def test_missing_binaries_name_the_directory(tmp_path: Path) -> None:
    empty = tmp_path / "nobin"
    empty.mkdir()
    with pytest.raises(FabricNetError, match=r"\['peer', 'orderer', 'configtxgen'\].*make tools"):
        FabricNet.create(FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=empty))


def test_a_missing_or_foreign_hospital_ca_is_refused(tmp_path: Path, fake_bin: Path) -> None:
    spec = FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=fake_bin)
    LocalCA.create("HospitalAMSP").save(tmp_path / "ca" / "HospitalAMSP")
    with pytest.raises(FabricNetError, match=r"hospital CA .*HospitalBMSP does not exist"):
        FabricNet.create(spec)
    LocalCA.create("HospitalCMSP").save(tmp_path / "ca" / "HospitalBMSP")
    with pytest.raises(FabricNetError, match="is the CA of HospitalCMSP, not of HospitalBMSP"):
        FabricNet.create(spec)
    assert not (tmp_path / "fabric").exists()


def test_an_existing_network_is_not_overwritten(tmp_path: Path, fake_bin: Path) -> None:
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    (tmp_path / "fabric").mkdir()
    (tmp_path / "fabric" / "keep").write_text("x")
    with pytest.raises(FabricNetError, match="already exists"):
        FabricNet.create(FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=fake_bin))
    assert (tmp_path / "fabric" / "keep").read_text() == "x"


def test_load_without_a_network_says_create_first(tmp_path: Path) -> None:
    with pytest.raises(FabricNetError, match="does not exist: create the network first"):
        FabricNet.load(tmp_path)


def _old_style_root() -> x509.Certificate:
    """A root as LocalCA made them before: no subject key identifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca.old")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_roots_fabric_would_refuse_are_named() -> None:
    assert fabric_ca_problem(LocalCA.create("HospitalAMSP").certificate) is None
    assert fabric_ca_problem(_old_style_root()) == "it has no subject key identifier"


# --- what create() writes for a Fabric version, with stand-in binaries ------------------------

_CONFIGTXGEN = """#!/bin/sh
# Stands in for configtxgen: writes a placeholder where -outputBlock points.
while [ $# -gt 0 ]; do
  if [ "$1" = -outputBlock ]; then printf 'genesis' > "$2"; fi
  shift
done
"""


def _stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> Path:
    """A peer that reports ``version``, a configtxgen that writes a block, a sampleconfig."""
    bin_dir = tmp_path / f"bin-{version}"
    bin_dir.mkdir()
    (bin_dir / "peer").write_text(f"#!/bin/sh\necho 'peer:'\necho ' Version: {version}'\n")
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
    return bin_dir


def _created(tmp_path: Path, bin_dir: Path, orderers: int = 3) -> FabricNet:
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    return FabricNet.create(
        FabricNetSpec(root=tmp_path, msp_ids=MSPS, orderers=orderers, bin_dir=bin_dir)
    )


@pytest.mark.parametrize(("version", "channel_caps"), [("2.3.2", {"V2_0"}), ("3.1.5", {"V3_0"})])
def test_the_channel_profile_fits_the_binaries_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, channel_caps: set[str]
) -> None:
    net = _created(tmp_path, _stand_ins(tmp_path, monkeypatch, version))
    assert net.version == tuple(int(x) for x in version.split("."))
    configtx = yaml.safe_load((net.dir / "config" / "configtx" / "configtx.yaml").read_text())
    # One profile, no system channel: Orderer and Application, no consortium.
    assert list(configtx["Profiles"]) == ["Channel"]
    profile = configtx["Profiles"]["Channel"]
    assert set(profile) == {"Policies", "Capabilities", "Orderer", "Application"}
    assert set(profile["Capabilities"]) == channel_caps
    # Orderer endpoints per organisation (V3_0 refuses the global Orderer.Addresses).
    assert "Addresses" not in profile["Orderer"]
    (orderer_org,) = profile["Orderer"]["Organizations"]
    assert orderer_org["OrdererEndpoints"] == [net.orderer_address(i) for i in range(3)]
    # Every hospital's peer is its anchor peer.
    for org in profile["Application"]["Organizations"]:
        host, port = net.peer_address(org["Name"]).rsplit(":", 1)
        assert org["AnchorPeers"] == [{"Host": host, "Port": int(port)}]
    # Three orderers, three admin ports of their own, none of them the default 9443.
    admins = {net.orderer_admin_address(i) for i in range(3)}
    assert len(admins) == 3 and "127.0.0.1:9443" not in admins
    assert net.genesis_block.read_bytes() == b"genesis"


def test_the_orderers_start_without_a_system_channel_on_their_own_admin_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _created(tmp_path, _stand_ins(tmp_path, monkeypatch, "2.3.2"))
    envs = [net._orderer_env(i) for i in range(3)]
    for i, env in enumerate(envs):
        assert env["ORDERER_GENERAL_BOOTSTRAPMETHOD"] == "none"
        assert "ORDERER_GENERAL_BOOTSTRAPFILE" not in env
        assert env["ORDERER_CHANNELPARTICIPATION_ENABLED"] == "true"
        assert env["ORDERER_ADMIN_LISTENADDRESS"] == net.orderer_admin_address(i)
        assert env["ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED"] == "true"
        # A lagging orderer catches up with TLS-bound Deliver requests (BFT; Raft ignores it).
        assert env["ORDERER_GENERAL_CLUSTER_REPLICATIONPOLICY"] == "simple"
        # Only the orderer organisation's CA may open the admin endpoint.
        assert env["ORDERER_ADMIN_TLS_CLIENTROOTCAS"] == f"[{net.tls_ca('OrdererMSP')}]"
    assert len({env["ORDERER_ADMIN_LISTENADDRESS"] for env in envs}) == 3


def _created_bft(tmp_path: Path, bin_dir: Path) -> FabricNet:
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    spec = FabricNetSpec(
        root=tmp_path, msp_ids=MSPS, orderers=4, orderer_type="BFT", bin_dir=bin_dir
    )
    return FabricNet.create(spec)


def test_smartbft_is_refused_on_fabric_2_with_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _stand_ins(tmp_path, monkeypatch, "2.5.16")
    with pytest.raises(FabricNetError, match=r"SmartBFT orderers need Fabric 3\.x; .* 2\.5\.16"):
        _created_bft(tmp_path, bin_dir)
    assert not (tmp_path / "fabric").exists()


def test_smartbft_maps_each_consenter_to_its_own_identity_and_tls_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _created_bft(tmp_path, _stand_ins(tmp_path, monkeypatch, "3.1.5"))
    configtx = yaml.safe_load((net.dir / "config" / "configtx" / "configtx.yaml").read_text())
    profile = configtx["Profiles"]["Channel"]
    assert set(profile["Capabilities"]) == {"V3_0"}
    orderer = profile["Orderer"]
    assert orderer["OrdererType"] == "BFT" and "EtcdRaft" not in orderer
    mapping = orderer["ConsenterMapping"]
    assert [c["ID"] for c in mapping] == [1, 2, 3, 4]
    for i, consenter in enumerate(mapping):
        node = net.org_dir("OrdererMSP") / f"orderer{i + 1}"
        assert consenter["MSPID"] == "OrdererMSP"
        assert f"{consenter['Host']}:{consenter['Port']}" == net.orderer_address(i)
        # The orderer's own signing certificate (NodeOU orderer) and its own TLS certificate.
        identity = x509.load_pem_x509_certificate(Path(consenter["Identity"]).read_bytes())
        assert Path(consenter["Identity"]) == node / "msp" / "signcerts" / "cert.pem"
        assert (
            identity.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
            == "orderer"
        )
        assert consenter["ClientTLSCert"] == consenter["ServerTLSCert"]
        assert Path(consenter["ServerTLSCert"]) == node / "tls" / "server.crt"
    # The forward timeout must stay below the complaint timeout (SmartBFT checks it).
    assert orderer["SmartBFT"]["RequestForwardTimeout"] == "2s"
    assert orderer["SmartBFT"]["RequestBatchMaxInterval"] == net.spec.batch_timeout
    conn = net.connection()
    assert (conn["orderer_type"], conn["orderer_quorum"], len(conn["orderers"])) == ("BFT", 3, 4)
    # Reloaded from network.json, it is still BFT.
    assert FabricNet.load(tmp_path).spec.bft


def test_the_bft_quorum_is_2f_plus_1_of_3f_plus_1() -> None:
    from ehrshare.network.fabric import bft_quorum

    assert [bft_quorum(n) for n in (4, 7, 10)] == [3, 5, 7]


@pytest.mark.parametrize(
    ("printed", "message"),
    [
        ("peer:\n Version: 2.1.1\n", r"Fabric 2\.1\.1; networks need 2\.3 or later"),
        ("no version here\n", "printed no version"),
    ],
)
def test_binaries_older_than_2_3_or_without_a_version_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str, message: str
) -> None:
    bin_dir = _stand_ins(tmp_path, monkeypatch, "2.3.2")
    (bin_dir / "peer").write_text(f"#!/bin/sh\nprintf '{printed}'\n")
    for msp in MSPS:
        LocalCA.create(msp).save(tmp_path / "ca" / msp)
    with pytest.raises(FabricNetError, match=message):
        FabricNet.create(FabricNetSpec(root=tmp_path, msp_ids=MSPS, bin_dir=bin_dir))
    assert not (tmp_path / "fabric").exists()
    with pytest.raises(FabricNetError, match=message):
        fabric_version(bin_dir)


def test_a_network_made_for_fabric_2_1_is_refused_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _created(tmp_path, _stand_ins(tmp_path, monkeypatch, "2.3.2"), orderers=1)
    state = json.loads((net.dir / "network.json").read_text())
    assert state["version"] == 2
    state["version"] = 1
    (net.dir / "network.json").write_text(json.dumps(state))
    with pytest.raises(FabricNetError, match=r"Fabric 2\.1 network \(system channel\).*again"):
        FabricNet.load(tmp_path)


# --- what a failed node start reports ----------------------------------------------------------

_STACK = "".join(f"goroutine {n} [running]:\n\tmain.go:{n} +0x1f\n" for n in range(20))


def test_a_dead_node_is_named_by_its_first_panic_line_of_this_run(tmp_path: Path) -> None:
    log = tmp_path / "orderer1.log"
    earlier = "2026-01-01 [orderer] Main -> PANI 001 an earlier run's panic\n"
    log.write_text(earlier + "started again\n")
    offset = len(earlier.encode())
    this_run = (
        "\x1b[34m2026-01-02 [orderer] Main -> INFO 001\x1b[0m starting\n"
        "\x1b[35m2026-01-02 [orderer.common.server] Main -> PANI 004\x1b[0m "
        "Bootstrap method: 'file' is forbidden, since system channel is no longer supported\n"
        "panic: Bootstrap method: 'file' is forbidden\n\n" + _STACK
    )
    with open(log, "a") as f:
        f.write(this_run)
    said = log_tail(log, offset)
    assert said.startswith(f"{log}: 2026-01-02 [orderer.common.server] Main -> PANI 004 ")
    assert "'file' is forbidden, since system channel" in said
    assert "earlier run" not in said and "goroutine" not in said and "\x1b" not in said
    assert said.endswith("(then 42 more lines)")


@pytest.mark.parametrize(
    "line",
    [
        "2026-01-02 [peer] func1 -> FATA 005 Failed to initialize operations",
        "panic: runtime error: invalid memory address",
        "Fatal error when initializing core config",
    ],
)
def test_fatal_lines_of_every_shape_are_found(tmp_path: Path, line: str) -> None:
    log = tmp_path / "node.log"
    log.write_text(f"one\n{line}\n" + _STACK)
    assert log_tail(log).startswith(f"{log}: {line} (then ")


def test_without_a_fatal_line_the_last_lines_are_shown(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text("".join(f"line {n}\n" for n in range(20)))
    assert log_tail(log) == f"{log}: " + " | ".join(f"line {n}" for n in range(12, 20))
    assert log_tail(tmp_path / "absent.log") == f"(no log at {tmp_path / 'absent.log'})"


def test_each_hospital_gets_a_common_connection_profile_that_matches_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _created(tmp_path, _stand_ins(tmp_path, monkeypatch, "2.3.2"))
    state = json.loads((net.dir / "network.json").read_text())
    for msp in MSPS:
        path = net.dir / f"connection-{msp}.json"
        assert path == net.connection_profile_path(msp)
        profile = json.loads(path.read_text())
        assert set(profile) == {
            "name",
            "version",
            "client",
            "organizations",
            "peers",
            "orderers",
            "channels",
        }  # no certificateAuthorities: the hospitals' CAs are offline
        assert profile["client"]["organization"] == msp
        assert profile["organizations"] == {
            m: {"mspid": m, "peers": [net.server_name(m)]} for m in MSPS
        }
        for m in MSPS:
            peer = profile["peers"][net.server_name(m)]
            assert peer["url"] == f"grpcs://127.0.0.1:{state['ports']['peers'][m]['listen']}"
            assert peer["tlsCACerts"]["pem"] == (tmp_path / "ca" / m / "ca-cert.pem").read_text()
            assert peer["grpcOptions"]["ssl-target-name-override"] == net.server_name(m)
            # The name it overrides to is on the peer's TLS certificate.
            tls = x509.load_pem_x509_certificate(
                (net.org_dir(m) / "peer" / "tls" / "server.crt").read_bytes()
            )
            names = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert net.server_name(m) in names.get_values_for_type(x509.DNSName)
        urls = [o["url"] for o in profile["orderers"].values()]
        assert urls == [f"grpcs://127.0.0.1:{o['listen']}" for o in state["ports"]["orderers"]]
        assert set(profile["channels"]) == {net.spec.channel}
        assert "PRIVATE KEY" not in path.read_text()
