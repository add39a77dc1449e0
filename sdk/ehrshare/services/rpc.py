"""gRPC over mutually authenticated TLS for the KGC node and the re-encryption proxy.

No protoc step: the services use grpcio's *generic* method handlers with raw ``bytes`` payloads.
The KGC's Extract carries the extraction request / response in their own fixed binary formats
(:mod:`ehrshare.hazmat.extract`); the proxy's calls carry canonical JSON (sorted keys, binary
fields base64) or raw capsule / key bytes. Errors travel as a gRPC status plus the error class
name in the trailing metadata key ``ehrshare-error``, so the clients raise the same exception
classes as the in-process cores.

The caller's identity for authorisation is the verified client certificate
(:meth:`ehrshare.services.tls.ClientTrust.caller`), never a request field.

What this module must not do: put key material into a status message or log line, answer a call
whose client certificate does not map to a consortium identity, or listen on anything but the
address it was given.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any, Final

import grpc

from ehrshare.closing import Closing
from ehrshare.services import kgc as kgc_mod
from ehrshare.services import proxy as proxy_mod
from ehrshare.services.kgc import KgcError, KgcNode, KgcUnavailable
from ehrshare.services.proxy import ProxyError, ProxyUnavailable, ReencryptionProxy
from ehrshare.services.tls import ClientTls, ServerTls, UnauthenticatedCaller

__all__ = [
    "KGC_SERVICE",
    "PROXY_SERVICE",
    "GrpcKgcClient",
    "GrpcProxyClient",
    "serve_kgc",
    "serve_proxy",
]

_log = logging.getLogger(__name__)

KGC_SERVICE: Final = "ehrshare.services.Kgc"
PROXY_SERVICE: Final = "ehrshare.services.Proxy"
_ERROR_KEY: Final = "ehrshare-error"

_STATUS: Final[dict[str, grpc.StatusCode]] = {
    "BadRequest": grpc.StatusCode.INVALID_ARGUMENT,
    "NotAuthorised": grpc.StatusCode.PERMISSION_DENIED,
    "IdentityNotRegistered": grpc.StatusCode.PERMISSION_DENIED,
    "RateLimited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NoShare": grpc.StatusCode.FAILED_PRECONDITION,
    "OutdatedRequest": grpc.StatusCode.FAILED_PRECONDITION,
    "BadSignature": grpc.StatusCode.UNAUTHENTICATED,
    "UnregisteredCertificate": grpc.StatusCode.PERMISSION_DENIED,
    "StaleRequest": grpc.StatusCode.PERMISSION_DENIED,
    "ReplayedRequest": grpc.StatusCode.PERMISSION_DENIED,
    "ApprovalRefused": grpc.StatusCode.PERMISSION_DENIED,
    "ApprovalConsumed": grpc.StatusCode.FAILED_PRECONDITION,
    "NoReKey": grpc.StatusCode.NOT_FOUND,
    "InvalidReKey": grpc.StatusCode.INVALID_ARGUMENT,
}
_KGC_ERRORS: Final[dict[str, type[KgcError]]] = {
    name: getattr(kgc_mod, name)
    for name in (
        "BadRequest",
        "NotAuthorised",
        "IdentityNotRegistered",
        "RateLimited",
        "NoShare",
        "OutdatedRequest",
        "BadSignature",
        "UnregisteredCertificate",
        "StaleRequest",
        "ReplayedRequest",
    )
}
_PROXY_ERRORS: Final[dict[str, type[ProxyError]]] = {
    name: getattr(proxy_mod, name)
    for name in ("NotAuthorised", "ApprovalRefused", "ApprovalConsumed", "NoReKey", "InvalidReKey")
}

Handler = Callable[[bytes, str], bytes]


def _health(body: dict[str, Any]) -> Handler:
    """A ``Health`` call: answers any authenticated caller with ``body`` (canonical JSON) and
    touches nothing else (no ledger, no key), so it says only that the process serves calls."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def health(request: bytes, caller: str) -> bytes:
        del request, caller
        return payload

    return health


def _abort(context: Any, name: str, code: grpc.StatusCode, message: str) -> None:
    context.set_trailing_metadata(((_ERROR_KEY, name),))
    context.abort(code, message)


