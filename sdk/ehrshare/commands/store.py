"""``ehrshare store check|gc``: compare the content store with the ledger, and remove the
ciphertexts no record names (:mod:`ehrshare.storemaint`); ``store status|repair|recreate-node``
for a private IPFS swarm: placement against the pin policy, re-pinning, and making a lost node
anew (:mod:`ehrshare.replication`, :mod:`ehrshare.network.swarm`).
"""

from __future__ import annotations

import datetime as _dt
import json
import signal
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    JsonOpt,
    ProfileOpt,
    emit,
    fail,
    load_profile,
    mapped_errors,
    unlocked_wallet,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_INTEGRITY, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["register"]

_err = err_console()

StoreWalletOpt = Annotated[
    str,
    typer.Option(
        "--wallet",
        "-w",
        help="An org admin or auditor wallet to list every record version (and, for status "
        "and repair, every valid grant's pins) with (default: the consortium's admin wallet).",
    ),
]


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare store``."""
    del bench_app
    store_app = typer.Typer(
        help="Check the content store against the ledger and remove unreferenced ciphertexts; "
        "in a private IPFS swarm, show and repair where each record is pinned.",
        no_args_is_help=True,
    )
    app.add_typer(store_app, name="store")

    def _store_report(report: Any, as_json: bool, verb: str) -> None:
        if as_json:
            emit(report.as_dict())
            return
        _err.print(
            f"{report.records} record versions, {report.blobs} ciphertexts",
            highlight=False,
        )
        for m in report.missing:
            _err.print(
                f"[red]missing:[/red] record {m['record_id']} v{m['version']}: {m['cid']}",
                highlight=False,
                soft_wrap=True,
            )
        for a in report.altered:
            _err.print(
                f"[red]altered:[/red] record {a['record_id']} v{a['version']}: {a['detail']}",
                highlight=False,
                soft_wrap=True,
            )
        for o in report.orphans:
            gone = " (removed)" if o["cid"] in report.removed else ""
            _err.print(
                f"[yellow]unreferenced:[/yellow] {o['cid']}, {o['age_s']:.0f} s old{gone}",
                highlight=False,
                soft_wrap=True,
            )
        if verb:
            _err.print(f"{verb} {len(report.removed)} unreferenced ciphertext(s)")

    @store_app.command("check", epilog=HELP_EPILOG)
    def store_check(
        profile: ProfileOpt = "", wallet: StoreWalletOpt = "", as_json: JsonOpt = False
    ) -> None:
        """Compare every record version on the ledger with the store: records whose ciphertext
        is missing, ciphertexts no record names, ciphertexts that no longer hash to what the
        ledger recorded. Changes nothing. Exit code 5 if any, 0 if clean."""
        from ehrshare.storemaint import check_store

        with mapped_errors():
            prof = load_profile(profile)
            report = check_store(prof, wallet=unlocked_wallet(prof, wallet or "admin"))
        _store_report(report, as_json, "")
        if not report.clean:
            if not as_json:
                _err.print(
                    "see docs/operations.md §9a; unreferenced ciphertexts "
                    "go with 'ehrshare store gc'",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(EXIT_INTEGRITY)
        if not as_json:
            _err.print("[green]✓[/green] store and ledger agree")

    @store_app.command("gc", epilog=HELP_EPILOG)
    def store_gc(
        profile: ProfileOpt = "",
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                help="Grace period: remove only unreferenced ciphertexts at least this old "
                "(90s, 30m, 1h, 2d; 0 for all). A put in flight is younger.",
            ),
        ] = "1h",
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Only say what would be removed.")
        ] = False,
        wallet: StoreWalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Remove ciphertexts no record names (left by a put killed before it registered the
        record) that are older than the grace period; never one a committed record names.
        Kubo: unpin, then repo gc."""
        from ehrshare.storemaint import gc_store, parse_duration

        try:
            grace = parse_duration(older_than)
        except ValueError as exc:
            fail(EXIT_USAGE, f"--older-than: {exc}")
        with mapped_errors():
            prof = load_profile(profile)
            report = gc_store(
                prof,
                older_than_s=grace,
                dry_run=dry_run,
                wallet=unlocked_wallet(prof, wallet or "admin"),
            )
        _store_report(report, as_json, "would remove" if dry_run else "removed")

    def _swarm_report(report: Any, as_json: bool) -> None:
        if as_json:
            emit(report.as_dict())
            return
        down = [m for m, up in report.nodes.items() if not up]
        _err.print(
            f"{len(report.versions)} record versions, policy: origin + {report.replicas} "
            f"replicas; nodes down: {', '.join(down) or 'none'}",
            highlight=False,
            soft_wrap=True,
        )
        for v in report.versions:
            mark = "[red]under-replicated[/red]" if v["missing"] else "[green]ok[/green]"
            grants = v.get("grantees", [])
            _err.print(
                f"{mark} {v['record_id']} v{v['version']}: policy {', '.join(v['policy'])}"
                + (f" + {', '.join(grants)} (grants)" if grants else "")
                + f"; pinned at {', '.join(v['pinned']) or 'no node'}"
                + (f"; missing at {', '.join(v['missing'])}" if v["missing"] else "")
                + (f"; extra at {', '.join(v['extra'])}" if v["extra"] else ""),
                highlight=False,
                soft_wrap=True,
            )
        for r in report.repaired:
            _err.print(f"re-pinned {r['record_id']} v{r['version']} at {r['node']}", soft_wrap=True)
        for f in report.failed:
            _err.print(
                f"[red]not repaired:[/red] {f['record_id']} v{f['version']} at {f['node']}: "
                f"{f['reason']}",
                highlight=False,
                soft_wrap=True,
            )

    def _swarm_exit(report: Any) -> None:
        if report.healthy:
            return
        if any(not v["pinned"] for v in report.versions):
            raise typer.Exit(EXIT_INTEGRITY)  # some version is on no node that answers
        if not all(report.nodes.values()):
            raise typer.Exit(EXIT_UNAVAILABLE)
        raise typer.Exit(EXIT_INTEGRITY)

    @store_app.command("status", epilog=HELP_EPILOG)
    def store_status(
        record: Annotated[
            str, typer.Argument(help="Only this record's versions (default: every record).")
        ] = "",
        profile: ProfileOpt = "",
        wallet: StoreWalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Where each record version is pinned in the private IPFS swarm, against the policy:
        its origin hospital's node and the next storage.replicas hospitals', and the latest
        version of each record a valid grant covers at the grantee's hospital's node (marked
        "(grants)"; --json: "grantees", and "grants" by hospital). A copy beyond the policy
        (a revoked or expired grant's) is listed as extra, never removed. Changes nothing.
        Exit code 0 if every version is where the policy says, 4 if a node does not answer,
        5 if a version is under-replicated or on no node at all, 2 for an unknown record."""
        from ehrshare.replication import swarm_status

        with mapped_errors():
            prof = load_profile(profile)
            report = swarm_status(
                prof, wallet=unlocked_wallet(prof, wallet or "admin"), record=record
            )
        _swarm_report(report, as_json)
        _swarm_exit(report)

    @store_app.command("repair", epilog=HELP_EPILOG)
    def store_repair(
        profile: ProfileOpt = "",
        wallet: StoreWalletOpt = "",
        every: Annotated[
            str,
            typer.Option(
                "--every",
                help="Repair in rounds, one every this long (90s, 30m, 1h; 1 s to 30 d), "
                "until SIGTERM or SIGINT: each round's summary on stderr (with --json one "
                "JSON object a line on stdout); a round that fails is reported and the next "
                "one runs. Exit 0 when stopped.",
            ),
        ] = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Pin every record version at each node of its policy that lacks it: its origin and
        replica hospitals, and the hospital of each grantee of a valid grant that covers it
        (the node fetches it over bitswap from a node that has it). Never unpins. Safe to run
        again after any interruption. Exit codes as 'store status', after the repair."""
        from ehrshare.replication import NotASwarm, repair_swarm

        interval = _interval(every) if every else 0.0
        with mapped_errors():
            prof = load_profile(profile)
            unlocked = unlocked_wallet(prof, wallet or "admin")
            if every:
                # What no later round can fix is refused now, not reported every round.
                if prof.swarm is None:
                    raise NotASwarm(f"profile {prof.path} has no private IPFS swarm")
                unlocked.load_identity()
                _repair_rounds(lambda: repair_swarm(prof, wallet=unlocked), interval, as_json)
                return
            report = repair_swarm(prof, wallet=unlocked)
        _swarm_report(report, as_json)
        _swarm_exit(report)

    @store_app.command("recreate-node", epilog=HELP_EPILOG)
    def store_recreate_node(
        hospital: Annotated[str, typer.Argument(help="The hospital's MSP id (Org1MSP).")],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Make a hospital's lost IPFS node anew (its repository missing or unusable): an
        empty repository with a new identity on the same ports and swarm key; what is left of
        the old one is moved aside. Run with the swarm down ('ehrshare network down'); then
        'ehrshare network up' and 'ehrshare store repair'."""
        from ehrshare.network.swarm import KuboSwarm
        from ehrshare.replication import NotASwarm
        from ehrshare.swarm_setup import mark_swarm_node

        with mapped_errors():
            prof = load_profile(profile)
            if prof.swarm is None:
                raise NotASwarm(f"profile {prof.path} has no private IPFS swarm")
            swarm = KuboSwarm.load(prof.swarm.path)
            node = swarm.recreate(hospital)
            mark_swarm_node(prof, swarm, hospital)
        if as_json:
            emit({"hospital": hospital, "peer_id": node.peer_id, "api_url": node.api_url})
        else:
            _err.print(f"{hospital}'s IPFS node made anew: peer {node.peer_id}", soft_wrap=True)


def _interval(text: str) -> float:
    """``--every``'s seconds, or a usage error (exit 2) before anything is opened."""
    from ehrshare.errors import UsageError
    from ehrshare.replication import MAX_INTERVAL_S, MIN_INTERVAL_S
    from ehrshare.storemaint import parse_duration

    with mapped_errors():
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise UsageError(
                f"--every {text!r} is not a duration like 90s, 30m, 1h or 2d"
            ) from None
        if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
            raise UsageError(
                f"--every must be 1s to 30d (a round at most once a second), got {text!r}"
            )
    return seconds


def _repair_rounds(round_: Callable[[], Any], interval: float, as_json: bool) -> None:
    """``store repair --every``: rounds until SIGTERM/SIGINT (the round under way finishes)."""
    from ehrshare.replication import SwarmReport, repair_every

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        _err.print(f"{signal.Signals(signum).name}: stopping after this round", highlight=False)
        stop.set()

    def report(n: int, result: SwarmReport | None, error: str) -> None:
        at = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if as_json:
            line = {"round": n, "at": at, "error": error}
            typer.echo(json.dumps(line | (result.as_dict() if result else {}), sort_keys=True))
            return
        if result is None:
            _err.print(f"{at} round {n} failed: {error}", highlight=False, soft_wrap=True)
            return
        state = "healthy" if result.healthy else f"{len(result.under_replicated)} under-replicated"
        down = [m for m, up in result.nodes.items() if not up]
        _err.print(
            f"{at} round {n}: {len(result.versions)} versions, {len(result.repaired)} re-pinned, "
            f"{len(result.failed)} not repaired; {state}"
            + (f"; no answer from {', '.join(down)}" if down else ""),
            highlight=False,
            soft_wrap=True,
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rounds = repair_every(round_, interval, stop, report)
    _err.print(f"stopped after {rounds} rounds", highlight=False)
