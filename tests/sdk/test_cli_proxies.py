"""The CLI with one proxy per hospital: ``grant``/``forward --proxy``, ``record get --grant`` and
``network status`` listing every proxy."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ehrshare.cli import app
from ehrshare.demo import lab_observation

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.stdout


def run_json(*args: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(run(*args, "--json"))
    return out


def test_cli_names_proxies_and_grants(tmp_path: Path) -> None:
    p = str(tmp_path / "c")
    run_json("consortium", "init", p)
    for name, hospital, role in (
        ("alice", "HospitalA", "patient"),
        ("baker", "HospitalB", "clinician"),
        ("chen", "HospitalC", "clinician"),
    ):
        run_json("consortium", "add-member", name, "--hospital", hospital, "--role", role, "-p", p)
        run_json("enroll", "-p", p, "-w", name)
    status = json.loads(run("network", "status", "-p", p, "--json"))
    assert [(x["name"], x["msp"]) for x in status["proxies"]] == [
        ("proxy-hospitala", "HospitalAMSP"),
        ("proxy-hospitalb", "HospitalBMSP"),
        ("proxy-hospitalc", "HospitalCMSP"),
    ]
    lab = tmp_path / "lab.json"
    lab.write_text(json.dumps(lab_observation()), encoding="utf-8")
    record_id = str(run_json("record", "put", str(lab), "-p", p, "-w", "alice")["record_id"])

    to_baker = run_json("grant", "HospitalBMSP/baker", "lab", "--days", "1", "--max-hops", "1",
                        "-p", p, "-w", "alice")  # fmt: skip
    assert to_baker["proxy"] == "HospitalBMSP/proxy"  # the grantee's hospital by default
    direct = run_json("grant", "HospitalCMSP/chen", "lab", "--days", "1",
                      "--proxy", "HospitalAMSP/proxy", "-p", p, "-w", "alice")  # fmt: skip
    assert direct["proxy"] == "HospitalAMSP/proxy"
    fwd = run_json("forward", record_id, "HospitalCMSP/chen", "-p", p, "-w", "baker")
    assert fwd["proxy"] == "HospitalCMSP/proxy"

    for grant in (direct, fwd):
        fhir = json.loads(
            run(
                "record", "get", record_id, "--grant", str(grant["grant_id"]), "-p", p, "-w", "chen"
            )
        )
        assert fhir["valueQuantity"]["value"] == 13.2
    trail = run_json("audit", "show", "--record", record_id, "-p", p, "-w", "alice")
    entries = trail["entries"]
    assert isinstance(entries, list)
    reports = [
        (e["detail"]["proxy"], e["detail"]["applied"])
        for e in entries
        if e["action"] == "ReportReencryption"
    ]
    assert reports == [
        ("HospitalAMSP/proxy", 1),
        ("HospitalBMSP/proxy", 1),
        ("HospitalCMSP/proxy", 2),
    ]
    # Someone else's grant: refused by the chaincode (exit 1), nothing decided.
    out = runner.invoke(
        app,
        ["record", "get", record_id, "--grant", str(direct["grant_id"]), "-p", p, "-w", "baker"],
    )
    assert out.exit_code == 1
    assert f"is not the grantee of grant {direct['grant_id']}" in out.output
