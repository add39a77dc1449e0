"""IPFS storage through a Kubo daemon's HTTP RPC (``/api/v0``), on httpx.

Why httpx and not a dedicated IPFS library: ``ipfshttpclient`` 0.7 (the last release) refuses
any daemon newer than Kubo 0.7 in ``connect()`` and is unmaintained; the RPC is a handful of
``POST`` calls with query arguments, multipart uploads and streamed bodies, which httpx (already a
dependency) does directly, with per-call timeouts and streaming both ways. aioipfs would force
asyncio on every caller.

Two layers, like a connection and the thing built on it:

- :class:`KuboClient` speaks the RPC: ``add`` (streamed multipart, CIDv1, raw leaves, sha2-256,
  256 KiB chunks, balanced DAG of at most 174 links, pinned), ``cat`` / ``cat_iter``, ``pin``,
  ``unpin``, ``has``. Failures become :class:`StorageUnavailable` (cannot reach the daemon; the
  message names the URL and what to do), :class:`ContentNotFound` and :class:`StorageError`.
- :class:`KuboStore` is the :class:`~ehrshare.storage.base.BlobStore` on top: every read is
  checked against its CID, because Kubo does not re-hash local blocks on read (``HashOnRead`` is
  off by default) and reports an error in the middle of a streamed body only in an HTTP trailer,
  which httpx does not expose — a truncated body would otherwise pass as content.

This module must not start or stop daemons (that is :mod:`ehrshare.network.kubo`) and never logs
content.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from ehrshare.closing import Closing

from .cid import CID, DAG_PB
from .errors import ContentNotFound, IntegrityError, StorageError, StorageUnavailable
from .unixfs import CHUNK_SIZE, MAX_LINKS, BlobSource, FileDagBuilder, iter_source

__all__ = ["DEFAULT_API_URL", "KuboClient", "KuboStore", "api_url_from_multiaddr"]

DEFAULT_API_URL = "http://127.0.0.1:5001"
"""Kubo's default RPC address."""

_log = logging.getLogger(__name__)

# Phrases Kubo uses when a block, path or pin does not exist (RPC error "Message" text).
_NOT_FOUND_MARKERS = ("not found", "could not find", "not pinned", "no link named")


def api_url_from_multiaddr(multiaddr: str) -> str:
    """Turn Kubo's ``$IPFS_PATH/api`` content (``/ip4/127.0.0.1/tcp/5001``) into an HTTP URL."""
    parts = multiaddr.strip().split("/")
    if len(parts) < 5 or parts[0] or parts[1] not in ("ip4", "ip6", "dns4", "dns6", "dns"):
        raise ValueError(f"not a TCP multiaddr: {multiaddr!r}")
    if parts[3] != "tcp" or not parts[4].isdigit():
        raise ValueError(f"not a TCP multiaddr: {multiaddr!r}")
    host = f"[{parts[2]}]" if parts[1] == "ip6" else parts[2]
    return f"http://{host}:{int(parts[4])}"


