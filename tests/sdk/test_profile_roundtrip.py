"""The profile schema is read and written in one place (:mod:`ehrshare.profile`).

Every profile 'consortium init' writes (embedded, services as processes, Fabric) reads back to
an equal :class:`Profile`, and writing what was read gives the same bytes; any profile the
reader accepts survives writing and reading again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrshare.fhir import DEFAULT_RULES, TypeMapping, TypeRule
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.profile import (
    FabricEndpoint,
    FabricLedger,
    KgcNodeConfig,
    Profile,
    ProfileError,
    ProxyConfig,
    ServiceConfig,
)
from ehrshare.provisioning import INIT_HEADER, PROCESSES_HEADER, Consortium, FabricOptions


def assert_round_trip(path: Path, header: str) -> Profile:
    """The file reads to a profile that writes the same bytes and reads back equal."""
    text = path.read_text(encoding="utf-8")
    profile = Profile.load(path)
    assert profile.to_yaml(header) == text
    again = Profile.from_dict(yaml.safe_load(profile.to_yaml()), base=path.parent, path=path)
    assert again == profile
    return profile


def test_an_embedded_consortium_profile_round_trips(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "c", clock=ManualClock()) as consortium:
        assert consortium.profile.path is not None
        profile = assert_round_trip(consortium.profile.path, INIT_HEADER)
    assert profile.ledger_backend == "embedded"
    assert all(n.service.embedded for n in profile.kgc_nodes)
    assert profile.consortium_id.startswith("c-")


def test_a_processes_consortium_profile_round_trips(tmp_path: Path) -> None:
    ports = [17160 + i for i in range(6)]  # written, never bound: nothing is started here
    with Consortium.init(tmp_path / "p", services="processes", ports=ports) as consortium:
        assert consortium.profile.path is not None
        profile = assert_round_trip(consortium.profile.path, PROCESSES_HEADER)
    assert [p.service.address for p in profile.proxies] == [f"127.0.0.1:{p}" for p in ports[:3]]
    assert [n.service.address for n in profile.kgc_nodes] == [f"127.0.0.1:{p}" for p in ports[3:]]
    assert len(profile.ca_files) == 3
    assert all(n.service.tls_cert and n.service.tls_cert.is_file() for n in profile.kgc_nodes)


def connection_of(root: Path) -> dict[str, object]:
    """What ``FabricNet.connection()`` returns for a network of two hospitals under ``root``."""
    tls = root / "fabric" / "organizations"
    return {
        "peers": [
            {
                "address": f"127.0.0.1:{7051 + i}",
                "msp": msp,
                "tls_ca": str(tls / msp / "msp" / "tlscacerts" / "ca.pem"),
                "server_name": f"peer0.{msp.lower()}",
            }
            for i, msp in enumerate(("HospitalAMSP", "HospitalBMSP"))
        ],
        "orderers": [
            {
                "address": "127.0.0.1:7050",
                "tls_ca": str(tls / "OrdererMSP" / "msp" / "tlscacerts" / "ca.pem"),
                "server_name": "orderer1.ordererorg",
            }
        ],
        "channel": "ehrshare",
        "chaincode": "ehrshare",
        "endorsers": 2,
        "client_auth": True,
        "client": "gateway",
    }


def test_a_fabric_ledger_section_is_written_as_init_wrote_it(tmp_path: Path) -> None:
    with Consortium.init(tmp_path / "f", clock=ManualClock()) as consortium:
        embedded = consortium.profile
    root = tmp_path / "f"
    ledger = FabricLedger.from_connection(connection_of(root.resolve()), root.resolve() / "fabric")
    profile = replace(embedded, ledger_backend="fabric", fabric=ledger)
    section = profile.to_dict()["ledger"]
    assert section == {
        "backend": "fabric",
        "peers": [
            {
                "address": "127.0.0.1:7051",
                "tls_ca": "fabric/organizations/HospitalAMSP/msp/tlscacerts/ca.pem",
                "server_name": "peer0.hospitalamsp",
                "msp": "HospitalAMSP",
            },
            {
                "address": "127.0.0.1:7052",
                "tls_ca": "fabric/organizations/HospitalBMSP/msp/tlscacerts/ca.pem",
                "server_name": "peer0.hospitalbmsp",
                "msp": "HospitalBMSP",
            },
        ],
        "orderers": [
            {
                "address": "127.0.0.1:7050",
                "tls_ca": "fabric/organizations/OrdererMSP/msp/tlscacerts/ca.pem",
                "server_name": "orderer1.ordererorg",
            }
        ],
        "network": "fabric",
        "client_auth": True,
        "client": "gateway",
    }
    assert embedded.path is not None
    embedded.path.write_text(profile.to_yaml(INIT_HEADER), encoding="utf-8")
    assert assert_round_trip(embedded.path, INIT_HEADER) == profile


@pytest.mark.fabric
def test_a_fabric_consortium_profile_round_trips(tmp_path: Path) -> None:
    with Consortium.init(
        tmp_path / "fab",
        ledger="fabric",
        hospitals=("HospitalA", "HospitalB"),
        fabric=FabricOptions(),
    ) as consortium:
        assert consortium.profile.path is not None
        profile = assert_round_trip(consortium.profile.path, INIT_HEADER)
    assert profile.fabric is not None and profile.fabric.client_auth
    # The peer-client keys only where the client steers endorsement and ordering itself.
    if profile.fabric.client == "gateway":
        assert (profile.fabric.endorsers, profile.fabric.orderer_quorum) == (None, None)
    else:
        assert (profile.fabric.endorsers, profile.fabric.orderer_quorum) == (2, None)
    assert profile.fabric.network == (tmp_path / "fab").resolve() / "fabric"


def test_a_profile_without_a_file_needs_a_base_to_be_written(tmp_path: Path) -> None:
    data = {
        "kgc": {
            "threshold": 2,
            "nodes": [{"index": i, "state": "s", "key": "k", "wallet": "w"} for i in (1, 2)],
        },
        "proxies": [{"name": "px", "state": "p", "key": "k", "wallet": "w"}],
    }
    profile = Profile.from_dict(data, base=tmp_path)
    with pytest.raises(ProfileError, match="needs a base directory"):
        profile.to_dict()
    assert Profile.from_dict(profile.to_dict(tmp_path), base=tmp_path) == profile


# --- any profile the reader accepts ----------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
relative = st.lists(names, min_size=1, max_size=3).map("/".join)
ports = st.integers(min_value=1, max_value=65535)
addresses = st.builds(
    lambda host, port: f"{host}:{port}", st.sampled_from(["127.0.0.1", "kgc.a"]), ports
)
codes = st.tuples(
    st.sampled_from(["", "http://x.org/cs", "urn:a|b"]), st.sampled_from(["R", "a|b"])
)
rules = st.builds(
    TypeRule,
    type=st.sampled_from(["lab", "imaging", "notes"]),
    resource=st.lists(st.sampled_from(["Observation", "Media"]), min_size=1, max_size=2).map(tuple),
    category=st.lists(codes, max_size=2).map(tuple),
    security=st.lists(codes, max_size=2).map(tuple),
)


@st.composite
def services(draw: st.DrawFn, base: Path) -> ServiceConfig:
    def path() -> Path:
        return base / draw(relative)

    if draw(st.booleans()):
        return ServiceConfig(state=path(), key_file=path(), wallet=path())

    def maybe() -> Path | None:
        return path() if draw(st.booleans()) else None

    return ServiceConfig(
        address=draw(addresses),
        tls_ca=path() if draw(st.booleans()) else Path("/etc/ehrshare") / draw(relative),
        server_name=draw(st.none() | names),
        state=maybe(),
        key_file=maybe(),
        wallet=maybe(),
        tls_cert=maybe(),
        tls_key=maybe(),
    )


@st.composite
def endpoints(draw: st.DrawFn, base: Path, msps: list[str]) -> tuple[FabricEndpoint, ...]:
    return tuple(
        FabricEndpoint(draw(addresses), base / draw(relative), draw(st.none() | names), msp)
        for msp in msps
    )


@st.composite
def profiles(draw: st.DrawFn, base: Path) -> Profile:
    n = draw(st.integers(min_value=2, max_value=4))
    nodes = tuple(
        KgcNodeConfig(
            index=i, service=draw(services(base)), msp_id=draw(st.sampled_from(["", f"H{i}MSP"]))
        )
        for i in range(1, n + 1)
    )
    proxy_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    proxies = tuple(
        ProxyConfig(
            name=name,
            service=draw(services(base)),
            msp_id=draw(st.sampled_from(["", f"{name}MSP"])),
            ibe_id=draw(st.sampled_from(["", f"{name}MSP/proxy"])),
        )
        for name in proxy_names
    )
    fabric = None
    if draw(st.booleans()):
        msps = draw(st.lists(st.sampled_from(["AMSP", "BMSP", "CMSP"]), min_size=1, max_size=3))
        fabric = FabricLedger(
            peers=draw(endpoints(base, msps)),
            orderers=draw(endpoints(base, [""])),
            endorsers=draw(st.none() | st.integers(min_value=1, max_value=len(set(msps)))),
            network=draw(st.none() | st.just(base / "fabric")),
            client_auth=draw(st.booleans()),
        )
    kubo = draw(st.booleans())
    return Profile(
        path=base / "profile.yaml",
        name=draw(names),
        channel=draw(names),
        chaincode=draw(names),
        ledger_path=base / draw(relative)
        if fabric is None or draw(st.booleans())
        else base / "ledger",
        storage_backend="kubo" if kubo else "embedded",
        storage_path=None if kubo else base / draw(relative),
        storage_url=draw(st.sampled_from(["http://127.0.0.1:5001", "https://ipfs.a:443"]))
        if kubo
        else None,
        storage_timeout=draw(st.sampled_from([30.0, 2.5, 120.0])),
        kgc_threshold=draw(st.integers(min_value=2, max_value=n)),
        kgc_nodes=nodes,
        proxies=proxies,
        label_key_file=base / draw(relative),
        mapping=TypeMapping(
            rules=draw(st.just(DEFAULT_RULES) | st.lists(rules, min_size=1, max_size=3).map(tuple)),
            default_type=draw(st.sampled_from(["general", "notes"])),
            extra_types=tuple(draw(st.lists(st.sampled_from(["x-ray", "dental"]), unique=True))),
        ),
        max_record_bytes=draw(st.integers(min_value=1024, max_value=2**40)),
        wallets=base / draw(relative),
        ca_files=tuple(base / draw(relative) for _ in range(draw(st.integers(0, 2)))),
        client_ca_dir=draw(st.none() | relative.map(lambda r: base / r)),
        ledger_backend="embedded" if fabric is None else "fabric",
        fabric=fabric,
        consortium_id=draw(st.sampled_from(["", "c-" + "ab" * 16])),
    )


BASE = Path("/srv/consortium")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=profiles(BASE))
def test_any_profile_survives_writing_and_reading(profile: Profile) -> None:
    text = profile.to_yaml()
    again = Profile.from_dict(yaml.safe_load(text), base=BASE, path=profile.path)
    assert again == profile
    assert again.to_yaml() == text
