"""Threshold extraction: sealed signed answers, batched verification naming bad nodes, combine."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from ehrshare.hazmat.board import InMemoryBoard, run_dkg
from ehrshare.hazmat.dkg import (
    DKGConfig,
    DKGNode,
    DKGResult,
    KeyShare,
    PublicPolynomial,
    new_session_nonce,
)
from ehrshare.hazmat.errors import (
    DecryptionError,
    UnverifiedInputError,
    VerificationError,
)
from ehrshare.hazmat.extract import (
    ExtractionRequest,
    InvalidPartialKey,
    NotEnoughPartialKeys,
    PartialKey,
    PartialKeyResponse,
    VerifiedPartialKey,
    combine_partial_keys,
    extract_partial_key,
    open_partial_key,
    recover_identity_key,
    verify_partial_keys,
)
from ehrshare.hazmat.kgc_keys import KGCNodeKey, KGCNodePublicKey, X25519KeyPair, seal
from ehrshare.hazmat.pairing import G1, G2, GT, Scalar
from ehrshare.hazmat.tipre import (
    IdentitySecretKey,
    MasterPublicKey,
    decrypt,
    encrypt,
    generate_rekey,
    identity_point,
    reencrypt,
)


@dataclass
class Consortium:
    keys: list[KGCNodeKey]
    results: dict[int, DKGResult]

    @property
    def roster(self) -> list[KGCNodePublicKey]:
        return [k.public_key for k in self.keys]

    @property
    def public(self) -> PublicPolynomial:
        return self.results[1].public

    def answer(self, j: int, request: ExtractionRequest) -> PartialKeyResponse:
        return extract_partial_key(self.results[j].share, self.keys[j - 1], request)

    def partials(
        self, request: ExtractionRequest, reply: X25519KeyPair, nodes: list[int]
    ) -> list[PartialKey]:
        return [
            open_partial_key(
                self.answer(j, request).to_bytes(),
                request=request,
                reply_key=reply,
                roster=self.roster,
            )
            for j in nodes
        ]


@pytest.fixture(scope="module")
def kgc() -> Consortium:
    keys = [KGCNodeKey.generate() for _ in range(5)]  # τ = 3
    config = DKGConfig(tuple(k.public_key for k in keys), new_session_nonce())
    run = run_dkg([DKGNode(config, k) for k in keys], InMemoryBoard())
    assert run.mpk_agreed and len(run.results) == 5
    return Consortium(keys, run.results)


def master_secret(kgc: Consortium) -> Scalar:
    """s by Lagrange over shares 1..τ — an independent route to check extraction against."""
    idx = [1, 2, 3]
    s = Scalar.from_int(0)
    for j in idx:
        lam = Scalar.from_int(1)
        for m in idx:
            if m != j:
                lam = lam * Scalar.from_int(m) / Scalar.from_int(m - j)
        s = s + kgc.results[j].share.value * lam
    return s


def test_tau_partial_keys_combine_to_s_times_q_id(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:alice")
    partials = kgc.partials(request, reply, [1, 2, 3])
    recovered = recover_identity_key(partials, kgc.public)
    assert recovered.invalid == ()
    sk = recovered.secret_key
    assert isinstance(sk, IdentitySecretKey) and sk.identity == "patient:alice"
    assert sk.point == identity_point("patient:alice") * master_secret(kgc)
    sk.check(MasterPublicKey(kgc.public.mpk))


def test_any_tau_subset_gives_the_same_key(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("dr:bob")
    a = recover_identity_key(kgc.partials(request, reply, [1, 2, 3]), kgc.public)
    b = recover_identity_key(kgc.partials(request, reply, [5, 3, 4]), kgc.public)
    c = recover_identity_key(kgc.partials(request, reply, [1, 2, 3, 4, 5]), kgc.public)
    assert a.secret_key.point == b.secret_key.point == c.secret_key.point


def test_extracted_key_decrypts_and_works_through_a_reencryption(kgc: Consortium) -> None:
    """End to end with MH-TIPRE: both users get their keys from the DKG'd KGC, not from s."""
    mpk = MasterPublicKey(kgc.public.mpk)
    keys = {}
    for identity in ("patient:carol", "dr:dave"):
        request, reply = ExtractionRequest.create(identity)
        keys[identity] = recover_identity_key(
            kgc.partials(request, reply, [2, 4, 5]), kgc.public
        ).secret_key
    carol = keys["patient:carol"].type_secret("lab-results")
    dave = keys["dr:dave"].type_secret("lab-results")
    m = GT.random()
    capsule = encrypt(m, carol.public_key(mpk))
    assert decrypt(capsule, carol) == m
    rekey = generate_rekey(carol, dave.public_key(mpk))
    assert decrypt(reencrypt(capsule, rekey), dave) == m


