"""Member commands: ``consortium init|add-member|service-commands|serve``, ``enroll``,
``record put|get|list``, ``grant`` (and ``grant list|repair``), ``forward``, ``revoke``,
``audit show|verify``, ``wallet encrypt|decrypt|passphrase``, ``store check|gc``.

Every command works on a profile (``--profile``, or ``$EHRSHARE_PROFILE``, or ``./profile.yaml``)
and, where it acts as someone, a wallet (``--wallet``: a name under the profile's wallet
directory or a path; or ``$EHRSHARE_WALLET``). An encrypted wallet is unlocked with
``$EHRSHARE_WALLET_PASSPHRASE`` or, on a terminal, a prompt. ``--json`` prints only JSON on
stdout; messages and progress go to stderr. This module only parses, renders and maps errors
to exit codes; the work is in :mod:`ehrshare.session` and :mod:`ehrshare.consortium`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from ehrshare.console import err_console, out_console
from ehrshare.errors import (
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_INPUT,
    EXIT_INTEGRITY,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EhrshareError,
    exit_code_table,
)
from ehrshare_chaincode.contract import MAX_HOPS

__all__ = ["EXIT_CODES", "register"]

NEW_PASSPHRASE_ENV = "EHRSHARE_WALLET_NEW_PASSPHRASE"  # noqa: S105 - a variable name
_EXIT_HELP = exit_code_table()
MAX_GRANT_DAYS = 36525  # 100 years: later expiries are mistakes (and past what dates print)
_UNEXPECTED = "unexpected error"
_PROXY_HELP = (
    "Proxy to hold the re-key (its ledger identity, e.g. HospitalAMSP/proxy); default: the proxy "
    "of the grantee's hospital."
)

_err = err_console()

ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        envvar="EHRSHARE_PROFILE",
        help="Profile file or consortium directory (env EHRSHARE_PROFILE).",
    ),
]
StoreWalletOpt = Annotated[
    str,
    typer.Option(
        "--wallet",
        "-w",
        help="An org admin or auditor wallet to list every record version with "
        "(default: the consortium's admin wallet).",
    ),
]
WalletOpt = Annotated[
    str,
    typer.Option(
        "--wallet",
        "-w",
        envvar="EHRSHARE_WALLET",
        help="Wallet name (under the profile's wallets/) or path (env EHRSHARE_WALLET).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]
BackoffOpt = Annotated[
    float,
    typer.Option(
        "--restart-backoff",
        help="Seconds before restarting a service that died; doubles with each quick failure.",
    ),
]
BackoffMaxOpt = Annotated[
    float, typer.Option("--restart-backoff-max", help="Longest wait between restarts (s).")
]
StableAfterOpt = Annotated[
    float,
    typer.Option(
        "--stable-after",
        help="Seconds a service must run for its failures to be forgotten (and a death to "
        "count as not quick).",
    ),
]
GiveUpAfterOpt = Annotated[
    int,
    typer.Option(
        "--give-up-after",
        help="Quick failures in a row after which a service is left down ('failed') until "
        "'ehrshare network restart'.",
    ),
]


def _fail(code: int, message: str, hint: str = "") -> NoReturn:
    # soft_wrap: an error message stays one line, so scripts can grep it
    _err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    if hint:
        _err.print(f"[dim]hint:[/dim] {hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Map errors to a message on stderr and the exit code their class carries (one place;
    see :mod:`ehrshare.errors`). Whatever else escapes is a bug: said in one line, exit 1,
    the traceback only in the debug log (``-v``)."""
    from ehrshare.hazmat.errors import EncodingError

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):  # typer says those itself
        raise
    except EhrshareError as exc:
        _fail(exc.exit_code, str(exc), exc.hint)
    except (ConnectionError, TimeoutError) as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    except (EncodingError, OSError) as exc:
        # A file of the profile or wallet that cannot be read: a setup (or volume) problem.
        _fail(EXIT_CONFIG, str(exc))
    except Exception as exc:
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        _fail(
            EXIT_REFUSED,
            f"{_UNEXPECTED}: {type(exc).__name__}: {exc}",
            "this is a bug in ehrshare; run again with -v for the traceback and report it",
        )


def _profile_path(profile: str) -> str:
    if profile:
        return profile
    if Path("profile.yaml").is_file():
        return "profile.yaml"
    _fail(
        EXIT_CONFIG,
        "no profile given and no ./profile.yaml",
        "pass --profile <consortium dir> or set EHRSHARE_PROFILE; "
        "'ehrshare consortium init <dir>' creates one",
    )


def _need_wallet(wallet: str) -> str:
    if not wallet:
        _fail(EXIT_USAGE, "this command acts as someone: pass --wallet <name> (or EHRSHARE_WALLET)")
    return wallet


def _unlocked_wallet(prof: Any, wallet: str) -> Any:
    """The wallet, with its passphrase asked for on a terminal when it is encrypted and
    ``$EHRSHARE_WALLET_PASSPHRASE`` is not set (never echoed)."""
    from ehrshare.wallet import PASSPHRASE_ENV

    w = prof.wallet(wallet)
    if w.encrypted and not os.environ.get(PASSPHRASE_ENV) and sys.stdin.isatty():
        w = w.with_passphrase(typer.prompt(f"passphrase of wallet {wallet}", hide_input=True))
    return w


@contextmanager
def _session(profile: str, wallet: str) -> Iterator[Any]:
    from ehrshare.profile import Profile, profile_file
    from ehrshare.runtime import connect

    with _errors():
        prof = Profile.load(profile_file(_profile_path(profile)))
        session = connect(prof, _unlocked_wallet(prof, _need_wallet(wallet)))
        try:
            yield session
        finally:
            session.close()