def _unary(
    handler: Handler, server_tls: ServerTls, errors: tuple[type[Exception], ...]
) -> grpc.RpcMethodHandler:
    def call(request: bytes, context: Any) -> bytes:
        try:
            caller = server_tls.trust.caller(context)
        except UnauthenticatedCaller as exc:
            _abort(context, "NotAuthorised", grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise AssertionError("unreachable") from None
        try:
            return handler(request, caller)
        except errors as exc:
            name = type(exc).__name__
            _abort(context, name, _STATUS.get(name, grpc.StatusCode.INTERNAL), str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            _abort(context, "BadRequest", grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
        except Exception:
            _log.exception("unexpected error in a service call")
            _abort(context, "Internal", grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable")

    return grpc.unary_unary_rpc_method_handler(call)


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Mutual TLS whose client CAs are the trust's current set: gRPC calls ``fetch`` before
    every new connection's handshake, and it hands over a new configuration only when the set
    changed since the last one it handed over (a new CA file, or one removed)."""
    trust = tls.trust
    served = [trust.generation]

    def config() -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(tls.private_key_pem, tls.certificate_pem)], root_certificates=trust.bundle_pem
        )

    def fetch() -> Any:
        try:
            trust.refresh()
            if trust.generation == served[0]:
                return None
            served[0] = trust.generation
            return config()
        except Exception:  # never into gRPC's handshake path; the current set stays
            _log.exception("could not re-read the client CAs")
            return None

    initial = config()
    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)


def _server(listen: str, tls: ServerTls, max_workers: int) -> tuple[grpc.Server, int]:
    from concurrent.futures import ThreadPoolExecutor

    host = listen.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        _log.warning("listening on %s, which is not a loopback address", listen)
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers))
    port = server.add_secure_port(listen, _credentials(tls))
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    return server, port


def serve_kgc(
    node: KgcNode, *, listen: str, tls: ServerTls, max_workers: int = 8
) -> tuple[grpc.Server, int]:
    """Start a KGC node's gRPC server; returns the server and the bound port (``:0`` picks)."""

    def extract(request: bytes, caller: str) -> bytes:
        return node.extract(request, requester=caller)

    server, port = _server(listen, tls, max_workers)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                KGC_SERVICE,
                {
                    "Extract": _unary(extract, tls, (KgcError,)),
                    "Health": _unary(
                        _health({"service": "kgc", "index": node.index}), tls, (KgcError,)
                    ),
                },
            ),
        )
    )
    server.start()
    _log.info("kgc node %d serving on port %d", node.index, port)
    return server, port


def serve_proxy(
    proxy: ReencryptionProxy, *, listen: str, tls: ServerTls, max_workers: int = 8
) -> tuple[grpc.Server, int]:
    """Start a proxy's gRPC server; returns the server and the bound port."""

    def public_key(request: bytes, caller: str) -> bytes:
        return proxy.public_key()

    def store_rekey(request: bytes, caller: str) -> bytes:
        body = json.loads(request)
        proxy.store_rekey(
            str(body["grant_id"]),
            base64.b64decode(body["sealed_rekey"], validate=True),
            caller=caller,
        )
        return b""

    def reencrypt(request: bytes, caller: str) -> bytes:
        body = json.loads(request)
        if body.get("requester", caller) != caller:
            raise proxy_mod.NotAuthorised(
                f"identity {caller} may not ask for {body['requester']}'s capsule"
            )
        capsule = body.get("capsule")
        return proxy.reencrypt(
            record_id=str(body["record_id"]),
            requester=caller,
            approval_id=str(body["approval_id"]),
            grant_id=None if body.get("grant_id") is None else str(body["grant_id"]),
            capsule=None if capsule is None else base64.b64decode(capsule, validate=True),
        )

    def revoke(request: bytes, caller: str) -> bytes:
        proxy.revoke(str(json.loads(request)["grant_id"]), caller=caller)
        return b""

    def rekey_status(request: bytes, caller: str) -> bytes:
        return proxy.rekey_status(str(json.loads(request)["grant_id"]), caller=caller).encode()

    server, port = _server(listen, tls, max_workers)
    handlers = {
        "PublicKey": _unary(public_key, tls, (ProxyError,)),
        "StoreRekey": _unary(store_rekey, tls, (ProxyError,)),
        "Reencrypt": _unary(reencrypt, tls, (ProxyError,)),
        "Revoke": _unary(revoke, tls, (ProxyError,)),
        "RekeyStatus": _unary(rekey_status, tls, (ProxyError,)),
        "Health": _unary(_health({"service": "proxy", "name": proxy.name}), tls, (ProxyError,)),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(PROXY_SERVICE, handlers),)
    )
    server.start()
    _log.info("proxy %s serving on port %d", proxy.name, port)
    return server, port


# ---------------------------------------------------------------------------------------------
# clients


def _channel(target: str, tls: ClientTls, server_name: str | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates_pem,
        private_key=tls.private_key_pem,
        certificate_chain=tls.certificate_pem,
    )
    options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(target, credentials, options=options)


