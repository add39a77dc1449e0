"""``ehrshare network up|restart|down|status``: start, stop and inspect a local consortium's
processes (its Fabric network and its KGC nodes and proxies). This module only parses, renders and
maps errors to exit codes; the work is in :mod:`ehrshare.network.control` and
:mod:`ehrshare.network.fabric`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    BackoffMaxOpt,
    BackoffOpt,
    GiveUpAfterOpt,
    JsonOpt,
    ProfileOpt,
    StableAfterOpt,
    emit,
    fail,
    mapped_errors,
    profile_path,
    progress,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["register"]

_err = err_console()


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
        from ehrshare.network.fabric import FabricNet

        net = FabricNet.load(fab.network.parent)
        out["network"] = str(fab.network)
        out["running"] = net.running()
        out["processes"] = net.health()
    return out


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare network``."""
    del bench_app
    network_app = typer.Typer(
        help="Start, stop and inspect a local consortium's processes: its Fabric network "
        "(peers, orderers, chaincode server) when the ledger is Fabric, and its services (KGC "
        "nodes, proxies) when they run as processes.",
        no_args_is_help=True,
    )
    app.add_typer(network_app, name="network")

    @network_app.command("up", epilog=HELP_EPILOG)
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
        delay_ms: Annotated[
            float | None,
            typer.Option(
                "--delay-ms",
                help="With hosts of its own (consortium init --hosts netns): delay every packet "
                "into each host by this many ms (host to host one way; recorded, so later 'up's "
                "keep it; 0 removes it). Default: the recorded delay.",
            ),
        ] = None,
    ) -> None:
        """Start the profile's Fabric network (if its ledger is one) and IPFS nodes (if its
        store is a private swarm), then every KGC node and proxy, in the background, and wait
        until all answer (a no-op for what already runs).
        The supervisor restarts a service that dies (backoff doubling from --restart-backoff,
        giving up after --give-up-after quick failures). Logs go to run/network.log and
        fabric/logs/ next to the profile. Exit code 4 if they do not come up (nothing is left
        running), 3 if the ledger or store volume is missing, empty or another consortium's
        (nothing is started)."""
        from ehrshare.network.control import NetworkControlError, network_state
        from ehrshare.network.control import network_up as up
        from ehrshare.network.supervisor import RestartPolicy
        from ehrshare.profile import Profile, profile_file
        from ehrshare.volumes import volume_problems

        try:
            policy = RestartPolicy(
                restart_backoff, restart_backoff_max, stable_after, give_up_after
            )
        except ValueError as exc:
            fail(EXIT_USAGE, str(exc))
        with mapped_errors():
            path = profile_file(profile_path(profile))
            # Services started on an unmounted or foreign ledger would serve the wrong one.
            for problem in volume_problems(Profile.load(path)).values():
                fail(EXIT_CONFIG, problem)
            was_up = network_state(path.resolve()).running
            try:
                with progress("starting the services", as_json):
                    state = up(path, timeout=timeout, policy=policy, delay_ms=delay_ms)
            except NetworkControlError as exc:
                fail(EXIT_UNAVAILABLE, str(exc))
        if as_json:
            emit({**state.as_dict(), "already_running": was_up})
            return
        verb = "already running" if was_up else "started"
        if state.fabric is not None:
            _err.print(
                "[green]✓[/green] Fabric network running: "
                + ", ".join(f"{n} (pid {p})" for n, p in state.fabric["pids"].items())
            )
        if state.swarm is not None:
            _err.print(
                "[green]✓[/green] IPFS nodes running: "
                + ", ".join(f"{n} (pid {p})" for n, p in state.swarm["pids"].items())
            )
        if state.supervisor_pid is not None:
            _err.print(f"[green]✓[/green] services {verb} (supervisor pid {state.supervisor_pid})")
        for name, svc in state.services.items():
            _err.print(
                f"  {name}: pid {svc['pid']} on {svc['address']} ({svc.get('state', 'running')})",
                highlight=False,
            )
        _err.print(f"stop them with: ehrshare network down --profile {path.parent}")

    @network_app.command("delay", epilog=HELP_EPILOG)
    def network_delay(
        ms: Annotated[
            float,
            typer.Option("--ms", help="One-way delay into each host, in ms (0 removes it)."),
        ],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Delay the links between the hosts of a consortium made with 'consortium init --hosts
        netns' (every packet into a host waits MS ms: host to host one way MS, a round trip
        2 x MS). Changed live when the hosts are up (tc netem on their bridge, or the user-space
        link relay on a kernel without netem) and recorded for the next 'network up'. Exit 3
        for a consortium without hosts, or when the hosts are up on a bridge on a kernel
        without netem (run 'network down', then 'network up --delay-ms MS'); nothing changed."""
        from ehrshare.network.consortium_hosts import set_delay
        from ehrshare.profile import profile_file

        with mapped_errors():
            path = profile_file(profile_path(profile))
            done = set_delay(path.parent, ms)
        if as_json:
            emit(done)
            return
        when = "now" if done["applied"] else "from the next 'network up'"
        _err.print(
            f"[green]✓[/green] link delay {done['delay_ms']:g} ms into each host, {when} "
            f"({done['links']} links)",
            highlight=False,
        )

    @network_app.command("restart", epilog=HELP_EPILOG)
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
        from ehrshare.network.control import restart_service
        from ehrshare.profile import profile_file

        with mapped_errors():
            path = profile_file(profile_path(profile))
            record = restart_service(path, service, timeout=timeout)
        if as_json:
            emit({"service": service, **record})
            return
        _err.print(
            f"[green]✓[/green] restarted {service}: pid {record['pid']} on {record['address']}",
            highlight=False,
        )

    @network_app.command("down", epilog=HELP_EPILOG)
    def network_down(
        profile: ProfileOpt = "",
        timeout: Annotated[
            float, typer.Option(min=1.0, help="Seconds to wait for a clean stop.")
        ] = 30.0,
        as_json: JsonOpt = False,
    ) -> None:
        """Stop the services 'network up' started, then its Fabric network (by pid; a no-op
        if nothing runs)."""
        from ehrshare.network.control import NetworkControlError
        from ehrshare.network.control import network_down as down
        from ehrshare.profile import profile_file

        with mapped_errors():
            path = profile_file(profile_path(profile))
            try:
                state = down(path, timeout=timeout)
            except NetworkControlError as exc:
                fail(EXIT_UNAVAILABLE, str(exc))
        fabric = state.fabric if state is not None else None
        if as_json:
            out: dict[str, Any] = {
                "stopped": state is not None,
                "services": state.services if state else {},
            }
            if fabric is not None:
                out["fabric"] = {"stopped": fabric["pids"]}
            emit(out)
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

    @network_app.command("status", epilog=HELP_EPILOG)
    def network_status(profile: ProfileOpt = "", as_json: JsonOpt = False) -> None:
        """Say which backends the profile uses and whether they answer, whether this machine
        has the Fabric binaries, and how each KGC node and proxy process is (asked by a Health
        call over mutual TLS, and what the 'network up' supervisor says: running, restarting,
        failed, not answering, down). Exit code 4 if the content store, the profile's local
        Fabric network or any service process is not healthy."""
        from ehrshare.ledger.store import EmbeddedLedger
        from ehrshare.network.binaries import fabric_bin_dir as default_bin_dir
        from ehrshare.network.fabric import FabricNetError, fabric_version, missing_binaries
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
            with mapped_errors():
                path = Path(profile_path(profile))
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
                if prof.swarm is not None:
                    status["storage"]["nodes"] = _swarm_nodes(prof.swarm.nodes)
                    store_ok = all(n["reachable"] for n in status["storage"]["nodes"].values())
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
            from ehrshare.network.consortium_hosts import hosts_status
            from ehrshare.network.control import network_state
            from ehrshare.network.health import check_services

            with mapped_errors():
                hosts = hosts_status(prof.path.parent if prof.path else path)
            if hosts is not None:
                status["hosts"] = hosts

            prof_file = (path / "profile.yaml" if path.is_dir() else path).resolve()
            bg = network_state(prof_file)
            with mapped_errors():
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
            emit(status)
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
                if "hosts" in status:
                    _print_hosts(status["hosts"])
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


def _swarm_nodes(nodes: Any) -> dict[str, dict[str, Any]]:
    """Each hospital's IPFS node: its URL and whether it answers."""
    from ehrshare.storage import KuboClient

    out: dict[str, dict[str, Any]] = {}
    for msp, url in nodes:
        try:
            with KuboClient(url, timeout=5) as client:
                client.id(timeout=5)
            out[msp] = {"url": url, "reachable": True}
        except Exception as exc:
            out[msp] = {"url": url, "reachable": False, "detail": str(exc)}
    return out


def _print_hosts(hosts: dict[str, Any]) -> None:
    """The consortium's hosts: one line for the layout, one per host."""
    delay = f", {hosts['delay_ms']:g} ms delay" if hosts["delay_ms"] else ""
    state = "up" if hosts["up"] else "not made ('ehrshare network up' makes them)"
    _err.print(
        f"hosts: layout {hosts['tag']} on {hosts['subnet']}, {hosts['links']} links{delay}: "
        f"{state}",
        soft_wrap=True,
        highlight=False,
    )
    for label, host in hosts["hosts"].items():
        _err.print(
            f"  {label}: {host['address']} in {host['netns']}, link {host['link']}",
            soft_wrap=True,
            highlight=False,
        )