@contextmanager
def _progress(text: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    if quiet or not _err.is_terminal:
        yield lambda _m: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
    ) as bar:
        task = bar.add_task(text)
        yield lambda m: bar.update(task, description=m)


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _days(days: float | None) -> _dt.timedelta | None:
    """``--days`` as a period; NaN, infinities, zero, negatives and more than
    :data:`MAX_GRANT_DAYS` are refused as usage errors."""
    if days is None:
        return None
    if not math.isfinite(days) or not 0 < days <= MAX_GRANT_DAYS:
        _fail(
            EXIT_USAGE,
            f"--days {days:g} is out of range: give a number of days above 0 and at most "
            f"{MAX_GRANT_DAYS} (100 years)",
        )
    return _dt.timedelta(days=days)


def _expiry(days: float | None, until: str | None) -> _dt.datetime | _dt.timedelta:
    if until and days is not None:
        _fail(EXIT_USAGE, "give either --days or --until, not both")
    if until:
        try:
            when = _dt.datetime.fromisoformat(until)
            when = when if when.tzinfo else when.replace(tzinfo=_dt.UTC)
            latest = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=MAX_GRANT_DAYS)
        except ValueError:
            _fail(EXIT_USAGE, f"--until {until!r} is not an ISO date/time (2027-01-31T12:00Z)")
        if when > latest:
            _fail(
                EXIT_USAGE, f"--until {until!r} is more than {MAX_GRANT_DAYS} days (100 years) away"
            )
        return when
    period = _days(days)
    if period is None:
        _fail(EXIT_USAGE, "give --days N (N > 0) or --until <ISO date>")
    return period


def _fabric_status(prof: Any) -> dict[str, Any]:
    """A ``ledger: fabric`` profile's endpoints, and whether its local network runs."""
    fab = prof.fabric
    out: dict[str, Any] = {
        "backend": "fabric",
        "channel": prof.channel,
        "peers": [{"address": p.address, "msp": p.msp_id} for p in fab.peers],
        "orderers": [{"address": o.address} for o in fab.orderers],
        "endorsers": fab.endorsers,
    }
    if fab.network is not None:
        from ehrshare.fabricnet import FabricNet

        net = FabricNet.load(fab.network.parent)
        out["network"] = str(fab.network)
        out["running"] = net.running()
        out["processes"] = net.health()
    return out


def _table(*columns: str) -> Table:
    """A table whose cells are never cut: on a narrow terminal a long id folds onto further
    lines rather than end in an ellipsis (every character of it is still there to copy)."""
    table = Table()
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _fmt_time(ts: int) -> str:
    try:
        return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # beyond year 9999: say the raw number
        return f"{ts} (unix seconds)"


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