def _normalise_url(api_url: str) -> str:
    if api_url.startswith("/"):
        api_url = api_url_from_multiaddr(api_url)
    split = urlsplit(api_url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise ValueError(f"Kubo API URL must be http(s)://host:port, got {api_url!r}")
    return api_url.rstrip("/").removesuffix("/api/v0")


def _cid_arg(cid: str) -> str:
    # Validate before it goes into a URL: CIDs come from the ledger, i.e. from other parties.
    return str(CID.parse(cid))


class KuboClient(Closing):
    """A client of one Kubo daemon's RPC API.

    Use it when you need IPFS operations themselves; use :class:`KuboStore` to store and read
    ehrshare blobs. ``timeout`` (seconds) is the default for every call — the longest wait for
    any single network step, not the whole transfer — and each method takes its own
    ``timeout=``. With ``offline=True`` reads never search the IPFS network, so missing content
    fails at once instead of after the timeout. Close it (or use ``with``) to free connections.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        offline: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = _normalise_url(api_url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.offline = offline
        self._http = httpx.Client(
            base_url=self.api_url + "/api/v0",
            timeout=self._timeout(None),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"KuboClient({self.api_url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _timeout(self, timeout: float | None) -> httpx.Timeout:
        total = self.timeout if timeout is None else timeout
        if total <= 0:
            raise ValueError(f"timeout must be positive, got {total}")
        return httpx.Timeout(total, connect=min(total, self.connect_timeout))

    def _unavailable(self, command: str, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"IPFS (Kubo) RPC at {self.api_url} is not reachable for {command} "
            f"({type(exc).__name__}: {exc}). Start the daemon (`ipfs daemon`; "
            f"`python -m ehrshare.network.kubo install` builds it) or point the client at the "
            f"right API address (the daemon writes it to $IPFS_PATH/api)."
        )

    def _fail(self, command: str, response: httpx.Response, cid: str | None) -> StorageError:
        try:
            body = response.read()
        except httpx.HTTPError:
            body = b""
        message = body.decode("utf-8", "replace").strip()
        try:
            parsed = json.loads(message)
            if isinstance(parsed, dict) and isinstance(parsed.get("Message"), str):
                message = parsed["Message"]
        except ValueError:
            pass
        message = message[:300]
        if response.status_code in (404, 405):
            return StorageError(
                f"{self.api_url} answered {response.status_code} to {command}: "
                f"is this the Kubo RPC address (not the gateway)? {message}"
            )
        if cid is not None and any(m in message.lower() for m in _NOT_FOUND_MARKERS):
            return ContentNotFound(cid, f"Kubo at {self.api_url}: {message}")
        return StorageError(
            f"Kubo {command} failed at {self.api_url} (HTTP {response.status_code}): {message}"
        )

    def _send(
        self,
        command: str,
        params: dict[str, str],
        *,
        timeout: float | None,
        cid: str | None = None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``command``; return the open (streaming) response or raise a storage error."""
        request = self._http.build_request(
            "POST",
            "/" + command,
            params=params,
            content=content,
            headers=headers,
            timeout=self._timeout(timeout),
        )
        try:
            response = self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unavailable(command, exc) from exc
        except httpx.TimeoutException as exc:
            raise StorageError(
                f"Kubo {command} at {self.api_url} timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise self._unavailable(command, exc) from exc
        if response.status_code != 200:
            try:
                raise self._fail(command, response, cid)
            finally:
                response.close()
        return response

    def _call_json(
        self,
        command: str,
        params: dict[str, str],
        *,
        timeout: float | None,
        cid: str | None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        response = self._send(
            command, params, timeout=timeout, cid=cid, content=content, headers=headers
        )
        try:
            body = response.read()
        except httpx.TimeoutException as exc:
            raise StorageError(f"Kubo {command} at {self.api_url} timed out") from exc
        except httpx.TransportError as exc:
            raise self._unavailable(command, exc) from exc
        finally:
            response.close()
        objects: list[dict[str, Any]] = []
        for line in body.splitlines():
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise StorageError(f"Kubo {command} returned invalid JSON: {exc}") from exc
                if isinstance(obj, dict):
                    if obj.get("Type") == "error":  # an error reported inside a 200 body
                        raise StorageError(
                            f"Kubo {command} failed at {self.api_url}: {obj.get('Message')}"
                        )
                    objects.append(obj)
        return objects

    def _read_params(self, cid: str) -> dict[str, str]:
        params = {"arg": cid}
        if self.offline:
            params["offline"] = "true"
        return params

    def id(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The daemon's identity (``/api/v0/id``); a cheap liveness check."""
        objects = self._call_json("id", {}, timeout=timeout, cid=None)
        if not objects:
            raise StorageError(f"Kubo id at {self.api_url} returned nothing")
        return objects[-1]

    def version(self, *, timeout: float | None = None) -> str:
        """The daemon's Kubo version, e.g. ``0.39.0``."""
        objects = self._call_json("version", {}, timeout=timeout, cid=None)
        if not objects or not isinstance(objects[-1].get("Version"), str):
            raise StorageError(f"Kubo version at {self.api_url} returned no version")
        return str(objects[-1]["Version"])

    def add(
        self,
        data: BlobSource,
        *,
        pin: bool = True,
        chunk_size: int = CHUNK_SIZE,
        max_links: int = MAX_LINKS,
        timeout: float | None = None,
    ) -> str:
        """Add ``data`` as one UnixFS file and return its CIDv1.

        The upload streams (chunked multipart): bytes are never copied whole. The CID is also
        computed locally as the bytes go out and must equal Kubo's answer, otherwise
        :class:`IntegrityError` — so a daemon with other import settings, or a damaged upload,
        cannot slip a different pointer onto the ledger. ``chunk_size``/``max_links`` exist for
        tests of deep DAGs; keep the defaults for ehrshare content.
        """
        builder = FileDagBuilder(chunk_size=chunk_size, max_links=max_links)
        boundary = secrets.token_hex(16)

        def body() -> Iterator[bytes]:
            yield (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="blob"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            for piece in iter_source(data):
                builder.write(piece)
                yield bytes(piece)
            yield f"\r\n--{boundary}--\r\n".encode()

        params = {
            "cid-version": "1",
            "raw-leaves": "true",
            "hash": "sha2-256",
            "chunker": f"size-{chunk_size}",
            "max-file-links": str(max_links),
            "trickle": "false",
            "inline": "false",
            "pin": "true" if pin else "false",
            "progress": "false",
            "fast-provide-root": "false",
        }
        objects = self._call_json(
            "add",
            params,
            timeout=timeout,
            cid=None,
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        hashes = [o["Hash"] for o in objects if isinstance(o.get("Hash"), str)]
        if not hashes:
            raise StorageError(f"Kubo add at {self.api_url} returned no CID")
        returned = CID.parse(hashes[-1])
        expected = builder.finish()
        if returned != expected:
            raise IntegrityError(
                str(returned), f"Kubo stored the upload, but the bytes sent hash to {expected}"
            )
        _log.debug("added %s (%d bytes) to %s", returned, builder.size, self.api_url)
        return str(returned)

    def cat_iter(self, cid: str, *, timeout: float | None = None) -> Iterator[bytes]:
        """Stream the content of ``cid`` as Kubo sends it (not verified; see :class:`KuboStore`).

        A missing CID raises :class:`ContentNotFound` here, before iteration starts.
        """
        arg = _cid_arg(cid)
        response = self._send("cat", self._read_params(arg), timeout=timeout, cid=arg)
        return self._stream(response, "cat")

    def _stream(self, response: httpx.Response, command: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes()
        except httpx.TimeoutException as exc:
            raise StorageError(f"Kubo {command} at {self.api_url} timed out mid-stream") from exc
        except httpx.TransportError as exc:
            raise self._unavailable(command, exc) from exc
        finally:
            response.close()

    def cat(self, cid: str, *, timeout: float | None = None) -> bytes:
        """The whole content of ``cid`` as Kubo returns it (unverified: see :class:`KuboStore`)."""
        return b"".join(self.cat_iter(cid, timeout=timeout))

    def pin(self, cid: str, *, timeout: float | None = None) -> None:
        """Pin ``cid`` recursively (fetches missing blocks unless the client is offline)."""
        arg = _cid_arg(cid)
        self._call_json("pin/add", self._read_params(arg), timeout=timeout, cid=arg)

    def unpin(self, cid: str, *, timeout: float | None = None) -> None:
        """Remove the recursive pin on ``cid``; its blocks go at the daemon's next GC."""
        arg = _cid_arg(cid)
        self._call_json("pin/rm", {"arg": arg}, timeout=timeout, cid=arg)

    def has(self, cid: str, *, timeout: float | None = None) -> bool:
        """Whether ``cid`` is pinned recursively here, which means every block is held locally.

        Pinned rather than "root block present": a pinned DAG is complete by construction, while
        a lone root block says nothing about the rest of the file.
        """
        arg = _cid_arg(cid)
        try:
            objects = self._call_json(
                "pin/ls", {"arg": arg, "type": "recursive"}, timeout=timeout, cid=arg
            )
        except ContentNotFound:
            return False
        return any(isinstance(o.get("Keys"), dict) and o["Keys"] for o in objects)

    def files_read(self, path: str, *, timeout: float | None = None) -> bytes:
        """The content of an MFS file (small files: markers); :class:`FileNotFoundError` if
        there is none."""
        try:
            response = self._send("files/read", {"arg": path}, timeout=timeout)
        except StorageError as exc:
            if "does not exist" in str(exc) or "not found" in str(exc).lower():
                raise FileNotFoundError(path) from None
            raise
        return b"".join(self._stream(response, "files/read"))

    def files_write(self, path: str, data: bytes, *, timeout: float | None = None) -> None:
        """Create or replace an MFS file (and its parent directories) with ``data``."""
        boundary = secrets.token_hex(16)
        body = (
            (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="marker"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        self._call_json(
            "files/write",
            {"arg": path, "create": "true", "parents": "true", "truncate": "true"},
            timeout=timeout,
            cid=None,
            content=iter([body]),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    def files_ls(self, path: str, *, timeout: float | None = None) -> list[str]:
        """The names in an MFS directory (none when it does not exist)."""
        try:
            objects = self._call_json("files/ls", {"arg": path}, timeout=timeout, cid=None)
        except StorageError as exc:
            if "does not exist" in str(exc) or "not found" in str(exc).lower():
                return []
            raise
        names: list[str] = []
        for o in objects:
            for entry in o.get("Entries") or []:
                if isinstance(entry, dict) and isinstance(entry.get("Name"), str):
                    names.append(entry["Name"])
        return sorted(names)

    def pins(self, *, timeout: float | None = None) -> list[str]:
        """The CIDs pinned recursively here (``pin/ls --type=recursive``)."""
        objects = self._call_json("pin/ls", {"type": "recursive"}, timeout=timeout, cid=None)
        out: list[str] = []
        for o in objects:
            keys = o.get("Keys")
            if isinstance(keys, dict):
                out.extend(str(k) for k in keys)
        return sorted(out)

    def repo_gc(self, *, timeout: float | None = None) -> None:
        """Delete the blocks no pin (nor MFS) holds (``repo/gc``)."""
        self._call_json("repo/gc", {}, timeout=timeout, cid=None)


def _same_content(a: CID, b: CID) -> bool:
    def v1(c: CID) -> CID:
        return CID(1, DAG_PB, c.multihash) if c.version == 0 else c

    return v1(a) == v1(b)


class KuboStore:
    """A :class:`~ehrshare.storage.base.BlobStore` backed by a Kubo daemon.

    Use it for the real backend. It does not own ``client``: close the client yourself. Reads
    are checked against the CID with ehrshare's import layout (the only layout ehrshare writes),
    so content added by other tools with other chunking would be reported as an
    :class:`IntegrityError`.
    """

    def __init__(self, client: KuboClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"KuboStore({self.client.api_url!r})"

    def put(self, data: BlobSource) -> str:
        """Add and pin ``data``; return its CID (checked against the locally computed one)."""
        return self.client.add(data, pin=True)

    def iter(self, cid: str) -> Iterator[bytes]:
        """Stream ``cid``; :class:`IntegrityError` is raised before the last piece is yielded."""
        expected = CID.parse(cid)
        pieces = self.client.cat_iter(cid)
        return self._verified(expected, pieces)

    @staticmethod
    def _verified(expected: CID, pieces: Iterator[bytes]) -> Iterator[bytes]:
        builder = FileDagBuilder()
        held: bytes | None = None
        for piece in pieces:
            if held is not None:
                yield held
            builder.write(piece)
            held = piece
        actual = builder.finish()
        if not _same_content(actual, expected):
            raise IntegrityError(str(expected), f"Kubo returned bytes that hash to {actual}")
        if held:
            yield held

    def get(self, cid: str) -> bytes:
        """Return the content of ``cid`` after checking it hashes to ``cid``."""
        return b"".join(self.iter(cid))

    def pin(self, cid: str) -> None:
        """Pin ``cid`` on the daemon."""
        self.client.pin(cid)

    def unpin(self, cid: str) -> None:
        """Unpin ``cid``; raises :class:`ContentNotFound` if it was not pinned."""
        self.client.unpin(cid)

    def has(self, cid: str) -> bool:
        """Whether ``cid`` is pinned (so held completely) on the daemon."""
        return self.client.has(cid)
