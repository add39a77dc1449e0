"""Who is calling the FHIR server: what a request presents (:class:`Credentials`), the
:class:`Authenticator` protocol that turns it into a wallet name, and the first of two
authenticators, per-member bearer tokens bound to wallets (the other, mutual TLS with the
member's wallet TLS certificate, is :mod:`ehrshare.fhirapi.mtls`).

A token file (JSON, mode 0600) maps the SHA-256 of each token to the name of a wallet of the
profile; the server acts as that wallet's member for every request that carries the token.
Only hashes are stored, so a copy of the file lets nobody call the server; the tokens
themselves are printed once, when issued. The file is replaced atomically (write, fsync,
rename), so a crash while issuing leaves the old file or the new one, never half of one.

This module must not open wallets or sessions: it only says which wallet a request acts as.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ehrshare.errors import ConfigurationError
from ehrshare.faults import fault_point

__all__ = [
    "TOKEN_FILE",
    "Authenticator",
    "Credentials",
    "TokenBook",
    "TokenFileError",
    "token_file_for",
]

TOKEN_FILE: Final = "fhir-tokens.json"  # noqa: S105 (a file name, not a secret)
_VERSION: Final = 1


class TokenFileError(ConfigurationError):
    """The token file is unreadable or not one this project wrote."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents: its ``Authorization`` header and, over mutual TLS, the client
    certificate the TLS handshake verified (DER), else None."""

    authorization: str = ""
    client_certificate: bytes | None = None


class Authenticator(Protocol):
    """Says which wallet of the profile a request acts as."""

    def wallet_for_request(self, credentials: Credentials) -> str:
        """The wallet name; raises ``FhirError(401)`` when the credentials name none."""
        ...

    @property
    def wallet_names(self) -> frozenset[str]:
        """Every wallet this authenticator can name (the members the server acts for)."""
        ...

    @property
    def mutual_tls(self) -> bool:
        """Whether callers are named by their TLS client certificate (else by a header)."""
        ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_file_for(profile_file: Path) -> Path:
    """Where a profile's FHIR tokens live by default: next to the profile file."""
    return profile_file.parent / TOKEN_FILE


@dataclass(frozen=True, slots=True)
class TokenBook:
    """The token hashes of one server and the wallet each acts as."""

    path: Path
    wallets: dict[str, str]  # sha256(token) hex -> wallet name

    @classmethod
    def load(cls, path: Path) -> TokenBook:
        """Read ``path``; a missing file is an empty book (nobody may call yet)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise TokenFileError(f"cannot read the FHIR token file {path}: {exc}") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TokenFileError(f"the FHIR token file {path} is not JSON") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("version") != _VERSION
            or not isinstance(tokens, dict)
            or not all(
                isinstance(k, str) and len(k) == 64 and isinstance(v, str) and v
                for k, v in tokens.items()
            )
        ):
            raise TokenFileError(
                f"the FHIR token file {path} is not a version-{_VERSION} token file",
            )
        return cls(path, dict(tokens))

    @property
    def wallet_names(self) -> frozenset[str]:
        """The wallets some token acts as."""
        return frozenset(self.wallets.values())

    @property
    def mutual_tls(self) -> bool:
        """False: a bearer token names the caller."""
        return False

    def wallet_for_request(self, credentials: Credentials) -> str:
        """The wallet a request's bearer token acts as; ``FhirError(401)`` without a known one."""
        from ehrshare.fhirapi.outcome import FhirError

        scheme, _, token = credentials.authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(401, "send 'Authorization: Bearer <token>' ('ehrshare fhir token')")
        wallet = self.wallet_for(token.strip())
        if wallet is None:
            raise FhirError(401, "unknown or withdrawn bearer token")
        return wallet

    def wallet_for(self, token: str) -> str | None:
        """The wallet a bearer token acts as, or None for an unknown token."""
        digest = _digest(token)
        for known, wallet in self.wallets.items():
            if hmac.compare_digest(known, digest):
                return wallet
        return None

    def issue(self, wallet: str) -> tuple[TokenBook, str]:
        """A new token for ``wallet``, saved; returns the new book and the token (shown once)."""
        token = secrets.token_urlsafe(32)
        book = TokenBook(self.path, {**self.wallets, _digest(token): wallet})
        book._save()
        return book, token

    def revoke_wallet(self, wallet: str) -> tuple[TokenBook, int]:
        """Drop every token of ``wallet``, saved; returns the new book and how many went."""
        kept = {k: v for k, v in self.wallets.items() if v != wallet}
        book = TokenBook(self.path, kept)
        book._save()
        return book, len(self.wallets) - len(kept)

    def _save(self) -> None:
        body = json.dumps({"version": _VERSION, "tokens": self.wallets}, indent=2, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fhir-tokens.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body + "\n")
                f.flush()
                os.fsync(f.fileno())
            fault_point("fhir_token.before_rename")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
