"""``ehrshare kgc …`` and ``ehrshare proxy …``: run the KGC node and the proxy as real processes.

``serve`` starts a gRPC server over mutual TLS on the given loopback address and blocks until
SIGTERM or SIGINT, then stops cleanly (in-flight calls get two seconds). Logs go to
``--log-file`` (default ``<state-dir>/kgc.log`` or ``<state-dir>/proxy.log``); the one line on
stderr says where it listens and where it logs. ``keygen`` writes a node/proxy key file and
``tls-cert`` issues a server certificate from an organisation's local CA directory.

The ledger is either an embedded ledger directory shared with the other processes (``--ledger``)
or the ledger a profile names (``--profile``: its embedded directory, or its Fabric peers and
orderers). Fabric peers and orderers that require mutual TLS get the TLS client certificate
``--ledger-tls-cert`` / ``--ledger-tls-key`` (the service wallet's ``tls-cert.pem`` /
``tls-key.pem``; not the ``--tls-cert`` server certificate, not the ledger signing key). This
module only parses options and wires objects; the services live in :mod:`ehrshare.services`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, get_type_hints

import grpc
import typer

from ehrshare.commands.kgc_dkg import register_dkg, register_reshare
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_USAGE
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger import api
from ehrshare.ledger.api import Contract
from ehrshare.ledger.embedded import connect
from ehrshare.ledger.errors import LedgerError
from ehrshare.ledger.store import DEFAULT_MAX_CLOCK_SKEW_S
from ehrshare.services.kgc import DkgFollower, KgcNode
from ehrshare.services.proxy import ReencryptionProxy, RevocationFollower
from ehrshare.services.rpc import serve_kgc, serve_proxy
from ehrshare.services.tls import ReloadingClientTrust, ServerTls, issue_tls_certificate
from ehrshare.services.vault import (
    atomic_write,
    check_key_file_outside,
    read_key_file,
    write_key_file,
)

if TYPE_CHECKING:
    from ehrshare.profile import Profile

__all__ = ["ServeOptions", "register"]

_err = err_console()
_log = logging.getLogger(__name__)


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}")
    return typer.Exit(EXIT_USAGE)


def _setup_logging(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ehrshare")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log_file.chmod(0o600)


def _gateway(opts: ServeOptions) -> tuple[api.Gateway, Callable[[], None]]:
    """A gateway on the ledger the options name, and what closes everything it opened."""
    identity = Identity(opts.msp_id, opts.cert.read_bytes())
    signer = Signer.from_secret_bytes(read_key_file(opts.key))
    ledger_tls = (opts.ledger_tls_cert, opts.ledger_tls_key)
    if (ledger_tls[0] is None) != (ledger_tls[1] is None):
        raise _fail("give both --ledger-tls-cert and --ledger-tls-key, or neither")
    if opts.ledger is not None:
        if ledger_tls[0] is not None:
            raise _fail("--ledger-tls-cert/--ledger-tls-key are for a Fabric ledger (--profile)")
        from ehrshare.ledger.store import EmbeddedLedger
        from ehrshare.volumes import VolumeError, check_ledger_dir, require_ledger

        try:
            # An existing ledger only: an unmounted or empty volume is refused, never
            # re-created empty; with --consortium-id, another consortium's too.
            require_ledger(opts.ledger)
            if opts.consortium_id:
                check_ledger_dir(opts.ledger, opts.consortium_id)
            ledger = EmbeddedLedger.open(opts.ledger, create=False)
        except (VolumeError, FileNotFoundError) as exc:
            _err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CONFIG) from None
        gateway = connect(identity, signer, ledger)

        def close() -> None:
            gateway.close()
            ledger.close()

        return gateway, close
    from ehrshare.ledgers import open_ledger
    from ehrshare.profile import Profile, ProfileError

    client_tls = None
    if ledger_tls[0] is not None and ledger_tls[1] is not None:
        try:
            client_tls = (ledger_tls[0].read_bytes(), read_key_file(ledger_tls[1]))
        except (OSError, ValueError) as exc:
            raise _fail(f"the ledger TLS client certificate or key cannot be read: {exc}") from None
    try:
        profile = Profile.load(opts.profile or Path())
        if opts.consortium_id and profile.consortium_id != opts.consortium_id:
            _err.print(
                f"[red]error:[/red] profile {opts.profile} is of consortium "
                f"{profile.consortium_id or '(no id)'}, not {opts.consortium_id} "
                "(--consortium-id); nothing was started",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_CONFIG)
        if opts.ledger_endorsers is not None:
            profile = _with_endorsers(profile, opts.ledger_endorsers)
        backend = open_ledger(profile)
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    try:
        return backend.connect(identity, signer, client_tls=client_tls), backend.close
    except ValueError as exc:  # ProfileError too: mutual TLS required, no certificate given
        backend.close()
        raise _fail(str(exc)) from None


def _with_endorsers(profile: Profile, count: int) -> Profile:
    """``profile`` with ``count`` endorsing organisations (``--ledger-endorsers``)."""
    from ehrshare.profile import ProfileError

    fabric = profile.fabric
    if fabric is None or fabric.client == "gateway":
        raise ProfileError(
            "--ledger-endorsers is for a Fabric ledger reached without a Gateway (client: peer)"
        )
    orgs = len({p.msp_id for p in fabric.peers})
    if count > orgs:
        raise ProfileError(f"--ledger-endorsers {count}: the profile's peers are of {orgs} orgs")
    return replace(profile, fabric=replace(fabric, endorsers=count))


def _server_tls(
    tls_cert: Path, tls_key: Path, client_cas: list[Path], client_ca_dir: Path | None
) -> ServerTls:
    if not client_cas and client_ca_dir is None:
        raise _fail(
            "give --client-ca-dir (a directory of consortium CA certificates) or at least one "
            "--client-ca"
        )
    if client_ca_dir is not None and not client_ca_dir.is_dir():
        raise _fail(f"--client-ca-dir {client_ca_dir} is not a directory")
    try:
        trust = ReloadingClientTrust(client_cas, client_ca_dir)
    except (OSError, ValueError) as exc:
        raise _fail(f"the client CAs cannot be read: {exc}") from None
    return ServerTls(tls_cert.read_bytes(), read_key_file(tls_key), trust)


def _catch_stop_signals() -> threading.Event:
    """SIGTERM/SIGINT set the returned event from now on.

    Installed before the server starts: a supervisor may stop a service the moment it answers,
    and a signal that arrived before the handler would kill the process uncleanly (exit -15).
    """
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        logging.getLogger("ehrshare.services").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Directory for the sealed state (created 0700).")
]
ListenOpt = Annotated[str, typer.Option("--listen", help="host:port to serve on (:0 picks).")]
MspOpt = Annotated[str, typer.Option("--msp-id", help="MSP id of the service's ledger identity.")]
CertOpt = Annotated[
    Path, typer.Option("--cert", help="PEM certificate of the service's ledger identity.")
]
KeyOpt = Annotated[
    Path, typer.Option("--key", help="PEM private key of that identity (mode 0600).")
]
LedgerOpt = Annotated[Path | None, typer.Option("--ledger", help="Embedded ledger directory.")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--profile", help="Use the ledger this profile names (embedded or Fabric)."),
]
ConsortiumIdOpt = Annotated[
    str,
    typer.Option(
        "--consortium-id",
        help="The consortium id (the profile's id:) the ledger must carry; another "
        "consortium's ledger is refused with exit code 3. The service command lines pass it.",
    ),
]
ChannelOpt = Annotated[str, typer.Option("--channel", help="Channel name.")]
ChaincodeOpt = Annotated[str, typer.Option("--chaincode", help="Chaincode name.")]
TlsCertOpt = Annotated[
    Path, typer.Option("--tls-cert", help="PEM TLS server certificate (with SANs).")
]
TlsKeyOpt = Annotated[Path, typer.Option("--tls-key", help="PEM TLS server key (mode 0600).")]
LedgerTlsCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--ledger-tls-cert",
        help="PEM TLS client certificate (clientAuth) for Fabric peers and orderers that "
        "require mutual TLS: the service wallet's tls-cert.pem.",
    ),
]
LedgerTlsKeyOpt = Annotated[
    Path | None,
    typer.Option("--ledger-tls-key", help="Its key (the wallet's tls-key.pem, mode 0600)."),
]
LedgerEndorsersOpt = Annotated[
    int | None,
    typer.Option(
        "--ledger-endorsers",
        min=1,
        help="How many organisations' peers endorse each transaction, for the peer client "
        "without a Gateway (overrides the profile's ledger.endorsers). The service command "
        "lines pass the profile's, so a join that changes it restarts the services.",
    ),
]
ClientCaOpt = Annotated[
    list[Path],
    typer.Option(
        "--client-ca",
        help="Consortium CA certificate (repeat per org); read again when it changes.",
    ),
]
ClientCaDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--client-ca-dir",
        help="Directory of consortium CA certificates (*.pem), read again when it changes: a "
        "CA written there is trusted for new connections without a restart.",
    ),
]
LogFileOpt = Annotated[
    Path | None, typer.Option("--log-file", help="Log file (default: in the state directory).")
]
PortFileOpt = Annotated[
    Path | None, typer.Option("--port-file", help="Write the bound port here once listening.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Key file to create (mode 0600).")]
CaDirOpt = Annotated[
    Path, typer.Option("--ca-dir", help="A LocalCA directory (ca-key.pem, ca-cert.pem).")
]
ServerNameOpt = Annotated[str, typer.Option("--name", help="Common name of the server.")]
OutCertOpt = Annotated[
    Path, typer.Option("--out-cert", help="Where to write the certificate (PEM).")
]
OutKeyOpt = Annotated[
    Path, typer.Option("--out-key", help="Where to write the key (PEM, mode 0600).")
]
HostOpt = Annotated[list[str], typer.Option("--host", help="SAN host or IP (repeat).")]
NodeKeyFileOpt = Annotated[
    Path, typer.Option("--node-key-file", help="Node key file (outside the state directory).")
]
ProxyKeyFileOpt = Annotated[
    Path,
    typer.Option("--key-file", help="Proxy X25519 key file (outside the state directory)."),
]


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """The options every ``serve`` command takes: state, address, ledger identity, TLS, logs.

    :func:`_serve_command` turns these fields into command-line options after a command's own,
    so ``kgc serve`` and ``proxy serve`` declare them once.
    """

    state_dir: StateDirOpt
    listen: ListenOpt = "127.0.0.1:7060"
    msp_id: MspOpt
    cert: CertOpt
    key: KeyOpt
    ledger: LedgerOpt = None
    profile: ProfileOpt = None
    consortium_id: ConsortiumIdOpt = ""
    channel: ChannelOpt = "ehrshare"
    chaincode: ChaincodeOpt = "ehrshare"
    ledger_tls_cert: LedgerTlsCertOpt = None
    ledger_tls_key: LedgerTlsKeyOpt = None
    ledger_endorsers: LedgerEndorsersOpt = None
    tls_cert: TlsCertOpt
    tls_key: TlsKeyOpt
    client_ca: ClientCaOpt = field(default_factory=list)
    client_ca_dir: ClientCaDirOpt = None
    log_file: LogFileOpt = None
    port_file: PortFileOpt = None


def _serve_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command(opts: ServeOptions, *own options)`` the shared options as typer sees them.

    Typer reads a command's options from its signature, so the wrapper's signature is the
    command's own parameters followed by one keyword parameter per :class:`ServeOptions`
    field (same flag, help and default); the wrapper packs those into ``opts``.
    """
    shared = fields(ServeOptions)
    hints = get_type_hints(ServeOptions, include_extras=True)
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    for f in shared:
        if f.default is not MISSING:
            default: object = f.default
        elif f.default_factory is not MISSING:
            default = []  # typer makes its own list per call; never shared state
        else:
            default = inspect.Parameter.empty
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=default
            )
        )

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = ServeOptions(**{f.name: kwargs.pop(f.name) for f in shared})
        if (opts.ledger is None) == (opts.profile is None):
            raise _fail("give the ledger as either --ledger <embedded dir> or --profile <file>")
        command(opts, **kwargs)

    del wrapper.__wrapped__  # typer must see the signature below, not the command's
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _key_outside_state(path: Path, state_dir: Path) -> bytes:
    """A service's long-term key file, which must not live in its state directory."""
    try:
        check_key_file_outside(path, state_dir)
        return read_key_file(path)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


