"""``ehrshare consortium init|service-commands|serve|add-member|reissue-tls``: create a local
consortium, run its services as a supervised set of processes, and issue members' wallets. This
module only parses, renders and maps errors to exit codes; the work is in
:mod:`ehrshare.consortium` and :mod:`ehrshare.network.services`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    BackoffMaxOpt,
    BackoffOpt,
    GiveUpAfterOpt,
    JsonOpt,
    ProfileOpt,
    StableAfterOpt,
    WalletOpt,
    emit,
    fail,
    load_profile,
    mapped_errors,
    need_wallet,
    profile_path,
    progress,
    unlocked_wallet,
)
from ehrshare.commands.joining import register_joining
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE

if TYPE_CHECKING:
    from ehrshare.network.netns import HostLayout

__all__ = ["register"]

_err = err_console()


def _make_hosts(names: list[str]) -> HostLayout:
    """One network namespace per hospital and one for the orderers (``--hosts netns``)."""
    from ehrshare.network.fabric.spec import ORDERER_MSP
    from ehrshare.network.netns import HostLayout

    msps = [n if n.endswith("MSP") else f"{n}MSP" for n in names]
    return HostLayout.create([*msps, ORDERER_MSP])


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare consortium``."""
    del bench_app
    consortium_app = typer.Typer(
        help="Create a local embedded consortium (CAs, ledger, store, KGC nodes, DKG, proxies) "
        "and enrol members into wallets.",
        no_args_is_help=True,
    )
    app.add_typer(consortium_app, name="consortium")
    register_joining(consortium_app)  # add-hospital, sign-update

    @consortium_app.command("init", epilog=HELP_EPILOG)
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
        storage: Annotated[
            str,
            typer.Option(
                help="Content store: embedded, kubo (one Kubo node at --kubo-url) or swarm "
                "(one Kubo node per hospital in a private swarm; 'network up' starts them)."
            ),
        ] = "embedded",
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
            int | None,
            typer.Option(
                help="With --ledger fabric: orderers (Raft 1 or 3, default 1; SmartBFT 4).",
                min=1,
            ),
        ] = None,
        orderer_type: Annotated[
            str,
            typer.Option(
                help="With --ledger fabric: raft, or bft (SmartBFT x4, Fabric 3.x binaries: "
                "refused on 2.x)."
            ),
        ] = "raft",
        client: Annotated[
            str,
            typer.Option(
                help="With --ledger fabric: how clients reach the channel: gateway (the peers' "
                "Gateway service, Fabric 2.4+) or peer (endorse and broadcast from the client, "
                "all Fabric 2.3 has); default by the binaries' version."
            ),
        ] = "",
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
        hosts: Annotated[
            str,
            typer.Option(
                help="local (every node on 127.0.0.1), or netns (with --ledger fabric, as "
                "root: each hospital, and the orderers, on a Linux network namespace of its own "
                "with its own address in 10.231.x.0/24; implies --storage swarm and --services "
                "processes). The namespaces stay after init (recorded in DIR/hosts.json); "
                "'network up' starts every node in its host and makes them again if gone, "
                "'network down' stops the nodes and removes the namespaces."
            ),
        ] = "local",
        as_json: JsonOpt = False,
    ) -> None:
        """Create a consortium directory with profile.yaml, run the DKG and put mpk on chain.

        Then: 'ehrshare consortium add-member alice --hospital HospitalA --role patient -p DIR'.
        """
        from ehrshare.provisioning import Consortium, FabricOptions

        names = [h.strip() for h in hospitals.split(",") if h.strip()]
        if orderer_type not in ("raft", "bft"):
            fail(EXIT_USAGE, f"--orderer-type {orderer_type!r} is not raft or bft")
        bft = orderer_type == "bft"
        if client not in ("", "gateway", "peer"):
            fail(EXIT_USAGE, f"--client {client!r} is not gateway or peer")
        if hosts not in ("local", "netns"):
            fail(EXIT_USAGE, f"--hosts {hosts!r} is not local or netns")
        if hosts == "netns":
            if ledger != "fabric":
                fail(EXIT_USAGE, "--hosts netns needs --ledger fabric")
            if storage not in ("embedded", "swarm") or services not in ("in-process", "processes"):
                fail(EXIT_USAGE, "--hosts netns runs a swarm and service processes")
            storage, services = "swarm", "processes"
        port_list: list[int] | None = None
        if ports:
            try:
                port_list = [int(p) for p in ports.split(",")]
            except ValueError:
                fail(EXIT_USAGE, f"--ports {ports!r} is not a comma-separated list of numbers")
        with mapped_errors(), progress("creating the consortium", as_json) as say:
            # Owned by this process until recorded: a killed init leaves it to be swept.
            layout = _make_hosts(names) if hosts == "netns" else None
            try:
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
                    hosts=None if layout is None else layout.placements(),
                    fabric=(
                        FabricOptions(
                            orderers=orderers or (4 if bft else 1),
                            batch_timeout=batch_timeout,
                            orderer_type="BFT" if bft else "etcdraft",
                            client=client or None,
                        )
                        if ledger == "fabric"
                        else None
                    ),
                )
            except BaseException:
                if layout is not None:
                    layout.teardown()
                raise
            if layout is not None:
                from ehrshare.network.consortium_hosts import record_hosts

                record_hosts(Path(directory), layout)
            try:
                dkg = c.dkg_result()
            finally:
                c.close()
        profile = str(Path(directory).resolve() / "profile.yaml")
        if as_json:
            emit(
                {
                    "profile": profile,
                    "hospitals": names,
                    "threshold": threshold,
                    "qual": dkg["qual"],
                    "mpk": dkg["mpk"],
                    **({"hosts": layout.as_dict()} if layout is not None else {}),
                }
            )
            return
        _err.print(f"[green]✓[/green] consortium created: {profile}")
        members = committee or len(names)
        _err.print(f"  KGC: {threshold} of {members} nodes; QUAL {', '.join(dkg['qual'])}")
        _err.print(f"  next: export EHRSHARE_PROFILE={profile}")
        if layout is not None:
            _err.print(
                "  hosts: "
                + ", ".join(f"{k} {h.address} ({h.netns})" for k, h in layout.hosts.items()),
                highlight=False,
            )
            _err.print(f"  start every node in its host: ehrshare network up -p {directory}")
            _err.print(f"  stop them and remove the hosts: ehrshare network down -p {directory}")
        elif services == "processes":
            _err.print("  start the services: ehrshare consortium serve (or see service-commands)")

    @consortium_app.command("service-commands", epilog=HELP_EPILOG)
    def consortium_service_commands(profile: ProfileOpt = "", as_json: JsonOpt = False) -> None:
        """Print the 'ehrshare kgc serve' / 'ehrshare proxy serve' command line of each service
        the profile runs as a process (to run them by hand or from a service manager)."""
        from ehrshare.network.services import service_commands

        with mapped_errors():
            prof = load_profile(profile)
            commands = service_commands(prof)
        if not commands:
            fail(EXIT_CONFIG, "this profile runs every service in-process; nothing to start")
        if as_json:
            emit(
                [
                    {"name": c.name, "address": c.address, "argv": c.argv(["ehrshare"])}
                    for c in commands
                ]
            )
            return
        for c in commands:
            typer.echo(shlex.join(c.argv(["ehrshare"])))

    @consortium_app.command("serve", epilog=HELP_EPILOG)
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
        from ehrshare.network.consortium_hosts import hosts_netns
        from ehrshare.network.services import ServiceProcessError, ServiceProcesses
        from ehrshare.network.supervisor import RestartPolicy
        from ehrshare.profile import Profile, profile_file
        from ehrshare.services.vault import atomic_write

        try:
            policy = RestartPolicy(
                restart_backoff, restart_backoff_max, stable_after, give_up_after
            )
        except ValueError as exc:
            fail(EXIT_USAGE, str(exc))
        with mapped_errors():
            path = profile_file(profile_path(profile))
            prof = Profile.load(path)
            procs = ServiceProcesses(
                prof,
                path.parent / "run",
                die_with_parent=True,
                policy=policy,
                netns=hosts_netns(path.parent),
            )
        # Deaths, restarts and give-ups go to stderr (run/network.log under 'network up').
        logging.getLogger("ehrshare.network").setLevel(logging.INFO)
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
            from ehrshare.network.control import hold_supervisor_lock

            # Held until this process dies: one supervisor per profile, even when two
            # 'network up' race or one was killed before this wrote the state file.
            if hold_supervisor_lock(state_file.parent) is None:
                fail(
                    EXIT_UNAVAILABLE,
                    f"another supervisor runs for this profile (see {state_file})",
                )
        with procs:
            try:
                write_state()  # its pid, at once: 'network down' can stop it while it starts
                try:
                    procs.start()
                except ServiceProcessError as exc:
                    fail(EXIT_UNAVAILABLE, str(exc))
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

    @consortium_app.command("add-member", epilog=HELP_EPILOG)
    def consortium_add_member(
        name: Annotated[str, typer.Argument(help="Enrollment id (becomes the wallet name).")],
        hospital: Annotated[str, typer.Option(help="Issuing hospital, e.g. HospitalA.")],
        role: Annotated[str, typer.Option(help="patient, clinician, auditor or admin.")],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a certificate for a new member into a wallet (then run 'ehrshare enroll')."""
        from ehrshare.provisioning import Consortium

        with mapped_errors():
            c = Consortium.open(profile_path(profile))
            try:
                wallet = c.add_member(name, hospital, role)
                identity, _ = wallet.load_identity()
            finally:
                c.close()
        if as_json:
            emit({"ibe_id": identity.ibe_id, "wallet": str(wallet.directory), "role": role})
            return
        _err.print(f"[green]✓[/green] {identity.ibe_id} ({role}) → wallet {wallet.directory}")

    @consortium_app.command("recover-member", epilog=HELP_EPILOG)
    def consortium_recover_member(
        identity: Annotated[str, typer.Argument(help="The identity, e.g. HospitalAMSP/alice.")],
        new_wallet: Annotated[
            str, typer.Option("--new-wallet", help="Wallet for the new certificate and key.")
        ],
        wallet: WalletOpt = "",
        role: Annotated[str, typer.Option(help="The identity's role on chain.")] = "patient",
        quorum: Annotated[
            int | None, typer.Option(min=2, help="Hospitals that must approve (default 2).")
        ] = None,
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Recover a lost or stolen wallet: issue a new certificate (once) and propose or
        approve, as the admin of --wallet, rebinding the identity to it on chain.

        Run it at each approving hospital with that hospital's admin wallet; the rebinding takes
        effect when the quorum of hospitals approved. Then the member runs 'ehrshare enroll'
        with the new wallet; the old wallet is refused from then on."""
        from ehrshare.provisioning import Consortium

        admin_wallet = need_wallet(wallet)
        with mapped_errors():
            c = Consortium.open(profile_path(profile))
            try:
                with c.session(unlocked_wallet(c.profile, admin_wallet)) as admin:
                    admin.register()
                    # Refused before anything is issued: a non-admin, an unknown identity.
                    if (admin_role := admin.role()) != "admin":
                        fail(
                            EXIT_REFUSED,
                            f"identity {admin.ibe_id} has role {admin_role}; recovery is "
                            "approved by hospital admins",
                        )
                    admin.chain.get_identity(identity)
                    issued = c.reissue_member(identity, new_wallet, role)
                    member, _ = issued.load_identity()
                    result = admin.recover_member(
                        identity, member.credentials.decode(), quorum=quorum
                    )
            finally:
                c.close()
        if as_json:
            emit(
                {
                    "ibe_id": identity,
                    "wallet": str(issued.directory),
                    "cert_sha256": result.cert_sha256,
                    "status": result.status,
                    "approved_by": list(result.approved_by),
                    "quorum": result.quorum,
                }
            )
            return
        if result.done:
            _err.print(
                f"[green]✓[/green] {identity} is bound to the certificate in {issued.directory}; "
                f"the old wallet is refused. Next: ehrshare enroll --wallet {new_wallet}"
            )
        else:
            _err.print(
                f"rebinding of {identity} approved by {', '.join(result.approved_by)} "
                f"({len(result.approved_by)} of {result.quorum} hospitals); an admin of another "
                "hospital runs the same command"
            )

    @consortium_app.command("reissue-tls", epilog=HELP_EPILOG)
    def consortium_reissue_tls(
        name: Annotated[str, typer.Argument(help="Wallet name.")],
        profile: ProfileOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Issue a new TLS client certificate and key into a wallet (the ledger key stays).

        Replaces a TLS key you suspect, or one the wallet lost (without it the wallet cannot
        reach KGC or proxy processes)."""
        from ehrshare.provisioning import Consortium

        with mapped_errors():
            c = Consortium.open(profile_path(profile))
            try:
                wallet = c.reissue_tls(name)
                identity, _ = wallet.load_tls()
            finally:
                c.close()
        if as_json:
            emit({"ibe_id": identity.ibe_id, "wallet": str(wallet.directory)})
            return
        _err.print(f"[green]✓[/green] new TLS client certificate for {identity.ibe_id}")
