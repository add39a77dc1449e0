"""The whole `ehrshare` command tree is pinned: every command's name, place in its group's list,
help text, epilog and options (names, flags, defaults, env variables, help). Restructuring the
command modules must leave it byte for byte; a deliberate change rewrites the snapshot with
``python tests/test_cli_tree.py`` and shows up in review as a diff of tests/cli_tree.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("cli_tree.json")


def _plain(value: Any) -> Any:
    # Defaults as JSON; a path default by its text (its repr would name the platform's class).
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _param(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": type(p).__name__,
        "opts": list(p.opts),
        "secondary_opts": list(p.secondary_opts),
        "required": p.required,
        "default": _plain(p.default),
        "envvar": p.envvar,
        "type": str(p.type_descriptor.annotation),
        "min": _plain(getattr(p, "min", None)),
        "max": _plain(getattr(p, "max", None)),
        "is_flag": getattr(p, "is_flag", False),
        "multiple": p.multiple,
        "nargs": p.nargs,
        "help": getattr(p, "help", None),
        "hidden": getattr(p, "hidden", False),
    }


def command_tree() -> dict[str, Any]:
    """Every command of `ehrshare`, keyed by its path, in the order its group lists it."""
    from typer.main import get_command

    from ehrshare.cli import app

    root = get_command(app)
    tree: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str], ctx: Any) -> None:
        entry: dict[str, Any] = {
            "help": cmd.help,
            "short_help": cmd.short_help,
            "epilog": cmd.epilog,
            "params": [_param(p) for p in cmd.params],
        }
        tree[" ".join(["ehrshare", *path])] = entry
        if hasattr(cmd, "commands"):
            names = list(cmd.list_commands(ctx))
            entry["commands"] = names
            for name in names:
                sub = cmd.commands[name]
                walk(
                    sub,
                    [*path, name],
                    sub.make_context(name, [], parent=ctx, resilient_parsing=True),
                )

    walk(root, [], root.make_context("ehrshare", [], resilient_parsing=True))
    return tree


def _dumps(tree: dict[str, Any]) -> str:
    # One line a parameter: a change to an option reads as a one-line diff.
    def line(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    commands = []
    for path, entry in tree.items():
        fields = [f"    {line(k)}: {line(v)}" for k, v in entry.items() if k != "params"]
        params = ",\n".join(f"      {line(p)}" for p in entry["params"])
        fields.append('    "params": [' + (f"\n{params}\n    ]" if params else "]"))
        commands.append(f"  {line(path)}: {{\n" + ",\n".join(fields) + "\n  }")
    return "{\n" + ",\n".join(commands) + "\n}\n"


def test_the_command_tree_is_unchanged() -> None:
    pinned = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    live = command_tree()
    assert sorted(live) == sorted(pinned), "commands added or removed"
    for path, entry in pinned.items():
        assert live[path] == entry, f"{path} changed"


def test_every_command_and_group_answers_help() -> None:
    from typer.testing import CliRunner

    from ehrshare.cli import app

    runner = CliRunner()
    for path in json.loads(SNAPSHOT.read_text(encoding="utf-8")):
        result = runner.invoke(app, [*path.split()[1:], "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: ehrshare {' '.join(path.split()[1:])}".rstrip() in " ".join(
            result.output.split()
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_cli_tree.py --write  (rewrites tests/cli_tree.json)")
    SNAPSHOT.write_text(_dumps(command_tree()), "utf-8")


def test_every_command_module_is_registered_and_uses_only_public_helpers() -> None:
    # Each area's module registers its own commands; what areas share lives, public, in
    # ehrshare.commands.common (kgc_dkg once imported the records module's private helpers).
    import ast
    import importlib
    import pkgutil

    import ehrshare.commands
    from ehrshare import cli

    modules = [m.name for m in pkgutil.iter_modules(ehrshare.commands.__path__)]
    with_register = {
        f"ehrshare.commands.{m}"
        for m in modules
        if hasattr(importlib.import_module(f"ehrshare.commands.{m}"), "register")
    }
    assert with_register == set(cli._COMMAND_MODULES)
    # commands/services.py lends chaincode.py its _fail; both are the network move's files.
    known = {("chaincode", "ehrshare.commands.services", "_fail")}
    private = set()
    for m in modules:
        source = Path(ehrshare.commands.__path__[0], f"{m}.py").read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ehrshare.comm"):
                private |= {(m, node.module, a.name) for a in node.names if a.name.startswith("_")}
    assert private == known
