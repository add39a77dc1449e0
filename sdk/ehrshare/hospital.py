"""A hospital as its own operator: its directory of keys, and the join request it hands out.

:func:`init_hospital` creates, in a new directory that only the hospital's operator holds, the
hospital's certificate authority, its admin, KGC node and re-encryption proxy identities (with
their ledger wallets and node keys) and the state directories its services run from, and writes
``join-request.json``: the public part only (MSP id, CA certificate, the admin's and the
services' certificates, endpoints), versioned and closed by a SHA-256 over its canonical JSON.
:class:`JoinRequest` reads such a file back and checks it: the hash, the CA (a self-signed root
of that MSP) and that every certificate in it was issued by that CA.
``ehrshare consortium add-hospital`` (:mod:`ehrshare.joining`) takes the request to the
consortium.

This module must not write a private key anywhere but mode-0600 files under the hospital's
directory, and must never put one into the join request.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ehrshare.errors import ConfigurationError, IntegrityFailure, InvalidInput, UsageError
from ehrshare.faults import fault_point
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.identity import Identity, LocalCA
from ehrshare.jsontext import loads_untrusted
from ehrshare.services.vault import atomic_write, write_key_file
from ehrshare.wallet import Wallet

__all__ = [
    "JOIN_REQUEST_FILE",
    "JOIN_REQUEST_VERSION",
    "ForeignCertificate",
    "HospitalDir",
    "InvalidJoinRequest",
    "JoinRequest",
    "JoinRequestTampered",
    "init_hospital",
    "issued_by",
]

JOIN_REQUEST_VERSION: Final = 1
JOIN_REQUEST_FILE: Final = "join-request.json"
HOSPITAL_FILE: Final = "hospital.json"
MEMBER_ROLES: Final = ("patient", "clinician", "auditor", "admin")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,60}")
_ENDPOINT_KEYS: Final = ("peer", "kgc", "proxy", "ipfs")
_MAX_REQUEST_BYTES: Final = 256 * 1024


class InvalidJoinRequest(InvalidInput):
    """A join request that is not one: not JSON, another version, a field missing or of the
    wrong type, a certificate that does not parse."""


class JoinRequestTampered(IntegrityFailure):
    """A join request whose content does not match its SHA-256: changed after it was written."""


class ForeignCertificate(IntegrityFailure):
    """A certificate in a join request that its own CA did not issue (or a CA that is not the
    hospital's self-signed root)."""


def _msp(name: str) -> str:
    return name if name.endswith("MSP") else f"{name}MSP"


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(b"ehrshare/join-request/v1\x00" + canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JoinRequest:
    """The public material a new hospital hands to the consortium (no private key)."""

    name: str
    msp_id: str
    ca_certificate: str
    admin_certificate: str
    kgc_certificate: str
    proxy_certificate: str
    endpoints: dict[str, str] = field(default_factory=dict)
    version: int = JOIN_REQUEST_VERSION

    def body(self) -> dict[str, Any]:
        """Everything the hash covers."""
        return {
            "version": self.version,
            "name": self.name,
            "msp_id": self.msp_id,
            "ca_certificate": self.ca_certificate,
            "admin_certificate": self.admin_certificate,
            "kgc_certificate": self.kgc_certificate,
            "proxy_certificate": self.proxy_certificate,
            "endpoints": dict(sorted(self.endpoints.items())),
        }

    @property
    def sha256(self) -> str:
        """The request's hash (domain-separated, over its canonical JSON)."""
        return _digest(self.body())

    def to_json(self) -> str:
        """The file's text: the body and its hash."""
        return json.dumps({**self.body(), "sha256": self.sha256}, indent=2, sort_keys=True) + "\n"

    @property
    def ca_pem(self) -> bytes:
        """The hospital's root CA certificate (PEM), what the channel will trust for its MSP."""
        return self.ca_certificate.encode("ascii")

    def identity(self, which: str) -> Identity:
        """The ``admin``, ``kgc`` or ``proxy`` identity the request names."""
        pem = {
            "admin": self.admin_certificate,
            "kgc": self.kgc_certificate,
            "proxy": self.proxy_certificate,
        }[which]
        return Identity(self.msp_id, pem.encode("ascii"))

    @classmethod
    def from_text(cls, text: str | bytes) -> JoinRequest:
        """Parse and check a join request: version, fields, hash, CA and issued certificates."""
        if len(text) > _MAX_REQUEST_BYTES:
            raise InvalidJoinRequest(f"a join request is at most {_MAX_REQUEST_BYTES} bytes")
        try:
            data = loads_untrusted(text)
        except ValueError as exc:
            raise InvalidJoinRequest(f"the join request is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidJoinRequest("the join request is not a JSON object")
        if data.get("version") != JOIN_REQUEST_VERSION:
            raise InvalidJoinRequest(
                f"join request version {data.get('version')!r} is not {JOIN_REQUEST_VERSION}"
            )
        strings = (
            "name",
            "msp_id",
            "ca_certificate",
            "admin_certificate",
            "kgc_certificate",
            "proxy_certificate",
            "sha256",
        )
        for key in strings:
            if not isinstance(data.get(key), str):
                raise InvalidJoinRequest(f"the join request has no string field {key!r}")
        endpoints = data.get("endpoints", {})
        if not isinstance(endpoints, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in endpoints.items()
        ):
            raise InvalidJoinRequest("the join request's endpoints are not a string map")
        extra = set(data) - {*strings, "version", "endpoints"}
        if extra:
            raise InvalidJoinRequest(f"the join request has unknown fields {sorted(extra)}")
        request = cls(
            name=data["name"],
            msp_id=data["msp_id"],
            ca_certificate=data["ca_certificate"],
            admin_certificate=data["admin_certificate"],
            kgc_certificate=data["kgc_certificate"],
            proxy_certificate=data["proxy_certificate"],
            endpoints=dict(endpoints),
        )
        if request.sha256 != data["sha256"]:
            raise JoinRequestTampered(
                f"the join request of {request.msp_id} does not match its sha256 "
                f"(file says {data['sha256'][:16]}…, content hashes to {request.sha256[:16]}…): "
                "it was changed after 'ehrshare hospital init' wrote it"
            )
        request.check_certificates()
        return request

    @classmethod
    def load(cls, path: Path) -> JoinRequest:
        """Read and check a join request file."""
        try:
            return cls.from_text(path.read_bytes())
        except FileNotFoundError:
            raise InvalidJoinRequest(f"join request {path} does not exist") from None

    def check_certificates(self) -> None:
        """The CA is a self-signed root of this MSP; the admin, KGC and proxy certificates are
        issued by it to this MSP."""
        if not _NAME_RE.fullmatch(self.name) or self.msp_id != _msp(self.name):
            raise InvalidJoinRequest(
                f"hospital name {self.name!r} and MSP id {self.msp_id!r} do not match"
            )
        try:
            ca = x509.load_pem_x509_certificate(self.ca_pem)
        except (ValueError, x509.InvalidVersion) as exc:
            raise InvalidJoinRequest(f"the CA certificate does not parse: {exc}") from None
        _require_canonical(ca, self.ca_certificate, "CA")
        if not issued_by(ca, ca) or not _is_ca(ca) or _org(ca) != self.msp_id:
            raise ForeignCertificate(
                f"the CA certificate of the join request is not a self-signed root of {self.msp_id}"
            )
        for which in ("admin", "kgc", "proxy"):
            try:
                cert = self.identity(which).certificate
            except (ValueError, x509.InvalidVersion) as exc:
                raise InvalidJoinRequest(f"the {which} certificate does not parse: {exc}") from None
            _require_canonical(cert, self.identity(which).credentials.decode("ascii"), which)
            if not issued_by(cert, ca) or _org(cert) != self.msp_id:
                raise ForeignCertificate(
                    f"the {which} certificate of the join request was not issued by the CA of "
                    f"{self.msp_id} it carries"
                )


def _require_canonical(cert: x509.Certificate, text: str, which: str) -> None:
    """A certificate field is exactly one PEM block, as written by ``hospital init``: the PEM
    reader skips text around the block, and the request must not carry bytes nobody checks."""
    if cert.public_bytes(serialization.Encoding.PEM).decode("ascii") != text:
        raise InvalidJoinRequest(
            f"the {which} certificate of the join request is not exactly one PEM certificate "
            "(text around or inside the block that 'ehrshare hospital init' did not write)"
        )


def _org(cert: x509.Certificate) -> str:
    try:  # the certificate's fields parse lazily: a damaged one fails here
        values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    except ValueError:
        return ""
    return str(values[0].value) if values else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` and names it as issuer; False for anything
    else, a certificate whose fields do not parse included."""
    try:
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or cert.issuer != issuer.subject:
            return False
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            return False
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


@dataclass(frozen=True)
class HospitalDir:
    """The layout of a hospital's own directory (what :func:`init_hospital` made)."""

    root: Path
    name: str

    @property
    def msp_id(self) -> str:
        """The hospital's MSP id."""
        return _msp(self.name)

    @property
    def ca_dir(self) -> Path:
        """The CA (``ca-key.pem`` stays here)."""
        return self.root / "ca" / self.msp_id

    @property
    def request_file(self) -> Path:
        """The join request this directory exports."""
        return self.root / JOIN_REQUEST_FILE

    def wallet(self, name: str) -> Path:
        """A wallet directory under this hospital (services: ``kgc``, ``proxy``, ``admin``)."""
        return self.root / "wallets" / name

    def key_file(self, service: str) -> Path:
        """The node key of ``kgc`` or ``proxy``."""
        return self.root / "keys" / f"{service}.key"

    def state(self, service: str) -> Path:
        """The state directory of ``kgc`` or ``proxy``."""
        return self.root / service

    @property
    def proxy_name(self) -> str:
        """The proxy's name in a profile (as ``consortium init`` names it)."""
        return f"proxy-{self.name.lower()}"

    @classmethod
    def open(cls, root: Path) -> HospitalDir:
        """A directory :func:`init_hospital` made; refused otherwise."""
        root = root.resolve()
        try:
            data = json.loads((root / HOSPITAL_FILE).read_text(encoding="utf-8"))
            name = data["name"]
        except (OSError, ValueError, KeyError, TypeError):
            raise HospitalDirError(
                f"{root} is not a hospital directory ({HOSPITAL_FILE} missing or unreadable); "
                "make one with 'ehrshare hospital init'"
            ) from None
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise HospitalDirError(f"{root / HOSPITAL_FILE} names no valid hospital")
        return cls(root, name)

    def request(self) -> JoinRequest:
        """The join request this directory wrote (read back and checked)."""
        return JoinRequest.load(self.request_file)

    def issue_member(self, name: str, role: str) -> Wallet:
        """Issue a member of this hospital (its own CA) into ``wallets/<name>`` here."""
        if not _NAME_RE.fullmatch(name):
            raise UsageError(f"member name {name!r} is invalid")
        if role not in MEMBER_ROLES:
            raise UsageError(f"role {role!r} is not one of {', '.join(MEMBER_ROLES)}")
        wallet = Wallet(self.wallet(name))
        if wallet.exists:
            raise HospitalDirError(f"wallet {wallet.directory} already exists")
        ca = LocalCA.load(self.ca_dir)
        node_ou = "admin" if role == "admin" else "client"  # Fabric counts admin OUs only
        identity, signer = ca.issue(name, role=role, node_ou=node_ou)
        wallet.create(identity, signer, ca.issue_tls_client(name))
        return wallet


class HospitalDirError(ConfigurationError):
    """A hospital directory that is missing, not empty where a new one was asked for, or not
    one :func:`init_hospital` made."""


def init_hospital(
    directory: Path, name: str, endpoints: dict[str, str] | None = None
) -> HospitalDir:
    """Create a hospital's directory and its join request; refuses a non-empty directory.

    Made whole or not at all: the files are built in a sibling staging directory that is
    renamed into place at the end, so a crash leaves no directory rather than half of one.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"hospital name {name!r} is invalid: use letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (at most 61, so that its MSP id <name>MSP fits 64)"
        )
    given = dict(endpoints or {})
    unknown = sorted(set(given) - set(_ENDPOINT_KEYS))
    if unknown:
        raise UsageError(f"endpoints {unknown} are not among {', '.join(_ENDPOINT_KEYS)}")
    root = directory.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise HospitalDirError(f"{root} exists and is not an empty directory")
    staging = root.parent / f".{root.name}.init"
    if staging.exists():
        import shutil

        shutil.rmtree(staging)  # a crashed earlier init: nothing in it was ever handed out
    staging.mkdir(parents=True, mode=0o700)
    hospital = HospitalDir(staging, name)
    ca = LocalCA.create(hospital.msp_id)
    ca.save(hospital.ca_dir)
    (staging / "keys").mkdir(mode=0o700)
    write_key_file(hospital.key_file("kgc"), KGCNodeKey.generate().to_secret_bytes())
    write_key_file(hospital.key_file("proxy"), X25519KeyPair.generate().to_secret_bytes())
    certificates: dict[str, str] = {}
    for wallet_name, role, node_ou in (
        ("admin", "admin", "admin"),
        ("kgc", "kgc", "client"),
        ("proxy", "proxy", "client"),
    ):
        # The enrolment id of a hospital's services is fixed: the chaincode and the profile
        # name a proxy <MSP>/proxy, as 'consortium init' issues it.
        enrol = {"kgc": "kgc", "proxy": "proxy", "admin": "admin"}[wallet_name]
        identity, signer = ca.issue(enrol, role=role, node_ou=node_ou)
        Wallet(hospital.wallet(wallet_name), use_env=role == "admin").create(
            identity, signer, ca.issue_tls_client(enrol)
        )
        certificates[wallet_name] = identity.credentials.decode("ascii")
    for service in ("kgc", "proxy"):
        hospital.state(service).mkdir(mode=0o700)
    request = JoinRequest(
        name=name,
        msp_id=hospital.msp_id,
        ca_certificate=ca.certificate_pem.decode("ascii"),
        admin_certificate=certificates["admin"],
        kgc_certificate=certificates["kgc"],
        proxy_certificate=certificates["proxy"],
        endpoints=given,
    )
    atomic_write(staging / JOIN_REQUEST_FILE, request.to_json().encode(), mode=0o644)
    atomic_write(
        staging / HOSPITAL_FILE,
        (json.dumps({"name": name, "msp_id": hospital.msp_id}, indent=2) + "\n").encode(),
        mode=0o644,
    )
    fault_point("hospital_init.before_rename")
    if root.exists():
        root.rmdir()  # empty (checked above)
    staging.rename(root)
    return HospitalDir(root, name)
