"""What every ``ehrshare`` command module shares: the ``--profile``/``--wallet``/``--json``
options, opening a profile or a session from them, JSON output, and the one mapping of errors to
exit codes (:func:`mapped_errors`, :func:`fail`; the codes are :data:`ehrshare.errors.EXIT_CODES`).

A profile comes from ``--profile``, or ``$EHRSHARE_PROFILE``, or ``./profile.yaml``; a wallet from
``--wallet`` (a name under the profile's wallet directory or a path) or ``$EHRSHARE_WALLET``. An
encrypted wallet is unlocked with ``$EHRSHARE_WALLET_PASSPHRASE`` or, on a terminal, a prompt.
``--json`` prints only JSON on stdout; messages and progress go to stderr. This module registers no
command and must not do a command's work.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ehrshare.console import err_console
from ehrshare.errors import (
    EXIT_CONFIG,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EhrshareError,
    exit_code_table,
)

__all__ = [
    "HELP_EPILOG",
    "BackoffMaxOpt",
    "BackoffOpt",
    "GiveUpAfterOpt",
    "JsonOpt",
    "ProfileOpt",
    "StableAfterOpt",
    "WalletOpt",
    "emit",
    "fail",
    "fmt_date",
    "fmt_time",
    "load_profile",
    "make_table",
    "mapped_errors",
    "need_wallet",
    "open_session",
    "profile_path",
    "progress",
    "unlocked_wallet",
]

HELP_EPILOG = exit_code_table()  # every command's help epilog
_UNEXPECTED = "unexpected error"

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
# The restart policy of a service supervisor ('network up', 'consortium serve').
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


def fail(code: int, message: str, hint: str = "") -> NoReturn:
    """End the command: ``error: message`` (and ``hint:``) on stderr, then exit with ``code``,
    one of :data:`ehrshare.errors.EXIT_CODES` by name. For what a command checks itself."""
    # soft_wrap: an error message stays one line, so scripts can grep it
    # Escaped: messages quote peers' errors, which hold brackets ([/Channel/Application/…]).
    from rich.markup import escape

    _err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        _err.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Map errors to a message on stderr and the exit code their class carries (one place;
    see :mod:`ehrshare.errors`). Whatever else escapes is a bug: said in one line, exit 1,
    the traceback only in the debug log (``-v``)."""
    from ehrshare.hazmat.errors import EncodingError

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):  # typer says those itself
        raise
    except EhrshareError as exc:
        fail(exc.exit_code, str(exc), exc.hint)
    except (ConnectionError, TimeoutError) as exc:
        fail(EXIT_UNAVAILABLE, str(exc))
    except (EncodingError, OSError) as exc:
        # A file of the profile or wallet that cannot be read: a setup (or volume) problem.
        fail(EXIT_CONFIG, str(exc))
    except Exception as exc:
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        fail(
            EXIT_REFUSED,
            f"{_UNEXPECTED}: {type(exc).__name__}: {exc}",
            "this is a bug in ehrshare; run again with -v for the traceback and report it",
        )


def profile_path(profile: str) -> str:
    """``--profile`` as given, else ``./profile.yaml`` if there is one, else exit 3."""
    if profile:
        return profile
    if Path("profile.yaml").is_file():
        return "profile.yaml"
    fail(
        EXIT_CONFIG,
        "no profile given and no ./profile.yaml",
        "pass --profile <consortium dir> or set EHRSHARE_PROFILE; "
        "'ehrshare consortium init <dir>' creates one",
    )


def need_wallet(wallet: str) -> str:
    """``--wallet`` for a command that acts as someone; exit 2 when it was not given."""
    if not wallet:
        fail(EXIT_USAGE, "this command acts as someone: pass --wallet <name> (or EHRSHARE_WALLET)")
    return wallet


def unlocked_wallet(prof: Any, wallet: str) -> Any:
    """The wallet, with its passphrase asked for on a terminal when it is encrypted and
    ``$EHRSHARE_WALLET_PASSPHRASE`` is not set (never echoed)."""
    from ehrshare.wallet import PASSPHRASE_ENV

    w = prof.wallet(wallet)
    if w.encrypted and not os.environ.get(PASSPHRASE_ENV) and sys.stdin.isatty():
        w = w.with_passphrase(typer.prompt(f"passphrase of wallet {wallet}", hide_input=True))
    return w


@contextmanager
def open_session(profile: str, wallet: str) -> Iterator[Any]:
    """A :class:`ehrshare.Session` for ``--profile`` and ``--wallet``, closed on exit; errors
    while opening it end the command with their exit code."""
    from ehrshare.runtime import connect

    with mapped_errors():
        prof = load_profile(profile)
        session = connect(prof, unlocked_wallet(prof, need_wallet(wallet)))
        try:
            yield session
        finally:
            session.close()


@contextmanager
def progress(text: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while a slow step runs, yielding a function that retitles it; nothing
    when ``quiet`` (``--json``) or stderr is not a terminal."""
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


def emit(data: Any) -> None:
    """Print ``--json`` output: indented, keys sorted, alone on stdout."""
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def load_profile(profile: str) -> Any:
    """The profile named by ``--profile`` (a file or a consortium directory)."""
    from ehrshare.profile import Profile, profile_file

    return Profile.load(profile_file(profile_path(profile)))


def make_table(*columns: str) -> Table:
    """A table whose cells are never cut: on a narrow terminal a long id folds onto further
    lines rather than end in an ellipsis (every character of it is still there to copy)."""
    table = Table()
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def fmt_time(ts: int) -> str:
    """Unix seconds as a UTC time for people."""
    try:
        return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # beyond year 9999: say the raw number
        return f"{ts} (unix seconds)"


def fmt_date(ts: int) -> str:
    """Unix seconds as a UTC date."""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")
