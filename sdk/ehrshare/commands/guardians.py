"""``ehrshare guardian add|remove|show|grant|propose-for-minor|approve``: a patient's guardians,
a guardian granting for the patient, and hospital admins registering a minor's guardian.
Revoking and reading the audit trail for the patient are ``ehrshare revoke`` and ``ehrshare
audit show --patient`` (a guardian's read is logged first). The work is in
:class:`ehrshare.session.Session`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Annotated

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    fail,
    fmt_date,
    mapped_errors,
    open_session,
)
from ehrshare.commands.grants import MAX_GRANT_DAYS
from ehrshare.console import err_console, out_console
from ehrshare.contract.types import Guardianship
from ehrshare.errors import EXIT_USAGE

__all__ = ["register"]

_err = err_console()
_ACTIONS = ("audit", "grant", "revoke")


def _days(days: float | None) -> _dt.timedelta | None:
    """``--days`` as a period, refused outside (0, MAX_GRANT_DAYS] as ``grant`` refuses it."""
    if days is None:
        return None
    if not math.isfinite(days) or not 0 < days <= MAX_GRANT_DAYS:
        fail(
            EXIT_USAGE,
            f"--days {days:g} is out of range: give a number of days above 0 and at most "
            f"{MAX_GRANT_DAYS} (100 years)",
        )
    return _dt.timedelta(days=days)


def _actions(text: str) -> list[str]:
    actions = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in actions if a not in _ACTIONS]
    if not actions or bad:
        fail(
            EXIT_USAGE,
            f"--actions {text!r}: give a comma-separated list of {', '.join(_ACTIONS)}",
        )
    return actions


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare guardian``."""
    del bench_app
    guardian_app = typer.Typer(
        help="A patient's guardians: register one with its limits, remove it, show it; as a "
        "guardian, grant for the patient; as hospital admins, register a minor's guardian.",
        no_args_is_help=True,
    )
    app.add_typer(guardian_app, name="guardian")

    @guardian_app.command("add", epilog=HELP_EPILOG)
    def guardian_add(
        guardian: Annotated[str, typer.Argument(help="The guardian's IBE id (role guardian).")],
        types: Annotated[
            list[str], typer.Option("--type", help="A record type it covers (repeat).")
        ],
        days: Annotated[float, typer.Option(help="How long the guardianship lasts.")],
        actions: Annotated[
            str, typer.Option(help="Comma-separated: grant, revoke, audit.")
        ] = "grant,revoke,audit",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Register (or change) a guardian who acts for you within these limits."""
        period = _days(days)
        assert period is not None  # --days is required
        wanted = _actions(actions)
        with open_session(profile, wallet) as s, mapped_errors():
            entry = s.add_guardian(guardian, types=types, expires=period, actions=wanted)
        if as_json:
            emit(
                {
                    "guardian": entry.guardian,
                    "actions": list(entry.actions),
                    "types": types,
                    "expiry": entry.expiry,
                }
            )
            return
        _err.print(
            f"[green]✓[/green] {entry.guardian} may {', '.join(entry.actions)} for you "
            f"({', '.join(types)}) until {fmt_date(entry.expiry)}"
        )

    @guardian_app.command("remove", epilog=HELP_EPILOG)
    def guardian_remove(
        guardian: Annotated[str, typer.Argument(help="The guardian's IBE id.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
    ) -> None:
        """End a guardianship and revoke the grants you gave the guardian."""
        with open_session(profile, wallet) as s, mapped_errors():
            s.remove_guardian(guardian)
        _err.print(f"[green]✓[/green] {guardian} no longer acts for you")

    @guardian_app.command("show", epilog=HELP_EPILOG)
    def guardian_show(
        patient: Annotated[str, typer.Argument(help="The patient's IBE id.")],
        guardian: Annotated[str, typer.Argument(help="The guardian's IBE id.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Show a guardianship as registered on chain."""
        with open_session(profile, wallet) as s, mapped_errors():
            entry = s.guardianship(patient, guardian)
            names = [s.labels.reveal(label) or label for label in entry.labels]
        if as_json:
            emit(
                {
                    "patient": entry.patient,
                    "guardian": entry.guardian,
                    "actions": list(entry.actions),
                    "types": names,
                    "expiry": entry.expiry,
                    "state": entry.state,
                    "kind": entry.kind,
                    "approved_by": list(entry.approved_by),
                }
            )
            return
        out_console().print(
            f"{entry.guardian} for {entry.patient}: {', '.join(entry.actions)} on "
            f"{', '.join(names) or 'every type'} until {fmt_date(entry.expiry)} ({entry.state})"
        )

    @guardian_app.command("grant", epilog=HELP_EPILOG)
    def guardian_grant(
        patient: Annotated[str, typer.Argument(help="The patient you act for.")],
        grantee: Annotated[str, typer.Argument(help="Who may read, e.g. HospitalBMSP/dr-lee.")],
        type_: Annotated[str, typer.Argument(metavar="TYPE", help="Record type, e.g. lab.")],
        days: Annotated[
            float | None, typer.Option(help="Default: as long as the patient's grant to you.")
        ] = None,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
    ) -> None:
        """As a guardian, grant access to the patient's records of a type (prints the id)."""
        period = _days(days)
        with open_session(profile, wallet) as s, mapped_errors():
            g = s.grant_for(patient, grantee, type_, expires=period)
        out_console().print(g.grant_id, highlight=False)

    @guardian_app.command("propose-for-minor", epilog=HELP_EPILOG)
    def guardian_propose_for_minor(
        patient: Annotated[str, typer.Argument(help="The patient who cannot act (a minor).")],
        guardian: Annotated[str, typer.Argument(help="The guardian's IBE id (role guardian).")],
        days: Annotated[float, typer.Option(help="How long the guardianship lasts.")],
        types: Annotated[
            list[str] | None,
            typer.Option("--type", help="A record type it covers (repeat; none: every type)."),
        ] = None,
        actions: Annotated[
            str, typer.Option(help="Comma-separated: grant, revoke, audit.")
        ] = "audit,revoke",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """As an admin of the hospital that registered a minor, propose a guardian for it;
        it acts once admins of two other hospitals ran 'guardian approve'."""
        period = _days(days)
        assert period is not None  # --days is required
        wanted = _actions(actions)
        with open_session(profile, wallet) as s, mapped_errors():
            s.register()
            entry = s.propose_minor_guardian(
                patient, guardian, types=types or [], expires=period, actions=wanted
            )
        _minor_result(entry, as_json)

    @guardian_app.command("approve", epilog=HELP_EPILOG)
    def guardian_approve(
        patient: Annotated[str, typer.Argument(help="The minor's IBE id.")],
        guardian: Annotated[str, typer.Argument(help="The proposed guardian's IBE id.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """As an admin of another hospital, approve a minor's proposed guardian (the second
        hospital's approval makes it act)."""
        with open_session(profile, wallet) as s, mapped_errors():
            s.register()
            entry = s.approve_minor_guardian(patient, guardian)
        _minor_result(entry, as_json)


def _minor_result(entry: Guardianship, as_json: bool) -> None:
    approved = list(entry.approved_by)
    if as_json:
        emit(
            {
                "patient": entry.patient,
                "guardian": entry.guardian,
                "actions": list(entry.actions),
                "expiry": entry.expiry,
                "state": entry.state,
                "approved_by": approved,
            }
        )
        return
    if entry.state == "active":
        _err.print(
            f"[green]✓[/green] {entry.guardian} acts for {entry.patient} "
            f"({', '.join(entry.actions)}) until {fmt_date(entry.expiry)}; approved by "
            f"{', '.join(approved)}"
        )
    else:
        _err.print(
            f"{entry.guardian} is proposed as the guardian of {entry.patient}, approved by "
            f"{len(approved)} of 2 other hospitals ({', '.join(approved) or 'none yet'}); an "
            "admin of another hospital runs 'ehrshare guardian approve'"
        )
