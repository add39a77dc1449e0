"""Member commands: ``consortium init|add-member|service-commands|serve``, ``enroll``,
``record put|get|list``, ``grant``, ``forward``, ``revoke``, ``audit show|verify``,
``wallet encrypt``.

Every command works on a profile (``--profile``, or ``$EHRSHARE_PROFILE``, or ``./profile.yaml``)
and, where it acts as someone, a wallet (``--wallet``: a name under the profile's wallet
directory or a path; or ``$EHRSHARE_WALLET``). An encrypted wallet is unlocked with
``$EHRSHARE_WALLET_PASSPHRASE`` or, on a terminal, a prompt. ``--json`` prints only JSON on
stdout; messages and progress go to stderr. This module only parses, renders and maps errors
to exit codes; the work is in :mod:`ehrshare.session` and :mod:`ehrshare.consortium`.
"""

from __future__ import annotations

import datetime as _dt
import json
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

from ehrshare.console import err_console, out_console

__all__ = ["EXIT_CODES", "register"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_INTEGRITY = 5
EXIT_INPUT = 6
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_REFUSED: "refused by the ledger (not allowed, access denied, unknown object)",
    EXIT_USAGE: "bad command-line usage",
    EXIT_CONFIG: "profile, wallet or consortium problem (incl. backend not available)",
    EXIT_UNAVAILABLE: "a service is down (content store, KGC nodes, proxy)",
    EXIT_INTEGRITY: "an integrity check failed (audit trail, stored ciphertext)",
    EXIT_INPUT: "invalid input (FHIR, record type, size)",
}
_EXIT_HELP = "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."
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


