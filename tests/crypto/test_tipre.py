"""MH-TIPRE: every path decrypts, wrong keys and types are refused, bytes are parsed strictly."""

from __future__ import annotations

import itertools

import pytest
from _keyring import IDENTITIES, TYPES, Keyring
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrshare.hazmat.errors import (
    EncodingError,
    UnverifiedInputError,
    VerificationError,
    WrongIdentityError,
    WrongTypeError,
)
from ehrshare.hazmat.pairing import G1, G2, GT, ORDER, Scalar
from ehrshare.hazmat.tipre import (
    CAPSULE_LAYER_SIZE,
    REKEY_SIZE,
    TYPE_PUBLIC_KEY_SIZE,
    Capsule,
    IdentitySecretKey,
    MasterPublicKey,
    MasterSecret,
    ReKey,
    TypePublicKey,
    TypeSecretKey,
    VerifiedCapsule,
    VerifiedTypePublicKey,
    decrypt,
    encrypt,
    generate_rekey,
    identity_point,
    reencrypt,
)

ALICE, BOB, CAROL, DAVE, ERIN = IDENTITIES
LAB, IMAGING, NOTE = TYPES


def _chain(keys: Keyring, m: GT, hops: int, t: str = LAB) -> list[VerifiedCapsule]:
    """Capsules of m after 0..hops re-encryptions along ALICE → BOB → CAROL → DAVE → ERIN."""
    capsule = encrypt(m, keys.tpk[ALICE, t])
    out = [capsule]
    for src, dst in itertools.pairwise(IDENTITIES[: hops + 1]):
        rekey = generate_rekey(keys.tsk[src, t], keys.tpk[dst, t])
        capsule = reencrypt(capsule, rekey)
        out.append(capsule)
    return out


@pytest.fixture(scope="module")
def message() -> GT:
    return GT.random()


@pytest.fixture(scope="module")
def chain(keys: Keyring, message: GT) -> list[VerifiedCapsule]:
    return _chain(keys, message, 4)


@pytest.mark.parametrize("identity", IDENTITIES)
@pytest.mark.parametrize("t", TYPES)
def test_owner_decrypts_a_first_level_capsule(keys: Keyring, identity: str, t: str) -> None:
    m = GT.random()
    assert decrypt(encrypt(m, keys.tpk[identity, t]), keys.tsk[identity, t]) == m


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_the_last_delegatee_decrypts_after_each_number_of_hops(
    keys: Keyring, chain: list[VerifiedCapsule], message: GT, hops: int
) -> None:
    capsule = chain[hops]
    assert capsule.hops == hops
    assert len(capsule.to_bytes()) == Capsule.size(hops)
    # as the delegatee would receive it: bytes from the proxy, verified against the chain
    received = Capsule.from_bytes(capsule.to_bytes()).verify(owner=ALICE, type_label=LAB)
    assert decrypt(received, keys.tsk[IDENTITIES[hops], LAB]) == message


@pytest.mark.parametrize("t", [IMAGING, NOTE])
def test_multi_hop_works_for_other_types(keys: Keyring, t: str) -> None:
    m = GT.random()
    capsule = _chain(keys, m, 2, t)[-1]
    assert decrypt(capsule, keys.tsk[CAROL, t]) == m


def test_one_delegator_can_branch_to_several_delegatees(keys: Keyring) -> None:
    m = GT.random()
    capsule = encrypt(m, keys.tpk[ALICE, LAB])
    for grantee in (BOB, CAROL, DAVE):
        rekey = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[grantee, LAB])
        assert decrypt(reencrypt(capsule, rekey), keys.tsk[grantee, LAB]) == m


def test_re_encryption_is_deterministic(keys: Keyring, chain: list[VerifiedCapsule]) -> None:
    rekey = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, LAB])
    assert reencrypt(chain[0], rekey) == reencrypt(chain[0], rekey)


def test_a_re_key_of_another_type_is_refused(keys: Keyring, chain: list[VerifiedCapsule]) -> None:
    imaging_rekey = generate_rekey(keys.tsk[ALICE, IMAGING], keys.tpk[BOB, IMAGING])
    with pytest.raises(WrongTypeError, match="'imaging' cannot re-encrypt a capsule of type"):
        reencrypt(chain[0], imaging_rekey)


