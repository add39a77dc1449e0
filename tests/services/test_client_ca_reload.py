"""A service's client CAs read again while it runs (issue 16): a real gRPC server over mutual
TLS on 127.0.0.1 with a ``ReloadingClientTrust`` on a directory of CA certificates, the way
``kgc serve`` / ``proxy serve --client-ca-dir`` run it. Every call below opens a new connection
(a channel of its own, no shared subchannel), so each one is a new TLS handshake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ehrshare.identity import LocalCA
from ehrshare.services.rpc import _server, _unary
from ehrshare.services.tls import (
    ClientTls,
    ReloadingClientTrust,
    ServerTls,
    issue_tls_certificate,
)
from ehrshare.services.vault import atomic_write

SERVICE = "ehrshare.test.Whoami"


@dataclass
class Served:
    directory: Path
    target: str
    server_ca: LocalCA
    trust: ReloadingClientTrust

    def call(self, ca: LocalCA, name: str = "drdee") -> str:
        """Whom the server names the caller with a TLS client certificate of ``ca``, on a new
        connection; raises grpc.RpcError when refused."""
        tls = ClientTls.for_member(*ca.issue_tls_client(name), [self.server_ca.certificate_pem])
        with _channel(self.target, tls) as channel:
            return bytes(channel.unary_unary(f"/{SERVICE}/Whoami")(b"", timeout=10)).decode()


def _channel(target: str, tls: ClientTls) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        tls.root_certificates_pem, tls.private_key_pem, tls.certificate_pem
    )
    return grpc.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


def _write(directory: Path, ca: LocalCA) -> None:
    atomic_write(directory / f"{ca.msp_id}.pem", ca.certificate_pem, mode=0o644)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    a = LocalCA.create("HospitalAMSP")
    directory = tmp_path / "client-cas"
    _write(directory, a)
    cert, key = issue_tls_certificate(a, "proxy.tls")
    trust = ReloadingClientTrust((), directory)
    tls = ServerTls(cert, key, trust)
    server, port = _server("127.0.0.1:0", tls, 2)

    def whoami(request: bytes, caller: str) -> bytes:
        return caller.encode()

    handlers = {"Whoami": _unary(whoami, tls, ())}  # the services' handler: the caller checked
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.start()
    yield Served(directory, f"127.0.0.1:{port}", a, trust)
    server.stop(None)


def test_a_new_ca_written_to_the_directory_is_trusted_without_a_restart(served: Served) -> None:
    d = LocalCA.create("HospitalDMSP")
    assert served.call(served.server_ca, "alice") == "HospitalAMSP/alice"
    with pytest.raises(grpc.RpcError) as refused:
        served.call(d)  # not trusted yet: the handshake fails
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    _write(served.directory, d)
    assert served.call(d) == "HospitalDMSP/drdee"
    assert served.call(served.server_ca, "alice") == "HospitalAMSP/alice"


@pytest.mark.parametrize("bad", [b"not a certificate\n", b"", None])
def test_a_malformed_or_unreadable_ca_file_keeps_the_last_good_set(
    served: Served, bad: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    d = LocalCA.create("HospitalDMSP")
    _write(served.directory, d)
    assert served.call(d) == "HospitalDMSP/drdee"
    broken = served.directory / "HospitalEMSP.pem"
    if bad is None:  # unreadable: a directory where a file should be
        broken.mkdir()
        atomic_write(served.directory / "HospitalAMSP.pem", b"garbage", mode=0o644)
    else:
        atomic_write(broken, bad, mode=0o644)
    with caplog.at_level(logging.ERROR, logger="ehrshare.services.tls"):
        assert served.call(d) == "HospitalDMSP/drdee"
        assert served.call(served.server_ca, "alice") == "HospitalAMSP/alice"
    assert "the last good set stays in force" in caplog.text
    # Once the directory is whole again, a change is taken (here: E's CA, now well-formed).
    e = LocalCA.create("HospitalEMSP")
    if bad is None:
        broken.rmdir()
        _write(served.directory, served.server_ca)
    _write(served.directory, e)
    assert served.call(e) == "HospitalEMSP/drdee"


def test_a_removed_ca_is_refused_for_new_connections_and_its_open_ones(served: Served) -> None:
    d = LocalCA.create("HospitalDMSP")
    _write(served.directory, d)
    tls = ClientTls.for_member(*d.issue_tls_client("drdee"), [served.server_ca.certificate_pem])
    with _channel(served.target, tls) as open_channel:
        whoami = open_channel.unary_unary(f"/{SERVICE}/Whoami")
        assert whoami(b"", timeout=10) == b"HospitalDMSP/drdee"
        (served.directory / "HospitalDMSP.pem").unlink()
        # The connection opened before stays open, but its calls no longer name a caller (the
        # call itself reads the set again: no new handshake came in between).
        with pytest.raises(grpc.RpcError) as unnamed:
            whoami(b"", timeout=10)
        assert unnamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not issued by a consortium CA" in str(unnamed.value.details())
        with pytest.raises(grpc.RpcError) as refused:
            served.call(d)  # a new connection: the handshake refuses the certificate
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.call(served.server_ca, "alice") == "HospitalAMSP/alice"


def test_an_emptied_directory_keeps_the_last_good_set(served: Served) -> None:
    (served.directory / "HospitalAMSP.pem").unlink()
    assert served.call(served.server_ca, "alice") == "HospitalAMSP/alice"
    assert served.trust.generation == 0
