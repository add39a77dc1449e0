"""The embedded ledger's ordering identity: who signs its blocks, and what a block signature covers.

Like a Fabric orderer, the embedded ledger signs every block it cuts (genesis, config and
transaction blocks) over ``tag ‖ channel ‖ number ‖ block hash``. The key is made when the ledger
is created and kept next to its database (``orderer-key.pem``, mode 0600); its certificate
(node OU ``orderer``) is issued by a CA of the ordering organisation made for this one purpose,
whose key is thrown away, and both certificates are bound into the genesis block's hash.
Whoever edits the database without this key cannot re-sign what they changed; whoever holds it
can, and only witnesses' signed chain heads (:mod:`ehrshare.ledger.witness`) catch that.

This module must not write anything but the key file, and never logs the key.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ehrshare.identity import LocalCA, Signer

__all__ = [
    "KEY_FILE",
    "ORDERER_MSP",
    "OrderingIdentity",
    "block_message",
    "genesis_data_hash",
    "load_ordering_key",
    "new_ordering_identity",
    "write_ordering_key",
]

ORDERER_MSP = "EmbeddedOrdererMSP"
KEY_FILE = "orderer-key.pem"
_BLOCK_TAG = b"ehrshare/embedded-block-signature/v1\x00"
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def block_message(channel: str, number: int, block_hash: bytes) -> bytes:
    """The bytes the ordering key signs for block ``number``."""
    return _BLOCK_TAG + channel.encode() + b"\x00" + number.to_bytes(8, "big") + block_hash


@functools.lru_cache(maxsize=16)
def _public_key(cert_pem: bytes) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("ordering certificate has no elliptic-curve key")
    return key


@dataclass(frozen=True, slots=True)
class OrderingIdentity:
    """The ordering organisation's CA certificate and the orderer's certificate (both PEM)."""

    ca_pem: bytes
    cert_pem: bytes

    @property
    def fingerprint(self) -> str:
        """Hex sha256 of the orderer certificate: what witnesses pin."""
        return hashlib.sha256(self.cert_pem).hexdigest()

    def problem(self) -> str | None:
        """None when the orderer certificate is an ``orderer`` node issued by the CA."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            ca = x509.load_pem_x509_certificate(self.ca_pem)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return "the ordering certificate was not issued by the ordering organisation's ca"
        ous = {
            str(a.value)
            for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        }
        if "orderer" not in ous:
            return "the ordering certificate is not an orderer's"
        return None

    def verify_block(self, channel: str, number: int, block_hash: bytes, signature: bytes) -> bool:
        """True when ``signature`` is the orderer's low-S signature of that block."""
        try:
            _, s = decode_dss_signature(signature)
        except ValueError:
            return False
        if s > _P256_N // 2:
            return False
        try:
            _public_key(self.cert_pem).verify(
                signature, block_message(channel, number, block_hash), ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    def matches(self, signer: Signer) -> bool:
        """True when ``signer`` holds the private key of the orderer certificate."""
        mine = _public_key(self.cert_pem).public_numbers()
        return bool(signer.public_key.public_numbers() == mine)


def genesis_data_hash(channel: str, ordering: OrderingIdentity) -> bytes:
    """Block 0's data hash: the channel name and the ordering identity, so that replacing the
    ordering certificate changes the genesis block (and with it every block hash after it)."""
    h = hashlib.sha256(b"genesis:" + channel.encode())
    for part in (ordering.ca_pem, ordering.cert_pem):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def new_ordering_identity() -> tuple[OrderingIdentity, Signer]:
    """A fresh ordering CA (its key is dropped here) and an orderer identity it issued."""
    ca = LocalCA.create(ORDERER_MSP, valid_days=36500)
    identity, signer = ca.issue("orderer", node_ou="orderer", valid_days=36500)
    return OrderingIdentity(ca.certificate_pem, identity.credentials), signer


def write_ordering_key(directory: Path, signer: Signer) -> None:
    """Write the ordering key (mode 0600) atomically: a crash leaves the old file or the new."""
    path = directory / KEY_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(signer.to_secret_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_ordering_key(directory: Path, ordering: OrderingIdentity) -> Signer:
    """The ordering key of the ledger in ``directory``; ValueError saying what is wrong."""
    path = directory / KEY_FILE
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"the ledger's ordering key {path} is missing: the ledger can be read and verified "
            "but not written"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the ledger's ordering key {path} is readable by others; chmod 600 it")
    try:
        signer = Signer.from_secret_bytes(data)
    except ValueError:
        raise ValueError(f"the ledger's ordering key {path} is not a P-256 key") from None
    if not ordering.matches(signer):
        raise ValueError(
            f"the ledger's ordering key {path} does not belong to the ordering certificate in "
            "its genesis block"
        )
    return signer