def test_a_re_key_of_another_type_does_not_work_even_if_relabelled(
    keys: Keyring, chain: list[VerifiedCapsule], message: GT
) -> None:
    # an attacker rewrites the type tag of an imaging re-key to "lab-result": the tag check
    # passes, but the mathematics does not — the delegatee gets a wrong m
    imaging = generate_rekey(keys.tsk[ALICE, IMAGING], keys.tpk[BOB, IMAGING])
    raw = bytearray(imaging.to_secret_bytes())
    raw[1:33] = chain[0].type_tag
    forged = ReKey.from_secret_bytes(bytes(raw)).verify(
        delegator=ALICE, delegatee=BOB, type_label=LAB
    )
    assert decrypt(reencrypt(chain[0], forged), keys.tsk[BOB, LAB]) != message


def test_generate_rekey_refuses_a_receiving_key_of_another_type(keys: Keyring) -> None:
    with pytest.raises(WrongTypeError):
        generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, IMAGING])


def test_a_re_key_from_someone_else_is_refused(keys: Keyring, chain: list[VerifiedCapsule]) -> None:
    carols = generate_rekey(keys.tsk[CAROL, LAB], keys.tpk[DAVE, LAB])
    with pytest.raises(WrongIdentityError, match="not the capsule's current holder"):
        reencrypt(chain[0], carols)
    # after one hop only the delegatee (BOB) may re-delegate, no longer ALICE
    alices = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[CAROL, LAB])
    with pytest.raises(WrongIdentityError):
        reencrypt(chain[1], alices)


def test_decryption_refuses_a_key_of_another_identity_or_type(
    keys: Keyring, chain: list[VerifiedCapsule]
) -> None:
    with pytest.raises(WrongIdentityError, match="not addressed to 'doctor:bob'"):
        decrypt(chain[0], keys.tsk[BOB, LAB])
    with pytest.raises(WrongIdentityError):
        decrypt(chain[2], keys.tsk[BOB, LAB])  # BOB was an intermediate hop
    with pytest.raises(WrongTypeError):
        decrypt(chain[0], keys.tsk[ALICE, IMAGING])


def test_a_key_relabelled_as_the_right_identity_decrypts_to_garbage(
    keys: Keyring, chain: list[VerifiedCapsule], message: GT
) -> None:
    bob = keys.sk[BOB].type_secret(LAB)
    impostor = TypeSecretKey(ALICE, LAB, bob._h, bob._d)
    assert decrypt(chain[0], impostor) != message


def test_unverified_material_is_refused(keys: Keyring, chain: list[VerifiedCapsule]) -> None:
    raw_capsule = Capsule.from_bytes(chain[0].to_bytes())
    rekey = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, LAB])
    raw_rekey = ReKey.from_secret_bytes(rekey.to_secret_bytes())
    raw_tpk = TypePublicKey.from_bytes(keys.tpk[ALICE, LAB].to_bytes())
    with pytest.raises(UnverifiedInputError, match="capsule is unverified"):
        reencrypt(raw_capsule, rekey)  # type: ignore[arg-type]
    with pytest.raises(UnverifiedInputError, match="re-encryption key is unverified"):
        reencrypt(chain[0], raw_rekey)  # type: ignore[arg-type]
    with pytest.raises(UnverifiedInputError):
        encrypt(GT.random(), raw_tpk)  # type: ignore[arg-type]
    with pytest.raises(UnverifiedInputError):
        decrypt(raw_capsule, keys.tsk[ALICE, LAB])  # type: ignore[arg-type]
    with pytest.raises(UnverifiedInputError):
        generate_rekey(keys.tsk[ALICE, LAB], raw_tpk)  # type: ignore[arg-type]
    assert isinstance(UnverifiedInputError("x"), TypeError)


def test_verify_checks_owner_type_and_direction(
    keys: Keyring, chain: list[VerifiedCapsule]
) -> None:
    raw = Capsule.from_bytes(chain[1].to_bytes())
    with pytest.raises(WrongIdentityError):
        raw.verify(owner=BOB, type_label=LAB)
    with pytest.raises(WrongTypeError):
        raw.verify(owner=ALICE, type_label=IMAGING)
    tpk = TypePublicKey.from_bytes(keys.tpk[BOB, LAB].to_bytes())
    with pytest.raises(WrongIdentityError):
        tpk.verify(owner=ALICE, type_label=LAB, mpk=keys.mpk)
    with pytest.raises(WrongTypeError):
        tpk.verify(owner=BOB, type_label=NOTE, mpk=keys.mpk)
    assert tpk.verify(owner=BOB, type_label=LAB, mpk=keys.mpk).point == keys.tpk[BOB, LAB].point
    rk = ReKey.from_secret_bytes(
        generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, LAB]).to_secret_bytes()
    )
    with pytest.raises(WrongIdentityError, match="not from delegator"):
        rk.verify(delegator=BOB, delegatee=ALICE, type_label=LAB)
    with pytest.raises(WrongIdentityError, match="not for delegatee"):
        rk.verify(delegator=ALICE, delegatee=CAROL, type_label=LAB)
    with pytest.raises(WrongTypeError):
        rk.verify(delegator=ALICE, delegatee=BOB, type_label=IMAGING)


