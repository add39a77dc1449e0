"""``ehrshare record put|get|list``: store, read and list encrypted FHIR R4 records. The work is
in :class:`ehrshare.session.Session`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    fail,
    fmt_time,
    make_table,
    mapped_errors,
    open_session,
    progress,
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_INPUT, EXIT_USAGE

__all__ = ["register"]

_err = err_console()


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare record``."""
    del bench_app
    record_app = typer.Typer(
        help="Store, read and list encrypted FHIR R4 records.", no_args_is_help=True
    )
    app.add_typer(record_app, name="record")

    @record_app.command("put", epilog=HELP_EPILOG)
    def record_put(
        file: Annotated[str, typer.Argument(help="FHIR R4 resource as JSON ('-' = stdin).")],
        patient: Annotated[
            str, typer.Option(help="Owner's IBE id (<MSP>/<name>); default: yourself.")
        ] = "",
        record_type: Annotated[
            str, typer.Option("--type", help="Record type when no mapping rule covers it.")
        ] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Encrypt a FHIR resource for a patient, store it, then register it on chain.

        The record type comes from the resource's category and security labels; when none
        maps to a type and --type is not given, a warning says it is stored as 'general'."""
        from ehrshare.fhir import parse_resource

        try:
            data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except OSError as exc:
            fail(EXIT_INPUT, f"cannot read {file}: {exc.strerror}")
        with open_session(profile, wallet) as s, mapped_errors():
            resource = parse_resource(data)
            if not record_type and s.mapping.derive(resource) is None:
                _err.print(
                    f"[yellow]warning:[/yellow] no category or security label of this "
                    f"{resource.get_resource_type()} maps to a record type, so it is stored as "
                    f"type '{s.mapping.default_type}' (readable under grants of that type); "
                    "pass --type to choose one",
                    highlight=False,
                    soft_wrap=True,
                )
            with progress("storing", as_json):
                ref = s.put_record(resource, patient=patient or None, type=record_type or None)
        if as_json:
            emit(ref.to_dict())
            return
        _err.print(f"[green]✓[/green] record {ref.record_id} ({ref.type}) for {ref.owner}")
        typer.echo(ref.record_id)

    @record_app.command("get", epilog=HELP_EPILOG)
    def record_get(
        record_id: Annotated[str, typer.Argument(help="Record id (r-…).")],
        out: Annotated[str, typer.Option("--out", "-o", help="Write the FHIR JSON here.")] = "",
        grant_id: Annotated[
            str, typer.Option("--grant", help="Read under this grant of yours (g-…).")
        ] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Request access (logged), get the capsule re-encrypted by the proxies of the grant
        chain, decrypt and print the FHIR resource. Exit code 1 if the chaincode denies it."""
        if out and (Path(out).is_dir() or not Path(out).parent.is_dir()):
            # Said before the read: a read is logged on chain, a path typo need not be.
            fail(EXIT_USAGE, f"cannot write {out}: not a file in an existing directory")
        with open_session(profile, wallet) as s, mapped_errors(), progress("reading", as_json):
            resource = s.read_record(record_id, grant=grant_id or None)
        text = resource.model_dump_json(exclude_none=True, indent=2)
        if out:
            try:
                Path(out).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                # The read is done and logged; only the copy on disk failed.
                fail(EXIT_USAGE, f"cannot write {out}: {exc.strerror}; the record was read")
            if not as_json:
                _err.print(f"[green]✓[/green] wrote {out}")
                return
        typer.echo(text)

    @record_app.command("list", epilog=HELP_EPILOG)
    def record_list(
        patient: Annotated[str, typer.Option(help="Patient IBE id (default: yourself).")] = "",
        granted: Annotated[
            bool,
            typer.Option(
                "--granted", help="The records you may read under grants you hold (clinicians)."
            ),
        ] = False,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """List a patient's records (yourself, or any patient with the auditor role), or with
        --granted the records your valid grants let you read, each with its grant."""
        if granted and patient:
            fail(EXIT_USAGE, "give either --granted or --patient, not both")
        if granted:
            with open_session(profile, wallet) as s, mapped_errors():
                pairs = s.granted_records()
            if as_json:
                emit([{**r.to_dict(), "grant_id": g.grant_id} for r, g in pairs])
                return
            table = make_table("record", "patient", "type", "created", "grant")
            for r, g in pairs:
                table.add_row(
                    r.record_id, r.owner, r.type or r.label, fmt_time(r.created_at), g.grant_id
                )
            out_console().print(table)
            return
        with open_session(profile, wallet) as s, mapped_errors():
            refs = s.list_records(patient or None)
        if as_json:
            emit([r.to_dict() for r in refs])
            return
        table = make_table("record", "type", "creator", "created", "version")
        for r in refs:
            table.add_row(
                r.record_id, r.type or r.label, r.creator, fmt_time(r.created_at), str(r.version)
            )
        out_console().print(table)
