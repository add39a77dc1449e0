"""Error types of the hazmat layer.

Precise errors for everything that is not a decryption (bad encodings, failed checks, a key of
the wrong type or identity) and one opaque :class:`DecryptionError` for every decryption failure,
so that no caller can build a padding or MAC oracle out of the difference between failures.

No error raised from this package may carry secret bytes in its message.
"""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "EncodingError",
    "UnverifiedInputError",
    "VerificationError",
    "WrongIdentityError",
    "WrongTypeError",
]


class EncodingError(ValueError):
    """Bytes that do not decode: wrong length or version, identity element, not in the group.

    The message says what was expected and what was found, e.g.
    ``"G2 element must be 96 bytes, got 95"``; it never includes secret bytes.
    """


class DecryptionError(Exception):
    """The one opaque error for every decryption failure.

    Raised for a wrong key, a tampered or truncated ciphertext, wrong associated data or a bad
    capsule alike. It deliberately says nothing about which check failed.
    """

    def __init__(self, message: str = "decryption failed") -> None:
        super().__init__(message)


class VerificationError(ValueError):
    """A proof, signature, binding or pairing check failed."""


class WrongTypeError(ValueError):
    """A re-encryption key or type key of one record type was used on a ciphertext of another."""


class WrongIdentityError(ValueError):
    """A key of one identity was used on a ciphertext (or re-key) addressed to another."""


class UnverifiedInputError(TypeError):
    """An operation was given material from the network that has not been verified yet.

    Call the object's ``verify(...)`` first; it returns the ``Verified…`` type the operation
    accepts.
    """