def test_secrets_hide_themselves(keys: Keyring) -> None:
    rekey = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, LAB])
    for secret in (keys.master, keys.sk[ALICE], keys.tsk[ALICE, LAB], rekey):
        with pytest.raises(TypeError):
            hash(secret)
        assert "secret" in repr(secret)
        assert not hasattr(secret, "to_bytes")
    assert keys.sk[ALICE].point.to_bytes()[:8].hex() not in repr(keys.sk[ALICE])


def test_secret_serialisations_round_trip(keys: Keyring) -> None:
    master = MasterSecret.from_secret_bytes(keys.master.to_secret_bytes())
    assert master.public_key() == keys.mpk
    assert MasterPublicKey.from_bytes(keys.mpk.to_bytes()) == keys.mpk
    sk = IdentitySecretKey.from_secret_bytes(keys.sk[ALICE].to_secret_bytes())
    assert sk.identity == ALICE
    assert sk.point == keys.sk[ALICE].point


def test_extracted_keys_are_checked_against_the_mpk(keys: Keyring) -> None:
    ok = IdentitySecretKey.from_extracted(ALICE, keys.sk[ALICE].point, keys.mpk)
    assert ok.identity == ALICE
    with pytest.raises(VerificationError, match="does not belong to identity 'patient:alice'"):
        IdentitySecretKey.from_extracted(ALICE, keys.sk[BOB].point, keys.mpk)


def test_labels_are_validated() -> None:
    with pytest.raises(ValueError, match="identity must not be empty"):
        MasterSecret.generate().extract("")
    with pytest.raises(TypeError, match="identity must be a str"):
        MasterSecret.generate().extract(b"alice")  # type: ignore[arg-type]


# --- serialisation ----------------------------------------------------------------------------


def test_capsule_from_bytes_says_what_is_wrong(chain: list[VerifiedCapsule]) -> None:
    good = chain[2].to_bytes()
    with pytest.raises(EncodingError, match=f"capsule with 2 hops must be {len(good)} bytes"):
        Capsule.from_bytes(good[:-1])
    with pytest.raises(EncodingError, match=f"must be {len(good)} bytes, got {len(good) + 1}"):
        Capsule.from_bytes(good + b"\x00")
    # version 1 (H1 was mcl's legacy map) is refused, not silently decrypted to garbage
    with pytest.raises(EncodingError, match="version 1, expected 2"):
        Capsule.from_bytes(b"\x01" + good[1:])
    with pytest.raises(EncodingError, match="17 hops, at most 16"):
        Capsule.from_bytes(good[:1] + b"\x11" + good[2:])
    with pytest.raises(EncodingError, match="at least"):
        Capsule.from_bytes(good[:10])
    # the identity element as U of layer 1
    start = 34 + CAPSULE_LAYER_SIZE + 32
    bad = good[:start] + bytes(G1.SIZE) + good[start + G1.SIZE :]
    with pytest.raises(EncodingError, match="capsule layer 1: G1 element is the identity"):
        Capsule.from_bytes(bad)
    # GT's 1 as V of layer 0
    start = 34 + 32 + G1.SIZE
    bad = good[:start] + GT.one().to_bytes() + good[start + GT.SIZE :]
    with pytest.raises(EncodingError, match="capsule layer 0: GT element is 1"):
        Capsule.from_bytes(bad)
    # a G2 element's bytes where U (G1) belongs
    start = 34 + 32
    bad = good[:start] + G2.generator().to_bytes()[:48] + good[start + G1.SIZE :]
    with pytest.raises(EncodingError):
        Capsule.from_bytes(bad)


