"""Wallets: one member's credentials in one directory, changed all at once.

A wallet holds one member's certificate, signing key, TLS client certificate and key and
(after enrolment) identity secret keys. Keys at rest: ``key.pem``, ``tls-key.pem`` and
``ibe.key`` are mode 0600; with a passphrase (argument, or ``EHRSHARE_WALLET_PASSPHRASE``) they
are also encrypted (scrypt → AES-256-GCM, the file name as associated data). Reading an
encrypted wallet without the passphrase fails with a clear error. Changing every key of a wallet
(encrypt, decrypt, new passphrase) is all-or-nothing: the new wallet is built beside the old one
and swapped in by renames with a recovery rule (see :meth:`Wallet.recover`), so a crash leaves
the old or the new wallet, never a mix.

This module must never log or print the contents of secret files, and must not write a secret
anywhere but a mode-0600 file inside the wallet (or its staging directory beside it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ehrshare.errors import ConfigurationError
from ehrshare.faults import fault_point
from ehrshare.hazmat.tipre import TIPRE_VERSION, IdentitySecretKey
from ehrshare.identity import Identity, Signer

__all__ = [
    "PASSPHRASE_ENV",
    "SECRET_FILES",
    "Wallet",
    "WalletError",
    "is_sealed_wallet_file",
    "open_wallet_file",
    "seal_wallet_file",
]

PASSPHRASE_ENV: Final = "EHRSHARE_WALLET_PASSPHRASE"  # noqa: S105 - a variable name


class WalletError(ConfigurationError, ValueError):
    """A wallet directory is missing files or holds something unreadable."""


_SEALED_MAGIC: Final = b"ehrshare-wallet-v1\n"
_SALT_SIZE: Final = 16
_NONCE_SIZE: Final = 12
# scrypt cost: ~50 ms and 16 MiB per unlock here — slow for guessing, fine for one CLI call.
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


def _kek(passphrase: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def seal_wallet_file(data: bytes, passphrase: str, name: str) -> bytes:
    """Encrypt a wallet secret under a passphrase; ``name`` (the file name) is bound as AAD so
    one encrypted file cannot be swapped for another."""
    salt = secrets.token_bytes(_SALT_SIZE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(_kek(passphrase, salt)).encrypt(nonce, data, name.encode())
    return _SEALED_MAGIC + salt + nonce + sealed


def is_sealed_wallet_file(data: bytes) -> bool:
    """Whether wallet file content is passphrase-encrypted."""
    return data.startswith(_SEALED_MAGIC)


def open_wallet_file(data: bytes, passphrase: str, name: str) -> bytes:
    """Decrypt :func:`seal_wallet_file` output; :class:`WalletError` on a wrong passphrase."""
    body = data[len(_SEALED_MAGIC) :]
    if not is_sealed_wallet_file(data) or len(body) < _SALT_SIZE + _NONCE_SIZE + 16:
        raise WalletError(f"{name} is not an encrypted wallet file")
    salt, nonce = body[:_SALT_SIZE], body[_SALT_SIZE : _SALT_SIZE + _NONCE_SIZE]
    try:
        return AESGCM(_kek(passphrase, salt)).decrypt(
            nonce, body[_SALT_SIZE + _NONCE_SIZE :], name.encode()
        )
    except InvalidTag:
        raise WalletError(f"{name}: wrong wallet passphrase (or the file was altered)") from None


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _exists(path: Path) -> bool:
    """``path.exists()``, with a name too long for the file system simply not existing."""
    try:
        return path.exists()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


SECRET_FILES: Final = ("key.pem", "tls-key.pem", "ibe.key")
_EPOCH_RE: Final = re.compile(r"(?:[0-9a-f]{16})?")
_EPOCH_FILE_RE: Final = re.compile(r"ibe-(?:[0-9a-f]{16}|earlier-[0-9a-f]{16})\.key")


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der


class Wallet:
    """One member's credentials in a directory: ``msp-id``, ``cert.pem``, ``key.pem``, ``ibe.key``,
    ``tls-cert.pem``, ``tls-key.pem``.

    ``key.pem`` (the ECDSA key that signs ledger transactions), ``tls-key.pem`` (the separate key
    of the TLS client certificate the services authenticate callers by) and ``ibe.key`` (the
    identity secret key from enrolment) are written with mode 0600; anyone who can read them
    can act as this member. With a ``passphrase`` (or, unless ``use_env`` is false,
    ``$EHRSHARE_WALLET_PASSPHRASE``) all three are also encrypted at rest; reading picks the
    format from the file itself. A wallet that lost its two ``tls-`` files works with in-process
    services; :meth:`load_tls` says how to re-issue them.
    Identity keys of every master-key epoch are kept as ``ibe-<epoch>.key`` next to the current
    ``ibe.key`` (:meth:`save_secret_key`).
    """

    def __init__(
        self, directory: Path, *, passphrase: str | None = None, use_env: bool = True
    ) -> None:
        self.directory = directory
        if passphrase is None and use_env:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        if passphrase is not None and not passphrase:
            raise WalletError("a wallet passphrase must not be empty")
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"Wallet({str(self.directory)!r})"

    @property
    def exists(self) -> bool:
        """Whether the wallet holds an identity."""
        try:
            return (self.directory / "cert.pem").is_file()
        except OSError:  # a name too long for the file system, say: no such wallet
            return False

    @property
    def encrypted(self) -> bool:
        """Whether the wallet's signing key is passphrase-encrypted."""
        try:
            with (self.directory / "key.pem").open("rb") as f:
                return is_sealed_wallet_file(f.read(len(_SEALED_MAGIC)))
        except OSError:
            return False

    def with_passphrase(self, passphrase: str) -> Wallet:
        """The same wallet, unlocked with ``passphrase``."""
        return Wallet(self.directory, passphrase=passphrase)

    def _write(self, name: str, data: bytes) -> None:
        if self._passphrase is not None:
            data = seal_wallet_file(data, self._passphrase, name)
        _write_secret(self.directory / name, data)

    def _read(self, name: str) -> bytes:
        data = (self.directory / name).read_bytes()
        if not is_sealed_wallet_file(data):
            return data
        if self._passphrase is None:
            raise WalletError(
                f"wallet {self.directory} is encrypted: set {PASSPHRASE_ENV} (or enter the "
                "passphrase when the CLI asks)"
            )
        return open_wallet_file(data, self._passphrase, name)

    def save_identity(self, identity: Identity, signer: Signer) -> None:
        """Write the certificate and the signing key."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "msp-id").write_text(identity.msp_id, encoding="utf-8")
        (self.directory / "cert.pem").write_bytes(identity.credentials)
        self._write("key.pem", signer.to_secret_bytes())

    @property
    def has_tls(self) -> bool:
        """Whether the wallet holds a TLS client certificate."""
        return (self.directory / "tls-cert.pem").is_file()

    def save_tls(self, identity: Identity, signer: Signer) -> None:
        """Write the TLS client certificate and its key (sealed like ``key.pem``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write("tls-key.pem", signer.to_secret_bytes())
        (self.directory / "tls-cert.pem").write_bytes(identity.credentials)

    def load_tls(self) -> tuple[Identity, Signer]:
        """Read the TLS client certificate and key (for gRPC services)."""
        if not self.has_tls:
            raise WalletError(
                f"wallet {self.directory} has no TLS client certificate (tls-cert.pem is "
                "missing, and the ledger signing key may not be used for TLS): "
                "re-issue it with 'ehrshare consortium reissue-tls "
                f"{self.directory.name} -p <consortium dir>'"
            )
        return self._load_pair("tls-cert.pem", "tls-key.pem")

    def _load_pair(self, cert_name: str, key_name: str) -> tuple[Identity, Signer]:
        try:
            msp = (self.directory / "msp-id").read_text(encoding="utf-8").strip()
            cert = (self.directory / cert_name).read_bytes()
            signer = Signer.from_secret_bytes(self._read(key_name))
        except WalletError:
            raise
        except (OSError, ValueError) as exc:
            raise WalletError(f"wallet {self.directory} is unreadable: {exc}") from None
        identity = Identity(msp, cert)
        try:
            public = identity.certificate.public_key()
            identity.enrollment_id  # noqa: B018 - parses the subject's common name
        except (ValueError, IndexError):
            raise WalletError(
                f"wallet {self.directory}: {cert_name} is not a readable X.509 certificate "
                "(empty, truncated or edited); restore the wallet from its backup"
            ) from None
        if _public_der(public) != _public_der(signer.public_key):
            raise WalletError(
                f"wallet {self.directory}: {cert_name} is not the certificate of its key "
                f"{key_name}; restore the wallet from its backup"
            )
        return identity, signer

    def load_identity(self) -> tuple[Identity, Signer]:
        """Read the certificate and the signing key (first finishing or undoing a change a
        crash interrupted, see :meth:`recover`)."""
        if any(_exists(p) for p in self._staging()):
            self.recover()  # waits for a change in progress elsewhere (the wallet's lock)
        if not self.exists:
            raise WalletError(
                f"wallet {self.directory} holds no identity; create one with "
                "'ehrshare consortium add-member' or 'ehrshare consortium init'"
            )
        return self._load_pair("cert.pem", "key.pem")

    def save_secret_key(self, key: IdentitySecretKey, epoch: str = "") -> None:
        """Keep the enrolled identity secret key as the current one, ``ibe.key`` (mode 0600;
        encrypted with a passphrase), and with ``epoch`` (its master key's, see
        :func:`ehrshare_chaincode.contract.master_key_epoch`) also as ``ibe-<epoch>.key``.

        Keys are never dropped: a current key of another master key that no ``ibe-*.key``
        holds (a wallet from before epochs) is kept as ``ibe-earlier-<digest>.key``, so
        records of an earlier master key stay readable. All files change at once (staged
        directory, see :meth:`recover`).
        """
        if not _EPOCH_RE.fullmatch(epoch):
            raise WalletError(f"{epoch!r} is not a master key epoch (16 hex digits)")
        new = key.to_secret_bytes()
        if not self.exists:  # a bare key directory (no identity): nothing else to keep whole
            self._write("ibe.key", new)
            if epoch:
                self._write(f"ibe-{epoch}.key", new)
            return
        with self._locked():
            self._recover()
            kept = {name: self._read(name) for name in self._secret_names() if "ibe" in name}
            files: dict[str, bytes] = {"ibe.key": new}
            if epoch:
                files[f"ibe-{epoch}.key"] = new
            current = kept.get("ibe.key")
            if (
                current is not None
                and current != new
                and all(data != current for name, data in kept.items() if name != "ibe.key")
            ):
                digest = hashlib.sha256(current).hexdigest()[:16]
                files[f"ibe-earlier-{digest}.key"] = current
            if all(kept.get(name) == data for name, data in files.items()):
                return

            def build(tmp: Path) -> None:
                writer = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                for name, data in sorted(files.items()):
                    writer._write(name, data)

            self._swap_in(build)

    def load_secret_keys(self) -> dict[str, IdentitySecretKey]:
        """Every identity key the wallet kept, by master key epoch (``earlier-<digest>`` for
        keys of an unknown earlier epoch); the current one is :meth:`load_secret_key`."""
        keys: dict[str, IdentitySecretKey] = {}
        for name in self._secret_names():
            if name.startswith("ibe-"):
                try:
                    keys[name[4:-4]] = IdentitySecretKey.from_secret_bytes(self._read(name))
                except WalletError:
                    raise
                except (OSError, ValueError):
                    path = self.directory / name
                    raise WalletError(f"{path} does not hold an identity secret key") from None
        return keys

    def _secret_names(self) -> list[str]:
        """The secret files present: :data:`SECRET_FILES` and every ``ibe-<epoch>.key``."""
        try:
            epochs = sorted(
                p.name for p in self.directory.glob("ibe-*.key") if _EPOCH_FILE_RE.fullmatch(p.name)
            )
        except OSError:
            epochs = []
        return [n for n in SECRET_FILES if (self.directory / n).is_file()] + epochs

    def load_secret_key(self) -> IdentitySecretKey | None:
        """The enrolled key, or None before enrolment."""
        path = self.directory / "ibe.key"
        if not path.exists():
            return None
        try:
            raw = self._read("ibe.key")
            if len(raw) > 1 + 96 and raw[0] == 1:  # the format before RFC 9380 H1
                raise WalletError(
                    f"{path} does not hold an identity secret key of format version "
                    f"{TIPRE_VERSION}: it is a version 1 key, made before H1 became the RFC 9380 "
                    "hash; enrol again (docs/security.md §3.8)"
                )
            return IdentitySecretKey.from_secret_bytes(raw)
        except WalletError:
            raise
        except (OSError, ValueError):
            raise WalletError(f"{path} does not hold an identity secret key") from None

    # --- all-or-nothing changes ---------------------------------------------------------------

    def _staging(self) -> tuple[Path, Path, Path]:
        """Where a change builds (``.name.tmp``), stages (``.name.new``) and retires the old
        wallet (``.name.old``), beside the wallet directory."""
        d = self.directory
        return tuple(d.parent / f".{d.name}.{x}" for x in ("tmp", "new", "old"))  # type: ignore[return-value]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change (or recovery) of a wallet at a time, across processes: a lock on the
        wallets directory itself, so taking it leaves no file behind."""
        try:
            fd = os.open(self.directory.parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise WalletError(f"wallet {self.directory} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def recover(self) -> str | None:
        """Finish or undo a wallet change a crash interrupted; what was done, or None.

        The rule: the wallet directory, when it exists, is always a complete wallet, and
        ``.name.new`` exists only once the new wallet is complete. So a leftover ``.tmp`` or a
        ``.new`` beside the wallet is discarded (the change did not happen), a ``.new`` without
        the wallet is swapped in (it did), a lone ``.old`` is put back, and an ``.old`` beside
        the wallet is removed.
        """
        if not self.directory.parent.is_dir():
            return None
        with self._locked():
            return self._recover()

    def _recover(self) -> str | None:
        tmp, new, old = self._staging()
        done: list[str] = []
        if tmp.exists():
            shutil.rmtree(tmp)
            done.append("discarded an unfinished new wallet")
        if self.directory.exists():
            if new.exists():
                shutil.rmtree(new)
                done.append("discarded a new wallet that was never swapped in")
            if old.exists():
                shutil.rmtree(old)
                done.append("removed the wallet a finished change replaced")
        elif new.exists():
            new.rename(self.directory)
            _fsync_dir(self.directory.parent)
            done.append("swapped in the new wallet of an interrupted change")
            if old.exists():
                shutil.rmtree(old)
        elif old.exists():
            old.rename(self.directory)
            _fsync_dir(self.directory.parent)
            done.append("put back the wallet an interrupted change had moved aside")
        return "; ".join(done) or None

    @property
    def seal_state(self) -> str:
        """``plain``, ``encrypted`` or ``mixed`` (some secret files encrypted, some not: what
        an interrupted encrypt of an older ehrshare left; ``wallet encrypt`` finishes it)."""
        sealed = set()
        for name in self._secret_names():
            try:
                with (self.directory / name).open("rb") as f:
                    sealed.add(is_sealed_wallet_file(f.read(len(_SEALED_MAGIC))))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise WalletError(f"wallet {self.directory} is unreadable: {exc}") from None
        if sealed == {True}:
            return "encrypted"
        return "mixed" if len(sealed) == 2 else "plain"

    def _swap_in(self, build: Callable[[Path], None]) -> None:
        """Copy the wallet to ``.name.tmp``, let ``build`` change the copy, then stage it as
        ``.name.new`` and swap it in (two renames). Hold :meth:`_locked` around it."""
        tmp, new, old = self._staging()
        shutil.copytree(self.directory, tmp, copy_function=shutil.copy2)
        try:
            build(tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fault_point("wallet.after_build")
        tmp.rename(new)
        _fsync_dir(new.parent)
        fault_point("wallet.after_stage")
        self.directory.rename(old)
        fault_point("wallet.after_retire")
        new.rename(self.directory)
        _fsync_dir(self.directory.parent)
        fault_point("wallet.after_swap")
        shutil.rmtree(old)

    def create(
        self, identity: Identity, signer: Signer, tls: tuple[Identity, Signer] | None = None
    ) -> None:
        """Write a new wallet whole: built in ``.name.tmp`` and renamed into place, so a crash
        leaves no wallet rather than half of one. Refuses an existing wallet."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._recover()
            if self.directory.exists():
                raise WalletError(f"wallet {self.directory} already exists")
            tmp = self._staging()[0]
            try:
                staged = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                staged.save_identity(identity, signer)
                if tls is not None:
                    staged.save_tls(*tls)
                _fsync_tree(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fault_point("wallet.after_build")
            tmp.rename(self.directory)
            _fsync_dir(self.directory.parent)

    def replace_tls(self, identity: Identity, signer: Signer) -> None:
        """Replace the TLS client certificate and key together (see :meth:`_swap_in`); sealed
        under this wallet's passphrase when it has one."""
        with self._locked():
            self._recover()
            if not self.exists:
                raise WalletError(f"wallet {self.directory} holds no identity")

            def build(tmp: Path) -> None:
                staged = Wallet(tmp, passphrase=self._passphrase, use_env=False)
                staged._write("tls-key.pem", signer.to_secret_bytes())
                fault_point("wallet.mid_build")
                (tmp / "tls-cert.pem").write_bytes(identity.credentials)

            self._swap_in(build)

    def _rewrite(self, read_with: str | None, write_with: str | None) -> Wallet:
        """Re-write every secret file (read with ``read_with``; plain files need none) sealed
        under ``write_with`` (None: plain), all at once: built in ``.name.tmp``, staged as
        ``.name.new``, swapped in by two renames (see :meth:`recover`)."""
        if write_with is not None and not write_with:
            raise WalletError("a wallet passphrase must not be empty")
        with self._locked():
            self._recover()
            if not self.exists:
                raise WalletError(f"wallet {self.directory} holds no identity")
            reader = Wallet(self.directory, passphrase=read_with or None, use_env=False)
            secrets_now = {n: reader._read(n) for n in self._secret_names()}
            # Check what was read before replacing anything: a wrong passphrase or a damaged
            # file refuses the change (WalletError), the wallet stays as it was.
            try:
                Signer.from_secret_bytes(secrets_now["key.pem"])
            except (KeyError, ValueError) as exc:
                why = f"wallet {self.directory} has no usable key.pem ({exc})"
                raise WalletError(why) from None

            def build(tmp: Path) -> None:
                writer = Wallet(tmp, passphrase=write_with, use_env=False)
                for i, (name, data) in enumerate(sorted(secrets_now.items())):
                    writer._write(name, data)
                    if i == 0:
                        fault_point("wallet.mid_build")

            self._swap_in(build)
        return Wallet(self.directory, passphrase=write_with, use_env=False)

    def encrypt(self, passphrase: str) -> Wallet:
        """Encrypt ``key.pem``, ``tls-key.pem`` and ``ibe.key`` under ``passphrase``, all at
        once; returns the unlocked wallet. A ``mixed`` wallet (see :attr:`seal_state`) is
        finished with the passphrase its encrypted files already use; a wallet opened with a
        passphrase is re-encrypted from that one (as :meth:`change_passphrase`)."""
        return self._rewrite(read_with=self._passphrase or passphrase, write_with=passphrase)

    def decrypt(self, passphrase: str) -> Wallet:
        """Store the secret files unencrypted again (mode 0600), all at once."""
        return self._rewrite(read_with=passphrase, write_with=None)

    def change_passphrase(self, old: str, new: str) -> Wallet:
        """Re-encrypt every secret file under ``new``, all at once."""
        return self._rewrite(read_with=old, write_with=new)
