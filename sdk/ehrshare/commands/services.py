"""``ehrshare kgc …`` and ``ehrshare proxy …``: run the KGC node and the proxy as real processes.

``serve`` starts a gRPC server over mutual TLS on the given loopback address and blocks until
SIGTERM or SIGINT, then stops cleanly (in-flight calls get two seconds). Logs go to
``--log-file`` (default ``<state-dir>/kgc.log`` or ``<state-dir>/proxy.log``); the one line on
stderr says where it listens and where it logs. ``keygen`` writes a node/proxy key file and
``tls-cert`` issues a server certificate from an organisation's local CA directory.

The ledger is the embedded backend (``--ledger`` directory shared with the other processes); the
Fabric Gateway backend plugs in the same way once it exists. This module only parses options and
wires objects; the services live in :mod:`ehrshare.services`.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console

from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, LocalCA, Signer
from ehrshare.ledger.api import Contract
from ehrshare.ledger.embedded import EmbeddedGateway, connect
from ehrshare.services.kgc import KgcNode
from ehrshare.services.proxy import ReencryptionProxy, RevocationFollower
from ehrshare.services.rpc import serve_kgc, serve_proxy
from ehrshare.services.tls import ClientTrust, ServerTls, issue_tls_certificate
from ehrshare.services.vault import (
    atomic_write,
    check_key_file_outside,
    read_key_file,
    write_key_file,
)

__all__ = ["register"]

_err = Console(stderr=True)
EXIT_BAD_INPUT = 2


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}")
    return typer.Exit(EXIT_BAD_INPUT)


def _setup_logging(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ehrshare")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log_file.chmod(0o600)


def _gateway(msp_id: str, cert: Path, key: Path, ledger: Path) -> EmbeddedGateway:
    identity = Identity(msp_id, cert.read_bytes())
    signer = Signer.from_secret_bytes(read_key_file(key))
    return connect(identity, signer, ledger)


def _server_tls(tls_cert: Path, tls_key: Path, client_cas: list[Path]) -> ServerTls:
    if not client_cas:
        raise _fail("give at least one --client-ca (a consortium CA certificate)")
    return ServerTls(
        tls_cert.read_bytes(), read_key_file(tls_key), ClientTrust.from_pem_files(client_cas)
    )


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        logging.getLogger("ehrshare.services").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    stop.wait()


_STATE = typer.Option(..., "--state-dir", help="Directory for the sealed state (created 0700).")
_LISTEN = typer.Option("127.0.0.1:7060", "--listen", help="host:port to serve on (:0 picks).")
_MSP = typer.Option(..., "--msp-id", help="MSP id of the service's ledger identity.")
_CERT = typer.Option(..., "--cert", help="PEM certificate of the service's ledger identity.")
_KEY = typer.Option(..., "--key", help="PEM private key of that identity (mode 0600).")
_LEDGER = typer.Option(..., "--ledger", help="Embedded ledger directory.")
_CHANNEL = typer.Option("ehrshare", "--channel", help="Channel name.")
_CHAINCODE = typer.Option("ehrshare", "--chaincode", help="Chaincode name.")
_TLS_CERT = typer.Option(..., "--tls-cert", help="PEM TLS server certificate (with SANs).")
_TLS_KEY = typer.Option(..., "--tls-key", help="PEM TLS server key (mode 0600).")
_CLIENT_CA = typer.Option([], "--client-ca", help="Consortium CA certificate (repeat per org).")
_LOG = typer.Option(None, "--log-file", help="Log file (default: in the state directory).")
_OUT = typer.Option(..., "--out", help="Key file to create (mode 0600).")
_CA_DIR = typer.Option(..., "--ca-dir", help="A LocalCA directory (ca-key.pem, ca-cert.pem).")
_NAME = typer.Option(..., "--name", help="Common name of the server.")
_OUT_CERT = typer.Option(..., "--out-cert", help="Where to write the certificate (PEM).")
_OUT_KEY = typer.Option(..., "--out-key", help="Where to write the key (PEM, mode 0600).")
_HOST = typer.Option(["127.0.0.1", "localhost"], "--host", help="SAN host or IP (repeat).")
_NODE_KEY_FILE = typer.Option(
    ..., "--node-key-file", help="Node key file (outside the state directory)."
)
_PROXY_KEY_FILE = typer.Option(
    ..., "--key-file", help="Proxy X25519 key file (outside the state directory)."
)
_PORT_FILE = typer.Option(None, "--port-file", help="Write the bound port here once listening.")


def _contract(gateway: EmbeddedGateway, channel: str, chaincode: str) -> Contract:
    return gateway.get_network(channel).get_contract(chaincode)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare kgc`` and ``ehrshare proxy``."""
    del bench_app
    kgc_app = typer.Typer(help="KGC node: DKG share holder and key extraction service.")
    proxy_app = typer.Typer(help="Re-encryption proxy service.")
    app.add_typer(kgc_app, name="kgc")
    app.add_typer(proxy_app, name="proxy")

    @kgc_app.command("keygen")
    def kgc_keygen(
        out: Path = _OUT,
    ) -> None:
        """Create a KGC node's long-term keys; prints the public key (hex) for the roster."""
        key = KGCNodeKey.generate()
        try:
            write_key_file(out, key.to_secret_bytes())
        except FileExistsError as exc:
            raise _fail(str(exc)) from None
        typer.echo(key.public_key.to_bytes().hex())

    @proxy_app.command("keygen")
    def proxy_keygen(
        out: Path = _OUT,
    ) -> None:
        """Create a proxy's X25519 key; prints the public key (hex)."""
        key = X25519KeyPair.generate()
        try:
            write_key_file(out, key.to_secret_bytes())
        except FileExistsError as exc:
            raise _fail(str(exc)) from None
        typer.echo(key.public_bytes.hex())

    @kgc_app.command("tls-cert")
    def tls_cert(
        ca_dir: Path = _CA_DIR,
        name: str = _NAME,
        out_cert: Path = _OUT_CERT,
        out_key: Path = _OUT_KEY,
        host: list[str] = _HOST,
    ) -> None:
        """Issue a TLS server certificate (for a KGC node or proxy) from a local CA."""
        cert, key = issue_tls_certificate(LocalCA.load(ca_dir), name, hosts=host)
        try:
            write_key_file(out_key, key)
        except FileExistsError as exc:
            raise _fail(str(exc)) from None
        atomic_write(out_cert, cert, mode=0o644)

    @kgc_app.command("serve")
    def kgc_serve(
        state_dir: Path = _STATE,
        listen: str = _LISTEN,
        index: int = typer.Option(..., "--index", help="This node's position in the roster."),
        node_key_file: Path = _NODE_KEY_FILE,
        msp_id: str = _MSP,
        cert: Path = _CERT,
        key: Path = _KEY,
        ledger: Path = _LEDGER,
        channel: str = _CHANNEL,
        chaincode: str = _CHAINCODE,
        tls_cert: Path = _TLS_CERT,
        tls_key: Path = _TLS_KEY,
        client_ca: list[Path] = _CLIENT_CA,
        rate_limit: int = typer.Option(60, "--rate-limit", help="Extractions per minute each."),
        log_file: Path | None = _LOG,
        port_file: Path | None = _PORT_FILE,
    ) -> None:
        """Serve a KGC node until SIGTERM."""
        try:
            check_key_file_outside(node_key_file, state_dir)
            node_key = KGCNodeKey.from_secret_bytes(read_key_file(node_key_file))
        except (ValueError, OSError) as exc:
            raise _fail(str(exc)) from None
        log_path = log_file or state_dir / "kgc.log"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _setup_logging(log_path)
        tls = _server_tls(tls_cert, tls_key, client_ca)
        gateway = _gateway(msp_id, cert, key, ledger)
        try:
            node = KgcNode(
                index=index,
                node_key=node_key,
                state_dir=state_dir,
                contract=_contract(gateway, channel, chaincode),
                rate_limit_per_minute=rate_limit,
            )
            server, port = serve_kgc(node, listen=listen, tls=tls)
            host = listen.rsplit(":", 1)[0]
            if port_file is not None:
                atomic_write(port_file, str(port).encode(), mode=0o644)
            _err.print(f"kgc node {index} listening on {host}:{port}; logs in {log_path}")
            _wait_for_signal()
            server.stop(2.0).wait()
        finally:
            gateway.close()

    @proxy_app.command("serve")
    def proxy_serve(
        state_dir: Path = _STATE,
        listen: str = _LISTEN,
        key_file: Path = _PROXY_KEY_FILE,
        msp_id: str = _MSP,
        cert: Path = _CERT,
        key: Path = _KEY,
        ledger: Path = _LEDGER,
        channel: str = _CHANNEL,
        chaincode: str = _CHAINCODE,
        tls_cert: Path = _TLS_CERT,
        tls_key: Path = _TLS_KEY,
        client_ca: list[Path] = _CLIENT_CA,
        name: str = typer.Option("proxy", "--name", help="Name used in logs and reports."),
        follow: bool = typer.Option(
            True, "--follow-revocations/--no-follow-revocations", help="Follow RevokeAccess."
        ),
        log_file: Path | None = _LOG,
        port_file: Path | None = _PORT_FILE,
    ) -> None:
        """Serve a re-encryption proxy until SIGTERM."""
        try:
            check_key_file_outside(key_file, state_dir)
            proxy_key = X25519KeyPair.from_secret_bytes(read_key_file(key_file))
        except (ValueError, OSError) as exc:
            raise _fail(str(exc)) from None
        log_path = log_file or state_dir / "proxy.log"
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _setup_logging(log_path)
        tls = _server_tls(tls_cert, tls_key, client_ca)
        gateway = _gateway(msp_id, cert, key, ledger)
        try:
            proxy = ReencryptionProxy(
                state_dir=state_dir,
                contract=_contract(gateway, channel, chaincode),
                key=proxy_key,
                # What grants name as their proxy: this process's own ledger identity.
                ibe_id=Identity(msp_id, cert.read_bytes()).ibe_id,
                name=name,
            )
            follower = None
            if follow:
                follower = RevocationFollower(proxy, gateway.get_network(channel), chaincode)
                follower.start()
            server, port = serve_proxy(proxy, listen=listen, tls=tls)
            host = listen.rsplit(":", 1)[0]
            if port_file is not None:
                atomic_write(port_file, str(port).encode(), mode=0o644)
            _err.print(f"proxy {name} listening on {host}:{port}; logs in {log_path}")
            _wait_for_signal()
            server.stop(2.0).wait()
            if follower is not None:
                follower.stop()
            proxy.close()
        finally:
            gateway.close()
