"""Where a network's organisations run (``FabricNetSpec.hosts``) and the options that ask for
hosts: refused with the field named before anything is made (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrshare.network.fabric import ORDERER_MSP, FabricNetError, FabricNetSpec, NodeHost
from ehrshare.provisioning import Consortium, ConsortiumError

MSPS = ("HospitalAMSP", "HospitalBMSP")


def _hosts(**extra: NodeHost) -> dict[str, NodeHost]:
    return {"HospitalAMSP": NodeHost("10.231.5.10", "ns-a"), **extra}


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (_hosts(), r"missing \['HospitalBMSP', 'OrdererMSP'\]"),
        (
            _hosts(HospitalBMSP=NodeHost("10.231.5.11"), **{ORDERER_MSP: NodeHost("10.231.5.12")})
            | {"HospitalZMSP": NodeHost("10.231.5.13")},
            r"unknown \['HospitalZMSP'\]",
        ),
        (
            _hosts(HospitalBMSP=NodeHost("peer-b.example"), **{ORDERER_MSP: NodeHost("10.0.0.1")}),
            "HospitalBMSP's address 'peer-b.example' is not an IPv4 address",
        ),
    ],
    ids=["missing", "unknown", "not-an-address"],
)
def test_bad_hosts_are_refused_naming_the_field(
    hosts: dict[str, NodeHost], message: str, tmp_path: Path
) -> None:
    with pytest.raises(FabricNetError, match=message):
        FabricNetSpec(root=tmp_path, msp_ids=MSPS, hosts=hosts).check()


def test_no_hosts_keeps_everything_on_loopback(tmp_path: Path) -> None:
    FabricNetSpec(root=tmp_path, msp_ids=MSPS).check()


def test_hosts_need_fabric_a_swarm_and_service_processes(tmp_path: Path) -> None:
    with pytest.raises(ConsortiumError, match="hosts need every node in a process of its own"):
        Consortium.init(tmp_path / "c", hosts={"HospitalAMSP": NodeHost("10.231.5.10")})
    assert not (tmp_path / "c").exists()
