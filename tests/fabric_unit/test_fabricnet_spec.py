"""What `FabricNet.create` refuses before it writes anything (no Fabric binaries run here)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehrshare.fabricnet import FabricNet, FabricNetError, FabricNetSpec, fabric_ca_problem
from ehrshare.identity import LocalCA

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
