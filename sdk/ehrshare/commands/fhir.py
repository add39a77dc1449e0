"""``ehrshare fhir serve`` (a FHIR R4 REST server in front of the SDK; callers by bearer token or
mutual TLS) and ``ehrshare fhir token`` (a bearer token bound to a member's wallet). The work is
in :mod:`ehrshare.fhirapi`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from ehrshare.profile import Profile

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


def _refuse_patient(prof: Profile, name: str, allowed: bool) -> None:
    """Exit 2 if ``name`` is a patient's wallet and ``allowed`` is not set: serving it makes this
    server hold the patient's identity key."""
    from ehrshare.identity import ROLE_ATTRIBUTE
    from ehrshare_chaincode.certs import parse_certificate

    identity, _ = prof.wallet(name).load_identity()  # a wallet that does not open: refused
    role = parse_certificate(identity.credentials).attribute(ROLE_ATTRIBUTE)
    if role == "patient" and not allowed:
        fail(
            EXIT_USAGE,
            f"{name} is a patient: serving it makes this server hold the patient's identity key",
            "do this only on the patient's own gateway, with --patient-own-gateway",
        )


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
        mtls: Annotated[
            bool,
            typer.Option(
                "--mtls",
                help="Authenticate callers by their wallet's TLS client certificate (mutual "
                "TLS) instead of bearer tokens; needs --tls-cert/--tls-key and --member.",
            ),
        ] = False,
        member: Annotated[
            list[str] | None,
            typer.Option("--member", help="With --mtls: a wallet to act for (repeat)."),
        ] = None,
        client_ca: Annotated[
            list[Path] | None,
            typer.Option(
                "--client-ca",
                help="With --mtls: a consortium CA certificate to trust (repeat; default: the "
                "profile's cas, or ca/*/ca-cert.pem beside it).",
            ),
        ] = None,
        patient_own_gateway: Annotated[
            bool,
            typer.Option(
                "--patient-own-gateway",
                help="With --mtls: allow a patient's --member (this server then holds the "
                "patient's identity key: only on the patient's own gateway).",
            ),
        ] = False,
        tokens: TokensOpt = None,
        profile: ProfileOpt = "",
    ) -> None:
        """Serve the FHIR API until SIGTERM/SIGINT, acting for each member whose wallet a
        token names ('ehrshare fhir token'), or with --mtls for each --member, by its wallet's
        TLS client certificate. Prints the base URL on stdout once listening."""
        from ehrshare.fhirapi import FhirServer, TokenBook, parse_listen
        from ehrshare.fhirapi.auth import Authenticator
        from ehrshare.fhirapi.gateway import gateway_for
        from ehrshare.fhirapi.mtls import CertificateMap, ca_files_of
        from ehrshare.profile import profile_file
        from ehrshare.runtime import Runtime

        if (tls_cert is None) != (tls_key is None):
            fail(EXIT_USAGE, "give both --tls-cert and --tls-key, or neither")
        if mtls and tls_cert is None:
            fail(EXIT_USAGE, "--mtls needs the server's certificate: give --tls-cert and --tls-key")
        if mtls and not member:
            fail(EXIT_USAGE, "--mtls needs at least one --member (a wallet to act for)")
        if not mtls and (member or client_ca or patient_own_gateway):
            fail(EXIT_USAGE, "--member, --client-ca and --patient-own-gateway go with --mtls")
        stop = threading.Event()

        def handler(signum: int, frame: FrameType | None) -> None:
            del frame
            logging.getLogger("ehrshare.fhirapi").info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        with mapped_errors():
            address = parse_listen(listen)
            prof = load_profile(profile)
            auth: Authenticator
            client_cas = None
            if mtls:
                names = sorted(set(member or []))
                for name in names:
                    _refuse_patient(prof, name, patient_own_gateway)
                cas = ca_files_of(
                    profile_file(profile_path(profile)).parent, client_ca or prof.ca_files
                )
                cert_map = CertificateMap.build(
                    cas, {name: prof.wallet(name).directory for name in names}
                )
                auth, client_cas = cert_map, cert_map.ca_bundle_pem
            else:
                auth = TokenBook.load(_tokens_path(profile, tokens))
            runtime = Runtime.open(prof)
            try:
                tls = (tls_cert, tls_key) if tls_cert and tls_key else None
                server = FhirServer(
                    gateway_for(runtime, auth),
                    address,
                    max_body=max_body,
                    tls=tls,
                    client_cas=client_cas,
                ).start()
                try:
                    _err.print(
                        f"FHIR API at {server.url} for {len(auth.wallet_names)} member(s)"
                        f"{' by mutual TLS' if mtls else ''}; SIGTERM stops it"
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

        name = need_wallet(wallet)
        with mapped_errors():
            prof = load_profile(profile)
            _refuse_patient(prof, name, revoke or patient_own_gateway)
            book = TokenBook.load(_tokens_path(profile, tokens))
            if revoke:
                _, count = book.revoke_wallet(name)
                _err.print(f"withdrew {count} token(s) of {name}")
                return
            _, secret = book.issue(name)
        _err.print(f"token for {name} (shown once; send as 'Authorization: Bearer <token>'):")
        typer.echo(secret)
