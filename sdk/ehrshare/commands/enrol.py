"""``ehrshare enroll``: register on chain, get the identity key from the KGC nodes and publish
the per-type public keys. The work is in :meth:`ehrshare.session.Session.enroll`.
"""

from __future__ import annotations

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    mapped_errors,
    open_session,
    progress,
)
from ehrshare.console import err_console

__all__ = ["register"]

_err = err_console()


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare enroll``."""
    del bench_app

    @app.command("enroll", epilog=HELP_EPILOG)
    def enroll(profile: ProfileOpt = "", wallet: WalletOpt = "", as_json: JsonOpt = False) -> None:
        """Register on chain, get your identity key from τ KGC nodes (threshold extraction,
        each partial key verified) and publish your per-type public keys."""
        with (
            open_session(profile, wallet) as s,
            mapped_errors(),
            progress("enrolling", as_json) as say,
        ):
            say("threshold key extraction from the KGC nodes")
            result = s.enroll()
            say("publishing type keys")
            published = s.publish_type_keys()
        data = {
            "ibe_id": result.ibe_id,
            "kgc_nodes_used": list(result.used),
            "kgc_nodes_unavailable": {str(k): v for k, v in result.failed.items()},
            "kgc_nodes_invalid": list(result.invalid),
            "type_keys_published": published,
        }
        if as_json:
            emit(data)
            return
        _err.print(
            f"[green]✓[/green] {result.ibe_id} enrolled with KGC nodes "
            f"{', '.join(map(str, result.used))}; type keys: {', '.join(published) or 'unchanged'}"
        )
        for k, v in result.failed.items():
            _err.print(f"  [yellow]node {k} unavailable:[/yellow] {v}")
        for k in result.invalid:
            _err.print(f"  [red]node {k} sent an invalid partial key (excluded)[/red]")
