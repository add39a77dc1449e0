"""``ehrshare fhir serve`` (a FHIR R4 REST server in front of the SDK) and ``ehrshare fhir
token`` (a bearer token bound to a member's wallet). The work is in :mod:`ehrshare.fhirapi`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    ProfileOpt,
    WalletOpt,
    fail,
    load_profile,
    mapped_errors,
    need_wallet,
    profile_path,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_USAGE

__all__ = ["register"]

_err = err_console()

TokensOpt = Annotated[
    Path | None,
    typer.Option(
        "--tokens",
        help="Token file (default: fhir-tokens.json next to the profile file).",
    ),
]


def _tokens_path(profile: str, tokens: Path | None) -> Path:
    from ehrshare.fhirapi import token_file_for
    from ehrshare.profile import profile_file

    return tokens if tokens is not None else token_file_for(profile_file(profile_path(profile)))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare fhir serve`` and ``ehrshare fhir token``."""
    del bench_app
    fhir_app = typer.Typer(
        help="A FHIR R4 REST API for hospital systems: records, Consent (grants), AuditEvent "
        "(the operation log); see docs/fhir-api.md.",
        no_args_is_help=True,
    )
    app.add_typer(fhir_app, name="fhir")

    @fhir_app.command("serve", epilog=HELP_EPILOG)
    def serve(
        listen: Annotated[
            str, typer.Option("--listen", help="HOST:PORT to serve on (port 0 picks one).")
        ] = "127.0.0.1:8080",
        max_body: Annotated[
            int, typer.Option("--max-body", min=1024, help="Largest request body, in bytes.")
        ] = 1 << 20,
        tls_cert: Annotated[
            Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate.")
        ] = None,
        tls_key: Annotated[
            Path | None, typer.Option("--tls-key", help="The TLS certificate's private key.")
        ] = None,
        tokens: TokensOpt = None,
        profile: ProfileOpt = "",
    ) -> None:
        """Serve the FHIR API until SIGTERM/SIGINT, acting for each member whose wallet a
        token names ('ehrshare fhir token'). Prints the base URL on stdout once listening."""
        from ehrshare.fhirapi import FhirServer, TokenBook, parse_listen
        from ehrshare.fhirapi.gateway import gateway_for
        from ehrshare.runtime import Runtime

        if (tls_cert is None) != (tls_key is None):
            fail(EXIT_USAGE, "give both --tls-cert and --tls-key, or neither")
        stop = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            del frame
            logging.getLogger("ehrshare.fhirapi").info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        with mapped_errors():
            address = parse_listen(listen)
            book = TokenBook.load(_tokens_path(profile, tokens))
            runtime = Runtime.open(load_profile(profile))
            try:
                tls = (tls_cert, tls_key) if tls_cert and tls_key else None
                server = FhirServer(
                    gateway_for(runtime, book), address, max_body=max_body, tls=tls
                ).start()
                try:
                    _err.print(
                        f"FHIR API at {server.url} for {len(set(book.wallets.values()))} "
                        "member(s); SIGTERM stops it"
                    )
                    typer.echo(server.url)
                    stop.wait()
                finally:
                    server.stop()
            finally:
                runtime.close()

    @fhir_app.command("token", epilog=HELP_EPILOG)
    def token(
        revoke: Annotated[
            bool, typer.Option("--revoke", help="Withdraw every token of the wallet instead.")
        ] = False,
        patient_own_gateway: Annotated[
            bool,
            typer.Option(
                "--patient-own-gateway",
                help="Allow a token for a patient's wallet: the server then holds the "
                "patient's identity key, so do this only on the patient's own gateway.",
            ),
        ] = False,
        tokens: TokensOpt = None,
        profile: ProfileOpt = "",
        wallet: WalletOpt = "",
    ) -> None:
        """Issue a bearer token that acts as --wallet's member on the FHIR server (printed
        once; only its hash is kept), or --revoke that wallet's tokens. A running server reads
        the file at start: restart it after a change. A patient's wallet needs
        --patient-own-gateway (a hospital's gateway must not hold patients' keys)."""
        from ehrshare.fhirapi import TokenBook
        from ehrshare.identity import ROLE_ATTRIBUTE
        from ehrshare_chaincode.certs import parse_certificate

        name = need_wallet(wallet)
        with mapped_errors():
            prof = load_profile(profile)
            identity, _ = prof.wallet(name).load_identity()  # a wallet that does not open: no token
            role = parse_certificate(identity.credentials).attribute(ROLE_ATTRIBUTE)
            if role == "patient" and not revoke and not patient_own_gateway:
                fail(
                    EXIT_USAGE,
                    f"{name} is a patient: a token makes this server hold the patient's identity "
                    "key",
                    "issue it only on the patient's own gateway, with --patient-own-gateway",
                )
            book = TokenBook.load(_tokens_path(profile, tokens))
            if revoke:
                _, count = book.revoke_wallet(name)
                _err.print(f"withdrew {count} token(s) of {name}")
                return
            _, secret = book.issue(name)
        _err.print(f"token for {name} (shown once; send as 'Authorization: Bearer <token>'):")
        typer.echo(secret)