def test_rekey_and_type_key_from_bytes_say_what_is_wrong(keys: Keyring) -> None:
    rk = generate_rekey(keys.tsk[ALICE, LAB], keys.tpk[BOB, LAB]).to_secret_bytes()
    assert len(rk) == REKEY_SIZE
    with pytest.raises(EncodingError, match=f"must be {REKEY_SIZE} bytes, got {REKEY_SIZE - 1}"):
        ReKey.from_secret_bytes(rk[:-1])
    with pytest.raises(EncodingError, match="G2 element is the identity"):
        ReKey.from_secret_bytes(rk[:97] + bytes(96) + rk[193:])
    tpk = keys.tpk[ALICE, LAB].to_bytes()
    assert len(tpk) == TYPE_PUBLIC_KEY_SIZE
    with pytest.raises(EncodingError, match="version 0, expected 2"):
        TypePublicKey.from_bytes(b"\x00" + tpk[1:])
    with pytest.raises(EncodingError, match="G1 element is the identity"):
        TypePublicKey.from_bytes(tpk[:65] + bytes(48) + tpk[113:])


@settings(max_examples=10)
@given(hops=st.integers(min_value=0, max_value=4))
def test_capsule_round_trip(chain: list[VerifiedCapsule], hops: int) -> None:
    capsule = chain[hops]
    parsed = Capsule.from_bytes(capsule.to_bytes())
    assert parsed == capsule
    assert parsed.to_bytes() == capsule.to_bytes()
    assert parsed.hops == hops


@settings(max_examples=10)
@given(identity=st.sampled_from(IDENTITIES), t=st.sampled_from(TYPES))
def test_type_public_key_round_trip(keys: Keyring, identity: str, t: str) -> None:
    tpk = keys.tpk[identity, t]
    parsed = TypePublicKey.from_bytes(tpk.to_bytes()).verify(
        owner=identity, type_label=t, mpk=keys.mpk
    )
    assert parsed == tpk
    assert parsed.mask_base() == tpk.mask_base()


@settings(max_examples=40)
@given(data=st.data())
def test_any_flipped_bit_of_a_capsule_is_refused_or_decrypts_to_garbage(
    keys: Keyring, chain: list[VerifiedCapsule], message: GT, data: st.DataObject
) -> None:
    hops = data.draw(st.integers(min_value=0, max_value=2), label="hops")
    good = chain[hops].to_bytes()
    bit = data.draw(st.integers(min_value=0, max_value=len(good) * 8 - 1), label="bit")
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    try:
        capsule = Capsule.from_bytes(bytes(bad)).verify(owner=ALICE, type_label=LAB)
        m = decrypt(capsule, keys.tsk[IDENTITIES[hops], LAB])
    except (EncodingError, WrongIdentityError, WrongTypeError):
        return
    assert m != message


@settings(max_examples=30)
@given(k=st.integers(min_value=1, max_value=2**64))
def test_master_secret_round_trip(k: int) -> None:
    master = MasterSecret(Scalar.from_int(k))
    again = MasterSecret.from_secret_bytes(master.to_secret_bytes())
    assert again.public_key() == master.public_key()


def test_editing_an_intermediate_layer_tag_makes_the_capsule_useless(
    keys: Keyring, chain: list[VerifiedCapsule], message: GT
) -> None:
    # layer 1's recipient tag (BOB, an intermediate hop) is not checked by anyone directly;
    # it is bound through H3, so an edited tag decrypts to garbage rather than being accepted
    raw = bytearray(chain[2].to_bytes())
    raw[34 + CAPSULE_LAYER_SIZE] ^= 0x01
    edited = Capsule.from_bytes(bytes(raw)).verify(owner=ALICE, type_label=LAB)
    assert decrypt(edited, keys.tsk[CAROL, LAB]) != message
    assert decrypt(chain[2], keys.tsk[CAROL, LAB]) == message


@settings(max_examples=10)
@given(
    pair_=st.sampled_from(list(itertools.permutations(IDENTITIES, 2))),
    t=st.sampled_from(TYPES),
)
def test_rekey_round_trip(keys: Keyring, pair_: tuple[str, str], t: str) -> None:
    src, dst = pair_
    rekey = generate_rekey(keys.tsk[src, t], keys.tpk[dst, t])
    raw = rekey.to_secret_bytes()
    assert len(raw) == REKEY_SIZE
    parsed = ReKey.from_secret_bytes(raw)
    assert parsed.to_secret_bytes() == raw
    verified = parsed.verify(delegator=src, delegatee=dst, type_label=t)
    m = GT.random()
    assert decrypt(reencrypt(encrypt(m, keys.tpk[src, t]), verified), keys.tsk[dst, t]) == m


@settings(max_examples=15)
@given(identity=st.text(min_size=1, max_size=40))
def test_identity_secret_key_round_trip(keys: Keyring, identity: str) -> None:
    sk = keys.master.extract(identity)
    again = IdentitySecretKey.from_secret_bytes(sk.to_secret_bytes())
    assert again.identity == identity
    assert again.point == sk.point
    again.check(keys.mpk)


