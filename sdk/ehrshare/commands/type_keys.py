"""``ehrshare type-key rotate``: move a patient's records of a type to a new type-key epoch (a
suspected leak of the type key; a revocation does it by itself) and re-key the grants that
remain. The work is in :meth:`ehrshare.session.Session.rotate_type_key`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    mapped_errors,
    open_session,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_REFUSED

__all__ = ["register"]

_err = err_console()


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare type-key rotate``."""
    del bench_app
    type_key_app = typer.Typer(
        help="Your type keys: rotate one to a new epoch (docs/security.md §3.2).",
        no_args_is_help=True,
    )
    app.add_typer(type_key_app, name="type-key")

    @type_key_app.command("rotate", epilog=HELP_EPILOG)
    def rotate(
        record_type: Annotated[str, typer.Option("--type", help="Record type, e.g. lab.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Seal your new records of a type under a fresh type key (a suspected leak); records
        created before keep theirs. Your remaining grants of the type are re-keyed; one whose
        proxy is down is named (exit code 1) and finished by 'ehrshare grant repair'. Also
        finishes a rotation a revocation began."""
        with open_session(profile, wallet) as s, mapped_errors():
            done = s.rotate_type_key(record_type)
        if as_json:
            emit(
                {
                    "type": done.type,
                    "type_epoch": done.type_epoch,
                    "rekeyed": list(done.rekeyed),
                    "failed": done.failed,
                }
            )
        else:
            _err.print(
                f"[green]✓[/green] type {done.type}: new records use type-key epoch "
                f"{done.type_epoch}; {len(done.rekeyed)} grant(s) re-keyed",
                highlight=False,
            )
            for grant_id, why in done.failed.items():
                _err.print(
                    f"grant {grant_id} not re-keyed: {why}; run 'ehrshare grant repair {grant_id}'",
                    highlight=False,
                    markup=False,
                )
        if done.failed:
            raise typer.Exit(EXIT_REFUSED)
