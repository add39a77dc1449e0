"""The member commands through typer's CliRunner: output, --json and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import imaging_study, lab_observation

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.stdout


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("cli")
    directory = base / "c"
    info = run_json("consortium", "init", str(directory))
    assert info["threshold"] == 2  # type: ignore[index]
    profile = str(directory)
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("adams", "HospitalA", "clinician"),
        ("baker", "HospitalB", "clinician"),
        ("chen", "HospitalC", "clinician"),
    ):
        out = run_json(
            "consortium", "add-member", name, "--hospital", hospital, "--role", role, "-p", profile
        )
        assert out["role"] == role  # type: ignore[index]
        enrolled = run_json("enroll", "-p", profile, "-w", name)
        assert enrolled["kgc_nodes_used"] == [1, 2]  # type: ignore[index]
        assert "lab" in enrolled["type_keys_published"]  # type: ignore[index]
    lab = base / "lab.json"
    lab.write_text(json.dumps(lab_observation()), encoding="utf-8")
    img = base / "img.json"
    img.write_text(json.dumps(imaging_study()), encoding="utf-8")
    yield {"profile": profile, "lab": str(lab), "img": str(img), "base": str(base)}


def test_init_refuses_an_existing_consortium(world: dict[str, str]) -> None:
    result = runner.invoke(app, ["consortium", "init", world["profile"]])
    assert result.exit_code == 3
    assert "already holds a consortium" in result.output


def test_init_on_fabric_without_the_binaries_says_make_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EHRSHARE_FABRIC_BIN", str(tmp_path / "no-fabric"))
    result = runner.invoke(app, ["consortium", "init", str(tmp_path / "x"), "--ledger", "fabric"])
    assert result.exit_code == 3
    assert "make tools" in result.output and "no-fabric" in result.output
    assert not (tmp_path / "x").exists()


def test_put_get_grant_forward_revoke_audit(world: dict[str, str]) -> None:
    p = world["profile"]
    ref = run_json(
        "record", "put", world["lab"], "--patient", "HospitalAMSP/alice", "-p", p, "-w", "adams"
    )
    record_id = ref["record_id"]  # type: ignore[index]
    assert ref["type"] == "lab"  # type: ignore[index]

    # no grant yet: refused, exit code 1, and the hint
    result = runner.invoke(app, ["record", "get", record_id, "-p", p, "-w", "baker"])
    assert result.exit_code == 1
    assert "denied" in result.output and "ask the patient" in result.output

    grant = run_json(
        "grant",
        "HospitalBMSP/baker",
        "lab",
        "--days",
        "2",
        "--max-hops",
        "1",
        "-p",
        p,
        "-w",
        "alice",
    )
    assert grant["max_hops"] == 1  # type: ignore[index]
    fhir = json.loads(run("record", "get", record_id, "-p", p, "-w", "baker"))
    assert fhir["resourceType"] == "Observation"
    assert fhir["valueQuantity"]["value"] == 13.2

    fwd = run_json("forward", record_id, "HospitalCMSP/chen", "-p", p, "-w", "baker")
    assert fwd["hop"] == 1  # type: ignore[index]
    out = Path(world["base"]) / "chen.json"
    run("record", "get", record_id, "-o", str(out), "-p", p, "-w", "chen")
    assert json.loads(out.read_text())["status"] == "final"

    listed = run_json("record", "list", "-p", p, "-w", "alice")
    assert record_id in [r["record_id"] for r in listed]  # type: ignore[union-attr]
    table = run("record", "list", "-p", p, "-w", "alice")
    assert "lab" in table

    revoked = run_json("revoke", grant["grant_id"], "-p", p, "-w", "alice")  # type: ignore[index]
    assert revoked["state"] == "revoked"  # type: ignore[index]
    assert runner.invoke(app, ["record", "get", record_id, "-p", p, "-w", "chen"]).exit_code == 1

    trail = run_json("audit", "show", "-p", p, "-w", "alice")
    actions = [e["action"] for e in trail["entries"]]  # type: ignore[index]
    # Baker's read: one report (B's proxy); Chen's: two (B's proxy, then C's proxy).
    assert "RevokeAccess" in actions and actions.count("ReportReencryption") == 3
    by_record = run_json("audit", "show", "--record", record_id, "-p", p, "-w", "alice")
    assert {e["record_id"] for e in by_record["entries"]} == {record_id}  # type: ignore[index]
    verdict = run_json("audit", "verify", "-p", p, "-w", "alice")
    assert verdict["valid"] is True  # type: ignore[index]

    # an exported, edited trail: exit code 5
    exported = Path(world["base"]) / "trail.json"
    data = trail
    data["entries"][0]["outcome"] = "forged"  # type: ignore[index]
    exported.write_text(json.dumps(data), encoding="utf-8")
    result = runner.invoke(
        app, ["audit", "verify", "--trail", str(exported), "-p", p, "-w", "alice"]
    )
    assert result.exit_code == 5
    assert "does NOT verify" in result.output


def test_input_and_config_errors_have_exit_codes(world: dict[str, str], tmp_path: Path) -> None:
    p = world["profile"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Observation"}', encoding="utf-8")
    result = runner.invoke(app, ["record", "put", str(bad), "-p", p, "-w", "alice"])
    assert result.exit_code == 6
    assert "invalid FHIR Observation" in result.output

    result = runner.invoke(
        app, ["record", "put", str(tmp_path / "missing.json"), "-p", p, "-w", "alice"]
    )
    assert result.exit_code == 6 and "cannot read" in result.output

    result = runner.invoke(app, ["enroll", "-p", p, "-w", "nobody"])
    assert result.exit_code == 3 and "holds no identity" in result.output

    result = runner.invoke(app, ["enroll", "-p", str(tmp_path / "none"), "-w", "alice"])
    assert result.exit_code == 3 and "does not exist" in result.output

    result = runner.invoke(app, ["grant", "HospitalBMSP/baker", "lab", "-p", p, "-w", "alice"])
    assert result.exit_code == 2 and "--days" in result.output

    result = runner.invoke(app, ["revoke", "g-" + "0" * 32, "-p", p, "-w", "alice"])
    assert result.exit_code == 1 and "does not exist" in result.output

    result = runner.invoke(
        app, ["record", "put", world["img"], "--type", "lab", "-p", p, "-w", "alice"]
    )
    assert result.exit_code == 6 and "contradicts" in result.output


def test_help_explains_exit_codes() -> None:
    out = run("record", "get", "--help")
    assert "Exit codes" in out and "denied" in out


def test_network_status(world: dict[str, str], tmp_path: Path) -> None:
    status = run_json("network", "status", "-p", world["profile"])
    assert status["fabric"]["available"] in (True, False)  # type: ignore[index]
    assert status["ledger"]["backend"] == "embedded"  # type: ignore[index]
    assert status["ledger"]["height"] > 0  # type: ignore[index]
    assert status["ledger"]["organizations"] == [  # type: ignore[index]
        "HospitalAMSP",
        "HospitalBMSP",
        "HospitalCMSP",
    ]
    # Init marks the store, so it needs a Kubo node that answers; point a consortium's profile
    # at one that does not instead.
    down = tmp_path / "kubo-down"
    run("consortium", "init", str(down))
    profile = down / "profile.yaml"
    data = yaml.safe_load(profile.read_text(encoding="utf-8"))
    data["storage"] = {"backend": "kubo", "url": "http://127.0.0.1:9"}
    profile.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(app, ["network", "status", "-p", str(down)])
    assert result.exit_code == 4
    assert "DOWN" in result.output


def test_reissue_tls_replaces_only_the_tls_key(world: dict[str, str]) -> None:
    wallet = Path(world["profile"]) / "wallets" / "chen"
    signing, tls = (wallet / "key.pem").read_bytes(), (wallet / "tls-key.pem").read_bytes()
    out = run_json("consortium", "reissue-tls", "chen", "-p", world["profile"])
    assert out == {"ibe_id": "HospitalCMSP/chen", "wallet": str(wallet)}
    assert (wallet / "key.pem").read_bytes() == signing
    assert (wallet / "tls-key.pem").read_bytes() != tls
    missing = runner.invoke(app, ["consortium", "reissue-tls", "nobody", "-p", world["profile"]])
    assert missing.exit_code == 3
    assert "holds no identity" in missing.output