def test_corrupted_partial_key_is_named_and_excluded(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:erin")
    liar = KeyShare(2, Scalar.random())  # node 2 answers with a wrong share, properly signed
    bad = extract_partial_key(liar, kgc.keys[1], request)
    partials = kgc.partials(request, reply, [1, 3, 4])
    partials.insert(1, open_partial_key(bad, request=request, reply_key=reply, roster=kgc.roster))
    check = verify_partial_keys(partials, kgc.public)
    assert check.invalid == (2,)
    assert sorted(v.index for v in check.verified) == [1, 3, 4]
    recovered = recover_identity_key(partials, kgc.public)
    assert recovered.invalid == (2,)
    recovered.secret_key.check(MasterPublicKey(kgc.public.mpk))
    with pytest.raises(InvalidPartialKey, match=r"node\(s\) \[2\]") as info:
        partials[1].verify(kgc.public)
    assert info.value.nodes == (2,)


def test_too_few_good_partial_keys_is_a_clear_error(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:frank")
    bad = extract_partial_key(KeyShare(3, Scalar.random()), kgc.keys[2], request)
    partials = kgc.partials(request, reply, [1, 2])
    partials.append(open_partial_key(bad, request=request, reply_key=reply, roster=kgc.roster))
    with pytest.raises(NotEnoughPartialKeys, match=r"need 3 .* have 2; .* nodes \[3\]") as info:
        recover_identity_key(partials, kgc.public)
    assert info.value.invalid == (3,)
    with pytest.raises(NotEnoughPartialKeys, match="need 3 verified partial keys, have 2"):
        recover_identity_key(kgc.partials(request, reply, [4, 5]), kgc.public)


def test_combine_refuses_unverified_and_mixed_input(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:gina")
    partials = kgc.partials(request, reply, [1, 2, 3])
    with pytest.raises(UnverifiedInputError, match="verify_partial_keys"):
        combine_partial_keys(partials, kgc.public)  # type: ignore[arg-type]
    assert issubclass(UnverifiedInputError, TypeError)
    with pytest.raises(ValueError, match="duplicate node indices"):
        verify_partial_keys([partials[0], partials[0]], kgc.public)
    other_req, other_reply = ExtractionRequest.create("patient:hugo")
    other = kgc.partials(other_req, other_reply, [4])
    with pytest.raises(ValueError, match="2 different identities"):
        verify_partial_keys([*partials[:2], *other], kgc.public)


def test_forged_verified_type_still_needs_the_pairing_to_hold(kgc: Consortium) -> None:
    """combine's final check catches a VerifiedPartialKey that was constructed, not verified."""
    request, reply = ExtractionRequest.create("patient:ivan")
    good = verify_partial_keys(kgc.partials(request, reply, [1, 2, 3]), kgc.public).verified
    forged = [*good[:2], VerifiedPartialKey(3, "patient:ivan", G2.generator())]
    with pytest.raises(VerificationError):
        combine_partial_keys(forged, kgc.public)


def test_answers_are_bound_to_node_request_and_reply_key(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:judy")
    answer = kgc.answer(2, request)
    # Node 2's answer relabelled as node 3's: checked under node 3's key, so it fails.
    with pytest.raises(VerificationError, match="KGC node 3"):
        open_partial_key(
            replace(answer, index=3), request=request, reply_key=reply, roster=kgc.roster
        )
    with pytest.raises(VerificationError, match="roster has 5 nodes"):
        open_partial_key(
            replace(answer, index=6), request=request, reply_key=reply, roster=kgc.roster
        )
    # A roster whose entry 2 is another key refuses the genuine answer.
    swapped = [kgc.roster[0], kgc.roster[2], *kgc.roster[2:]]
    with pytest.raises(VerificationError, match="KGC node 2"):
        open_partial_key(answer, request=request, reply_key=reply, roster=swapped)
    other_request, other_reply = ExtractionRequest.create("patient:judy")
    with pytest.raises(VerificationError, match="answers another request"):
        open_partial_key(answer, request=other_request, reply_key=other_reply, roster=kgc.roster)
    with pytest.raises(ValueError, match="reply_key is not the key"):
        open_partial_key(answer, request=request, reply_key=other_reply, roster=kgc.roster)
    # Anyone on the path who swaps the sealed key breaks node 2's signature.
    garbage = replace(answer, sealed_key=bytes(len(answer.sealed_key)))
    with pytest.raises(VerificationError, match="KGC node 2"):
        open_partial_key(garbage, request=request, reply_key=reply, roster=kgc.roster)


def test_sealed_key_that_is_not_a_point_names_the_node(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:kim")
    from ehrshare.hazmat import extract as ex

    digest = request.digest()
    sealed = seal(request.reply_key, bytes(96), aad=ex._sealed_key_aad(digest, 4))
    unsigned = PartialKeyResponse(4, digest, sealed, b"")
    response = PartialKeyResponse(4, digest, sealed, kgc.keys[3].sign(ex._signed(unsigned._body())))
    with pytest.raises(InvalidPartialKey, match=r"\[4\] is not a G2 element"):
        open_partial_key(response, request=request, reply_key=reply, roster=kgc.roster)
    with pytest.raises(DecryptionError):  # sealed for node 4 but claimed as node 5's slot
        ex.open_sealed(reply, sealed, aad=ex._sealed_key_aad(digest, 5))


def test_partial_key_repr_hides_the_point(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:leo")
    p = kgc.partials(request, reply, [1])[0]
    assert "<hidden>" in repr(p) and p.point.to_bytes()[:8].hex() not in repr(p)
    assert isinstance(p, PartialKey)
    v = p.verify(kgc.public)
    assert "<hidden>" in repr(v)
    with pytest.raises(TypeError):
        hash(v)


def test_verification_uses_the_public_polynomial_not_just_mpk(kgc: Consortium) -> None:
    """A share that is right for another node index fails: S_j pins each node's share."""
    request, reply = ExtractionRequest.create("patient:mia")
    p1 = kgc.partials(request, reply, [1])[0]
    moved = PartialKey(2, p1.identity, p1.point)
    assert verify_partial_keys([moved], kgc.public).invalid == (2,)
    assert G1.generator() * kgc.results[2].share.value == kgc.public.evaluate(2)


def test_open_with_an_explicit_node_key(kgc: Consortium) -> None:
    request, reply = ExtractionRequest.create("patient:noor")
    answer = kgc.answer(4, request)
    partial = open_partial_key(
        answer, request=request, reply_key=reply, node_key=kgc.keys[3].public_key
    )
    assert partial.index == 4
    with pytest.raises(VerificationError, match="KGC node 4"):
        open_partial_key(answer, request=request, reply_key=reply, node_key=kgc.keys[0].public_key)
    with pytest.raises(TypeError, match="exactly one of roster= and node_key="):
        open_partial_key(answer, request=request, reply_key=reply)
    with pytest.raises(TypeError, match="exactly one"):
        open_partial_key(
            answer,
            request=request,
            reply_key=reply,
            roster=kgc.roster,
            node_key=kgc.keys[3].public_key,
        )
