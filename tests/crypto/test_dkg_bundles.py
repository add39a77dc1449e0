"""Property tests for every DKG serialiser: round trips, and tampering never verifies."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ehrshare.hazmat.board import InMemoryBoard, run_dkg
from ehrshare.hazmat.dkg import (
    NONCE_SIZE,
    BundleKind,
    DealBundle,
    DealStatus,
    DKGConfig,
    DKGError,
    DKGNode,
    DKGResult,
    JustificationBundle,
    KeyShare,
    PublicPolynomial,
    ResponseBundle,
    new_session_nonce,
    parse_bundle,
)
from ehrshare.hazmat.errors import DecryptionError, EncodingError, VerificationError
from ehrshare.hazmat.kgc_keys import (
    SEALED_OVERHEAD,
    KGCNodeKey,
    KGCNodePublicKey,
    X25519KeyPair,
    open_sealed,
    seal,
)
from ehrshare.hazmat.pairing import G1, ORDER, Scalar

KEYS = [KGCNodeKey.generate() for _ in range(4)]
CONFIG = DKGConfig(tuple(k.public_key for k in KEYS), new_session_nonce(), threshold=3)


def _real_bundles() -> dict[BundleKind, bytes]:
    """One genuine bundle of each kind, with a justification forced by a bad share."""
    nodes = [DKGNode(CONFIG, k) for k in KEYS]
    board = InMemoryBoard()
    run_dkg(nodes, board)
    deal = board.read(CONFIG.nonce, BundleKind.DEAL)[0]
    response = board.read(CONFIG.nonce, BundleKind.RESPONSE)[0]
    just = JustificationBundle.create(
        KEYS[1],
        nonce=CONFIG.nonce,
        dealer=2,
        revealed=[(3, Scalar.from_int(7)), (1, Scalar.random())],
    ).to_bytes()
    return {BundleKind.DEAL: deal, BundleKind.RESPONSE: response, BundleKind.JUSTIFICATION: just}


REAL = _real_bundles()

nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
senders = st.integers(min_value=1, max_value=0xFFFF)
signatures = st.binary(min_size=64, max_size=64)
g1_points = st.integers(min_value=1, max_value=2**64).map(
    lambda k: G1.generator() * Scalar.from_int(k)
)
scalars = st.integers(min_value=0, max_value=ORDER - 1).map(Scalar.from_int)


@given(
    nonce=nonces,
    dealer=senders,
    commitments=st.lists(g1_points, min_size=2, max_size=5),
    shares=st.lists(st.binary(min_size=80, max_size=80), min_size=2, max_size=6),
    signature=signatures,
)
def test_deal_bundle_round_trip(
    nonce: bytes, dealer: int, commitments: list[G1], shares: list[bytes], signature: bytes
) -> None:
    bundle = DealBundle(nonce, dealer, tuple(commitments), tuple(shares), signature)
    data = bundle.to_bytes()
    assert DealBundle.from_bytes(data) == bundle
    assert parse_bundle(data) == bundle
    assert len(data) == 40 + 48 * len(commitments) + 80 * len(shares) + 64


@given(
    nonce=nonces,
    responder=senders,
    statuses=st.lists(st.sampled_from(list(DealStatus)), min_size=0, max_size=40),
    signature=signatures,
)
def test_response_bundle_round_trip(
    nonce: bytes, responder: int, statuses: list[DealStatus], signature: bytes
) -> None:
    bundle = ResponseBundle(nonce, responder, tuple(statuses), signature)
    assert ResponseBundle.from_bytes(bundle.to_bytes()) == bundle
    assert parse_bundle(bundle.to_bytes()) == bundle


@given(
    nonce=nonces,
    dealer=senders,
    entries=st.dictionaries(st.integers(1, 0xFFFF), scalars, max_size=6),
    signature=signatures,
)
def test_justification_bundle_round_trip(
    nonce: bytes, dealer: int, entries: dict[int, Scalar], signature: bytes
) -> None:
    revealed = tuple(sorted(entries.items(), key=lambda e: e[0]))
    bundle = JustificationBundle(nonce, dealer, revealed, signature)
    assert JustificationBundle.from_bytes(bundle.to_bytes()) == bundle


@given(commitments=st.lists(g1_points, min_size=2, max_size=6))
def test_public_polynomial_round_trip(commitments: list[G1]) -> None:
    poly = PublicPolynomial(tuple(commitments))
    assert PublicPolynomial.from_bytes(poly.to_bytes()) == poly
    assert poly.mpk == commitments[0] and poly.threshold == len(commitments)


@given(index=st.integers(1, 0xFFFF), value=scalars)
def test_key_share_round_trip(index: int, value: Scalar) -> None:
    share = KeyShare(index, value)
    assert KeyShare.from_secret_bytes(share.to_secret_bytes()) == share


def test_node_public_key_round_trip() -> None:
    for key in KEYS:
        pk = key.public_key
        assert KGCNodePublicKey.from_bytes(pk.to_bytes()) == pk
        assert len(pk.to_bytes()) == KGCNodePublicKey.SIZE
        again = KGCNodeKey.from_secret_bytes(key.to_secret_bytes())
        assert again.public_key == pk


@given(kind=st.sampled_from(list(BundleKind)), data=st.data())
def test_any_single_byte_change_never_verifies(kind: BundleKind, data: st.DataObject) -> None:
    original = REAL[kind]
    pos = data.draw(st.integers(0, len(original) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = original[:pos] + bytes([original[pos] ^ flip]) + original[pos + 1 :]
    with pytest.raises((EncodingError, DKGError, VerificationError)):
        parse_bundle(tampered).verify(CONFIG)


@given(kind=st.sampled_from(list(BundleKind)), data=st.data())
def test_truncated_or_extended_bundles_are_encoding_errors(
    kind: BundleKind, data: st.DataObject
) -> None:
    original = REAL[kind]
    cut = data.draw(st.integers(0, len(original) - 1), label="cut")
    with pytest.raises(EncodingError):
        parse_bundle(original[:cut])
    extra = data.draw(st.binary(min_size=1, max_size=64), label="extra")
    with pytest.raises(EncodingError):
        parse_bundle(original + extra)


@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_raise_encoding_error(blob: bytes) -> None:
    with contextlib.suppress(EncodingError):
        parse_bundle(blob)


def test_genuine_bundles_verify() -> None:
    for raw in REAL.values():
        parse_bundle(raw).verify(CONFIG)


def test_specific_encoding_errors_say_what_was_wrong() -> None:
    deal = REAL[BundleKind.DEAL]
    with pytest.raises(EncodingError, match="version must be 1, got 9"):
        DealBundle.from_bytes(b"\x09" + deal[1:])
    with pytest.raises(EncodingError, match="expected a deal bundle"):
        DealBundle.from_bytes(REAL[BundleKind.RESPONSE])
    with pytest.raises(EncodingError, match=r"must be \d+ bytes, got \d+"):
        DealBundle.from_bytes(deal[:-1])
    response = bytearray(REAL[BundleKind.RESPONSE])
    response[38] = 7  # first status byte
    with pytest.raises(EncodingError, match="status for dealer 1 must be 0, 1 or 2, got 7"):
        ResponseBundle.from_bytes(bytes(response))
    just = JustificationBundle(
        CONFIG.nonce, 2, ((3, Scalar.from_int(1)), (3, Scalar.from_int(2))), bytes(64)
    )
    with pytest.raises(EncodingError, match="strictly increasing"):
        JustificationBundle.from_bytes(just.to_bytes())
    with pytest.raises(EncodingError, match="bundle kind must be 1, 2 or 3, got 4"):
        parse_bundle(b"\x01\x04" + bytes(100))


def test_bundle_for_another_roster_shape_is_rejected() -> None:
    other = DKGConfig(CONFIG.participants, CONFIG.nonce, threshold=4)
    with pytest.raises(EncodingError, match="session has n=4, τ=4"):
        parse_bundle(REAL[BundleKind.DEAL]).verify(other)


@given(plaintext=st.binary(max_size=200), aad=st.binary(max_size=64), data=st.data())
def test_seal_round_trip_and_tamper(plaintext: bytes, aad: bytes, data: st.DataObject) -> None:
    recipient = X25519KeyPair.generate()
    sealed = seal(recipient.public_bytes, plaintext, aad=aad)
    assert len(sealed) == len(plaintext) + SEALED_OVERHEAD
    assert open_sealed(recipient, sealed, aad=aad) == plaintext
    pos = data.draw(st.integers(0, len(sealed) - 1))
    tampered = sealed[:pos] + bytes([sealed[pos] ^ 0x01]) + sealed[pos + 1 :]
    with pytest.raises(DecryptionError):
        open_sealed(recipient, tampered, aad=aad)
    with pytest.raises(DecryptionError):
        open_sealed(recipient, sealed, aad=aad + b"x")
    with pytest.raises(DecryptionError):
        open_sealed(X25519KeyPair.generate(), sealed, aad=aad)


@given(message=st.binary(max_size=200))
def test_signatures_are_low_s_and_bound_to_the_message(message: bytes) -> None:
    key = KEYS[0]
    sig = key.sign(message)
    assert (
        int.from_bytes(sig[32:], "big")
        <= 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 // 2
    )
    key.public_key.verify(sig, message)
    with pytest.raises(VerificationError):
        key.public_key.verify(sig, message + b"\x00")
    with pytest.raises(VerificationError):
        KEYS[1].public_key.verify(sig, message)


def test_high_s_twin_is_refused() -> None:
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    sig = KEYS[0].sign(b"m")
    s = int.from_bytes(sig[32:], "big")
    twin = sig[:32] + (n - s).to_bytes(32, "big")
    with pytest.raises(VerificationError, match="low-S"):
        KEYS[0].public_key.verify(twin, b"m")


def test_public_key_parse_errors() -> None:
    raw = KEYS[0].public_key.to_bytes()
    with pytest.raises(EncodingError, match="must be 66 bytes, got 65"):
        KGCNodePublicKey.from_bytes(raw[:-1])
    with pytest.raises(EncodingError, match="version must be 1, got 2"):
        KGCNodePublicKey.from_bytes(b"\x02" + raw[1:])
    with pytest.raises(EncodingError, match="not a point on P-256"):
        KGCNodePublicKey.from_bytes(raw[:1] + b"\x02" + b"\xff" * 32 + raw[34:])


RESULTS = run_dkg([DKGNode(CONFIG, k) for k in KEYS[:3]], InMemoryBoard()).results


def test_dkg_result_round_trip() -> None:
    for result in RESULTS.values():
        data = result.to_secret_bytes()
        again = DKGResult.from_secret_bytes(data)
        assert again == result
        assert again.disqualified == {4: "no valid deal bundle"}


@given(data=st.data())
def test_dkg_result_truncated_is_encoding_error(data: st.DataObject) -> None:
    raw = RESULTS[1].to_secret_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EncodingError):
        DKGResult.from_secret_bytes(raw[:cut])


def test_dkg_result_with_a_foreign_share_is_refused() -> None:
    raw = bytearray(RESULTS[1].to_secret_bytes())
    raw[33:35] = (2).to_bytes(2, "big")  # claim to be node 2 with node 1's share
    with pytest.raises(EncodingError, match="does not match its public polynomial"):
        DKGResult.from_secret_bytes(bytes(raw))