def _error_name(err: grpc.RpcError) -> str | None:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == _ERROR_KEY:
            return str(value)
    return None


class _Client(Closing):
    def __init__(self, target: str, tls: ClientTls, server_name: str | None) -> None:
        self.target = target
        self._channel = _channel(target, tls, server_name)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


class GrpcKgcClient(_Client):
    """A :class:`~ehrshare.services.kgc.KgcClient` for a KGC node served over gRPC/TLS."""

    def __init__(
        self, target: str, *, index: int, tls: ClientTls, server_name: str | None = None
    ) -> None:
        super().__init__(target, tls, server_name)
        self.index = index
        self._extract = self._channel.unary_unary(f"/{KGC_SERVICE}/Extract")
        self._health = self._channel.unary_unary(f"/{KGC_SERVICE}/Health")

    def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """Ask the node whether it serves calls (``{"service": "kgc", "index": …}``); raises
        :class:`KgcUnavailable` if it does not answer within ``timeout`` seconds."""
        try:
            return dict(json.loads(self._health(b"", timeout=timeout)))
        except grpc.RpcError as err:
            details = err.details() if hasattr(err, "details") else str(err)
            raise KgcUnavailable(
                f"KGC node {self.index} at {self.target} does not answer: {err.code().name}"
                f" ({details})"
            ) from None

    def extract(self, request_bytes: bytes, *, timeout: float = 10.0) -> bytes:
        """Send an extraction request; raises the node's KgcError or :class:`KgcUnavailable`."""
        try:
            return bytes(self._extract(request_bytes, timeout=timeout))
        except grpc.RpcError as err:
            name = _error_name(err)
            details = err.details() if hasattr(err, "details") else str(err)
            if name in _KGC_ERRORS:
                raise _KGC_ERRORS[name](str(details)) from None
            raise KgcUnavailable(
                f"KGC node {self.index} at {self.target} is unavailable: {err.code().name}"
            ) from None


class GrpcProxyClient(_Client):
    """A :class:`~ehrshare.services.proxy.ProxyClient` for a proxy served over gRPC/TLS."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls,
        server_name: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(target, tls, server_name)
        self.timeout = timeout

    def _call(self, method: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        stub = self._channel.unary_unary(f"/{PROXY_SERVICE}/{method}")
        try:
            return bytes(stub(payload, timeout=self.timeout if timeout is None else timeout))
        except grpc.RpcError as err:
            name = _error_name(err)
            details = err.details() if hasattr(err, "details") else str(err)
            if name in _PROXY_ERRORS:
                raise _PROXY_ERRORS[name](str(details)) from None
            if name is not None:
                raise ProxyError(str(details)) from None
            raise ProxyUnavailable(
                f"proxy at {self.target} is unavailable: {err.code().name}"
            ) from None

    @staticmethod
    def _json(body: dict[str, Any]) -> bytes:
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """Ask the proxy whether it serves calls (``{"service": "proxy", "name": …}``); raises
        :class:`ProxyUnavailable` if it does not answer within ``timeout`` seconds."""
        return dict(json.loads(self._call("Health", b"", timeout=timeout)))

    def public_key(self) -> bytes:
        """The proxy's X25519 public key."""
        return self._call("PublicKey", b"")

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        """Deliver a sealed re-key (the client certificate must be the grant's grantor)."""
        self._call(
            "StoreRekey",
            self._json(
                {"grant_id": grant_id, "sealed_rekey": base64.b64encode(sealed_rekey).decode()}
            ),
        )

    def reencrypt(
        self,
        *,
        record_id: str,
        requester: str,
        approval_id: str,
        grant_id: str | None = None,
        capsule: bytes | None = None,
    ) -> bytes:
        """The re-encrypted capsule; ``requester`` must match the client certificate."""
        body: dict[str, Any] = {
            "record_id": record_id,
            "requester": requester,
            "approval_id": approval_id,
        }
        if grant_id is not None:
            body["grant_id"] = grant_id
        if capsule is not None:
            body["capsule"] = base64.b64encode(capsule).decode()
        return self._call("Reencrypt", self._json(body))

    def revoke(self, grant_id: str) -> None:
        """Ask the proxy to delete a grant's re-key (owner or grantor)."""
        self._call("Revoke", self._json({"grant_id": grant_id}))

    def rekey_status(self, grant_id: str) -> str:
        """``held``, ``pending`` or ``missing`` (a party to the grant asks)."""
        return self._call("RekeyStatus", self._json({"grant_id": grant_id})).decode()
