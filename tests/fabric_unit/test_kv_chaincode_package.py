"""The trivial chaincode of ``bench fabric`` is packaged and served as the contract is: one
package writer (``material.write_ccaas_package``), on the orderers' host — its address and
network namespace — so the benchmark runs on a netns network too (no hard-coded 127.0.0.1)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ehrshare.identity import LocalCA
from ehrshare.network.fabric import kvchaincode
from ehrshare.network.fabric.material import write_ccaas_package
from ehrshare.network.fabric.spec import ORDERER_MSP


def _connection(package: Path) -> dict[str, Any]:
    with tarfile.open(package) as outer:
        meta = json.loads(outer.extractfile("metadata.json").read())  # type: ignore[union-attr]
        code = outer.extractfile("code.tar.gz").read()  # type: ignore[union-attr]
    assert meta["type"] == "ccaas"
    with tarfile.open(fileobj=io.BytesIO(code)) as inner:
        return dict(json.loads(inner.extractfile("connection.json").read()))  # type: ignore[union-attr]


def _sans(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)}


@pytest.mark.parametrize("host", ["127.0.0.1", "10.77.0.4"])
def test_the_package_points_the_peers_at_the_servers_host_and_its_certificate_names_it(
    tmp_path: Path, host: str
) -> None:
    ca = LocalCA.create("ChaincodeTLS")
    package_id, path = write_ccaas_package(tmp_path, ca, label="cc_1", address=f"{host}:7055")
    assert package_id.startswith("cc_1:") and path == tmp_path / "cc_1.tgz"
    conn = _connection(path)
    assert conn["address"] == f"{host}:7055"
    assert conn["tls_required"] and conn["client_auth_required"]
    assert conn["root_cert"] == ca.certificate_pem.decode()
    assert host in _sans((tmp_path / "server.crt").read_bytes())
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0


@dataclass
class _Net:
    """What deploy_kv_chaincode needs of a FabricNet, placed on a netns host."""

    dir: Path
    deployed: bool = True
    deployed_as: list[tuple[str, str, bytes]] = field(default_factory=list)

    def host(self, label: str) -> str:
        return "10.77.0.4" if label == ORDERER_MSP else "10.77.0.1"

    def netns(self, label: str) -> str | None:
        return "ehr-orderer" if label == ORDERER_MSP else "ehr-org"

    def deploy_chaincode(
        self, name: str, package_id: str, package: Path, *_: Any, **__: Any
    ) -> None:
        self.deployed_as.append((name, package_id, package.read_bytes()))


class _Child:
    pid = 4242

    def alive(self) -> bool:
        return True

    def tail(self) -> str:
        return ""


def test_the_kv_server_listens_on_the_contract_servers_host_in_its_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    LocalCA.create("ChaincodeTLS").save(tmp_path / "chaincode" / "tls-ca")
    started: list[tuple[list[str], str | None]] = []

    def start_child(name: str, argv: list[str], log: Path, **kw: Any) -> _Child:
        started.append((argv, kw.get("netns")))
        return _Child()

    monkeypatch.setattr(kvchaincode, "start_child", start_child)
    monkeypatch.setattr(kvchaincode, "wait_ready", lambda *a, **k: "ready")
    net = _Net(tmp_path)
    kv = kvchaincode.deploy_kv_chaincode(net, processes=2)  # type: ignore[arg-type]
    assert len(started) == 2
    for argv, netns in started:
        listen = argv[argv.index("--listen") + 1]
        assert listen.startswith("10.77.0.4:") and netns == "ehr-orderer"
    ((name, package_id, _),) = net.deployed_as
    assert (name, package_id) == (kvchaincode.KV_CHAINCODE, kv.package_id)
    conn = _connection(tmp_path / "chaincode-ehrshare-kv" / "ehrshare-kv_1.tgz")
    assert conn["address"] == listen
    kv.servers = []  # nothing was started: nothing to stop
