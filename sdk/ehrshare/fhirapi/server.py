"""The FHIR API's HTTP server: the standard library's threading HTTP server in front of a
:class:`~ehrshare.fhirapi.gateway.Gateway`.

Why the standard library and not an ASGI stack: every request ends in synchronous, CPU-bound
SDK calls (pairings, a ledger transaction), so an event loop would only hand them to a thread
pool, and the overhead ``ehrshare bench fhir`` measures is the HTTP round trip itself, which
an ASGI server has too (docs/fhir-api.md); ``http.server`` adds no dependency to the SDK, and
the part it lacks (routing, validation) is ours anyway. One thread per connection; the gateway
serialises only one member's requests. Its limits: HTTP/1.1 without keep-alive
tuning, no HTTP/2. With ``tls`` it serves HTTPS, and with ``client_cas`` it requires a client
certificate of those CAs (mutual TLS, see :mod:`ehrshare.fhirapi.mtls`); the handshake runs in
the connection's own thread, so a slow client holds up nobody else.

This module must not decide anything about FHIR: it reads requests, bounds their size, and
writes what the gateway answers.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ehrshare.errors import UsageError
from ehrshare.fhirapi.auth import Credentials
from ehrshare.fhirapi.gateway import BASE, Answer, Gateway
from ehrshare.fhirapi.outcome import operation_outcome

__all__ = ["DEFAULT_MAX_BODY", "HANDSHAKE_TIMEOUT", "FhirServer", "parse_listen"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_BODY: Final = 1 << 20  # 1 MiB: above the SDK's default record limit
_FHIR_JSON: Final = "application/fhir+json; charset=utf-8"
HANDSHAKE_TIMEOUT: Final = 10.0  # seconds a client has to finish the TLS handshake


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0: any free port) as a pair; :class:`UsageError` if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    # Buffered: the status line, headers and body leave in one send when the request is done
    # (http.server flushes after each request), so the client wakes once per answer, not twice
    # — each wake-up costs a scheduling delay on a busy machine.
    wbufsize = -1

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _send(self, answer: Answer) -> None:
        body = json.dumps(answer.body, separators=(",", ":")).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", _FHIR_JSON)
        self.send_header("Content-Length", str(len(body)))
        for k, v in answer.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _fail(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(Answer(status, operation_outcome(status, message)))

    def _dispatch(self) -> None:
        length_header = self.headers.get("Content-Length", "0") or "0"
        if self.headers.get("Transfer-Encoding"):
            self._fail(411, "send the body with Content-Length (chunked bodies are refused)")
            return
        if not length_header.isdigit():
            self._fail(400, "Content-Length is not a number")
            return
        length = int(length_header)
        if length > self.server.max_body:
            # Not read: the connection is closed instead, so a huge body costs us nothing.
            self._fail(
                413, f"the body is {length} bytes; this server takes at most {self.server.max_body}"
            )
            return
        body = self.rfile.read(length) if length else b""
        if self.command in ("POST", "PUT"):
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype not in ("application/fhir+json", "application/json"):
                self._fail(415, "send FHIR JSON (Content-Type: application/fhir+json)")
                return
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        base_url = f"{self.server.public_base}{BASE}"
        peer = None
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert(binary_form=True)
        credentials = Credentials(self.headers.get("Authorization", ""), peer)
        answer = self.server.gateway.handle(
            self.command,
            url.path,
            query,
            credentials,
            body,
            base_url,
            if_match=self.headers.get("If-Match"),
            if_none_exist=self.headers.get("If-None-Exist"),
        )
        self._send(answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], gateway: Gateway, max_body: int) -> None:
        self.gateway = gateway
        self.max_body = max_body
        self.public_base = ""
        self.tls: ssl.SSLContext | None = None
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread: the TLS handshake happens here, not in accept().
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)  # detaches ``request``
        except (ssl.SSLError, OSError) as exc:
            _log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            wrapped.settimeout(None)
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class FhirServer:
    """A running FHIR server: :attr:`url` is its base (``http://127.0.0.1:PORT/fhir``).

    Use :meth:`start` for a background thread (tests) or :meth:`serve_forever` in the
    foreground (the CLI); :meth:`stop` stops it and closes the gateway's sessions.
    """

    def __init__(
        self,
        gateway: Gateway,
        listen: tuple[str, int],
        *,
        max_body: int = DEFAULT_MAX_BODY,
        tls: tuple[Path, Path] | None = None,
        client_cas: bytes | None = None,
    ) -> None:
        if client_cas is not None and tls is None:
            raise UsageError("mutual TLS needs the server's own certificate and key (--tls-cert)")
        self._server = _Server(listen, gateway, max_body)
        scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            if client_cas is not None:
                ctx.load_verify_locations(cadata=client_cas.decode("ascii"))
                ctx.verify_mode = ssl.CERT_REQUIRED
            self._server.tls = ctx
            scheme = "https"
        host, port = self._server.server_address[:2]
        host_text = host if isinstance(host, str) else host.decode()
        shown = f"[{host_text}]" if ":" in host_text else host_text
        self._server.public_base = f"{scheme}://{shown}:{port}"
        self._gateway = gateway
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The FHIR base URL clients use."""
        return f"{self._server.public_base}{BASE}"

    def start(self) -> FhirServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fhir-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread or a signal)."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving, close the socket and the gateway's sessions."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._gateway.close()