class _Started(NamedTuple):
    server: grpc.Server
    port: int
    stop: Callable[[], None]


def _run_service(
    opts: ServeOptions,
    *,
    log_name: str,
    label: str,
    start: Callable[[api.Gateway, Contract, ServerTls], _Started],
) -> None:
    """Log to the state directory, open the ledger, start the server, serve until a signal."""
    log_path = opts.log_file or opts.state_dir / log_name
    opts.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _setup_logging(log_path)
    tls = _server_tls(opts.tls_cert, opts.tls_key, opts.client_ca, opts.client_ca_dir)
    stop = _catch_stop_signals()
    gateway, close_ledger = _gateway(opts)
    try:
        started = start(gateway, _contract(gateway, opts.channel, opts.chaincode), tls)
        host = opts.listen.rsplit(":", 1)[0]
        if opts.port_file is not None:
            atomic_write(opts.port_file, str(started.port).encode(), mode=0o644)
        _err.print(f"{label} listening on {host}:{started.port}; logs in {log_path}")
        stop.wait()
        started.server.stop(2.0).wait()
        started.stop()
    finally:
        close_ledger()


def _keygen(out: Path, secret: bytes, public_hex: str) -> None:
    try:
        write_key_file(out, secret)
    except FileExistsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(public_hex)