def _fmt_date(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")


class _GrantGroup(TyperGroup):
    """``grant GRANTEE TYPE …`` gives a grant (the ``give`` subcommand); ``grant list`` and
    ``grant repair`` are the other subcommands. A grantee is an IBE id (``MSP/name``), so it
    never collides with a subcommand's name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["give", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the member commands to ``app``."""
    del bench_app
    consortium_app = typer.Typer(
        help="Create a local embedded consortium (CAs, ledger, store, KGC nodes, DKG, proxies) "
        "and enrol members into wallets.",
        no_args_is_help=True,
    )
    record_app = typer.Typer(
        help="Store, read and list encrypted FHIR R4 records.", no_args_is_help=True
    )
    audit_app = typer.Typer(
        help="Show and verify the hash-chained operation log.", no_args_is_help=True
    )
    app.add_typer(consortium_app, name="consortium")
    app.add_typer(record_app, name="record")
    app.add_typer(audit_app, name="audit")
    grant_app = typer.Typer(
        cls=_GrantGroup,
        help="Give a grant ('ehrshare grant GRANTEE TYPE --days N', the same as 'grant give'), "
        "list the grants you gave or hold, repair one whose proxy lacks its re-key.",
        no_args_is_help=True,
    )
    app.add_typer(grant_app, name="grant")
    network_app = typer.Typer(
        help="Start, stop and inspect a local consortium's processes: its Fabric network "
        "(peers, orderers, chaincode server) when the ledger is Fabric, and its services (KGC "
        "nodes, proxies) when they run as processes.",
        no_args_is_help=True,
    )
    app.add_typer(network_app, name="network")

    @network_app.command("up", epilog=_EXIT_HELP)
    def network_up(
        profile: ProfileOpt = "",
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait until every service listens.")
        ] = 90.0,
        as_json: JsonOpt = False,
        restart_backoff: BackoffOpt = 0.5,
        restart_backoff_max: BackoffMaxOpt = 30.0,
        stable_after: StableAfterOpt = 60.0,
        give_up_after: GiveUpAfterOpt = 5,
    ) -> None:
        """Start the profile's Fabric network (if its ledger is one), then every KGC node and
        proxy, in the background, and wait until all answer (a no-op for what already runs).
        The supervisor restarts a service that dies (backoff doubling from --restart-backoff,
        giving up after --give-up-after quick failures). Logs go to run/network.log and
        fabric/logs/ next to the profile. Exit code 4 if they do not come up (nothing is left
        running), 3 if the ledger or store volume is missing, empty or another consortium's
        (nothing is started)."""
        from ehrshare.netctl import NetworkControlError, network_state
        from ehrshare.netctl import network_up as up
        from ehrshare.processes import RestartPolicy
        from ehrshare.profile import Profile, profile_file
        from ehrshare.volumes import volume_problems

        try:
            policy = RestartPolicy(
                restart_backoff, restart_backoff_max, stable_after, give_up_after
            )
        except ValueError as exc:
            _fail(EXIT_USAGE, str(exc))
        with _errors():
            path = profile_file(_profile_path(profile))
            # Services started on an unmounted or foreign ledger would serve the wrong one.
            for problem in volume_problems(Profile.load(path)).values():
                _fail(EXIT_CONFIG, problem)
            was_up = network_state(path.resolve()).running
            try:
                with _progress("starting the services", as_json):
                    state = up(path, timeout=timeout, policy=policy)
            except NetworkControlError as exc:
                _fail(EXIT_UNAVAILABLE, str(exc))
        if as_json:
            _emit({**state.as_dict(), "already_running": was_up})
            return
        verb = "already running" if was_up else "started"
        if state.fabric is not None:
            _err.print(
                "[green]✓[/green] Fabric network running: "
                + ", ".join(f"{n} (pid {p})" for n, p in state.fabric["pids"].items())
            )
        if state.supervisor_pid is not None:
            _err.print(f"[green]✓[/green] services {verb} (supervisor pid {state.supervisor_pid})")
        for name, svc in state.services.items():
            _err.print(
                f"  {name}: pid {svc['pid']} on {svc['address']} ({svc.get('state', 'running')})",
                highlight=False,
            )
        _err.print(f"stop them with: ehrshare network down --profile {path.parent}")

    @network_app.command("restart", epilog=_EXIT_HELP)
    def network_restart(
        service: Annotated[
            str,
            typer.Argument(help="A service as 'network status' names it: kgc1, proxy-hospitala …"),
        ],
        profile: ProfileOpt = "",
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait until it listens again.")
        ] = 60.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Restart one KGC node or proxy through the 'network up' supervisor (SIGTERM, then
        start again with its failure count reset; also retries a service the supervisor gave
        up on) and wait until it listens. Exit code 2 for an unknown service, 4 if no
        supervisor runs or the service does not come back."""
        from ehrshare.netctl import restart_service
        from ehrshare.profile import profile_file

        with _errors():
            path = profile_file(_profile_path(profile))
            record = restart_service(path, service, timeout=timeout)
        if as_json:
            _emit({"service": service, **record})
            return
        _err.print(
            f"[green]✓[/green] restarted {service}: pid {record['pid']} on {record['address']}",
            highlight=False,
        )

    @network_app.command("down", epilog=_EXIT_HELP)
    def network_down(
        profile: ProfileOpt = "",
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait for a clean stop.")
        ] = 30.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Stop the services 'network up' started, then its Fabric network (by pid; a no-op
        if nothing runs)."""
        from ehrshare.netctl import NetworkControlError
        from ehrshare.netctl import network_down as down
        from ehrshare.profile import profile_file

        with _errors():
            path = profile_file(_profile_path(profile))
            try:
                state = down(path, timeout=timeout)
            except NetworkControlError as exc:
                _fail(EXIT_UNAVAILABLE, str(exc))
        fabric = state.fabric if state is not None else None
        if as_json:
            out: dict[str, Any] = {
                "stopped": state is not None,
                "services": state.services if state else {},
            }
            if fabric is not None:
                out["fabric"] = {"stopped": fabric["pids"]}
            _emit(out)
            return
        if state is None:
            _err.print("nothing was running")
            return
        if state.services:
            _err.print(f"[green]✓[/green] stopped {len(state.services)} services")
        if fabric is not None and fabric["pids"]:
            _err.print(
                f"[green]✓[/green] stopped the Fabric network ({len(fabric['pids'])} processes)"
            )

    @network_app.command("status", epilog=_EXIT_HELP)
    def network_status(profile: ProfileOpt = "", as_json: JsonOpt = False) -> None:
        """Say which backends the profile uses and whether they answer, whether this machine
        has the Fabric binaries, and how each KGC node and proxy process is (asked by a Health
        call over mutual TLS, and what the 'network up' supervisor says: running, restarting,
        failed, not answering, down). Exit code 4 if the content store, the profile's local
        Fabric network or any service process is not healthy."""
        from ehrshare.fabricnet import (
            FabricNetError,
            default_bin_dir,
            fabric_version,
            missing_binaries,
        )
        from ehrshare.ledger.store import EmbeddedLedger
        from ehrshare.profile import Profile
        from ehrshare.storage import KuboClient
        from ehrshare.volumes import volume_problems

        bin_dir = default_bin_dir()
        problems: dict[str, str] = {}
        available = not missing_binaries(bin_dir)
        try:
            version = ".".join(map(str, fabric_version(bin_dir))) if available else None
        except FabricNetError as exc:
            available, version = False, str(exc)
        status: dict[str, Any] = {
            "fabric": {"available": available, "bin_dir": str(bin_dir), "version": version}
        }
        store_ok = ledger_ok = services_ok = True
        if profile or Path("profile.yaml").is_file():
            with _errors():
                path = Path(_profile_path(profile))
                prof = Profile.load(path / "profile.yaml" if path.is_dir() else path)
                # Read-only: a missing, empty or foreign volume is reported, never created.
                problems = volume_problems(prof)
                if prof.fabric is not None:
                    status["ledger"] = _fabric_status(prof)
                    ledger_ok = bool(status["ledger"].get("running", True)) and all(
                        p["healthy"] for p in status["ledger"].get("processes", {}).values()
                    )
                else:
                    status["ledger"] = {"backend": "embedded", "path": str(prof.ledger_path)}
                    if "ledger" not in problems:
                        with EmbeddedLedger.open(
                            prof.ledger_path, channel=prof.channel, create=False
                        ) as ledger:
                            status["ledger"]["height"] = ledger.height()
                            status["ledger"]["organizations"] = sorted(ledger.organizations())
                    if "ledger" in problems:
                        status["ledger"]["problem"] = problems["ledger"]
            if prof.storage_backend == "kubo":
                assert prof.storage_url is not None
                try:
                    with KuboClient(prof.storage_url, timeout=5) as client:
                        detail = f"Kubo {client.version(timeout=5)}"
                except Exception as exc:
                    store_ok, detail = False, str(exc)
                status["storage"] = {
                    "backend": "kubo",
                    "url": prof.storage_url,
                    "reachable": store_ok,
                    "detail": detail,
                }
            else:
                status["storage"] = {"backend": "embedded", "path": str(prof.storage_path)}
            if "storage" in problems:
                status["storage"]["problem"] = problems["storage"]
            status["kgc"] = {
                "threshold": prof.kgc_threshold,
                "nodes": len(prof.kgc_nodes),
                "addresses": [n.service.address or "in-process" for n in prof.kgc_nodes],
            }
            status["proxy"] = {"address": prof.proxy.address or "in-process"}
            status["proxies"] = [
                {"name": px.name, "msp": px.msp_id, "address": px.service.address or "in-process"}
                for px in prof.proxies
            ]
            from ehrshare.netctl import check_services, network_state

            prof_file = (path / "profile.yaml" if path.is_dir() else path).resolve()
            bg = network_state(prof_file)
            with _errors():
                checked = check_services(prof_file)
            services_ok = all(h.healthy for h in checked)
            status["background_services"] = {
                "running": bg.running,
                "supervisor_pid": bg.supervisor_pid,
                "stale_supervisor_pid": bg.stale_supervisor_pid,
                "healthy": services_ok,
                "services": {h.name: h.as_dict() for h in checked},
            }
        if as_json:
            _emit(status)
        else:
            fab = status["fabric"]
            _err.print(
                f"fabric binaries: {'found' if fab['available'] else 'missing'} in "
                f"{fab['bin_dir']} ({fab['version']})"
                + ("" if fab["available"] else "; run 'make tools'"),
                soft_wrap=True,
            )
            if "ledger" in status:
                led = status["ledger"]
                if led["backend"] == "fabric":
                    running = led.get("running")
                    _err.print(
                        f"ledger: Fabric channel {led['channel']}, peers "
                        + ", ".join(f"{p['address']} ({p['msp']})" for p in led["peers"])
                        + ", orderers "
                        + ", ".join(o["address"] for o in led["orderers"])
                        + (
                            ""
                            if running is None
                            else ("; local network up" if running else "; local network DOWN")
                        ),
                        soft_wrap=True,
                    )
                    for name, proc in led.get("processes", {}).items():
                        pid = f" (pid {proc['pid']})" if proc["pid"] is not None else ""
                        _err.print(
                            f"  {name}{pid}: {proc['status']}", soft_wrap=True, highlight=False
                        )
                elif "problem" in led:
                    _err.print(f"ledger: embedded at {led['path']}: PROBLEM", soft_wrap=True)
                else:
                    _err.print(
                        f"ledger: embedded at {led['path']}, height {led['height']}, "
                        f"organisations {', '.join(led['organizations'])}",
                        soft_wrap=True,
                    )
                st = status["storage"]
                where = st.get("url") or st.get("path")
                state = (
                    ""
                    if st["backend"] == "embedded"
                    else (" (reachable)" if store_ok else f" (DOWN: {st['detail']})")
                )
                _err.print(f"storage: {st['backend']} at {where}{state}", soft_wrap=True)
                kgc = status["kgc"]
                _err.print(
                    f"kgc: {kgc['threshold']} of {kgc['nodes']} nodes "
                    f"({', '.join(kgc['addresses'])}); proxies: "
                    + ", ".join(f"{p['name']} ({p['address']})" for p in status["proxies"]),
                    soft_wrap=True,
                )
                bg_state = status["background_services"]
                if bg_state["running"]:
                    head = f"running, supervisor pid {bg_state['supervisor_pid']}"
                elif bg_state["stale_supervisor_pid"] is not None:
                    head = (
                        f"not running (the supervisor, pid {bg_state['stale_supervisor_pid']}, "
                        "is gone: 'ehrshare network up' starts a new one)"
                    )
                else:
                    head = "not running"
                _err.print(f"services (network up): {head}", soft_wrap=True, highlight=False)
                for name, svc in bg_state["services"].items():
                    pid = f", pid {svc['pid']}" if svc["pid"] is not None else ""
                    _err.print(
                        f"  {name} ({svc['address']}{pid}): {svc['status']}",
                        soft_wrap=True,
                        highlight=False,
                    )
        for volume, problem in problems.items():
            _err.print(f"[red]{volume} volume:[/red] {problem}", highlight=False, soft_wrap=True)
        if problems:
            raise typer.Exit(EXIT_CONFIG)
        if not store_ok or not ledger_ok or not services_ok:
            raise typer.Exit(EXIT_UNAVAILABLE)

    # --- consortium ---------------------------------------------------------------------------

    @consortium_app.command("init", epilog=_EXIT_HELP)
    def consortium_init(
        directory: Annotated[Path, typer.Argument(help="New directory for the consortium.")],
        hospitals: Annotated[
            str, typer.Option(help="Comma-separated hospital names (one CA + KGC node each).")
        ] = "HospitalA,HospitalB,HospitalC",
        threshold: Annotated[int, typer.Option(help="KGC threshold τ (nodes needed).")] = 2,
        committee: Annotated[
            int | None,
            typer.Option(
                help="KGC nodes in the first committee: the first N hospitals' (default all); "
                "the others can join later with 'ehrshare kgc reshare --add'."
            ),
        ] = None,
        storage: Annotated[str, typer.Option(help="Content store: embedded or kubo.")] = (
            "embedded"
        ),
        kubo_url: Annotated[str, typer.Option(help="Kubo RPC URL (storage kubo).")] = (
            "http://127.0.0.1:5001"
        ),
        ledger: Annotated[
            str,
            typer.Option(
                help="Ledger: embedded, or fabric (builds and starts a Fabric 2.3 network on "
                "127.0.0.1 from the hospitals' CAs: one peer each, Raft orderers; needs "
                "'make tools'; stopped when init ends, started again by 'network up')."
            ),
        ] = "embedded",
        orderers: Annotated[
            int, typer.Option(help="With --ledger fabric: Raft orderers (1 or 3).", min=1)
        ] = 1,
        batch_timeout: Annotated[
            str,
            typer.Option(
                help="With --ledger fabric: the orderers' BatchTimeout (a lone transaction "
                "waits this long for its block), e.g. 20ms or 2s."
            ),
        ] = "20ms",
        services: Annotated[
            str,
            typer.Option(
                help="KGC nodes and proxies: in-process (run by whoever connects) or processes "
                "(gRPC over mutual TLS on 127.0.0.1; start them with 'consortium serve')."
            ),
        ] = "in-process",
        ports: Annotated[
            str,
            typer.Option(
                help="With --services processes: comma-separated ports, one per hospital's "
                "proxy, then one per hospital's KGC node (default 7060, 7061, ...)."
            ),
        ] = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Create a consortium directory with profile.yaml, run the DKG and put mpk on chain.

        Then: 'ehrshare consortium add-member alice --hospital HospitalA --role patient -p DIR'.
        """
        from ehrshare.provisioning import Consortium, FabricOptions

        names = [h.strip() for h in hospitals.split(",") if h.strip()]
        port_list: list[int] | None = None
        if ports:
            try:
                port_list = [int(p) for p in ports.split(",")]
            except ValueError:
                _fail(EXIT_USAGE, f"--ports {ports!r} is not a comma-separated list of numbers")
        with _errors(), _progress("creating the consortium", as_json) as say:
            c = Consortium.init(
                directory,
                hospitals=names,
                threshold=threshold,
                committee=committee,
                storage=storage,
                kubo_url=kubo_url,
                ledger=ledger,
                services=services,
                ports=port_list,
                progress=say,
                fabric=(
                    FabricOptions(orderers=orderers, batch_timeout=batch_timeout)
                    if ledger == "fabric"
                    else None
                ),
            )
            try:
                dkg = c.dkg_result()
            finally:
                c.close()
        profile = str(Path(directory).resolve() / "profile.yaml")
        if as_json:
            _emit(
                {
                    "profile": profile,
                    "hospitals": names,
                    "threshold": threshold,
                    "qual": dkg["qual"],
                    "mpk": dkg["mpk"],
                }
            )
            return
        _err.print(f"[green]✓[/green] consortium created: {profile}")
        members = committee or len(names)
        _err.print(f"  KGC: {threshold} of {members} nodes; QUAL {', '.join(dkg['qual'])}")
        _err.print(f"  next: export EHRSHARE_PROFILE={profile}")
        if services == "processes":
            _err.print("  start the services: ehrshare consortium serve (or see service-commands)")

    @consortium_app.command("service-commands", epilog=_EXIT_HELP)
    def consortium_service_commands(profile: ProfileOpt = "", as_json: JsonOpt = False) -> None:
        """Print the 'ehrshare kgc serve' / 'ehrshare proxy serve' command line of each service
        the profile runs as a process (to run them by hand or from a service manager)."""
        from ehrshare.processes import service_commands
        from ehrshare.profile import Profile, profile_file

        with _errors():
            prof = Profile.load(profile_file(_profile_path(profile)))
            commands = service_commands(prof)
        if not commands:
            _fail(EXIT_CONFIG, "this profile runs every service in-process; nothing to start")
        if as_json:
            _emit(
                [
                    {"name": c.name, "address": c.address, "argv": c.argv(["ehrshare"])}
                    for c in commands
                ]
            )
            return
        for c in commands:
            typer.echo(shlex.join(c.argv(["ehrshare"])))

    @consortium_app.command("serve", epilog=_EXIT_HELP)
    def consortium_serve(
        profile: ProfileOpt = "",
        state_file: Annotated[
            Path | None,
            typer.Option(
                help="Keep the pids, addresses and states here once every service listens "
                "(used by 'ehrshare network up|status|restart'); removed on exit."
            ),
        ] = None,
        restart_backoff: BackoffOpt = 0.5,
        restart_backoff_max: BackoffMaxOpt = 30.0,
        stable_after: StableAfterOpt = 60.0,
        give_up_after: GiveUpAfterOpt = 5,
    ) -> None:
        """Start every KGC node and every proxy of the profile as child processes, wait until
        they listen, restart any that dies (logging its exit status), and stop them all (by
        pid) on Ctrl-C or SIGTERM."""
        from ehrshare.processes import RestartPolicy, ServiceProcessError, ServiceProcesses
        from ehrshare.profile import Profile, profile_file
        from ehrshare.services.vault import atomic_write

        try:
            policy = RestartPolicy(
                restart_backoff, restart_backoff_max, stable_after, give_up_after
            )
        except ValueError as exc:
            _fail(EXIT_USAGE, str(exc))
        with _errors():
            path = profile_file(_profile_path(profile))
            prof = Profile.load(path)
            procs = ServiceProcesses(prof, path.parent / "run", die_with_parent=True, policy=policy)
        # Deaths, restarts and give-ups go to stderr (run/network.log under 'network up').
        logging.getLogger("ehrshare.processes").setLevel(logging.INFO)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

        ready = False

        def write_state() -> None:
            if state_file is None:
                return
            state = {
                "supervisor_pid": os.getpid(),
                "ready": ready,
                "policy": dataclasses.asdict(policy),
                "services": procs.snapshot(),
            }
            atomic_write(state_file, json.dumps(state, indent=2).encode(), mode=0o644)

        if state_file is not None:
            from ehrshare.netctl import hold_supervisor_lock

            # Held until this process dies: one supervisor per profile, even when two
            # 'network up' race or one was killed before this wrote the state file.
            if hold_supervisor_lock(state_file.parent) is None:
                _fail(
                    EXIT_UNAVAILABLE,
                    f"another supervisor runs for this profile (see {state_file})",
                )
        with procs:
            try:
                write_state()  # its pid, at once: 'network down' can stop it while it starts
                try:
                    procs.start()
                except ServiceProcessError as exc:
                    _fail(EXIT_UNAVAILABLE, str(exc))
                for name, pid in procs.pids.items():
                    _err.print(f"{name}: pid {pid} on {procs.commands[name].address}")
                ready = True
                write_state()
                _err.print("serving; Ctrl-C stops every service")
                procs.supervise(stop, write_state)
            finally:
                if state_file is not None:
                    state_file.unlink(missing_ok=True)
        _err.print("stopped")

    @consortium_app.command("add-member", epilog=_EXIT_HELP)
    def consortium_add_member(
        name: Annotated[str, typer.Argument(help="Enrollment id (becomes the wallet name).")],
        hospital: Annotated[str, typer.Option(help="Issuing hospital, e.g. HospitalA.")],
        role: Annotated[str, typer.Option(help="patient, clinician, auditor or admin.")],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a certificate for a new member into a wallet (then run 'ehrshare enroll')."""
        from ehrshare.provisioning import Consortium

        with _errors():
            c = Consortium.open(_profile_path(profile))
            try:
                wallet = c.add_member(name, hospital, role)
                identity, _ = wallet.load_identity()
            finally:
                c.close()
        if as_json:
            _emit({"ibe_id": identity.ibe_id, "wallet": str(wallet.directory), "role": role})
            return
        _err.print(f"[green]✓[/green] {identity.ibe_id} ({role}) → wallet {wallet.directory}")

    @consortium_app.command("reissue-tls", epilog=_EXIT_HELP)
    def consortium_reissue_tls(
        name: Annotated[str, typer.Argument(help="Wallet name.")],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a new TLS client certificate and key into a wallet (the ledger key stays).

        Replaces a TLS key you suspect, or one the wallet lost (without it the wallet cannot
        reach KGC or proxy processes)."""
        from ehrshare.provisioning import Consortium

        with _errors():
            c = Consortium.open(_profile_path(profile))
            try:
                wallet = c.reissue_tls(name)
                identity, _ = wallet.load_tls()
            finally:
                c.close()
        if as_json:
            _emit({"ibe_id": identity.ibe_id, "wallet": str(wallet.directory)})
            return
        _err.print(f"[green]✓[/green] new TLS client certificate for {identity.ibe_id}")

    wallet_app = typer.Typer(help="Wallet keys at rest.", no_args_is_help=True)
    app.add_typer(wallet_app, name="wallet")

    def _changing_wallet(profile: str, wallet: str) -> Any:
        """The wallet to change, after finishing or undoing a change a crash interrupted."""
        from ehrshare.profile import Profile, profile_file
        from ehrshare.wallet import Wallet

        prof = Profile.load(profile_file(_profile_path(profile)))
        w = prof.wallet(_need_wallet(wallet))
        bare = Wallet(w.directory, use_env=False)
        done = bare.recover()
        if done:
            _err.print(f"wallet {w.directory}: {done}", highlight=False, soft_wrap=True)
        if not bare.exists:
            _fail(EXIT_CONFIG, f"wallet {w.directory} holds no identity")
        return bare

    def _passphrase(prompt: str, *, env: str, confirm: bool) -> str:
        value = os.environ.get(env)
        if value:
            return value
        if not sys.stdin.isatty():
            _fail(EXIT_USAGE, f"no terminal to ask for the {prompt}: set {env}")
        answer: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
        return answer

    @wallet_app.command("encrypt", epilog=_EXIT_HELP)
    def wallet_encrypt(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Encrypt a wallet's key.pem, tls-key.pem and ibe.key under a passphrase (scrypt,
        AES-256-GCM), all at once: a crash leaves the old or the new wallet, never a mix.

        The passphrase comes from $EHRSHARE_WALLET_PASSPHRASE or is asked for twice. A wallet
        an older version left half-encrypted is finished with the passphrase it used."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with _errors():
            w = _changing_wallet(profile, wallet)
            state = w.seal_state
            if state == "encrypted":
                _fail(
                    EXIT_CONFIG,
                    f"wallet {w.directory} is already encrypted",
                    "change its passphrase with 'ehrshare wallet passphrase'",
                )
            if state == "mixed":
                _err.print(
                    f"wallet {w.directory} is half-encrypted (an interrupted encrypt): "
                    "finishing it; give the passphrase that encrypt used",
                    highlight=False,
                    soft_wrap=True,
                )
            passphrase = _passphrase("new passphrase", env=PASSPHRASE_ENV, confirm=True)
            w.encrypt(passphrase)
        _err.print(f"[green]✓[/green] wallet {w.directory} encrypted")

    @wallet_app.command("decrypt", epilog=_EXIT_HELP)
    def wallet_decrypt(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Store an encrypted wallet's keys unencrypted again (mode 0600), all at once.

        The passphrase comes from $EHRSHARE_WALLET_PASSPHRASE or is asked for."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with _errors():
            w = _changing_wallet(profile, wallet)
            if w.seal_state == "plain":
                _fail(EXIT_CONFIG, f"wallet {w.directory} is not encrypted")
            w.decrypt(_passphrase("passphrase", env=PASSPHRASE_ENV, confirm=False))
        _err.print(f"[green]✓[/green] wallet {w.directory} decrypted")

    @wallet_app.command("passphrase", epilog=_EXIT_HELP)
    def wallet_passphrase(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Change an encrypted wallet's passphrase, all at once.

        The current passphrase comes from $EHRSHARE_WALLET_PASSPHRASE, the new one from
        $EHRSHARE_WALLET_NEW_PASSPHRASE; each is asked for when not set."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with _errors():
            w = _changing_wallet(profile, wallet)
            state = w.seal_state
            if state != "encrypted":
                _fail(
                    EXIT_CONFIG,
                    f"wallet {w.directory} is "
                    + ("half-encrypted" if state == "mixed" else "not encrypted"),
                    "finish or start encrypting it with 'ehrshare wallet encrypt'",
                )
            old = _passphrase("current passphrase", env=PASSPHRASE_ENV, confirm=False)
            new = _passphrase("new passphrase", env=NEW_PASSPHRASE_ENV, confirm=True)
            w.change_passphrase(old, new)
        _err.print(f"[green]✓[/green] wallet {w.directory}: passphrase changed")

    store_app = typer.Typer(
        help="Check the content store against the ledger and remove unreferenced ciphertexts.",
        no_args_is_help=True,
    )
    app.add_typer(store_app, name="store")

    def _store_report(report: Any, as_json: bool, verb: str) -> None:
        if as_json:
            _emit(report.as_dict())
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

    @store_app.command("check", epilog=_EXIT_HELP)
    def store_check(
        profile: ProfileOpt = "", wallet: StoreWalletOpt = "", as_json: JsonOpt = False
    ) -> None:
        """Compare every record version on the ledger with the store: records whose ciphertext
        is missing, ciphertexts no record names, ciphertexts that no longer hash to what the
        ledger recorded. Changes nothing. Exit code 5 if any, 0 if clean."""
        from ehrshare.profile import Profile, profile_file
        from ehrshare.storemaint import check_store

        with _errors():
            prof = Profile.load(profile_file(_profile_path(profile)))
            report = check_store(prof, wallet=_unlocked_wallet(prof, wallet or "admin"))
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

    @store_app.command("gc", epilog=_EXIT_HELP)
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
        from ehrshare.profile import Profile, profile_file
        from ehrshare.storemaint import gc_store, parse_duration

        try:
            grace = parse_duration(older_than)
        except ValueError as exc:
            _fail(EXIT_USAGE, f"--older-than: {exc}")
        with _errors():
            prof = Profile.load(profile_file(_profile_path(profile)))
            report = gc_store(
                prof,
                older_than_s=grace,
                dry_run=dry_run,
                wallet=_unlocked_wallet(prof, wallet or "admin"),
            )
        _store_report(report, as_json, "would remove" if dry_run else "removed")

    # --- enrol --------------------------------------------------------------------------------

    @app.command("enroll", epilog=_EXIT_HELP)
    def enroll(profile: ProfileOpt = "", wallet: WalletOpt = "", as_json: JsonOpt = False) -> None:
        """Register on chain, get your identity key from τ KGC nodes (threshold extraction,
        each partial key verified) and publish your per-type public keys."""
        with _session(profile, wallet) as s, _errors(), _progress("enrolling", as_json) as say:
            say("threshold key extraction from the KGC nodes")
            result = s.enroll()
            say("publishing type keys")
            published = s.publish_type_keys()
        data = {
            "ibe_id": result.ibe_id,
            "kgc_nodes_used": list(result.used),
            "kgc_nodes_unavailable": {str(k): v for k, v in result.failed.items()},
            "kgc_nodes_invalid": list(result.invalid),
            "type_keys_published": published,
        }
        if as_json:
            _emit(data)
            return
        _err.print(
            f"[green]✓[/green] {result.ibe_id} enrolled with KGC nodes "
            f"{', '.join(map(str, result.used))}; type keys: {', '.join(published) or 'unchanged'}"
        )
        for k, v in result.failed.items():
            _err.print(f"  [yellow]node {k} unavailable:[/yellow] {v}")
        for k in result.invalid:
            _err.print(f"  [red]node {k} sent an invalid partial key (excluded)[/red]")

    # --- records ------------------------------------------------------------------------------

    @record_app.command("put", epilog=_EXIT_HELP)
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
            _fail(EXIT_INPUT, f"cannot read {file}: {exc.strerror}")
        with _session(profile, wallet) as s, _errors():
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
            with _progress("storing", as_json):
                ref = s.put_record(resource, patient=patient or None, type=record_type or None)
        if as_json:
            _emit(ref.to_dict())
            return
        _err.print(f"[green]✓[/green] record {ref.record_id} ({ref.type}) for {ref.owner}")
        typer.echo(ref.record_id)

    @record_app.command("get", epilog=_EXIT_HELP)
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
            _fail(EXIT_USAGE, f"cannot write {out}: not a file in an existing directory")
        with _session(profile, wallet) as s, _errors(), _progress("reading", as_json):
            resource = s.read_record(record_id, grant=grant_id or None)
        text = resource.model_dump_json(exclude_none=True, indent=2)
        if out:
            try:
                Path(out).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                # The read is done and logged; only the copy on disk failed.
                _fail(EXIT_USAGE, f"cannot write {out}: {exc.strerror}; the record was read")
            if not as_json:
                _err.print(f"[green]✓[/green] wrote {out}")
                return
        typer.echo(text)

    @record_app.command("list", epilog=_EXIT_HELP)
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
            _fail(EXIT_USAGE, "give either --granted or --patient, not both")
        if granted:
            with _session(profile, wallet) as s, _errors():
                pairs = s.granted_records()
            if as_json:
                _emit([{**r.to_dict(), "grant_id": g.grant_id} for r, g in pairs])
                return
            table = _table("record", "patient", "type", "created", "grant")
            for r, g in pairs:
                table.add_row(
                    r.record_id, r.owner, r.type or r.label, _fmt_time(r.created_at), g.grant_id
                )
            out_console().print(table)
            return
        with _session(profile, wallet) as s, _errors():
            refs = s.list_records(patient or None)
        if as_json:
            _emit([r.to_dict() for r in refs])
            return
        table = _table("record", "type", "creator", "created", "version")
        for r in refs:
            table.add_row(
                r.record_id, r.type or r.label, r.creator, _fmt_time(r.created_at), str(r.version)
            )
        out_console().print(table)

    # --- grants -------------------------------------------------------------------------------

    @grant_app.command("give", epilog=_EXIT_HELP)
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
        with _session(profile, wallet) as s, _errors():
            g = s.grant(
                grantee, record_type, expires=expires, max_hops=max_hops, proxy=proxy or None
            )
        if as_json:
            _emit(g.to_dict())
            return
        _err.print(
            f"[green]✓[/green] grant {g.grant_id}: {g.grantee} may read {g.type} until "
            f"{_fmt_time(g.expiry)}, {g.max_hops} further hop(s); re-key at {g.proxy}"
        )
        typer.echo(g.grant_id)

    @grant_app.command("list", epilog=_EXIT_HELP)
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
            _fail(EXIT_USAGE, "give --given or --received, not both")
        with _session(profile, wallet) as s, _errors():
            patient = s.role() == "patient"
            # What a member gave: a patient's grants (by owner), else its forwards (by grantor).
            gave = "owner" if patient else "grantor"
            side = gave if given else "grantee" if received else (gave if patient else "grantee")
            rows = [
                g.to_dict() | {"status": s.grant_status(g), "expires": _fmt_date(g.expiry)}
                for g in s.grants(side)
            ]
        if as_json:
            _emit({"side": "received" if side == "grantee" else "given", "grants": rows})
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

    @grant_app.command("repair", epilog=_EXIT_HELP)
    def grant_repair(
        grant_id: Annotated[str, typer.Argument(help="Grant id (g-…) you gave.")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Deliver a grant's re-key to its proxy again (needs the granting wallet); if the
        proxy refuses it, the grant is revoked (exit code 1: grant again)."""
        with _session(profile, wallet) as s, _errors():
            g = s.repair_grant(grant_id)
        if as_json:
            _emit(g.to_dict())
            return
        _err.print(f"[green]✓[/green] grant {g.grant_id}: its re-key is at {g.proxy}")

    @app.command("forward", epilog=_EXIT_HELP)
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
        with _session(profile, wallet) as s, _errors():
            g = s.forward(what, to, expires=expires, max_hops=max_hops, proxy=proxy or None)
        if as_json:
            _emit(g.to_dict())
            return
        _err.print(
            f"[green]✓[/green] grant {g.grant_id} (hop {g.hop}) to {g.grantee}; re-key at {g.proxy}"
        )
        typer.echo(g.grant_id)

    @app.command("revoke", epilog=_EXIT_HELP)
    def revoke(
        grant_id: Annotated[str, typer.Argument(help="Grant id (g-…).")],
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Revoke a grant you gave: later requests are denied, the proxies delete the re-keys
        (also of grants forwarded from it). Forward-only: what was read stays read."""
        with _session(profile, wallet) as s, _errors():
            g = s.revoke(grant_id)
        if as_json:
            _emit(g.to_dict())
            return
        _err.print(f"[green]✓[/green] grant {g.grant_id} revoked")

    # --- audit --------------------------------------------------------------------------------

    @audit_app.command("show", epilog=_EXIT_HELP)
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
        with _session(profile, wallet) as s, _errors():
            trail = s.audit(patient or None, record=record or None)
            labels = s.labels
        if as_json:
            _emit(trail.to_dict())
            return
        table = _table(
            "#", "time", "action", "outcome", "actor", "record / grant", "type", "grantee"
        )
        for e in trail.entries:
            detail = e["detail"] if isinstance(e.get("detail"), dict) else {}
            actor = detail.get("requester") or e["actor"]
            label = detail.get("type")
            grantee = detail.get("grantee")
            table.add_row(
                str(e["seq"]),
                _fmt_time(e["timestamp"]),
                e["action"],
                e["outcome"],
                actor,
                e["record_id"] or e["grant_id"],
                _type_in_words(labels, label) if isinstance(label, str) else "",
                _member_in_words(grantee) if isinstance(grantee, str) else "",
            )
        out_console().print(table)

    @audit_app.command("verify", epilog=_EXIT_HELP)
    def audit_verify(
        patient: Annotated[str, typer.Option(help="Patient IBE id (default: yourself).")] = "",
        trail_file: Annotated[
            str, typer.Option("--trail", help="Verify an exported trail (audit show --json).")
        ] = "",
        against: Annotated[
            list[str] | None,
            typer.Option("--against", help="A head file saved with 'ehrshare ledger head'."),
        ] = None,
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
                _fail(EXIT_INPUT, f"{trail_file} is not an exported audit trail: {exc}")
        with _session(profile, wallet) as s, _errors():
            verdict = s.verify_audit(patient or None, trail=trail, against=heads)
        if as_json:
            _emit(verdict.to_dict())
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
