"""``ehrshare emergency policy set|show``, ``request``, ``approve``, ``show``, ``records``,
``read`` and ``review``: break-glass access to an unconscious patient's records. The rules are
the chaincode's (docs/chaincode.md, *Emergency access*); the work is in
:class:`ehrshare.session.Session`.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable
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
    progress,
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_USAGE

__all__ = ["register"]

_err = err_console()
_REQUEST_RE = re.compile(r"e-[0-9a-f]{32}")
MAX_HOURS = 168.0
MAX_REASON_CHARS = 500


def _request_id(text: str) -> str:
    if not _REQUEST_RE.fullmatch(text):
        fail(EXIT_USAGE, f"{text!r} is not an emergency request id (e- and 32 hex digits)")
    return text


def _request_dict(r: Any) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "patient": r.patient,
        "requester": r.requester,
        "reason": r.reason,
        "status": r.status,
        "approvals_needed": r.approvals_needed,
        "approved_by": list(r.approved_by),
        "expires_at": r.expires_at,
        "review": r.review,
    }


def _say_request(r: Any) -> None:
    have = f"{len(r.approved_by)} of {r.approvals_needed} approvals"
    if r.status == "approved":
        state = f"in force until {fmt_time(r.expires_at)} ({have}; review {r.review})"
    else:
        state = f"pending ({have})"
    out_console().print(
        f"{r.request_id}: {r.requester} for {r.patient}: {state}", highlight=False, soft_wrap=True
    )


def _on_request(
    profile: str,
    wallet: str,
    as_json: bool,
    call: Callable[[Any], Any],
    say: Callable[[Any], None] = _say_request,
) -> None:
    """Open the session, ``call`` it for one emergency request, and print the request: JSON
    with ``--json``, else ``say`` it."""
    with open_session(profile, wallet) as s, mapped_errors():
        r = call(s)
    if as_json:
        emit(_request_dict(r))
        return
    say(r)


def _say_requested(r: Any) -> None:
    # The id alone on stdout, so scripts can capture it; the rest for people on stderr.
    typer.echo(r.request_id)
    _err.print(
        f"[green]✓[/green] requested; it needs {r.approvals_needed} hospital admins' "
        f"approvals ('ehrshare emergency approve {r.request_id}')",
        highlight=False,
        soft_wrap=True,
    )


def _approve(s: Any, rid: str) -> Any:
    s.register()  # an admin's first act on chain may be this (registering is idempotent)
    return s.approve_emergency(rid)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare emergency``."""
    del bench_app
    em_app = typer.Typer(
        help="Break-glass access: a patient's emergency policy, a clinician's request, "
        "hospital admins' approvals, reads logged as emergency, the patient's review.",
        no_args_is_help=True,
    )
    app.add_typer(em_app, name="emergency")
    policy_app = typer.Typer(
        help="A patient's emergency policy (and its pre-grants).", no_args_is_help=True
    )
    em_app.add_typer(policy_app, name="policy")

    @policy_app.command("set", epilog=HELP_EPILOG)
    def policy_set(
        types: Annotated[
            list[str], typer.Option("--type", help="A record type an emergency opens (repeat).")
        ],
        hours: Annotated[float, typer.Option(help="How long an approved emergency lasts.")] = 24.0,
        approvals: Annotated[
            int, typer.Option(min=1, max=16, help="Hospital admins' approvals needed.")
        ] = 2,
        same_hospital: Annotated[
            bool,
            typer.Option(
                "--same-hospital-ok",
                help="Count approvals from the requester's hospital and several from one "
                "hospital (default: each from another hospital).",
            ),
        ] = False,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Set your emergency policy and pre-grant its types to your emergency identity
        (patients). Safe to run again: what is already granted is kept."""
        if not math.isfinite(hours) or not 1 / 60 <= hours <= MAX_HOURS:
            fail(
                EXIT_USAGE,
                f"--hours {hours:g} is out of range: give at least one minute (0.0167) and at "
                f"most {MAX_HOURS:g} (a week)",
            )
        with open_session(profile, wallet) as s, mapped_errors(), progress("setting", as_json):
            for t in types:
                s.mapping.check(t)
            policy = s.set_emergency_policy(
                types,
                duration=_dt.timedelta(hours=hours),
                approvals=approvals,
                distinct_hospitals=not same_hospital,
            )
            names = [s.labels.reveal(label) or label for label in policy.labels]
        if as_json:
            emit(
                {
                    "identity": policy.identity,
                    "types": names,
                    "duration_s": policy.duration_s,
                    "approvals": policy.approvals,
                    "distinct_hospitals": policy.distinct_hospitals,
                }
            )
            return
        _err.print(
            f"[green]✓[/green] emergencies open {', '.join(names)} for "
            f"{policy.duration_s // 60} minutes after {policy.approvals} approvals"
            + (" from other hospitals" if policy.distinct_hospitals else ""),
            highlight=False,
        )

    @policy_app.command("rotate", epilog=HELP_EPILOG)
    def policy_rotate(
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Move your policy to a new emergency identity and revoke the pre-grants to the old
        one (patients; after a reviewed emergency expired). Safe to run again."""
        with open_session(profile, wallet) as s, mapped_errors(), progress("rotating", as_json):
            policy = s.rotate_emergency_identity()
        if as_json:
            emit({"identity": policy.identity, "generation": policy.generation})
            return
        _err.print(
            f"[green]✓[/green] emergencies now go to {policy.identity}; the pre-grants to the "
            "earlier one are revoked",
            highlight=False,
        )

    @policy_app.command("show", epilog=HELP_EPILOG)
    def policy_show(
        patient: Annotated[str, typer.Argument(help="The patient (default: yourself).")] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Show a patient's emergency policy, or the consortium default it falls back to."""
        with open_session(profile, wallet) as s, mapped_errors():
            policy = s.emergency_policy(patient or None)
            names = [s.labels.reveal(label) or label for label in policy.labels]
        data = {
            "patient": policy.patient,
            "identity": policy.identity,
            "types": names,
            "duration_s": policy.duration_s,
            "approvals": policy.approvals,
            "distinct_hospitals": policy.distinct_hospitals,
            "default": policy.default,
        }
        if as_json:
            emit(data)
            return
        out_console().print(
            f"{policy.patient}: "
            + ("consortium default: " if policy.default else "")
            + f"{policy.approvals} approvals"
            + (" from other hospitals" if policy.distinct_hospitals else "")
            + f", {policy.duration_s // 60} minutes, types: {', '.join(names) or 'none'}",
            highlight=False,
            soft_wrap=True,
        )

    @em_app.command("request", epilog=HELP_EPILOG)
    def request(
        patient: Annotated[str, typer.Argument(help="The patient, e.g. HospitalAMSP/alice.")],
        reason: Annotated[str, typer.Option(help="Why (logged on the patient's chain).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Ask for emergency access to a patient's records (clinicians)."""
        if not reason.strip() or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            fail(EXIT_USAGE, f"--reason: give 1 to {MAX_REASON_CHARS} printable characters")
        _on_request(
            profile,
            wallet,
            as_json,
            lambda s: s.emergency_request(patient, reason),
            _say_requested,
        )

    @em_app.command("approve", epilog=HELP_EPILOG)
    def approve(
        request_id: Annotated[str, typer.Argument(help="The request (e-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Approve an emergency request (hospital admins). Safe to run again."""
        rid = _request_id(request_id)
        _on_request(profile, wallet, as_json, lambda s: _approve(s, rid))

    @em_app.command("show", epilog=HELP_EPILOG)
    def show(
        request_id: Annotated[str, typer.Argument(help="The request (e-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Show an emergency request: approvals, expiry, review."""
        rid = _request_id(request_id)
        _on_request(profile, wallet, as_json, lambda s: s.emergency(rid))

    @em_app.command("records", epilog=HELP_EPILOG)
    def records(
        request_id: Annotated[str, typer.Argument(help="The request (e-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """List the records an emergency in force opens to you (its requester)."""
        rid = _request_id(request_id)
        with open_session(profile, wallet) as s, mapped_errors():
            refs = s.emergency_records(rid)
        if as_json:
            emit([{"record_id": r.record_id, "type": r.type, "owner": r.owner} for r in refs])
            return
        table = make_table("record", "type", "owner")
        for r in refs:
            table.add_row(r.record_id, r.type or r.label, r.owner)
        out_console().print(table)

    @em_app.command("read", epilog=HELP_EPILOG)
    def read(
        request_id: Annotated[str, typer.Argument(help="The request (e-…).")],
        record_id: Annotated[str, typer.Argument(help="Record id (r-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Read a record under an emergency in force (logged with purpose emergency, a denial
        too) and print the FHIR resource. Exit code 1 if the chaincode or the KGC nodes
        refuse."""
        rid = _request_id(request_id)
        with open_session(profile, wallet) as s, mapped_errors(), progress("reading", as_json):
            _, resource = s.read_emergency_record(rid, record_id)
        typer.echo(resource.model_dump_json(exclude_none=True, indent=2))

    @em_app.command("review", epilog=HELP_EPILOG)
    def review(
        ack: Annotated[
            str, typer.Option("--ack", help="Acknowledge this approved emergency (e-…).")
        ] = "",
        note: Annotated[str, typer.Option(help="A note kept with the acknowledgement.")] = "",
        patient: Annotated[
            str, typer.Option(help="The patient you act for (guardians; default: yourself).")
        ] = "",
        show_all: Annotated[
            bool, typer.Option("--all", help="List acknowledged emergencies too.")
        ] = False,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """List the approved emergencies you have not reviewed; ``--ack`` acknowledges one."""
        rid = _request_id(ack) if ack else ""
        if note and (len(note) > MAX_REASON_CHARS or not note.isprintable()):
            fail(EXIT_USAGE, f"--note: give at most {MAX_REASON_CHARS} printable characters")
        if note and not rid:
            fail(EXIT_USAGE, "--note goes with --ack")
        if rid:
            _on_request(profile, wallet, as_json, lambda s: s.review_emergency(rid, note))
            return
        with open_session(profile, wallet) as s, mapped_errors():
            items = s.emergency_reviews(patient or None, pending_only=not show_all)
        if as_json:
            emit([_request_dict(r) for r in items])
            return
        if not items:
            _err.print("no emergencies to review")
            return
        table = make_table("request", "requester", "reason", "until", "review")
        for r in items:
            table.add_row(r.request_id, r.requester, r.reason, fmt_time(r.expires_at), r.review)
        out_console().print(table)
