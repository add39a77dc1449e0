"""``ehrshare kgc dkg open|status|abort``: an org admin runs a DKG across hospital processes.

``open`` submits OpenDKGSession (roster, τ, phase timeout) as the wallet's identity and prints the
session nonce; the KGC nodes — one ``ehrshare kgc serve`` per hospital, following DKG events —
do the work. ``--wait`` then follows the session on chain until its result is final or it is
marked failed. ``status`` shows a session's phase, who posted, and how far its result got;
``abort`` marks a session that can no longer finish as failed (the chain decides).

Options follow :mod:`ehrshare.commands.cli_records` (``--profile``, ``--wallet``, ``--json``,
exit codes). This module must not read node keys or shares and does not drive phases itself:
it only submits the admin's transactions and reads the chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from ehrshare.commands.cli_records import (
    _EXIT_HELP,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    _emit,
    _errors,
    _fail,
    _fmt_time,
    _need_wallet,
    _profile_path,
    _progress,
    _unlocked_wallet,
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["register_dkg"]

_err = err_console()
_POLL = 0.5  # seconds between reads of the session while waiting


def _call(contract: Any, submit: bool, function: str, *args: str) -> Any:
    from ehrshare.ledger.errors import LedgerError

    try:
        call = contract.submit_transaction if submit else contract.evaluate_transaction
        return json.loads(call(function, *args))
    except LedgerError as exc:
        _fail(EXIT_REFUSED, exc.message)


@contextmanager
def _admin(profile: str, wallet: str) -> Iterator[tuple[Any, Any]]:
    """The profile and a session for the wallet (an org admin to open or abort sessions)."""
    from ehrshare.consortium import connect, profile_file
    from ehrshare.profile import Profile

    with _errors():
        prof = Profile.load(profile_file(_profile_path(profile)))
        session = connect(prof, _unlocked_wallet(prof, _need_wallet(wallet)))
        try:
            yield prof, session
        finally:
            session.close()


def _default_roster(profile: Any) -> list[str]:
    """The profile's KGC nodes by index (node j at position j), named by their wallets."""
    from ehrshare.profile import Wallet

    roster = []
    for node in sorted(profile.kgc_nodes, key=lambda n: n.index):
        if node.service.wallet is None:
            _fail(
                EXIT_USAGE,
                f"the profile has no wallet for KGC node {node.index}; give --roster with every "
                "node's ledger identity in index order",
            )
        identity, _ = Wallet(node.service.wallet, use_env=False).load_identity()
        roster.append(identity.ibe_id)
    return roster


def _check_positions(profile: Any, roster: list[str]) -> None:
    """A node's roster position is its share index, which must be its profile index (users
    check each partial key's index against the node they asked)."""
    from ehrshare.profile import Wallet

    for node in profile.kgc_nodes:
        if node.service.wallet is None or not (node.service.wallet / "cert.pem").exists():
            continue
        identity, _ = Wallet(node.service.wallet, use_env=False).load_identity()
        if identity.ibe_id in roster and roster.index(identity.ibe_id) + 1 != node.index:
            _fail(
                EXIT_USAGE,
                f"kgc {identity.ibe_id} is node {node.index} in the profile but position "
                f"{roster.index(identity.ibe_id) + 1} in the roster; list node j at position j",
            )


def _summary(state: dict[str, Any]) -> str:
    """One line: where the session is."""
    phase = str(state["phase"])
    tau, n = int(state["threshold"]), len(state["roster"])
    result = state.get("result") or {}
    if phase == "failed":
        failure = state.get("failure") or {}
        return f"failed: {failure.get('cause')} (by {failure.get('by')}: {failure.get('reason')})"
    if result.get("final"):
        return f"final: {result.get('agree')} of τ={tau} views agree"
    if phase in ("deal", "response"):
        return f"{phase} phase: {len(state.get('posted', []))} of {n} nodes posted"
    return (
        f"result: {result.get('agree', 0)} of τ={tau} views agree "
        f"({result.get('views', 0)} published; {phase})"
    )


def _watch(contract: Any, nonce: str, timeout: float, quiet: bool) -> dict[str, Any]:
    """Read the session until its result is final or it failed; show progress on stderr."""
    deadline = time.monotonic() + timeout
    last = ""
    with _progress(f"dkg session {nonce[:16]}", quiet) as update:
        while True:
            state: dict[str, Any] = _call(contract, False, "GetDKGSession", nonce)
            line = _summary(state)
            if line != last:
                update(f"dkg session {nonce[:16]}: {line}")
                if not quiet and not _err.is_terminal:
                    _err.print(f"dkg session {nonce[:16]}: {line}", soft_wrap=True)
                last = line
            if state["phase"] == "failed" or (state.get("result") or {}).get("final"):
                return state
            if time.monotonic() >= deadline:
                _fail(
                    EXIT_UNAVAILABLE,
                    f"dkg session {nonce} is not final after {timeout:.0f} s: {line}",
                    "are the KGC nodes running with --follow-dkg? see 'ehrshare kgc dkg status'",
                )
            time.sleep(_POLL)


