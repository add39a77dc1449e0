"""``ehrshare hospital init|add-member``: a hospital's own directory (CA, node identities, keys)
and the join request it hands to the consortium. This module only parses, renders and maps
errors to exit codes; the work is in :mod:`ehrshare.hospital`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ehrshare.commands.common import HELP_EPILOG, JsonOpt, emit, fail, mapped_errors
from ehrshare.console import err_console
from ehrshare.errors import EXIT_USAGE

__all__ = ["register"]

_err = err_console()


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare hospital``."""
    del bench_app
    hospital_app = typer.Typer(
        help="A hospital as its own operator: its CA, node identities and keys in its own "
        "directory, and the join request it hands to the consortium.",
        no_args_is_help=True,
    )
    app.add_typer(hospital_app, name="hospital")

    @hospital_app.command("init", epilog=HELP_EPILOG)
    def hospital_init(
        directory: Annotated[Path, typer.Argument(help="New directory for the hospital.")],
        name: Annotated[str, typer.Option("--name", help="Hospital name, e.g. HospitalD.")],
        endpoint: Annotated[
            list[str] | None,
            typer.Option(
                "--endpoint",
                help="A public endpoint KIND=HOST:PORT (KIND: peer, kgc, proxy, ipfs); repeat.",
            ),
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Create the hospital's CA, its admin, KGC node and proxy identities and node keys in
        DIR, and write DIR/join-request.json: public material only (MSP id, certificates,
        endpoints) with its SHA-256. No private key leaves DIR; hand the request to the
        consortium ('ehrshare consortium add-hospital')."""
        from ehrshare.hospital import init_hospital

        endpoints: dict[str, str] = {}
        for item in endpoint or []:
            kind, sep, address = item.partition("=")
            if not sep or not kind or not address:
                fail(EXIT_USAGE, f"--endpoint {item!r} is not KIND=HOST:PORT")
            endpoints[kind] = address
        with mapped_errors():
            hospital = init_hospital(directory, name, endpoints)
            request = hospital.request()
        if as_json:
            emit(
                {
                    "directory": str(hospital.root),
                    "msp_id": hospital.msp_id,
                    "request": str(hospital.request_file),
                    "sha256": request.sha256,
                }
            )
            return
        typer.echo(str(hospital.request_file))
        _err.print(
            f"[green]✓[/green] {hospital.msp_id} in {hospital.root}; join request sha256 "
            f"{request.sha256}",
            soft_wrap=True,
            highlight=False,
        )

    @hospital_app.command("add-member", epilog=HELP_EPILOG)
    def hospital_add_member(
        directory: Annotated[Path, typer.Argument(help="The hospital's directory.")],
        name: Annotated[str, typer.Argument(help="Enrollment id (becomes the wallet name).")],
        role: Annotated[str, typer.Option(help="patient, clinician, auditor or admin.")],
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a member of this hospital (its own CA) into DIR/wallets/NAME; pass that path
        as --wallet to other commands."""
        from ehrshare.hospital import HospitalDir

        with mapped_errors():
            wallet = HospitalDir.open(directory).issue_member(name, role)
            identity, _ = wallet.load_identity()
        if as_json:
            emit({"ibe_id": identity.ibe_id, "wallet": str(wallet.directory), "role": role})
            return
        _err.print(f"[green]✓[/green] {identity.ibe_id} ({role}) → wallet {wallet.directory}")
