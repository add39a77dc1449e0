"""``ehrshare consortium add-hospital|sign-update``: admit a hospital that made its own
directory ('ehrshare hospital init') under an update signed by a majority of the members'
admins. This module only parses, renders and maps errors to exit codes; the work is in
:mod:`ehrshare.membership` and :mod:`ehrshare.joining`.
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
    load_profile,
    mapped_errors,
    need_wallet,
    profile_path,
    progress,
)
from ehrshare.console import err_console

__all__ = ["register_joining"]

_err = err_console()


def _wallet(profile: str, wallet: str) -> Any:
    """``--wallet`` as a path, or a name under the profile's wallets."""
    from ehrshare.wallet import Wallet

    if Path(wallet).is_dir():
        return Wallet(Path(wallet))
    return load_profile(profile).wallet(wallet)


def register_joining(consortium_app: typer.Typer) -> None:
    """Add ``add-hospital`` and ``sign-update`` to the ``consortium`` command group."""

    @consortium_app.command("add-hospital", epilog=HELP_EPILOG)
    def consortium_add_hospital(
        request: Annotated[Path, typer.Argument(help="The hospital's join-request.json.")],
        hospital_dir: Annotated[
            Path | None,
            typer.Option(
                "--hospital-dir",
                help="The new hospital's directory, whose KGC node and proxy run here "
                "(default: the request's directory).",
            ),
        ] = None,
        update: Annotated[
            Path | None,
            typer.Option(
                "--update",
                help="The membership update file (default: REQUEST with .update.json); made "
                "when missing, then signed with 'consortium sign-update'.",
            ),
        ] = None,
        sign_with: Annotated[
            list[str] | None,
            typer.Option("--sign-with", help="Also sign with this admin wallet; repeat."),
        ] = None,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "admin",
        as_json: JsonOpt = False,
    ) -> None:
        """Add a hospital: compute the channel membership update (written to --update if it is
        not there), and once a majority of the member hospitals' admins signed it, admit the
        hospital's MSP (on Fabric: the channel's config update, then the hospital's peer, made
        in its directory, joins, catches up and approves the chaincode), register its CA and
        services, name its KGC node and proxy in the
        profile, and reshare the master key to a committee that includes its node (--wallet:
        an org admin, who opens the resharing). Rerun after an interruption: done steps are
        skipped. Exit 1 while signatures are missing (nothing changed), 5 for a join request
        that does not match its hash or carries certificates its CA did not issue.
        """
        from ehrshare.hospital import HospitalDir, JoinRequest
        from ehrshare.joining import add_hospital, compute_update
        from ehrshare.membership import MembershipUpdate, majority, sign_update
        from ehrshare.profile import profile_file

        with mapped_errors():
            prof = load_profile(profile)
            path = profile_file(profile_path(profile))
            JoinRequest.load(request)  # checked before anything is written
            hospital = HospitalDir.open(hospital_dir or request.parent)
            update_file = update or request.with_suffix(".update.json")
            if update_file.exists():
                pending = MembershipUpdate.load(update_file)
            else:
                pending = compute_update(prof, request)
                pending.save(update_file)
                if not as_json:
                    _err.print(
                        f"wrote {update_file}: adds {pending.request.msp_id}; needs "
                        f"{majority(len(pending.base))} of {len(pending.base)} member "
                        "hospitals' admins' signatures",
                        soft_wrap=True,
                        highlight=False,
                    )
            for name in sign_with or []:
                identity, signer = _wallet(profile, name).load_identity()
                pending = sign_update(pending, identity, signer)
                pending.save(update_file)
            with progress(f"adding {pending.request.msp_id}", as_json) as say:
                outcome = add_hospital(
                    path,
                    pending,
                    hospital,
                    admin_wallet=_wallet(profile, need_wallet(wallet)),
                    progress=say,
                )
        if as_json:
            emit(outcome.to_dict())
            return
        done = ", ".join(outcome.performed) or "nothing (every step was done)"
        _err.print(
            f"[green]✓[/green] {outcome.msp_id} joined: {done}; KGC committee "
            f"{', '.join(outcome.committee)} (τ={outcome.threshold})",
            soft_wrap=True,
            highlight=False,
        )

    @consortium_app.command("sign-update", epilog=HELP_EPILOG)
    def consortium_sign_update(
        update: Annotated[Path, typer.Argument(help="The membership update file.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Sign a membership update as a member hospital's admin (--wallet: a wallet name under
        the profile or a path); the file gains the signature (on Fabric also the admin's
        ConfigSignature over the channel's config update). Check what it adds first: the
        hospital, its MSP and its request's SHA-256 are printed."""
        from ehrshare.membership import MembershipUpdate, majority, sign_update

        with mapped_errors():
            pending = MembershipUpdate.load(update)
            identity, signer = _wallet(profile, need_wallet(wallet)).load_identity()
            pending = sign_update(pending, identity, signer)
            pending.save(update)
        signed = sorted(s.msp_id for s in pending.signatures)
        if as_json:
            emit(
                {
                    "adds": pending.request.msp_id,
                    "request_sha256": pending.request.sha256,
                    "signed_by": signed,
                    "needed": majority(len(pending.base)),
                }
            )
            return
        _err.print(
            f"[green]✓[/green] {identity.ibe_id} signed the update adding "
            f"{pending.request.msp_id} (request {pending.request.sha256[:16]}…); signed by "
            f"{', '.join(signed)} ({majority(len(pending.base))} needed)",
            soft_wrap=True,
            highlight=False,
        )
