"""Everyday output: ids whole in tables at any width, dates with their zone, a warning before a
record without a category becomes type 'general'."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_world import invoke, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_world(tmp_path_factory.mktemp("cli-everyday"))


def _column(table: str, index: int) -> str:
    """One column's cells joined top to bottom (a folded id spans several lines)."""
    rows = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    return "".join(row[index + 1].strip() for row in rows)


@pytest.mark.parametrize("width", ["40", "80", "200"])
def test_record_list_prints_ids_whole(world: dict[str, str], width: str) -> None:
    result = invoke("record", "list", "-p", world["profile"], "-w", "alice", env={"COLUMNS": width})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert world["record"] in _column(result.stdout, 0)


@pytest.mark.parametrize("width", ["60", "200"])
def test_audit_show_cuts_nothing(world: dict[str, str], width: str) -> None:
    result = invoke("audit", "show", "-p", world["profile"], "-w", "alice", env={"COLUMNS": width})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    # The actor and the record id survive whole, if folded.
    assert "HospitalAMSP/alice" in _column(result.stdout, 4)
    assert world["record"] in _column(result.stdout, 5)


def test_times_are_dates_with_their_zone(world: dict[str, str]) -> None:
    wide = {"COLUMNS": "200"}  # on a narrow terminal the date and the time share a cell
    result = invoke("record", "list", "-p", world["profile"], "-w", "alice", env=wide)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", result.stdout), result.stdout
    grant = invoke(
        "grant", "HospitalBMSP/baker", "lab", "--days", "1", "-p", world["profile"], "-w", "alice"
    )
    assert grant.exit_code == 0, grant.output
    assert re.search(r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", grant.output), grant.output


def test_a_record_without_a_category_warns_before_it_becomes_general(
    world: dict[str, str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(
        json.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        encoding="utf-8",
    )
    p = world["profile"]
    result = invoke("record", "put", str(plain), "-p", p, "-w", "alice")
    assert result.exit_code == 0, result.output
    assert "warning: no category or security label of this Observation" in result.output
    assert "stored as type 'general'" in result.output
    assert result.output.index("warning:") < result.output.index("✓ record")
    # With --type, or a category a rule maps, there is nothing to warn about.
    typed = invoke("record", "put", str(plain), "--type", "general", "-p", p, "-w", "alice")
    assert typed.exit_code == 0 and "warning" not in typed.output
    lab = invoke("record", "put", world["lab"], "-p", p, "-w", "alice")
    assert lab.exit_code == 0 and "warning" not in lab.output


def test_record_list_granted_shows_what_a_clinician_may_read(world: dict[str, str]) -> None:
    p = world["profile"]
    # Alice holds no grants (other tests of this module may have granted Dr Baker already).
    none = invoke("record", "list", "--granted", "--json", "-p", p, "-w", "alice")
    assert none.exit_code == 0 and json.loads(none.stdout) == []
    grant = invoke("grant", "HospitalBMSP/baker", "lab", "--days", "1", "-p", p, "-w", "alice")
    grant_id = grant.stdout.strip().splitlines()[-1]
    listed = invoke("record", "list", "--granted", "--json", "-p", p, "-w", "baker")
    assert listed.exit_code == 0, listed.output
    rows = {r["record_id"]: r for r in json.loads(listed.stdout)}
    # Listed once, under one of the grants that cover it (this one, or an earlier test's).
    assert rows[world["record"]]["owner"] == "HospitalAMSP/alice"
    assert rows[world["record"]]["type"] == "lab"
    assert grant_id.startswith("g-") and rows[world["record"]]["grant_id"].startswith("g-")
    table = invoke("record", "list", "--granted", "-p", p, "-w", "baker", env={"COLUMNS": "70"})
    assert world["record"] in _column(table.stdout, 0)
    assert rows[world["record"]]["grant_id"] in _column(table.stdout, 4)
    both = invoke("record", "list", "--granted", "--patient", "HospitalAMSP/alice", "-p", p)
    assert both.exit_code == 2 and "either --granted or --patient" in both.output