def _fail(code: int, message: str, hint: str = "") -> NoReturn:
    # soft_wrap: an error message stays one line, so scripts can grep it
    _err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    if hint:
        _err.print(f"[dim]hint:[/dim] {hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Map the SDK's errors to a message on stderr and a meaningful exit code."""
    from ehrshare.consortium import ConsortiumError
    from ehrshare.fabricnet import FabricNetError
    from ehrshare.fhir import FhirValidationError, UnknownRecordType
    from ehrshare.hazmat.errors import EncodingError
    from ehrshare.ledger.errors import LedgerError, LedgerIntegrityError, OrderingKeyError
    from ehrshare.profile import BackendUnavailable, ProfileError, WalletError
    from ehrshare.session import (
        AccessDenied,
        EnrollmentError,
        LedgerUnreachable,
        NotEnrolledError,
        ProxyError,
        ProxyUnreachable,
        RecordStorageError,
        RecordTooLarge,
        RequestRejected,
        SdkError,
    )
    from ehrshare.storage import IntegrityError, StorageError

    try:
        yield
    except typer.Exit:
        raise
    except BackendUnavailable as exc:
        _fail(EXIT_CONFIG, str(exc))
    except (ProfileError, WalletError, ConsortiumError) as exc:
        _fail(EXIT_CONFIG, str(exc))
    except NotEnrolledError as exc:
        _fail(EXIT_CONFIG, str(exc), "run 'ehrshare enroll --wallet <name>'")
    except AccessDenied as exc:
        _fail(EXIT_REFUSED, str(exc), "ask the patient for a grant of this record's type")
    except RequestRejected as exc:
        _fail(EXIT_REFUSED, str(exc))
    except (FhirValidationError, UnknownRecordType, RecordTooLarge) as exc:
        _fail(EXIT_INPUT, str(exc))
    except IntegrityError as exc:
        _fail(EXIT_INTEGRITY, str(exc))
    except ProxyUnreachable as exc:
        _fail(
            EXIT_UNAVAILABLE,
            str(exc),
            f"ask hospital {exc.msp_id} to start its proxy ('ehrshare proxy serve'), then retry",
        )
    except (RecordStorageError, EnrollmentError, ProxyError, StorageError) as exc:
        _fail(EXIT_UNAVAILABLE, str(exc))
    except FabricNetError as exc:
        _fail(EXIT_UNAVAILABLE, str(exc), "see the process logs under <consortium>/fabric")
    except LedgerIntegrityError as exc:
        _fail(EXIT_INTEGRITY, str(exc), "run 'ehrshare ledger verify' to find the first bad block")
    except OrderingKeyError as exc:
        _fail(EXIT_CONFIG, str(exc), "restore the ledger directory from its backup")
    except (LedgerUnreachable, LedgerError) as exc:
        if isinstance(exc, LedgerUnreachable) or exc.unreachable:
            _fail(
                EXIT_UNAVAILABLE,
                str(exc),
                "is the ledger running? For a local Fabric network: 'ehrshare network up'",
            )
        _fail(EXIT_REFUSED, str(exc))
    except SdkError as exc:
        _fail(EXIT_REFUSED, str(exc))
    except (EncodingError, FileNotFoundError, PermissionError) as exc:
        _fail(EXIT_CONFIG, str(exc))


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
    from ehrshare.profile import PASSPHRASE_ENV

    w = prof.wallet(wallet)
    if w.encrypted and not os.environ.get(PASSPHRASE_ENV) and sys.stdin.isatty():
        w = w.with_passphrase(typer.prompt(f"passphrase of wallet {wallet}", hide_input=True))
    return w


@contextmanager
def _session(profile: str, wallet: str) -> Iterator[Any]:
    from ehrshare.consortium import connect, profile_file
    from ehrshare.profile import Profile

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


def _expiry(days: float | None, until: str | None) -> _dt.datetime | _dt.timedelta:
    if until:
        try:
            when = _dt.datetime.fromisoformat(until)
        except ValueError:
            _fail(EXIT_USAGE, f"--until {until!r} is not an ISO date/time (2027-01-31T12:00Z)")
        return when if when.tzinfo else when.replace(tzinfo=_dt.UTC)
    if days is None or days <= 0:
        _fail(EXIT_USAGE, "give --days N (N > 0) or --until <ISO date>")
    return _dt.timedelta(days=days)


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

        out["network"] = str(fab.network)
        out["running"] = FabricNet.load(fab.network.parent).running()
    return out


def _fmt_time(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
    ) -> None:
        """Start the profile's Fabric network (if its ledger is one), then every KGC node and
        proxy, in the background, and wait until all answer (a no-op for what already runs).
        Logs go to run/network.log and fabric/logs/ next to the profile. Exit code 4 if they
        do not come up (nothing is left running)."""
        from ehrshare.consortium import profile_file
        from ehrshare.netctl import NetworkControlError, network_state
        from ehrshare.netctl import network_up as up

        with _errors():
            path = profile_file(_profile_path(profile))
            was_up = network_state(path.resolve()).running
            try:
                with _progress("starting the services", as_json):
                    state = up(path, timeout=timeout)
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
            _err.print(f"  {name}: pid {svc['pid']} on {svc['address']}")
        _err.print(f"stop them with: ehrshare network down --profile {path.parent}")

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
        from ehrshare.consortium import profile_file
        from ehrshare.netctl import NetworkControlError
        from ehrshare.netctl import network_down as down

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
        """Say which backends the profile uses and whether they answer, and whether this
        machine has the Fabric binaries. Exit code 4 if the content store or the profile's
        local Fabric network is down."""
        from ehrshare.fabricnet import (
            FabricNetError,
            default_bin_dir,
            fabric_version,
            missing_binaries,
        )
        from ehrshare.ledger.store import EmbeddedLedger
        from ehrshare.profile import Profile
        from ehrshare.storage import KuboClient

        bin_dir = default_bin_dir()
        available = not missing_binaries(bin_dir)
        try:
            version = ".".join(map(str, fabric_version(bin_dir))) if available else None
        except FabricNetError as exc:
            available, version = False, str(exc)
        status: dict[str, Any] = {
            "fabric": {"available": available, "bin_dir": str(bin_dir), "version": version}
        }
        store_ok = ledger_ok = True
        if profile or Path("profile.yaml").is_file():
            with _errors():
                path = Path(_profile_path(profile))
                prof = Profile.load(path / "profile.yaml" if path.is_dir() else path)
                if prof.fabric is not None:
                    status["ledger"] = _fabric_status(prof)
                    ledger_ok = bool(status["ledger"].get("running", True))
                else:
                    with EmbeddedLedger.open(prof.ledger_path, channel=prof.channel) as ledger:
                        status["ledger"] = {
                            "backend": "embedded",
                            "path": str(prof.ledger_path),
                            "height": ledger.height(),
                            "organizations": sorted(ledger.organizations()),
                        }
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
            from ehrshare.netctl import network_state

            bg = network_state((path / "profile.yaml" if path.is_dir() else path).resolve())
            status["background_services"] = {
                "running": bg.running,
                "supervisor_pid": bg.supervisor_pid,
                "services": bg.services,
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
                _err.print(
                    f"services (network up): running, supervisor pid {bg_state['supervisor_pid']}"
                    if bg_state["running"]
                    else "services (network up): not running",
                    soft_wrap=True,
                )
        if not store_ok or not ledger_ok:
            raise typer.Exit(EXIT_UNAVAILABLE)

    # --- consortium ---------------------------------------------------------------------------

    @consortium_app.command("init", epilog=_EXIT_HELP)
    def consortium_init(
        directory: Annotated[Path, typer.Argument(help="New directory for the consortium.")],
        hospitals: Annotated[
            str, typer.Option(help="Comma-separated hospital names (one CA + KGC node each).")
        ] = "HospitalA,HospitalB,HospitalC",
        threshold: Annotated[int, typer.Option(help="KGC threshold τ (nodes needed).")] = 2,
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
        from ehrshare.consortium import Consortium, FabricOptions

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
        _err.print(f"  KGC: {threshold} of {len(names)} nodes; QUAL {', '.join(dkg['qual'])}")
        _err.print(f"  next: export EHRSHARE_PROFILE={profile}")
        if services == "processes":
            _err.print("  start the services: ehrshare consortium serve (or see service-commands)")

    @consortium_app.command("service-commands", epilog=_EXIT_HELP)
    def consortium_service_commands(profile: ProfileOpt = "", as_json: JsonOpt = False) -> None:
        """Print the 'ehrshare kgc serve' / 'ehrshare proxy serve' command line of each service
        the profile runs as a process (to run them by hand or from a service manager)."""
        from ehrshare.consortium import profile_file
        from ehrshare.processes import service_commands
        from ehrshare.profile import Profile

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
                help="Write the pids and addresses here once every service listens (used by "
                "'ehrshare network up'); removed on exit."
            ),
        ] = None,
    ) -> None:
        """Start every KGC node and every proxy of the profile as child processes, wait until
        they listen, and stop them all (by pid) on Ctrl-C or SIGTERM."""
        from ehrshare.consortium import profile_file
        from ehrshare.processes import ServiceProcessError, ServiceProcesses
        from ehrshare.profile import Profile
        from ehrshare.services.vault import atomic_write

        with _errors():
            path = profile_file(_profile_path(profile))
            prof = Profile.load(path)
            procs = ServiceProcesses(prof, path.parent / "run", die_with_parent=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with procs:
            try:
                procs.start()
            except ServiceProcessError as exc:
                _fail(EXIT_UNAVAILABLE, str(exc))
            for name, pid in procs.pids.items():
                _err.print(f"{name}: pid {pid} on {procs.commands[name].address}")
            if state_file is not None:
                services = {
                    name: {"pid": pid, "address": procs.commands[name].address}
                    for name, pid in procs.pids.items()
                }
                state = {"supervisor_pid": os.getpid(), "services": services}
                atomic_write(state_file, json.dumps(state, indent=2).encode(), mode=0o644)
            _err.print("serving; Ctrl-C stops every service")
            try:
                stop.wait()
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
        from ehrshare.consortium import Consortium

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

        Wallets made before members had a TLS key of their own need this before they can
        reach KGC or proxy processes."""
        from ehrshare.consortium import Consortium

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

    @wallet_app.command("encrypt", epilog=_EXIT_HELP)
    def wallet_encrypt(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Encrypt a wallet's key.pem and ibe.key under a passphrase (scrypt, AES-256-GCM).

        The passphrase comes from $EHRSHARE_WALLET_PASSPHRASE or is asked for twice."""
        from ehrshare.consortium import profile_file
        from ehrshare.profile import PASSPHRASE_ENV, Profile

        with _errors():
            prof = Profile.load(profile_file(_profile_path(profile)))
            w = prof.wallet(_need_wallet(wallet))
            if w.encrypted:
                _fail(EXIT_CONFIG, f"wallet {w.directory} is already encrypted")
            passphrase = os.environ.get(PASSPHRASE_ENV) or typer.prompt(
                "new passphrase", hide_input=True, confirmation_prompt=True
            )
            type(w)(w.directory, use_env=False).encrypt(passphrase)
        _err.print(f"[green]✓[/green] wallet {w.directory} encrypted")

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
        """Encrypt a FHIR resource for a patient, store it, then register it on chain."""
        try:
            data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except OSError as exc:
            _fail(EXIT_INPUT, f"cannot read {file}: {exc.strerror}")
        with _session(profile, wallet) as s, _errors(), _progress("storing", as_json):
            ref = s.put_record(data, patient=patient or None, type=record_type or None)
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
        with _session(profile, wallet) as s, _errors(), _progress("reading", as_json):
            resource = s.read_record(record_id, grant=grant_id or None)
        text = resource.model_dump_json(exclude_none=True, indent=2)
        if out:
            Path(out).write_text(text + "\n", encoding="utf-8")
            if not as_json:
                _err.print(f"[green]✓[/green] wrote {out}")
                return
        typer.echo(text)

    @record_app.command("list", epilog=_EXIT_HELP)
    def record_list(
        patient: Annotated[str, typer.Option(help="Patient IBE id (default: yourself).")] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """List a patient's records (yourself, or any patient with the auditor role)."""
        with _session(profile, wallet) as s, _errors():
            refs = s.list_records(patient or None)
        if as_json:
            _emit([r.to_dict() for r in refs])
            return
        table = Table("record", "type", "creator", "created", "version")
        for r in refs:
            table.add_row(
                r.record_id, r.type or r.label, r.creator, _fmt_time(r.created_at), str(r.version)
            )
        out_console().print(table)

    # --- grants -------------------------------------------------------------------------------

    @app.command("grant", epilog=_EXIT_HELP)
    def grant(
        grantee: Annotated[str, typer.Argument(help="Grantee IBE id, e.g. HospitalBMSP/dr-b.")],
        record_type: Annotated[str, typer.Argument(help="Record type, e.g. lab.")],
        days: Annotated[float | None, typer.Option(help="Valid for this many days.")] = None,
        until: Annotated[str, typer.Option(help="Valid until (ISO date/time, UTC).")] = "",
        max_hops: Annotated[int, typer.Option(help="Further referrals allowed.")] = 0,
        proxy: Annotated[str, typer.Option(help=_PROXY_HELP)] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """As a patient, let a clinician read your records of one type (re-key to the proxy of
        the clinician's hospital)."""
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

    @app.command("forward", epilog=_EXIT_HELP)
    def forward(
        what: Annotated[str, typer.Argument(help="Your grant id (g-…) or a record id (r-…).")],
        to: Annotated[str, typer.Argument(help="IBE id to refer to.")],
        days: Annotated[float | None, typer.Option(help="Valid for this many days.")] = None,
        max_hops: Annotated[int, typer.Option(help="Further referrals allowed.")] = 0,
        proxy: Annotated[str, typer.Option(help=_PROXY_HELP)] = "",
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Refer what you were granted one hop further (multi-hop sharing)."""
        expires = _dt.timedelta(days=days) if days else None
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
        outcome."""
        with _session(profile, wallet) as s, _errors():
            trail = s.audit(patient or None, record=record or None)
        if as_json:
            _emit(trail.to_dict())
            return
        table = Table("#", "time", "action", "outcome", "actor", "record / grant")
        for e in trail.entries:
            actor = e["detail"].get("requester") or e["actor"]
            table.add_row(
                str(e["seq"]),
                _fmt_time(e["timestamp"]),
                e["action"],
                e["outcome"],
                actor,
                e["record_id"] or e["grant_id"],
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
        from ehrshare.session import AuditTrail

        heads = read_heads(against)

        trail = None
        if trail_file:
            try:
                raw = json.loads(Path(trail_file).read_text(encoding="utf-8"))
                trail = AuditTrail(raw["chain"], tuple(raw["entries"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
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
