"""``ehrshare store check|gc``: compare the content store with the ledger, and remove the
ciphertexts no record names. The work is in :mod:`ehrshare.storemaint`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    emit,
    fail,
    load_profile,
    mapped_errors,
    unlocked_wallet,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_INTEGRITY, EXIT_USAGE

__all__ = ["register"]

_err = err_console()

StoreWalletOpt = Annotated[
    str,
    typer.Option(
        "--wallet",
        "-w",
        help="An org admin or auditor wallet to list every record version with "
        "(default: the consortium's admin wallet).",
    ),
]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare store``."""
    del bench_app
    store_app = typer.Typer(
        help="Check the content store against the ledger and remove unreferenced ciphertexts.",
        no_args_is_help=True,
    )
    app.add_typer(store_app, name="store")

    def _store_report(report: Any, as_json: bool, verb: str) -> None:
        if as_json:
            emit(report.as_dict())
            return
        _err.print(
            f"{report.records} record versions, {report.blobs} ciphertexts",
            highlight=False,
        )
        for m in report.missing:
            _err.print(
                f"[red]missing:[/red] record {m['record_id']} v{m['version']}: {m['cid']}",
                highlight=False,
                soft_wrap=True,
            )
        for a in report.altered:
            _err.print(
                f"[red]altered:[/red] record {a['record_id']} v{a['version']}: {a['detail']}",
                highlight=False,
                soft_wrap=True,
            )
        for o in report.orphans:
            gone = " (removed)" if o["cid"] in report.removed else ""
            _err.print(
                f"[yellow]unreferenced:[/yellow] {o['cid']}, {o['age_s']:.0f} s old{gone}",
                highlight=False,
                soft_wrap=True,
            )
        if verb:
            _err.print(f"{verb} {len(report.removed)} unreferenced ciphertext(s)")

    @store_app.command("check", epilog=HELP_EPILOG)
    def store_check(
        profile: ProfileOpt = "", wallet: StoreWalletOpt = "", as_json: JsonOpt = False
    ) -> None:
        """Compare every record version on the ledger with the store: records whose ciphertext
        is missing, ciphertexts no record names, ciphertexts that no longer hash to what the
        ledger recorded. Changes nothing. Exit code 5 if any, 0 if clean."""
        from ehrshare.storemaint import check_store

        with mapped_errors():
            prof = load_profile(profile)
            report = check_store(prof, wallet=unlocked_wallet(prof, wallet or "admin"))
        _store_report(report, as_json, "")
        if not report.clean:
            if not as_json:
                _err.print(
                    "see docs/operations.md §9a; unreferenced ciphertexts "
                    "go with 'ehrshare store gc'",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(EXIT_INTEGRITY)
        if not as_json:
            _err.print("[green]✓[/green] store and ledger agree")

    @store_app.command("gc", epilog=HELP_EPILOG)
    def store_gc(
        profile: ProfileOpt = "",
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                help="Grace period: remove only unreferenced ciphertexts at least this old "
                "(90s, 30m, 1h, 2d; 0 for all). A put in flight is younger.",
            ),
        ] = "1h",
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Only say what would be removed.")
        ] = False,
        wallet: StoreWalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Remove ciphertexts no record names (left by a put killed before it registered the
        record) that are older than the grace period; never one a committed record names.
        Kubo: unpin, then repo gc."""
        from ehrshare.storemaint import gc_store, parse_duration

        try:
            grace = parse_duration(older_than)
        except ValueError as exc:
            fail(EXIT_USAGE, f"--older-than: {exc}")
        with mapped_errors():
            prof = load_profile(profile)
            report = gc_store(
                prof,
                older_than_s=grace,
                dry_run=dry_run,
                wallet=unlocked_wallet(prof, wallet or "admin"),
            )
        _store_report(report, as_json, "would remove" if dry_run else "removed")
