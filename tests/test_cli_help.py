"""`ehrshare --help` lists: every command summary is one flowing line, not a chopped docstring."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ehrshare.cli import app


def _commands(typer_app: typer.Typer) -> list[typer.models.CommandInfo]:
    found = list(typer_app.registered_commands)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            found.extend(_commands(group.typer_instance))
    return found


def test_every_command_has_a_one_line_summary() -> None:
    infos = _commands(app)
    assert len(infos) > 20
    for info in infos:
        assert info.short_help, f"{info.name or info.callback} has no summary"
        assert "\n" not in info.short_help


def test_top_level_list_joins_the_demo_summary() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    # The demo's docstring wraps after "three FHIR"; the list must not break the sentence there.
    assert "three FHIR records" in result.output