def _contract(gateway: api.Gateway, channel: str, chaincode: str) -> Contract:
    return gateway.get_network(channel).get_contract(chaincode)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare kgc`` and ``ehrshare proxy``."""
    del bench_app
    kgc_app = typer.Typer(help="KGC node: DKG share holder and key extraction service.")
    proxy_app = typer.Typer(help="Re-encryption proxy service.")
    app.add_typer(kgc_app, name="kgc")
    register_dkg(kgc_app)
    register_reshare(kgc_app)
    app.add_typer(proxy_app, name="proxy")

    @kgc_app.command("keygen")
    def kgc_keygen(out: OutOpt) -> None:
        """Create a KGC node's long-term keys; prints the public key (hex) for the roster."""
        key = KGCNodeKey.generate()
        _keygen(out, key.to_secret_bytes(), key.public_key.to_bytes().hex())

    @proxy_app.command("keygen")
    def proxy_keygen(out: OutOpt) -> None:
        """Create a proxy's X25519 key; prints the public key (hex)."""
        key = X25519KeyPair.generate()
        _keygen(out, key.to_secret_bytes(), key.public_bytes.hex())

    @kgc_app.command("tls-cert")
    def tls_cert(
        ca_dir: CaDirOpt,
        name: ServerNameOpt,
        out_cert: OutCertOpt,
        out_key: OutKeyOpt,
        host: HostOpt = ["127.0.0.1", "localhost"],  # noqa: B006 (typer copies it per call)
    ) -> None:
        """Issue a TLS server certificate (for a KGC node or proxy) from a local CA."""
        cert, key = issue_tls_certificate(LocalCA.load(ca_dir), name, hosts=host)
        try:
            write_key_file(out_key, key)
        except FileExistsError as exc:
            raise _fail(str(exc)) from None
        atomic_write(out_cert, cert, mode=0o644)

    @kgc_app.command("serve")
    @_serve_command
    def kgc_serve(
        opts: ServeOptions,
        index: Annotated[int, typer.Option("--index", help="This node's position in the roster.")],
        node_key_file: NodeKeyFileOpt,
        rate_limit: Annotated[
            int, typer.Option("--rate-limit", help="Extractions per minute each.")
        ] = 60,
        max_clock_skew: Annotated[
            int,
            typer.Option(
                "--max-clock-skew",
                min=1,
                help="Seconds a request's timestamp may differ from this node's clock; its "
                "nonce is remembered as long.",
            ),
        ] = DEFAULT_MAX_CLOCK_SKEW_S,
        follow_dkg: Annotated[
            bool,
            typer.Option(
                "--follow-dkg/--no-follow-dkg",
                help="Take part in DKG sessions opened on chain that name this node.",
            ),
        ] = True,
    ) -> None:
        """Serve a KGC node until SIGTERM (and take part in DKG sessions that name it)."""
        node_key = KGCNodeKey.from_secret_bytes(_key_outside_state(node_key_file, opts.state_dir))

        def start(gateway: api.Gateway, contract: Contract, tls: ServerTls) -> _Started:
            node = KgcNode(
                index=index,
                node_key=node_key,
                state_dir=opts.state_dir,
                contract=contract,
                rate_limit_per_minute=rate_limit,
                max_clock_skew_s=max_clock_skew,
            )
            try:
                # DKG sessions name nodes by the keys they published on chain.
                node.publish_key()
            except LedgerError as exc:
                # Not fatal: extraction does not depend on it (a finished DKG already holds the
                # key's snapshot); only new sessions cannot name this node until it publishes.
                _log.warning("kgc node %d could not publish its public key: %s", index, exc)
                _err.print(
                    f"warning: kgc node {index} could not publish its public key on chain "
                    f"({exc.message}); new DKG sessions cannot name it until it does"
                )
            follower = None
            if follow_dkg:
                # Sessions name nodes by ledger identity: this process's own.
                ibe_id = Identity(opts.msp_id, opts.cert.read_bytes()).ibe_id
                follower = DkgFollower(
                    node,
                    gateway.get_network(opts.channel),
                    ibe_id=ibe_id,
                    chaincode_name=opts.chaincode,
                )
                follower.start()
            server, port = serve_kgc(node, listen=opts.listen, tls=tls)

            def stop() -> None:
                if follower is not None:
                    follower.stop()
                node.close()

            return _Started(server, port, stop)

        _run_service(opts, log_name="kgc.log", label=f"kgc node {index}", start=start)

    @proxy_app.command("serve")
    @_serve_command
    def proxy_serve(
        opts: ServeOptions,
        key_file: ProxyKeyFileOpt,
        name: Annotated[
            str, typer.Option("--name", help="Name used in logs and reports.")
        ] = "proxy",
        follow: Annotated[
            bool,
            typer.Option(
                "--follow-revocations/--no-follow-revocations", help="Follow RevokeAccess."
            ),
        ] = True,
    ) -> None:
        """Serve a re-encryption proxy until SIGTERM."""
        proxy_key = X25519KeyPair.from_secret_bytes(_key_outside_state(key_file, opts.state_dir))

        def start(gateway: api.Gateway, contract: Contract, tls: ServerTls) -> _Started:
            proxy = ReencryptionProxy(
                state_dir=opts.state_dir,
                contract=contract,
                key=proxy_key,
                # What grants name as their proxy: this process's own ledger identity.
                ibe_id=Identity(opts.msp_id, opts.cert.read_bytes()).ibe_id,
                name=name,
            )
            follower = None
            if follow:
                network = gateway.get_network(opts.channel)
                follower = RevocationFollower(proxy, network, opts.chaincode)
                follower.start()
            server, port = serve_proxy(proxy, listen=opts.listen, tls=tls)

            def stop() -> None:
                if follower is not None:
                    follower.stop()
                proxy.close()

            return _Started(server, port, stop)

        _run_service(opts, log_name="proxy.log", label=f"proxy {name}", start=start)
