"""`audit show` in the patient's words: record types by the names the patient's profile gives
them (the chain holds only opaque labels), grantees as 'name (hospital)'; a label the profile
does not name stays opaque, with a note. `--json` keeps the entries as stored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from cli_world import invoke, make_world

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


def _rows(table: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.splitlines()
        if line.startswith("│")
    ]


def test_audit_show_names_types_and_grantees_as_the_patient_does(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    p = world["profile"]
    grant = invoke("grant", "HospitalBMSP/baker", "lab", "--days", "1", "-p", p, "-w", "alice")
    assert grant.exit_code == 0, grant.output
    grant_id = grant.stdout.strip().splitlines()[-1]
    assert invoke("revoke", grant_id, "-p", p, "-w", "alice").exit_code == 0

    wide = {"COLUMNS": "220"}  # one line per row: the cells can be compared whole
    shown = invoke("audit", "show", "-p", p, "-w", "alice", env=wide)
    assert shown.exit_code == 0, shown.output
    header = next(line for line in shown.stdout.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "#", "time", "action", "outcome", "actor", "record / grant", "type", "grantee"
    ]  # fmt: skip
    rows = _rows(shown.stdout)
    assert all(TIME.match(row[1]) for row in rows), rows
    cells = [[c for i, c in enumerate(row) if i != 1] for row in rows]
    alice = "HospitalAMSP/alice"
    assert cells == [
        ["1", "RegisterIdentity", "ok", alice, "", "", ""],
        ["2", "PublishTypeKey", "ok", alice, "", "general", ""],
        ["3", "PublishTypeKey", "ok", alice, "", "imaging", ""],
        ["4", "PublishTypeKey", "ok", alice, "", "lab", ""],
        ["5", "PublishTypeKey", "ok", alice, "", "medication", ""],
        ["6", "PublishTypeKey", "ok", alice, "", "restricted", ""],
        ["7", "PublishTypeKey", "ok", alice, "", "sensitive", ""],
        ["8", "PublishTypeKey", "ok", alice, "", "vital-signs", ""],
        ["9", "RegisterRecord", "ok", alice, world["record"], "lab", ""],
        ["10", "GrantAccess", "ok", alice, grant_id, "lab", "baker (HospitalB)"],
        ["11", "RevokeAccess", "ok", alice, grant_id, "lab", "baker (HospitalB)"],
        ["12", "RotateTypeKey", "ok", alice, "", "lab", ""],  # the revocation's new epoch
    ]
    # No opaque label is left in the table; the JSON keeps what the chain holds.
    assert "t-" not in shown.stdout
    stored = json.loads(invoke("audit", "show", "--json", "-p", p, "-w", "alice").stdout)
    grant_entry = stored["entries"][9]
    assert re.fullmatch(r"t-[0-9a-f]{32}", grant_entry["detail"]["type"])
    assert grant_entry["detail"]["grantee"] == "HospitalBMSP/baker"

    # A client whose profile does not name 'lab' (its own type list) shows the label, noted.
    profile_file = Path(p) / "profile.yaml"
    data = yaml.safe_load(profile_file.read_text(encoding="utf-8"))
    data["types"]["rules"] = []
    profile_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    narrowed = invoke("audit", "show", "-p", p, "-w", "alice", env=wide)
    assert narrowed.exit_code == 0, narrowed.output
    row = _rows(narrowed.stdout)[9]
    label = grant_entry["detail"]["type"]
    assert row[6:] == [f"{label} (a type this profile does not name)", "baker (HospitalB)"]
    assert _rows(narrowed.stdout)[1][6] == "general"  # still named: the profile's default type
