"""``ehrshare fhir serve`` and ``ehrshare fhir token`` as a hospital runs them: a consortium
made with the CLI, the server as its own process on loopback (stopped by pid), and the curl
examples of docs/fhir-api.md run against it, their printed output compared."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir_world import cli, cli_world, runner, serve_process, server_cert, wallet_client

from ehrshare.cli import app
from ehrshare.faults import FAULT_ENV

DOC = Path(__file__).resolve().parents[2] / "docs" / "fhir-api.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return cli_world(tmp_path_factory.mktemp("fhir-cli"))


def _serve(profile: str, *extra: str) -> subprocess.Popen[str]:
    return serve_process(profile, *extra)


@pytest.fixture(scope="module")
def served(world: dict[str, str]) -> Iterator[str]:
    proc = _serve(world["profile"], "--listen", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/fhir"), (
            url,
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
        )
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _script(block: str) -> tuple[str, list[str]]:
    """The ``$`` commands of a console block (with their here-documents) as one script, and
    the output lines the block shows."""
    commands: list[str] = []
    expected: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.startswith("$ "):
            expected.append(line)
            continue
        command = [line[2:]]
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            for body in lines:
                command.append(body)
                if body == heredoc.group(1):
                    break
        commands.append("\n".join(command))
    return "set -euo pipefail\n" + "\n".join(commands) + "\n", expected


def test_the_docs_curl_examples_run(world: dict[str, str], served: str, tmp_path: Path) -> None:
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert blocks, "docs/fhir-api.md has no console example"
    script, expected = _script(blocks[0])
    env = {**os.environ, "BASE": served, **{k: v for k, v in world.items() if k != "profile"}}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_serve_refuses_a_bad_listen_address(world: dict[str, str]) -> None:
    proc = _serve(world["profile"], "--listen", "nowhere")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "is not HOST:PORT" in err and "Traceback" not in err


def test_serve_refuses_a_foreign_token_file(world: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps({"tokens": ["x"]}), encoding="utf-8")
    proc = _serve(world["profile"], "--listen", "127.0.0.1:0", "--tokens", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "is not a version-1 token file" in err and "Traceback" not in err


def test_a_token_for_a_wallet_that_does_not_exist_is_refused(world: dict[str, str]) -> None:
    tokens = Path(world["profile"]) / "fhir-tokens.json"
    before = tokens.read_bytes()
    result = runner.invoke(app, ["fhir", "token", "-p", world["profile"], "-w", "nobody"])
    assert result.exit_code == 3, result.output
    assert tokens.read_bytes() == before


def test_kill_while_issuing_a_token_keeps_the_old_file(world: dict[str, str]) -> None:
    tokens = Path(world["profile"]) / "fhir-tokens.json"
    before = tokens.read_bytes()
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "ehrshare", "fhir", "token", "--patient-own-gateway"),
            *("-p", world["profile"], "-w", "alice"),
        ],
        env={**os.environ, FAULT_ENV: "fhir_token.before_rename"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert tokens.read_bytes() == before  # the old tokens still work, no half file
    # a temporary file may be left behind; the next issue succeeds and is usable
    token = cli("fhir", "token", "-p", world["profile"], "-w", "alice", "--patient-own-gateway")
    from ehrshare.fhirapi import TokenBook

    assert TokenBook.load(tokens).wallet_for(token) == "alice"
    assert TokenBook.load(tokens).wallet_for(world["ALICE"]) == "alice"
    assert tokens.stat().st_mode & 0o777 == 0o600
    assert world["ALICE"] not in tokens.read_text(encoding="utf-8")  # hashes only


def test_audit_verify_checks_an_exported_audit_event_bundle(
    world: dict[str, str], served: str, tmp_path: Path
) -> None:
    import httpx

    with httpx.Client(headers={"Authorization": f"Bearer {world['ALICE']}"}) as client:
        r = client.get(f"{served}/AuditEvent", params={"patient": world["ALICE_ID"]})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["entry"]
    good = tmp_path / "bundle.json"
    good.write_text(json.dumps(bundle), encoding="utf-8")
    verify = ("audit", "verify", "-p", world["profile"], "-w", "alice", "--fhir")
    result = runner.invoke(app, [*verify, str(good)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output

    edited = json.loads(json.dumps(bundle))
    edited["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["value"] = "HospitalCMSP/x"
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(edited), encoding="utf-8")
    result = runner.invoke(app, [*verify, str(bad)])
    assert result.exit_code == 5, result.output
    assert "AuditEvent.agent does not match its log entry" in result.output

    shortened = json.loads(json.dumps(bundle))
    del shortened["entry"][-1]  # a deleted tail: caught against the chain's head
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(shortened), encoding="utf-8")
    result = runner.invoke(app, [*verify, str(cut)])
    assert result.exit_code == 5, result.output

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"resourceType": "Patient"}), encoding="utf-8")
    result = runner.invoke(app, [*verify, str(other)])
    assert result.exit_code == 6, result.output
    assert "Traceback" not in result.output


def test_a_patients_token_needs_the_patients_own_gateway(world: dict[str, str]) -> None:
    tokens = Path(world["profile"]) / "fhir-tokens.json"
    before = tokens.read_bytes()
    result = runner.invoke(app, ["fhir", "token", "-p", world["profile"], "-w", "alice"])
    assert result.exit_code == 2, result.output
    assert "hold the patient's identity key" in " ".join(result.output.split())
    assert tokens.read_bytes() == before
    # a clinician's wallet needs no such flag
    assert cli("fhir", "token", "-p", world["profile"], "-w", "baker")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mtls", "--member", "baker"], "--mtls needs the server's certificate"),
        (["--mtls", "TLS"], "--mtls needs at least one --member"),
        (["--member", "baker", "TLS"], "--member, --client-ca and --patient-own-gateway go"),
        (["--mtls", "--member", "alice", "TLS"], "hold the patient's identity key"),
        (["--mtls", "--member", "nobody", "TLS"], "nobody"),
    ],
)
def test_serve_mtls_refuses_bad_options(
    world: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    if "TLS" in args:
        cert, key = server_cert(world["profile"], tmp_path)
        args = [a for a in args if a != "TLS"] + ["--tls-cert", cert, "--tls-key", key]
    proc = _serve(world["profile"], "--listen", "127.0.0.1:0", *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (2, 3), err
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_serve_mtls_acts_as_the_certificates_member(world: dict[str, str], tmp_path: Path) -> None:

    import httpx

    from ehrshare.demo import lab_observation

    cert, key = server_cert(world["profile"], tmp_path)
    proc = _serve(
        world["profile"],
        *("--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--mtls"),
        *("--member", "alice", "--member", "baker", "--patient-own-gateway"),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""

        def client(name: str) -> httpx.Client:
            return wallet_client(world["profile"], url, name)

        with client("alice") as alice, client("baker") as baker:
            r = alice.post(
                "/Observation",
                json=lab_observation(),
                headers={"Content-Type": "application/fhir+json"},
            )
            assert r.status_code == 201, r.text
            assert baker.get(f"/Observation/{r.json()['id']}").status_code == 403
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