@settings(max_examples=15)
@given(blob=st.binary(max_size=2 * CAPSULE_LAYER_SIZE + 40))
def test_arbitrary_bytes_never_parse_into_a_capsule_by_accident(blob: bytes) -> None:
    with pytest.raises(EncodingError):
        Capsule.from_bytes(blob)


# --- type public keys carry a proof of knowledge of h (issue 19.3) -----------------------------


def _forged_type_key(keys: Keyring, owner: str, t: str, proof: bytes) -> TypePublicKey:
    # The attack the proof stops: T = y·P1 for a y the attacker knows, so y·Q_owner opens
    # every new record encrypted to it. Structurally it is a valid G1 point.
    y = Scalar.from_int(0xC0FFEE)
    honest = keys.tpk[owner, t]
    return TypePublicKey(honest.owner_tag, honest.type_tag, y * G1.generator(), proof)


def test_a_type_key_without_knowledge_of_h_is_refused(keys: Keyring) -> None:
    honest = keys.tpk[ALICE, LAB]
    for proof in (bytes(64), honest.proof):  # zeros, or the honest key's proof replayed
        forged = _forged_type_key(keys, ALICE, LAB, proof)
        parsed = TypePublicKey.from_bytes(forged.to_bytes())
        with pytest.raises(VerificationError, match="no valid proof of knowledge"):
            parsed.verify(owner=ALICE, type_label=LAB, mpk=keys.mpk)


def test_the_attack_the_proof_stops_would_read_new_records(keys: Keyring) -> None:
    # Without the check (constructing the verified type directly, as the old verify did), the
    # forger decrypts: this is why encryptors must only use keys that passed verify.
    y = Scalar.from_int(0xC0FFEE)
    forged = _forged_type_key(keys, ALICE, LAB, bytes(64))
    accepted = VerifiedTypePublicKey(
        forged.owner_tag, forged.type_tag, forged.point, forged.proof, ALICE, LAB
    )
    m = GT.random()
    capsule = encrypt(m, accepted)
    forger_key = TypeSecretKey(ALICE, LAB, Scalar.from_int(1), y * identity_point(ALICE))
    assert decrypt(capsule, forger_key) == m


def test_a_proof_is_bound_to_owner_type_and_mpk(keys: Keyring) -> None:
    bob = keys.tpk[BOB, LAB]
    alice = keys.tpk[ALICE, LAB]
    # Bob's point and proof presented under Alice's tags: the tags are in the challenge.
    moved = TypePublicKey(alice.owner_tag, alice.type_tag, bob.point, bob.proof)
    with pytest.raises(VerificationError):
        moved.verify(owner=ALICE, type_label=LAB, mpk=keys.mpk)
    other_mpk = MasterSecret.generate().public_key()
    with pytest.raises(VerificationError):
        TypePublicKey.from_bytes(alice.to_bytes()).verify(
            owner=ALICE, type_label=LAB, mpk=other_mpk
        )


def test_a_proof_scalar_at_or_above_r_is_refused(keys: Keyring) -> None:
    alice = keys.tpk[ALICE, LAB]
    big = (ORDER + int.from_bytes(alice.proof[32:], "big")).to_bytes(32, "big")
    odd = TypePublicKey(alice.owner_tag, alice.type_tag, alice.point, alice.proof[:32] + big)
    with pytest.raises(VerificationError, match="not canonical"):
        odd.verify(owner=ALICE, type_label=LAB, mpk=keys.mpk)


def test_type_key_bytes_are_deterministic(keys: Keyring) -> None:
    # The same secret gives the same bytes, so re-publishing an unchanged key is a no-op.
    again = keys.sk[ALICE].type_secret(LAB).public_key(keys.mpk)
    assert again.to_bytes() == keys.tpk[ALICE, LAB].to_bytes()


@settings(max_examples=20)
@given(flip=st.integers(min_value=(1 + 32 + 32 + 48) * 8, max_value=TYPE_PUBLIC_KEY_SIZE * 8 - 1))
def test_any_flipped_proof_bit_is_refused(keys: Keyring, flip: int) -> None:
    raw = bytearray(keys.tpk[ALICE, LAB].to_bytes())
    raw[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(VerificationError):
        TypePublicKey.from_bytes(bytes(raw)).verify(owner=ALICE, type_label=LAB, mpk=keys.mpk)
