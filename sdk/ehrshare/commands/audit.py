"""``ehrshare audit show|verify``: a patient's hash-chained operation log, in words, and its
verification (chaincode, offline, and the whole ledger). The work is in
:class:`ehrshare.session.Session`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_INPUT, EXIT_INTEGRITY, EXIT_USAGE

__all__ = ["register"]

_err = err_console()


def _member_in_words(ibe_id: str) -> str:
    """A member id as people read it: ``HospitalBMSP/baker`` → ``baker (HospitalB)`` (the name
    it was registered under, and its hospital); anything else as it is."""
    msp, sep, name = ibe_id.partition("/")
    if not sep or not msp or not name:
        return ibe_id
    return f"{name} ({msp.removesuffix('MSP') or msp})"


def _type_in_words(labels: Any, label: str) -> str:
    """An on-chain type label by the name this profile's type mapping gives it; a label the
    mapping does not know stays opaque, with a note."""
    name = labels.reveal(label)
    return str(name) if name is not None else f"{label} (a type this profile does not name)"


def _fhir_trail(path: str) -> Any:
    """The trail an AuditEvent Bundle (``GET [base]/AuditEvent``) carries; exit 6 if the file
    is no such Bundle, 5 if an AuditEvent says other than the log entry it carries."""
    from ehrshare.fhirapi.auditevent import AuditExportError, entries_from_bundle
    from ehrshare.jsontext import loads_untrusted
    from ehrshare.session import AuditTrail

    try:
        raw = loads_untrusted(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
            raise ValueError("not a FHIR Bundle")
        entries = entries_from_bundle(raw)
    except AuditExportError as exc:
        fail(EXIT_INTEGRITY, f"{path}: {exc}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        fail(EXIT_INPUT, f"{path} is not an AuditEvent Bundle of the FHIR API: {exc}")
    if not entries:
        fail(EXIT_INPUT, f"{path} holds no AuditEvent")
    return AuditTrail(str(entries[0].get("chain", "")), tuple(entries))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare audit``."""
    del bench_app
    audit_app = typer.Typer(
        help="Show and verify the hash-chained operation log.", no_args_is_help=True
    )
    app.add_typer(audit_app, name="audit")

    @audit_app.command("show", epilog=HELP_EPILOG)
    def audit_show(
        patient: Annotated[str, typer.Option(help="Patient IBE id (default: yourself).")] = "",
        record: Annotated[str, typer.Option(help="Only this record's entries.")] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Print a patient's (or a record's) operation log: who did what, when, with what
        outcome; record types by the names this profile gives them (the chain holds only
        opaque labels) and grantees as 'name (hospital)'. --json prints the entries as stored
        (opaque labels, member ids)."""
        with open_session(profile, wallet) as s, mapped_errors():
            trail = s.audit(patient or None, record=record or None)
            labels = s.labels
        if as_json:
            emit(trail.to_dict())
            return
        table = make_table(
            "#", "time", "action", "outcome", "actor", "record / grant", "type", "grantee"
        )
        for e in trail.entries:
            detail = e["detail"] if isinstance(e.get("detail"), dict) else {}
            actor = detail.get("requester") or e["actor"]
            label = detail.get("type")
            grantee = detail.get("grantee")
            table.add_row(
                str(e["seq"]),
                fmt_time(e["timestamp"]),
                e["action"],
                e["outcome"],
                actor,
                e["record_id"] or e["grant_id"],
                _type_in_words(labels, label) if isinstance(label, str) else "",
                _member_in_words(grantee) if isinstance(grantee, str) else "",
            )
        out_console().print(table)

    @audit_app.command("verify", epilog=HELP_EPILOG)
    def audit_verify(
        patient: Annotated[str, typer.Option(help="Patient IBE id (default: yourself).")] = "",
        trail_file: Annotated[
            str, typer.Option("--trail", help="Verify an exported trail (audit show --json).")
        ] = "",
        against: Annotated[
            list[str] | None,
            typer.Option("--against", help="A head file saved with 'ehrshare ledger head'."),
        ] = None,
        fhir_file: Annotated[
            str,
            typer.Option(
                "--fhir", help="Verify an AuditEvent Bundle exported by the FHIR API instead."
            ),
        ] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Recompute the hash chain (chaincode and offline) and check the whole ledger (see
        'ehrshare ledger verify'). Exit code 5 if anything does not verify."""
        from ehrshare.commands.ledger_cli import read_heads
        from ehrshare.jsontext import loads_untrusted
        from ehrshare.session import AuditTrail

        heads = read_heads(against)

        trail = None
        if trail_file:
            try:
                raw = loads_untrusted(Path(trail_file).read_text(encoding="utf-8"))
                trail = AuditTrail(raw["chain"], tuple(raw["entries"]))
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
                fail(EXIT_INPUT, f"{trail_file} is not an exported audit trail: {exc}")
        if fhir_file:
            if trail_file:
                fail(EXIT_USAGE, "give --trail or --fhir, not both")
            trail = _fhir_trail(fhir_file)
        with open_session(profile, wallet) as s, mapped_errors():
            verdict = s.verify_audit(patient or None, trail=trail, against=heads)
        if as_json:
            emit(verdict.to_dict())
        elif verdict.valid:
            _err.print(
                f"[green]✓[/green] audit trail of {verdict.chain}: {verdict.length} entries, valid"
            )
        else:
            where = f"first bad entry #{verdict.first_bad_seq}: " if verdict.first_bad_seq else ""
            _err.print(
                f"[red]✗ audit trail of {verdict.chain} does NOT verify[/red]: {where}"
                f"{verdict.reason}"
            )
        if not verdict.valid:
            raise typer.Exit(EXIT_INTEGRITY)