def _show(state: dict[str, Any]) -> None:
    console = out_console()
    console.print(f"dkg session [bold]{state['nonce']}[/bold]", soft_wrap=True)
    console.print(
        f"threshold {state['threshold']} of {len(state['roster'])}; opened "
        f"{_fmt_time(int(state['opened_at']))} by {state['opened_by']}; phase timeout "
        f"{state['phase_timeout_s']} s",
        soft_wrap=True,
    )
    console.print(f"status: {_summary(state)}", soft_wrap=True)
    posted = set(state.get("posted", []))
    open_phase = (
        [str(state["phase"])] if state["phase"] in ("deal", "response", "justification") else []
    )
    table = Table("#", "kgc", *(c["phase"] for c in state["closed"]), *open_phase)
    for j, member in enumerate(state["roster"], start=1):
        cells = ["✓" if member in c["posters"] else "-" for c in state["closed"]]
        now = ["✓" if member in posted else "-"] if open_phase else []
        table.add_row(str(j), member, *cells, *now)
    console.print(table)
    for c in state["closed"]:
        how = "timed out" if c.get("timed_out") else ("by result" if c.get("by_result") else "")
        console.print(
            f"{c['phase']} closed {_fmt_time(int(c['closed_at']))} by {c['closed_by']}, "
            f"{len(c['posters'])} posted{f' ({how})' if how else ''}",
            soft_wrap=True,
        )


def register_dkg(kgc_app: typer.Typer) -> None:
    """Add ``ehrshare kgc dkg …`` to the ``kgc`` command group."""
    dkg_app = typer.Typer(
        help="Open and follow DKG sessions on chain (org admin); the KGC nodes run them.",
        no_args_is_help=True,
    )
    kgc_app.add_typer(dkg_app, name="dkg")

    @dkg_app.command("open", epilog=_EXIT_HELP)
    def dkg_open(
        threshold: Annotated[
            int, typer.Option("--threshold", "-t", help="τ: nodes needed to extract a key.")
        ],
        roster: Annotated[
            list[str] | None,
            typer.Option(
                "--roster",
                help="KGC ledger identities in roster order, node j at position j (repeat or "
                "comma-separate); default: the profile's KGC nodes by index.",
            ),
        ] = None,
        phase_timeout: Annotated[
            int, typer.Option("--phase-timeout", help="Seconds a phase waits for missing nodes.")
        ] = 60,
        wait: Annotated[
            bool, typer.Option("--wait", help="Block until the result is final or failed.")
        ] = False,
        wait_timeout: Annotated[
            float | None,
            typer.Option("--wait-timeout", help="Give up waiting after this many seconds."),
        ] = None,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Open a DKG session on chain (needs an org admin wallet); prints its nonce.

        Exit code 4 when --wait sees the session fail or not finish in time.
        """
        from ehrshare.hazmat.dkg import new_session_nonce

        with _admin(profile, wallet) as (prof, s):
            if roster:
                members = [m.strip() for item in roster for m in item.split(",") if m.strip()]
            else:
                members = _default_roster(prof)
            _check_positions(prof, members)
            if any(n.service.embedded for n in prof.kgc_nodes):
                # In-process nodes live only inside each connecting app: nothing follows events.
                _err.print(
                    "[yellow]warning:[/yellow] this profile runs KGC nodes in-process; only nodes "
                    "running 'ehrshare kgc serve' take part in sessions opened here",
                    soft_wrap=True,
                )
            from ehrshare.ledger.errors import LedgerError
            from ehrshare.services.kgc import open_dkg_session

            session = new_session_nonce()
            nonce = session.hex()
            try:
                state = open_dkg_session(
                    s.contract,
                    nonce=session,
                    roster=members,
                    threshold=threshold,
                    phase_timeout_s=phase_timeout,
                )
            except LedgerError as exc:
                _fail(EXIT_REFUSED, exc.message)
            if not as_json:
                typer.echo(nonce)
                _err.print(
                    f"opened dkg session {nonce[:16]}…: τ={threshold} of {len(members)}, "
                    f"phase timeout {phase_timeout} s",
                    soft_wrap=True,
                )
            if wait:
                limit = wait_timeout if wait_timeout is not None else 4.0 * phase_timeout + 60
                state = _watch(s.contract, nonce, limit, quiet=as_json)
        if as_json:
            _emit(state)
        if wait and state["phase"] == "failed":
            if not as_json:
                _err.print(f"[red]✗[/red] dkg session {nonce[:16]}: {_summary(state)}")
            raise typer.Exit(EXIT_UNAVAILABLE)
        if wait and not as_json:
            _err.print(f"[green]✓[/green] dkg session {nonce[:16]}: {_summary(state)}")

    @dkg_app.command("status", epilog=_EXIT_HELP)
    def dkg_status(
        nonce: Annotated[
            str, typer.Argument(help="Session nonce (hex); default: the latest final session.")
        ] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Show a DKG session: phase, who posted in each phase, and result finality (k of τ)."""
        with _admin(profile, wallet) as (_, s):
            if not nonce:
                nonce = str(_call(s.contract, False, "GetDKGResult", "")["nonce"])
            state = _call(s.contract, False, "GetDKGSession", nonce)
        if as_json:
            _emit(state)
        else:
            _show(state)

    @dkg_app.command("abort", epilog=_EXIT_HELP)
    def dkg_abort(
        nonce: Annotated[str, typer.Argument(help="Session nonce (hex).")],
        reason: Annotated[str, typer.Option("--reason", help="Why (kept on chain).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Mark a session that can no longer finish as failed (refused while it still can)."""
        with _admin(profile, wallet) as (_, s):
            state = _call(s.contract, True, "AbortDKGSession", nonce, reason)
        if as_json:
            _emit(state)
        else:
            _err.print(f"dkg session {nonce[:16]}: {_summary(state)}", soft_wrap=True)
