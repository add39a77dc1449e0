"""``ehrshare chaincode serve``: the contract as a chaincode-as-a-service server for Fabric peers.

The peer's ``ccaas`` package (``connection.json``) names the address this listens on; the peer
dials it and the server registers with the package id (``label:sha256``). Options may also come
from the environment variables the Fabric samples use (``CHAINCODE_ID``,
``CHAINCODE_SERVER_ADDRESS``). TLS: ``--tls-cert`` / ``--tls-key`` serve TLS (the peer checks them
against ``root_cert``); ``--client-ca`` also requires the peer's client certificate
(``client_auth_required``). The server blocks until SIGTERM or SIGINT.

Status: real Fabric 2.3 peers drive it in CI (every network :mod:`ehrshare.network.fabric`
builds); the pinned 3.1 could not be built (docs/status.md). This module
only parses options and wires objects; the protocol lives in :mod:`ehrshare_chaincode.ccaas`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from ehrshare.commands.services import _fail
from ehrshare.console import err_console
from ehrshare.services.vault import atomic_write, read_key_file
from ehrshare_chaincode import invoke, kv
from ehrshare_chaincode.ccaas import ChaincodeServer, ChaincodeTls, check_package_id

__all__ = ["register"]

_err = err_console()


def _setup_logging(log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler()
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ehrshare", "ehrshare_chaincode"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # The CLI's root handler (basicConfig) would print every line a second time.
        logger.propagate = False


def _tls(
    tls_cert: Path | None, tls_key: Path | None, client_ca: Path | None
) -> ChaincodeTls | None:
    if tls_cert is None and tls_key is None:
        if client_ca is not None:
            raise _fail("--client-ca needs --tls-cert and --tls-key")
        return None
    if tls_cert is None or tls_key is None:
        raise _fail("give both --tls-cert and --tls-key")
    try:
        return ChaincodeTls(
            key_pem=read_key_file(tls_key),
            cert_pem=tls_cert.read_bytes(),
            client_ca_pem=None if client_ca is None else client_ca.read_bytes(),
        )
    except OSError as exc:
        raise _fail(str(exc)) from None


async def _serve(server: ChaincodeServer, port_file: Path | None) -> None:
    port = await server.start()
    if port_file is not None:
        atomic_write(port_file, str(port).encode(), mode=0o644)
    _err.print(f"chaincode {server.package_id} listening on port {port}", soft_wrap=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("ehrshare").info("signal received: stopping the chaincode server")
    await server.stop(2)


_PACKAGE_ID = typer.Option(
    ..., "--package-id", envvar="CHAINCODE_ID", help="Package id the peer installed (label:sha256)."
)
_LISTEN = typer.Option(
    "127.0.0.1:9999",
    "--listen",
    envvar="CHAINCODE_SERVER_ADDRESS",
    help="host:port to serve on (:0 picks).",
)
_TLS_CERT = typer.Option(None, "--tls-cert", help="PEM server certificate.")
_TLS_KEY = typer.Option(None, "--tls-key", help="PEM server key (mode 0600).")
_CLIENT_CA = typer.Option(
    None, "--client-ca", help="CA of the peers' client certificates (then required)."
)
_WORKERS = typer.Option(16, "--workers", help="Transactions in progress at once.")
_LOG = typer.Option(None, "--log-file", help="Log file (default: stderr).")
_PORT_FILE = typer.Option(None, "--port-file", help="Write the bound port here once listening.")
_CONTRACT = typer.Option(
    "ehrshare",
    "--contract",
    help="ehrshare (the contract) or kv (the trivial chaincode bench fabric compares with).",
)
_CONTRACTS = {"ehrshare": invoke, "kv": kv.invoke}


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare chaincode``."""
    del bench_app
    chaincode_app = typer.Typer(help="The contract as a chaincode-as-a-service server.")
    app.add_typer(chaincode_app, name="chaincode")

    @chaincode_app.command("serve")
    def serve(
        package_id: str = _PACKAGE_ID,
        listen: str = _LISTEN,
        tls_cert: Path | None = _TLS_CERT,
        tls_key: Path | None = _TLS_KEY,
        client_ca: Path | None = _CLIENT_CA,
        workers: int = _WORKERS,
        log_file: Path | None = _LOG,
        port_file: Path | None = _PORT_FILE,
        contract: str = _CONTRACT,
    ) -> None:
        """Serve the ehrshare contract (or the trivial kv chaincode) to Fabric peers until
        SIGTERM."""
        try:
            check_package_id(package_id)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        if contract not in _CONTRACTS:
            raise _fail(f"--contract {contract!r} is not one of {', '.join(_CONTRACTS)}")
        if workers < 1:
            raise _fail("--workers must be at least 1")
        tls = _tls(tls_cert, tls_key, client_ca)
        _setup_logging(log_file)
        server = ChaincodeServer(
            package_id, listen, chaincode=_CONTRACTS[contract], tls=tls, max_workers=workers
        )
        try:
            asyncio.run(_serve(server, port_file))
        except (OSError, RuntimeError) as exc:  # grpc reports a failed bind as RuntimeError
            raise _fail(f"could not serve on {listen}: {exc}") from None
