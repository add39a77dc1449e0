"""Who is calling, by mutual TLS: the server acts as the member whose wallet TLS client
certificate (issued by a hospital CA) the handshake verified — only for the members it was told
to serve, only with the certificate in that member's wallet — and refuses everything else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhir_world import Fhir, MtlsServer, start_mtls_server, state_digest
from test_fhir_records import valid

from ehrshare.demo import lab_observation
from ehrshare.fhirapi.mtls import CertificateMap, ServedWalletError, ca_files_of
from ehrshare.identity import LocalCA


@pytest.fixture
def mtls(fhir: Fhir, tmp_path: Path) -> Iterator[MtlsServer]:
    server = start_mtls_server(
        fhir.consortium, tmp_path, ["alice", "baker"], ["alice", "baker", "bob", "chen"]
    )
    try:
        yield server
    finally:
        server.server.stop()


def _root(fhir: Fhir) -> Path:
    assert fhir.consortium.profile.path is not None
    return fhir.consortium.profile.path.parent


def test_the_client_certificate_names_the_member(fhir: Fhir, mtls: MtlsServer) -> None:
    assert mtls.url.startswith("https://127.0.0.1:")
    with mtls.client("alice") as alice, mtls.client("baker") as baker:
        r = alice.post("/Observation", json=lab_observation())
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert valid(alice.get(f"/Observation/{rid}").json())["id"] == rid
        denied = baker.get(f"/Observation/{rid}")  # baker is baker, not alice
        assert denied.status_code == 403
        assert valid(denied.json())["resourceType"] == "OperationOutcome"
    events = fhir.consortium.session("alice").audit(fhir.ids["alice"]).entries
    assert [e["actor"] for e in events if e["action"] == "RegisterRecord"][-1] == fhir.ids["alice"]


def test_a_bearer_token_does_not_authenticate_over_mutual_tls(fhir: Fhir, mtls: MtlsServer) -> None:
    # baker's certificate with alice's token: still baker (the header is not looked at).
    with mtls.client("baker", headers={"Authorization": f"Bearer {fhir.tokens['alice']}"}) as c:
        rid_r = c.post("/Observation", json=lab_observation())
    assert rid_r.status_code == 422  # a clinician must name the patient: acts as baker


def test_no_certificate_is_refused_in_the_handshake(fhir: Fhir, mtls: MtlsServer) -> None:
    before = state_digest(_root(fhir))
    with mtls.client(None) as anon, pytest.raises(httpx.TransportError):
        anon.post("/Observation", json=lab_observation())
    assert state_digest(_root(fhir)) == before


def test_a_member_the_server_does_not_serve_is_401(fhir: Fhir, mtls: MtlsServer) -> None:
    before = state_digest(_root(fhir))
    with mtls.client("chen") as chen:
        r = chen.post("/Observation", json=lab_observation())
        assert r.status_code == 401
        assert "does not act for HospitalCMSP/chen" in r.json()["issue"][0]["diagnostics"]
        assert chen.get("/metadata").status_code == 200  # the CapabilityStatement is public
    assert state_digest(_root(fhir)) == before


def test_a_certificate_of_a_foreign_ca_is_refused(
    fhir: Fhir, mtls: MtlsServer, tmp_path: Path
) -> None:
    foreign = LocalCA.create("HospitalAMSP")  # same MSP name, another key: not the consortium's
    identity, signer = foreign.issue_tls_client("alice")
    (tmp_path / "f.pem").write_bytes(identity.credentials)
    (tmp_path / "f.key").write_bytes(signer.to_secret_bytes())
    w = tmp_path / "foreign"
    w.mkdir()
    (w / "tls-cert.pem").write_bytes(identity.credentials)
    (w / "tls-key.pem").write_bytes(signer.to_secret_bytes())
    mtls.wallets["mallory"] = w
    with mtls.client("mallory") as mallory, pytest.raises(httpx.TransportError):
        mallory.get("/Observation")


def test_a_reissued_certificate_retires_the_old_one(
    fhir: Fhir, mtls: MtlsServer, tmp_path: Path
) -> None:
    # An old certificate of alice's, still valid under the CA, but not the one in her wallet.
    old = tmp_path / "old"
    old.mkdir()
    identity, signer = LocalCA.load(_root(fhir) / "ca" / "HospitalAMSP").issue_tls_client("alice")
    (old / "tls-cert.pem").write_bytes(identity.credentials)
    (old / "tls-key.pem").write_bytes(signer.to_secret_bytes())
    mtls.wallets["alice-old"] = old
    with mtls.client("alice-old") as c:
        r = c.get("/Observation")
    assert r.status_code == 401
    assert "not the one in its wallet" in r.json()["issue"][0]["diagnostics"]


def test_the_ledger_signing_certificate_is_no_tls_client_certificate(
    fhir: Fhir, mtls: MtlsServer, tmp_path: Path
) -> None:
    w = fhir.consortium.profile.wallet("alice").directory
    signing = tmp_path / "signing"
    signing.mkdir()
    (signing / "tls-cert.pem").write_bytes((w / "cert.pem").read_bytes())
    (signing / "tls-key.pem").write_bytes((w / "key.pem").read_bytes())
    mtls.wallets["alice-signing"] = signing
    try:
        with mtls.client("alice-signing") as c:
            status = c.get("/Observation").status_code
    except httpx.TransportError:
        status = 0  # refused in the handshake (no clientAuth usage): as good
    assert status in (0, 401)


def test_a_served_wallet_without_a_tls_certificate_is_a_usage_error(
    fhir: Fhir, tmp_path: Path
) -> None:
    w = tmp_path / "bare"
    w.mkdir()
    with pytest.raises(ServedWalletError, match="bare has no TLS client certificate"):
        CertificateMap.build(ca_files_of(_root(fhir), []), {"bare": w})


def test_the_capability_statement_says_mutual_tls(fhir: Fhir, mtls: MtlsServer) -> None:
    with mtls.client("chen") as c:
        body = valid(c.get("/metadata").json())
    (service,) = body["rest"][0]["security"]["service"]
    assert service["coding"][0]["code"] == "Certificates"
