"""The error root of the SDK and the CLI's one table of exit codes.

Every error ehrshare raises on purpose is an :class:`EhrshareError` and carries the exit code the
CLI ends with (``exit_code``) and, where there is one, a next step for the user (``hint``). The
families below name what went wrong from the caller's side — refused, bad usage, configuration,
a service down, an integrity failure, invalid input — and each module's own errors
(``SdkError``, ``ProfileError``, ``StorageError``, ...) sit under the root, listing their family
first where their code differs from their module base's. The CLI maps errors to exit codes
through the root in one place (``ehrshare.commands.common.mapped_errors``).

This module must not import anything from ehrshare: every other module imports it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_INPUT",
    "EXIT_INTEGRITY",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ConfigurationError",
    "EhrshareError",
    "IntegrityFailure",
    "InvalidInput",
    "Refused",
    "Unavailable",
    "UsageError",
    "exit_code_table",
]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONFIG: Final = 3
EXIT_UNAVAILABLE: Final = 4
EXIT_INTEGRITY: Final = 5
EXIT_INPUT: Final = 6

EXIT_CODES: Final[dict[int, str]] = {
    EXIT_OK: "success",
    EXIT_REFUSED: "refused (not allowed, access denied, no such member or object), or another "
    "failure",
    EXIT_USAGE: "bad command-line usage (an option or argument out of range)",
    EXIT_CONFIG: "profile, wallet, ledger database or consortium problem (incl. backend not "
    "available)",
    EXIT_UNAVAILABLE: "a service is down (ledger, content store, KGC nodes, proxy)",
    EXIT_INTEGRITY: "an integrity check failed (audit trail, stored ciphertext missing or altered)",
    EXIT_INPUT: "invalid input (FHIR, record type, size)",
}


def exit_code_table() -> str:
    """The exit codes as one line, for a command's help epilog."""
    return "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class EhrshareError(Exception):
    """Root of every error ehrshare raises on purpose: catch this to catch them all.

    ``exit_code`` is the CLI's exit code for it (a class default, which an instance may
    narrow, as a ledger error does when no peer answered); ``hint`` is the next step to
    suggest, or empty.
    """

    exit_code: int = EXIT_REFUSED
    hint: str = ""


class Refused(EhrshareError):
    """Not allowed: the ledger, a service or the patient's grants say no."""

    exit_code = EXIT_REFUSED


class UsageError(EhrshareError, ValueError):
    """An argument the caller gave is out of range or malformed; nothing was done."""

    exit_code = EXIT_USAGE


class ConfigurationError(EhrshareError):
    """A profile, wallet, ledger database or consortium directory is missing, foreign or
    unreadable; fixing the setup (not retrying) helps."""

    exit_code = EXIT_CONFIG


class Unavailable(EhrshareError):
    """A service (ledger, content store, KGC node, proxy) did not answer; retrying later
    may help."""

    exit_code = EXIT_UNAVAILABLE


class IntegrityFailure(EhrshareError):
    """Something stored does not verify (a ciphertext missing or altered, a broken hash
    chain); never retried silently."""

    exit_code = EXIT_INTEGRITY


class InvalidInput(EhrshareError, ValueError):
    """The data handed in (a FHIR resource, a record type, its size) is not acceptable."""

    exit_code = EXIT_INPUT
