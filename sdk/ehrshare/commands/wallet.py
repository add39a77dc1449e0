"""``ehrshare wallet encrypt|decrypt|passphrase``: a wallet's keys at rest, changed all at once
(a crash leaves the old or the new wallet). The work is in :class:`ehrshare.profile.Wallet`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ehrshare.commands.common import (
    HELP_EPILOG,
    ProfileOpt,
    WalletOpt,
    fail,
    load_profile,
    mapped_errors,
    need_wallet,
)
from ehrshare.console import err_console
from ehrshare.errors import EXIT_CONFIG, EXIT_USAGE

__all__ = ["NEW_PASSPHRASE_ENV", "register"]

_err = err_console()
NEW_PASSPHRASE_ENV = "EHRSHARE_WALLET_NEW_PASSPHRASE"  # noqa: S105 - a variable name


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``ehrshare wallet``."""
    del bench_app
    wallet_app = typer.Typer(help="Wallet keys at rest.", no_args_is_help=True)
    app.add_typer(wallet_app, name="wallet")

    def _changing_wallet(profile: str, wallet: str) -> Any:
        """The wallet to change, after finishing or undoing a change a crash interrupted."""
        from ehrshare.wallet import Wallet

        prof = load_profile(profile)
        w = prof.wallet(need_wallet(wallet))
        bare = Wallet(w.directory, use_env=False)
        done = bare.recover()
        if done:
            _err.print(f"wallet {w.directory}: {done}", highlight=False, soft_wrap=True)
        if not bare.exists:
            fail(EXIT_CONFIG, f"wallet {w.directory} holds no identity")
        return bare

    def _passphrase(prompt: str, *, env: str, confirm: bool) -> str:
        value = os.environ.get(env)
        if value:
            return value
        if not sys.stdin.isatty():
            fail(EXIT_USAGE, f"no terminal to ask for the {prompt}: set {env}")
        answer: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
        return answer

    @wallet_app.command("encrypt", epilog=HELP_EPILOG)
    def wallet_encrypt(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Encrypt a wallet's key.pem, tls-key.pem and ibe.key under a passphrase (scrypt,
        AES-256-GCM), all at once: a crash leaves the old or the new wallet, never a mix.

        The passphrase comes from $EHRSHARE_WALLET_PASSPHRASE or is asked for twice. A wallet
        an older version left half-encrypted is finished with the passphrase it used."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with mapped_errors():
            w = _changing_wallet(profile, wallet)
            state = w.seal_state
            if state == "encrypted":
                fail(
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

    @wallet_app.command("decrypt", epilog=HELP_EPILOG)
    def wallet_decrypt(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Store an encrypted wallet's keys unencrypted again (mode 0600), all at once.

        The passphrase comes from $EHRSHARE_WALLET_PASSPHRASE or is asked for."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with mapped_errors():
            w = _changing_wallet(profile, wallet)
            if w.seal_state == "plain":
                fail(EXIT_CONFIG, f"wallet {w.directory} is not encrypted")
            w.decrypt(_passphrase("passphrase", env=PASSPHRASE_ENV, confirm=False))
        _err.print(f"[green]✓[/green] wallet {w.directory} decrypted")

    @wallet_app.command("passphrase", epilog=HELP_EPILOG)
    def wallet_passphrase(profile: ProfileOpt = "", wallet: WalletOpt = "") -> None:
        """Change an encrypted wallet's passphrase, all at once.

        The current passphrase comes from $EHRSHARE_WALLET_PASSPHRASE, the new one from
        $EHRSHARE_WALLET_NEW_PASSPHRASE; each is asked for when not set."""
        from ehrshare.wallet import PASSPHRASE_ENV

        with mapped_errors():
            w = _changing_wallet(profile, wallet)
            state = w.seal_state
            if state != "encrypted":
                fail(
                    EXIT_CONFIG,
                    f"wallet {w.directory} is "
                    + ("half-encrypted" if state == "mixed" else "not encrypted"),
                    "finish or start encrypting it with 'ehrshare wallet encrypt'",
                )
            old = _passphrase("current passphrase", env=PASSPHRASE_ENV, confirm=False)
            new = _passphrase("new passphrase", env=NEW_PASSPHRASE_ENV, confirm=True)
            w.change_passphrase(old, new)
        _err.print(f"[green]✓[/green] wallet {w.directory}: passphrase changed")
