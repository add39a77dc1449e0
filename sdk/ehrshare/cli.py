"""The `ehrshare` command line.

This module only assembles the command tree. Each area registers its own
commands from a module under :mod:`ehrshare.commands`, so the parts of the
system can grow their commands without editing one shared file.
"""

from __future__ import annotations

import importlib
import inspect
import logging

import typer

from ehrshare.errors import exit_code_table

__all__ = ["app", "bench_app", "main"]

app = typer.Typer(
    name="ehrshare",
    help=(
        "Secure EHR sharing across a hospital consortium: encrypted records in IPFS, "
        "pointers, grants and an audit log on Hyperledger Fabric, identity-based "
        "multi-hop proxy re-encryption on BLS12-381."
    ),
    epilog=exit_code_table(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(
    help="Benchmarks: each prints JSON with machine metadata (use --json for JSON only).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

# Modules under ehrshare.commands that expose `register(app, bench_app)`.
_COMMAND_MODULES = (
    "ehrshare.commands.demo",
    "ehrshare.commands.consortium",
    "ehrshare.commands.records",
    "ehrshare.commands.audit",
    "ehrshare.commands.enrol",
    "ehrshare.commands.grants",
    "ehrshare.commands.type_keys",
    "ehrshare.commands.guardians",
    "ehrshare.commands.emergency",
    "ehrshare.commands.network",
    "ehrshare.commands.wallet",
    "ehrshare.commands.store",
    "ehrshare.commands.ledger_cli",
    "ehrshare.commands.bench_crypto",
    "ehrshare.commands.bench_ledger",
    "ehrshare.commands.bench_consensus",
    "ehrshare.commands.bench_dkg",
    "ehrshare.commands.bench_e2e",
    "ehrshare.commands.bench_chaincode",
    "ehrshare.commands.bench_fabric",
    "ehrshare.commands.bench_fhir",
    "ehrshare.commands.services",
    "ehrshare.commands.chaincode",
    "ehrshare.commands.fhir",
    "ehrshare.commands.hospital",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # this area has not landed its commands yet
                continue
            raise
        module.register(app, bench_app)


def _one_line_summaries(typer_app: typer.Typer) -> None:
    # Typer's command lists keep a docstring's hard line breaks in rich mode, which chops the
    # summaries mid-sentence; give every command a one-line short help from its first paragraph.
    for info in typer_app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(doc.split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_line_summaries(group.typer_instance)


_register_all()
_one_line_summaries(app)


def main() -> None:
    """Entry point of the `ehrshare` console script and of `python -m ehrshare`."""
    app()
