"""``ehrshare kgc dkg open|status|abort`` and ``ehrshare kgc reshare``: an org admin runs a DKG,
or moves the current master key to a new KGC committee, across hospital processes.

``open`` submits OpenDKGSession (roster, τ, phase timeout) as the wallet's identity and prints the
session nonce; the KGC nodes — one ``ehrshare kgc serve`` per hospital, following DKG events —
do the work. ``--wait`` then follows the session on chain until its result is final or it is
marked failed. ``status`` shows a session's phase, who posted, and how far its result got;
``abort`` marks a session that can no longer finish as failed (the chain decides).

``reshare`` opens a resharing of the latest final key (OpenReshareSession): the committee minus
``--remove`` plus ``--add`` nodes, optionally with a new ``--threshold``; mpk, identity keys and
records stay valid. With KGC nodes in-process it runs the session itself (nothing else would).

Options and errors come from :mod:`ehrshare.commands.common` (``--profile``, ``--wallet``,
``--json``, exit codes). This module must not read node keys or shares and does not drive phases
itself: it only submits the admin's transactions and reads the chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    WalletOpt,
    emit,
    fail,
    fmt_time,
    load_profile,
    mapped_errors,
    need_wallet,
    progress,
    unlocked_wallet,
)
from ehrshare.console import err_console, out_console
from ehrshare.errors import EXIT_CONFIG, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["register_dkg", "register_reshare"]

_err = err_console()
_POLL = 0.5  # seconds between reads of the session while waiting


def _call(contract: Any, function: str, *args: str) -> Any:
    """A DKG function by name through the typed client (the nonce stays the user's text, so
    a malformed one gets the chaincode's own answer); a refusal ends the command with exit 1."""
    from ehrshare.contract import EhrContract
    from ehrshare.ledger.errors import LedgerError

    def refused(function: str, exc: LedgerError) -> BaseException:
        del function
        fail(EXIT_REFUSED, exc.message)

    return EhrContract(contract, errors=refused).call(function, *args)


@contextmanager
def _admin(profile: str, wallet: str) -> Iterator[tuple[Any, Any]]:
    """The profile and a session for the wallet (an org admin to open or abort sessions)."""
    from ehrshare.runtime import connect

    with mapped_errors():
        prof = load_profile(profile)
        session = connect(prof, unlocked_wallet(prof, need_wallet(wallet)))
        try:
            yield prof, session
        finally:
            session.close()


def _default_roster(profile: Any) -> list[str]:
    """The profile's KGC nodes by index (node j at position j), named by their wallets."""
    from ehrshare.wallet import Wallet

    roster = []
    for node in sorted(profile.kgc_nodes, key=lambda n: n.index):
        if node.service.wallet is None:
            fail(
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
    from ehrshare.wallet import Wallet

    for node in profile.kgc_nodes:
        if node.service.wallet is None or not (node.service.wallet / "cert.pem").exists():
            continue
        identity, _ = Wallet(node.service.wallet, use_env=False).load_identity()
        if identity.ibe_id in roster and roster.index(identity.ibe_id) + 1 != node.index:
            fail(
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
        if phase == "deal" and state.get("kind") == "reshare":
            n = len(state["dealers"])  # the current committee deals, the new one responds
        return f"{phase} phase: {len(state.get('posted', []))} of {n} nodes posted"
    return (
        f"result: {result.get('agree', 0)} of τ={tau} views agree "
        f"({result.get('views', 0)} published; {phase})"
    )


def _watch(contract: Any, nonce: str, timeout: float, quiet: bool) -> dict[str, Any]:
    """Read the session until its result is final or it failed; show progress on stderr."""
    deadline = time.monotonic() + timeout
    last = ""
    with progress(f"dkg session {nonce[:16]}", quiet) as update:
        while True:
            state: dict[str, Any] = _call(contract, "GetDKGSession", nonce)
            line = _summary(state)
            if line != last:
                update(f"dkg session {nonce[:16]}: {line}")
                if not quiet and not _err.is_terminal:
                    _err.print(f"dkg session {nonce[:16]}: {line}", soft_wrap=True)
                last = line
            if state["phase"] == "failed" or (state.get("result") or {}).get("final"):
                return state
            if time.monotonic() >= deadline:
                fail(
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
        f"{fmt_time(int(state['opened_at']))} by {state['opened_by']}; phase timeout "
        f"{state['phase_timeout_s']} s",
        soft_wrap=True,
    )
    console.print(f"status: {_summary(state)}", soft_wrap=True)
    posted = set(state.get("posted", []))
    open_phase = (
        [str(state["phase"])] if state["phase"] in ("deal", "response", "justification") else []
    )
    table = Table("#", "kgc", *(c["phase"] for c in state["closed"]), *open_phase)
    # A resharing: share indices, and the leaving dealers too (they post deals).
    indices = state.get("indices") or range(1, len(state["roster"]) + 1)
    rows = list(zip(indices, state["roster"], strict=True))
    rows += [
        (i, d)
        for i, d in zip(state.get("dealer_indices", []), state.get("dealers", []), strict=True)
        if d not in state["roster"]
    ]
    for j, member in rows:
        cells = ["✓" if member in c["posters"] else "-" for c in state["closed"]]
        now = ["✓" if member in posted else "-"] if open_phase else []
        table.add_row(str(j), member, *cells, *now)
    console.print(table)
    for c in state["closed"]:
        how = "timed out" if c.get("timed_out") else ("by result" if c.get("by_result") else "")
        console.print(
            f"{c['phase']} closed {fmt_time(int(c['closed_at']))} by {c['closed_by']}, "
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

    @dkg_app.command("open", epilog=HELP_EPILOG)
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
        new_master_key: Annotated[
            bool,
            typer.Option(
                "--new-master-key",
                help="Replace the master key although records exist (members enrol again; "
                "wallets keep the old identity keys for the old records; grants cover only "
                "records of their own master key). To change the committee, use 'kgc reshare'.",
            ),
        ] = False,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Open a DKG session on chain (needs an org admin wallet); prints its nonce.

        Once records exist the chain refuses a new master key (exit 1) unless
        --new-master-key is given. Exit code 4 when --wait sees the session fail or not
        finish in time.
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
                    new_master_key=new_master_key,
                )
            except LedgerError as exc:
                fail(EXIT_REFUSED, exc.message)
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
            emit(state)
        if wait and state["phase"] == "failed":
            if not as_json:
                _err.print(f"[red]✗[/red] dkg session {nonce[:16]}: {_summary(state)}")
            raise typer.Exit(EXIT_UNAVAILABLE)
        if wait and not as_json:
            _err.print(f"[green]✓[/green] dkg session {nonce[:16]}: {_summary(state)}")

    @dkg_app.command("status", epilog=HELP_EPILOG)
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
                nonce = str(_call(s.contract, "GetDKGResult", "")["nonce"])
            state = _call(s.contract, "GetDKGSession", nonce)
        if as_json:
            emit(state)
        else:
            _show(state)

    @dkg_app.command("abort", epilog=HELP_EPILOG)
    def dkg_abort(
        nonce: Annotated[str, typer.Argument(help="Session nonce (hex).")],
        reason: Annotated[str, typer.Option("--reason", help="Why (kept on chain).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Mark a session that can no longer finish as failed (refused while it still can)."""
        with _admin(profile, wallet) as (_, s):
            state = _call(s.contract, "AbortDKGSession", nonce, reason)
        if as_json:
            emit(state)
        else:
            _err.print(f"dkg session {nonce[:16]}: {_summary(state)}", soft_wrap=True)


def _profile_nodes(profile: Any) -> dict[int, str]:
    """Profile KGC node index → its ledger identity (from the node's wallet)."""
    from ehrshare.wallet import Wallet

    nodes: dict[int, str] = {}
    for node in profile.kgc_nodes:
        if node.service.wallet is None or not (node.service.wallet / "cert.pem").exists():
            continue
        identity, _ = Wallet(node.service.wallet, use_env=False).load_identity()
        nodes[node.index] = identity.ibe_id
    return nodes


def _node_ref(spec: str, nodes: dict[int, str], option: str) -> int:
    """A node named by its profile index or its ledger identity."""
    for index, ibe_id in nodes.items():
        if spec in (str(index), ibe_id):
            return index
    known = ", ".join(f"{i} ({ident})" for i, ident in sorted(nodes.items()))
    fail(EXIT_USAGE, f"{option} {spec}: no such KGC node in the profile; known: {known}")


def _plan(
    current: dict[str, Any],
    nodes: dict[int, str],
    remove: list[str],
    add: list[str],
    threshold: int | None,
) -> tuple[list[int], list[int], int]:
    """(new committee, dealers, τ) by profile index, checked before anything is submitted."""
    roster = [str(m) for m in current["roster"]]
    indices = [int(i) for i in current.get("indices") or range(1, len(roster) + 1)]
    for member, index in zip(roster, indices, strict=True):
        if nodes.get(index) != member:
            fail(
                EXIT_CONFIG,
                f"the current committee has {member} at share index {index}, but the profile's "
                f"KGC node {index} is {nodes.get(index, 'missing')}",
            )
    committee = set(indices)
    gone = {_node_ref(x, nodes, "--remove") for item in remove for x in item.split(",") if x}
    new = {_node_ref(x, nodes, "--add") for item in add for x in item.split(",") if x}
    for index in sorted(gone - committee):
        fail(EXIT_USAGE, f"--remove {nodes[index]}: not in the current committee")
    for index in sorted(new & committee):
        fail(EXIT_USAGE, f"--add {nodes[index]}: already in the current committee")
    members = sorted((committee - gone) | new)
    # Leaving nodes deal too: with τ = n no node could leave otherwise. One that is down only
    # makes the deal phase wait for its timeout; τ_old dealers suffice.
    dealers = sorted(committee)
    old_tau = int(current["threshold"])
    tau = threshold if threshold is not None else old_tau
    if len(members) < 2:
        fail(EXIT_USAGE, f"the new committee would have {len(members)} node; it needs at least 2")
    if not 2 <= tau <= len(members):
        fail(
            EXIT_USAGE,
            f"threshold {tau} must be between 2 and the {len(members)} nodes of the new "
            "committee; give --threshold",
        )
    return members, dealers, tau


def register_reshare(kgc_app: typer.Typer) -> None:
    """Add ``ehrshare kgc reshare`` to the ``kgc`` command group."""

    @kgc_app.command("reshare", epilog=HELP_EPILOG)
    def kgc_reshare(
        remove: Annotated[
            list[str] | None,
            typer.Option(
                "--remove", help="KGC node (profile index or ledger identity) to leave; repeat."
            ),
        ] = None,
        add: Annotated[
            list[str] | None,
            typer.Option(
                "--add", help="KGC node (profile index or ledger identity) to join; repeat."
            ),
        ] = None,
        threshold: Annotated[
            int | None,
            typer.Option("--threshold", "-t", help="New τ (default: the current τ)."),
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
        """Move the current master key to a new KGC committee (org admin): same mpk, so every
        identity key and record stays valid; the nodes get fresh shares.

        Every current member, leaving ones included, re-deals its share; at least the current τ
        must take part (a phase waits up to --phase-timeout for nodes that are down). Old shares
        are destroyed only once the new committee's result is final. Exit code 4 when the
        session fails or is not final in time (the old shares keep answering).
        """
        from ehrshare.hazmat.dkg import new_session_nonce
        from ehrshare.ledger.errors import LedgerError
        from ehrshare.services.kgc import open_reshare_session

        with mapped_errors():
            in_process = all(n.service.embedded for n in load_profile(profile).kgc_nodes)
        session = new_session_nonce()
        nonce = session.hex()
        if in_process:
            # Nothing follows sessions here: this command runs the nodes itself.
            state = _reshare_here(
                profile, wallet, session, remove, add, threshold, phase_timeout, as_json
            )
        else:
            with _admin(profile, wallet) as (prof, s):
                current = _call(s.contract, "GetDKGResult", "")
                nodes = _profile_nodes(prof)
                members, dealers, tau = _plan(current, nodes, remove or [], add or [], threshold)
                _announce(current, nodes, members, dealers, tau, as_json)
                try:
                    state = open_reshare_session(
                        s.contract,
                        nonce=session,
                        roster=[nodes[i] for i in members],
                        indices=members,
                        dealers=[nodes[i] for i in dealers],
                        threshold=tau,
                        phase_timeout_s=phase_timeout,
                    )
                except LedgerError as exc:
                    fail(EXIT_REFUSED, exc.message)
                if not as_json:
                    typer.echo(nonce)
                if wait:
                    limit = wait_timeout if wait_timeout is not None else 4.0 * phase_timeout + 60
                    state = _watch(s.contract, nonce, limit, quiet=as_json)
        if as_json:
            emit(state)
        if state["phase"] == "failed":
            if not as_json:
                _err.print(f"[red]✗[/red] reshare session {nonce[:16]}: {_summary(state)}")
            raise typer.Exit(EXIT_UNAVAILABLE)
        if (in_process or wait) and not as_json:
            _err.print(
                f"[green]✓[/green] reshare session {nonce[:16]}: {_summary(state)}; mpk unchanged",
                soft_wrap=True,
            )


def _announce(
    current: dict[str, Any],
    nodes: dict[int, str],
    members: list[int],
    dealers: list[int],
    tau: int,
    quiet: bool,
) -> None:
    if not quiet:
        _err.print(
            f"resharing the key of dkg session {str(current['nonce'])[:16]}…: new committee "
            f"{', '.join(nodes[i] for i in members)} (τ={tau}), dealt by "
            f"{', '.join(nodes[i] for i in dealers)}",
            soft_wrap=True,
        )


def _reshare_here(
    profile: str,
    wallet: str,
    session: bytes,
    remove: list[str] | None,
    add: list[str] | None,
    threshold: int | None,
    phase_timeout: int,
    quiet: bool,
) -> dict[str, Any]:
    """Run the resharing with the profile's in-process KGC nodes; the session state at the end."""
    from ehrshare.hazmat.dkg import DKGError
    from ehrshare.provisioning import Consortium
    from ehrshare.services.kgc import DKGSessionFailed, run_local_reshare

    nonce = session.hex()
    with mapped_errors():
        prof = load_profile(profile)
        c = Consortium.open(prof)
    with c, mapped_errors(), c.session(unlocked_wallet(prof, need_wallet(wallet))) as admin:
        current = _call(admin.contract, "GetDKGResult", "")
        nodes = _profile_nodes(prof)
        members, dealers, tau = _plan(current, nodes, remove or [], add or [], threshold)
        _announce(current, nodes, members, dealers, tau, quiet)
        try:
            run_local_reshare(
                c.kgc_nodes,
                nonce=session,
                admin=admin.contract,
                members=members,
                dealers=dealers,
                threshold=tau,
                phase_timeout_s=phase_timeout,
            )
        except DKGSessionFailed:
            pass  # the session state read below says why
        except DKGError as exc:
            fail(
                EXIT_UNAVAILABLE,
                f"reshare session {nonce}: {exc}",
                "the old shares still answer; see 'ehrshare kgc dkg status'",
            )
        if not quiet:
            typer.echo(nonce)
        state: dict[str, Any] = _call(admin.contract, "GetDKGSession", nonce)
    return state
