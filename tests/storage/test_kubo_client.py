"""KuboClient / KuboStore behaviour that needs no daemon: error mapping and read verification.

A mock transport stands in for the daemon here only to produce answers a healthy Kubo never
gives (altered bytes, a wrong CID, a gateway instead of the RPC); the real daemon is exercised in
test_kubo_integration.py.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from ehrshare.storage import (
    ContentNotFound,
    IntegrityError,
    KuboClient,
    KuboStore,
    StorageError,
    StorageUnavailable,
    file_cid,
)
from ehrshare.storage.ipfs import api_url_from_multiaddr


def client_for(handler: httpx.MockTransport) -> KuboClient:
    return KuboClient("http://127.0.0.1:5999", transport=handler)


def test_altered_content_is_an_integrity_error() -> None:
    data = os.urandom(5000)
    cid = str(file_cid(data))
    tampered = bytes([data[0] ^ 1]) + data[1:]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v0/cat"
        assert request.url.params["arg"] == cid
        return httpx.Response(200, content=tampered)

    with client_for(httpx.MockTransport(handler)) as client:
        assert client.cat(cid) == tampered  # the raw client does not judge
        with pytest.raises(IntegrityError, match=cid):
            KuboStore(client).get(cid)


def test_truncated_stream_is_an_integrity_error() -> None:
    data = os.urandom(300_000)
    cid = str(file_cid(data))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data[:200_000])

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(IntegrityError):
        b"".join(KuboStore(client).iter(cid))


def test_add_rejects_a_cid_that_does_not_match_the_bytes() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert b"payload" in body
        assert request.url.params["cid-version"] == "1"
        assert request.url.params["raw-leaves"] == "true"
        wrong = str(file_cid(b"something else"))
        return httpx.Response(200, text=json.dumps({"Name": "blob", "Hash": wrong}))

    client = client_for(httpx.MockTransport(handler))
    with client, pytest.raises(IntegrityError, match="the bytes sent hash to"):
        client.add(b"payload")


def test_upload_is_multipart_and_streamed() -> None:
    data = os.urandom(600_000)
    seen: dict[str, object] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["content_type"] = request.headers["content-type"]
        seen["chunked"] = request.headers.get("transfer-encoding")
        body = request.read()
        seen["has_data"] = data in body
        return httpx.Response(200, text=json.dumps({"Hash": str(file_cid(data))}) + "\n")

    with client_for(httpx.MockTransport(handler)) as client:
        client.add(iter([data[:1000], data[1000:]]))
    assert str(seen["content_type"]).startswith("multipart/form-data; boundary=")
    assert seen["chunked"] == "chunked"
    assert seen["has_data"] is True


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (
            500,
            {"Message": "block was not found locally (offline)", "Type": "error"},
            ContentNotFound,
            "not found",
        ),
        (
            500,
            {"Message": "not pinned or pinned indirectly", "Type": "error"},
            ContentNotFound,
            "not pinned",
        ),
        (500, {"Message": "datastore full", "Type": "error"}, StorageError, "datastore full"),
        (404, "404 page not found", StorageError, "not the gateway"),
    ],
)
def test_daemon_errors_map_to_storage_errors(
    status: int, body: object, error: type[Exception], text: str
) -> None:
    cid = str(file_cid(b"x"))
    payload = json.dumps(body) if isinstance(body, dict) else str(body)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=payload)

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(error, match=text):
        client.unpin(cid)


def test_connection_refused_is_unavailable_naming_the_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    client = client_for(httpx.MockTransport(handler))
    expected = r"http://127\.0\.0\.1:5999.*Start the daemon"
    with client, pytest.raises(StorageUnavailable, match=expected):
        client.id()


def test_has_is_false_for_an_unpinned_cid() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["type"] == "recursive"
        return httpx.Response(500, json={"Message": "path 'x' is not pinned", "Type": "error"})

    with client_for(httpx.MockTransport(handler)) as client:
        assert client.has(str(file_cid(b"x"))) is False


@pytest.mark.parametrize(
    ("multiaddr", "url"),
    [
        ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),
        ("/ip6/::1/tcp/5001\n", "http://[::1]:5001"),
    ],
)
def test_api_file_multiaddrs(multiaddr: str, url: str) -> None:
    assert api_url_from_multiaddr(multiaddr) == url
    assert KuboClient(multiaddr).api_url == url


@pytest.mark.parametrize("bad", ["127.0.0.1:5001", "/ip4/127.0.0.1/udp/5001", "ftp://x"])
def test_bad_api_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        KuboClient(bad)


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        KuboClient(timeout=0)
