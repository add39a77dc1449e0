"""The signed extraction request (format 2): round trips, parsing, what the signature binds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.hazmat.dkg import KeyShare
from ehrshare.hazmat.errors import EncodingError, VerificationError
from ehrshare.hazmat.extract import (
    ExtractionRequest,
    SignedExtractionRequest,
    extract_partial_key,
    open_partial_key,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey, X25519KeyPair
from ehrshare.hazmat.pairing import Scalar
from ehrshare.identity import LocalCA
from ehrshare.services.extract_auth import sign_extraction_request, verify_request_signature

CA = LocalCA.create("Org1MSP")
ALICE, ALICE_KEY = CA.issue("alice", role="patient")
_, OTHER_KEY = CA.issue("mallory", role="patient")
MPK = bytes(range(48))

identities = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode("utf-8")) <= 1024)


def _request(**overrides: object) -> SignedExtractionRequest:
    fields: dict[str, object] = {
        "identity": "Org1MSP/alice",
        "reply_key": bytes(32),
        "node_index": 2,
        "mpk": MPK,
        "nonce": bytes(range(16)),
        "timestamp": 1_900_000_000,
        "certificate": b"\x30" * 300,
        "signature": b"\x30" * 70,
    }
    fields.update(overrides)
    return SignedExtractionRequest(**fields)  # type: ignore[arg-type]


@given(
    identity=identities,
    index=st.integers(1, 0xFFFF),
    timestamp=st.integers(0, 2**64 - 1),
    certificate=st.binary(min_size=1, max_size=600),
    signature=st.binary(min_size=1, max_size=80),
)
def test_signed_request_round_trip(
    identity: str, index: int, timestamp: int, certificate: bytes, signature: bytes
) -> None:
    request = _request(
        identity=identity,
        node_index=index,
        timestamp=timestamp,
        certificate=certificate,
        signature=signature,
    )
    data = request.to_bytes()
    assert SignedExtractionRequest.from_bytes(data) == request


@given(data=st.data())
def test_truncated_or_extended_signed_request_is_encoding_error(data: st.DataObject) -> None:
    raw = _request().to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EncodingError):
        SignedExtractionRequest.from_bytes(raw[:cut])
    with pytest.raises(EncodingError, match="trailing bytes"):
        SignedExtractionRequest.from_bytes(raw + data.draw(st.binary(min_size=1, max_size=8)))


def test_format_one_is_not_a_signed_request() -> None:
    old = ExtractionRequest.create("Org1MSP/alice")[0].to_bytes() + bytes(100)
    with pytest.raises(EncodingError, match="signed extraction request version must be 2, got 1"):
        SignedExtractionRequest.from_bytes(old)


def test_unsigned_request_does_not_serialise_and_empty_signature_does_not_parse() -> None:
    with pytest.raises(ValueError, match="not signed"):
        _request(signature=b"").to_bytes()
    raw = _request(signature=b"\x01").to_bytes()
    assert raw[-2:] == b"\x01\x01"  # length 1, signature 0x01
    with pytest.raises(EncodingError, match="carries no signature"):
        SignedExtractionRequest.from_bytes(raw[:-2] + b"\x00")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reply_key", bytes(31), "reply key must be 32 bytes, got 31"),
        ("node_index", 0, "node index must be 1..65535, got 0"),
        ("mpk", bytes(47), "mpk must be 48 bytes, got 47"),
        ("nonce", bytes(15), "request nonce must be 16 bytes, got 15"),
        ("certificate", b"", "certificate must be 1..8192 bytes, got 0"),
        ("signature", bytes(81), "signature must be at most 80 bytes, got 81"),
    ],
)
def test_bad_fields_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        _request(**{field: value})


def test_the_signature_binds_every_field() -> None:
    signed = sign_extraction_request(
        ALICE, ALICE_KEY, reply_key=bytes(32), node_index=1, mpk=MPK, timestamp=1_900_000_000
    )
    assert verify_request_signature(signed)
    assert signed.certificate == ALICE.certificate.public_bytes(Encoding.DER)
    for change in (
        {"identity": "Org1MSP/bob"},
        {"reply_key": bytes([1]) * 32},
        {"node_index": 2},
        {"mpk": bytes(48)},
        {"nonce": bytes(16)},
        {"timestamp": 1_900_000_001},
    ):
        tampered = SignedExtractionRequest(
            **{
                "identity": signed.identity,
                "reply_key": signed.reply_key,
                "node_index": signed.node_index,
                "mpk": signed.mpk,
                "nonce": signed.nonce,
                "timestamp": signed.timestamp,
                "certificate": signed.certificate,
                "signature": signed.signature,
                **change,  # type: ignore[dict-item]
            }
        )
        assert not verify_request_signature(tampered), change
    # Another key's signature over the same payload, with alice's certificate: refused.
    forged = signed.with_signature(OTHER_KEY.sign(signed.signing_payload()))
    assert not verify_request_signature(forged)
    # Garbage in the certificate field is a refusal, not a crash.
    assert not verify_request_signature(
        SignedExtractionRequest(
            signed.identity,
            signed.reply_key,
            1,
            MPK,
            signed.nonce,
            signed.timestamp,
            b"not a certificate",
            signed.signature,
        )
    )


def test_a_partial_key_answers_exactly_one_signed_request() -> None:
    node = KGCNodeKey.generate()
    share = KeyShare(1, Scalar.random())
    reply = X25519KeyPair.generate()
    first = sign_extraction_request(
        ALICE, ALICE_KEY, reply_key=reply.public_bytes, node_index=1, mpk=MPK, timestamp=5
    )
    second = sign_extraction_request(
        ALICE, ALICE_KEY, reply_key=reply.public_bytes, node_index=1, mpk=MPK, timestamp=5
    )
    assert first.nonce != second.nonce
    answer = extract_partial_key(share, node, first)
    opened = open_partial_key(answer, request=first, reply_key=reply, node_key=node.public_key)
    assert opened.identity == ALICE.ibe_id
    with pytest.raises(VerificationError, match="answers another request"):
        open_partial_key(answer, request=second, reply_key=reply, node_key=node.public_key)
