"""``ehrshare grant [give]|list|repair``, ``ehrshare forward`` and ``ehrshare revoke``: a
patient's grants, their referral one hop further, and their revocation. The work is in
:class:`ehrshare.session.Session`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    fail,
    fmt_date,
    fmt_time,
    mapped_errors,
    open_session,
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_USAGE
from ehrshare_chaincode.contract import MAX_HOPS

__all__ = ["MAX_GRANT_DAYS", "register"]

_err = err_console()
MAX_GRANT_DAYS = 36525  # 100 years: later expiries are mistakes (and past what dates print)
_PROXY_HELP = (
    "Proxy to hold the re-key (its ledger identity, e.g. HospitalAMSP/proxy); default: the proxy "
    "of the grantee's hospital."
)


def _days(days: float | None) -> _dt.timedelta | None:
    """``--days`` as a period; NaN, infinities, zero, negatives and more than
    :data:`MAX_GRANT_DAYS` are refused as usage errors."""
    if days is None:
        return None
    if not math.isfinite(days) or not 0 < days <= MAX_GRANT_DAYS:
        fail(
            EXIT_USAGE,
            f"--days {days:g} is out of range: give a number of days above 0 and at most "
            f"{MAX_GRANT_DAYS} (100 years)",
        )
    return _dt.timedelta(days=days)


def _expiry(days: float | None, until: str | None) -> _dt.datetime | _dt.timedelta:
    if until and days is not None:
        fail(EXIT_USAGE, "give either --days or --until, not both")
    if until:
        try:
            when = _dt.datetime.fromisoformat(until)
            when = when if when.tzinfo else when.replace(tzinfo=_dt.UTC)
            latest = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=MAX_GRANT_DAYS)
        except ValueError:
            fail(EXIT_USAGE, f"--until {until!r} is not an ISO date/time (2027-01-31T12:00Z)")
        if when > latest:
            fail(
                EXIT_USAGE, f"--until {until!r} is more than {MAX_GRANT_DAYS} days (100 years) away"
            )
        return when
    period = _days(days)
    if period is None:
        fail(EXIT_USAGE, "give --days N (N > 0) or --until <ISO date>")
    return period


class _GrantGroup(TyperGroup):
    """``grant GRANTEE TYPE …`` gives a grant (the ``give`` subcommand); ``grant list`` and
    ``grant repair`` are the other subcommands. A grantee is an IBE id (``MSP/name``), so it
    never collides with a subcommand's name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["give", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare grant``, ``ehrshare forward`` and ``ehrshare revoke``."""
    del bench_app
    grant_app = typer.Typer(
        cls=_GrantGroup,
        help="Give a grant ('ehrshare grant GRANTEE TYPE --days N', the same as 'grant give'), "
        "list the grants you gave or hold, repair one whose proxy lacks its re-key.",
        no_args_is_help=True,
    )
    app.add_typer(grant_app, name="grant")

    @grant_app.command("give", epilog=HELP_EPILOG)
    def grant(
        grantee: Annotated[str, typer.Argument(help="Grantee IBE id, e.g. HospitalBMSP/dr-b.")],
        record_type: Annotated[str, typer.Argument(help="Record type, e.g. lab.")],
        days: Annotated[float | None, typer.Option(help="Valid for this many days.")] = None,
        until: Annotated[str, typer.Option(help="Valid until (ISO date/time, UTC).")] = "",
        max_hops: Annotated[
            int, typer.Option(min=0, max=MAX_HOPS, help="Further referrals allowed.")
        ] = 0,
        proxy: Annotated[str, typer.Option(help=_PROXY_HELP)] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """As a patient, let a clinician read your records of one type (re-key to the proxy of
        the clinician's hospital; the grant commits only once that proxy holds it)."""
        expires = _expiry(days, until or None)
        with open_session(profile, wallet) as s, mapped_errors():
            g = s.grant(
                grantee, record_type, expires=expires, max_hops=max_hops, proxy=proxy or None
            )
        if as_json:
            emit(g.to_dict())
            return
        _err.print(
            f"[green]✓[/green] grant {g.grant_id}: {g.grantee} may read {g.type} until "
            f"{fmt_time(g.expiry)}, {g.max_hops} further hop(s); re-key at {g.proxy}"
        )
        typer.echo(g.grant_id)

    @grant_app.command("list", epilog=HELP_EPILOG)
    def grant_list(
        given: Annotated[
            bool,
            typer.Option("--given", help="Grants you gave, or forwarded (default for a patient)."),
        ] = False,
        received: Annotated[
            bool, typer.Option("--received", help="Grants you hold (default for others).")
        ] = False,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """List the grants you gave (a patient) or hold (a clinician), with their status:
        active, broken (its proxy holds no re-key: 'grant repair' it), expired, revoked, or
        unchecked (its proxy did not answer)."""
        if given and received:
            fail(EXIT_USAGE, "give --given or --received, not both")
        with open_session(profile, wallet) as s, mapped_errors():
            patient = s.role() == "patient"
            # What a member gave: a patient's grants (by owner), else its forwards (by grantor).
            gave = "owner" if patient else "grantor"
            side = gave if given else "grantee" if received else (gave if patient else "grantee")
            rows = [
                g.to_dict() | {"status": s.grant_status(g), "expires": fmt_date(g.expiry)}
                for g in s.grants(side)
            ]
        if as_json:
            emit({"side": "received" if side == "grantee" else "given", "grants": rows})
            return
        if not rows:
            _err.print(f"no grants {'received' if side == 'grantee' else 'given'}")
            return
        # One line a grant, never broken at the terminal's width: the whole grant id and the
        # status stay readable (and greppable) in any terminal.
        out = out_console()
        for r in rows:
            party = {
                "owner": f"to {r['grantee']}",
                "grantor": f"to {r['grantee']} (records of {r['owner']})",
                "grantee": f"from {r['grantor']} (records of {r['owner']})",
            }[side]
            out.print(
                f"{r['grant_id']}  {r['status']:<9} {r['type'] or r['label']} until "
                f"{r['expires']}, {r['max_hops']} further hop(s), {party}; re-key at {r['proxy']}",
                highlight=False,
                markup=False,
            )

    @grant_app.command("repair", epilog=HELP_EPILOG)
    def grant_repair(
        grant_id: Annotated[str, typer.Argument(help="Grant id (g-…) you gave.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Deliver a grant's re-key to its proxy again (needs the granting wallet); if the
        proxy refuses it, the grant is revoked (exit code 1: grant again)."""
        with open_session(profile, wallet) as s, mapped_errors():
            g = s.repair_grant(grant_id)
        if as_json:
            emit(g.to_dict())
            return
        _err.print(f"[green]✓[/green] grant {g.grant_id}: its re-key is at {g.proxy}")

    @app.command("forward", epilog=HELP_EPILOG)
    def forward(
        what: Annotated[str, typer.Argument(help="Your grant id (g-…) or a record id (r-…).")],
        to: Annotated[str, typer.Argument(help="IBE id to refer to.")],
        days: Annotated[float | None, typer.Option(help="Valid for this many days.")] = None,
        max_hops: Annotated[
            int, typer.Option(min=0, max=MAX_HOPS, help="Further referrals allowed.")
        ] = 0,
        proxy: Annotated[str, typer.Option(help=_PROXY_HELP)] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Refer what you were granted one hop further (multi-hop sharing)."""
        expires = _days(days)
        with open_session(profile, wallet) as s, mapped_errors():
            g = s.forward(what, to, expires=expires, max_hops=max_hops, proxy=proxy or None)
        if as_json:
            emit(g.to_dict())
            return
        _err.print(
            f"[green]✓[/green] grant {g.grant_id} (hop {g.hop}) to {g.grantee}; re-key at {g.proxy}"
        )
        typer.echo(g.grant_id)

    @app.command("revoke", epilog=HELP_EPILOG)
    def revoke(
        grant_id: Annotated[str, typer.Argument(help="Grant id (g-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Revoke a grant you gave: later requests are denied, the proxies delete the re-keys
        (also of grants forwarded from it). Forward-only: what was read stays read."""
        with open_session(profile, wallet) as s, mapped_errors():
            g = s.revoke(grant_id)
        if as_json:
            emit(g.to_dict())
            return
        _err.print(f"[green]✓[/green] grant {g.grant_id} revoked")
