"""Type-key epochs kept on chain (docs/security.md §3.2): a patient's revocation rotates the
type, so the collusion of a downstream reader with an upstream proxy — which recovers the
owner's type key — no longer opens records created afterwards; remaining grantees keep reading,
revoked ones read nothing through the proxies, and bad input changes nothing.

The attack is played with the real parts: the hop-2 reader's own key and capsule, and the re-key
as the in-process proxy holds it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sdk_people import People

from ehrshare import crypto
from ehrshare.contract import RecordRef
from ehrshare.demo import lab_observation
from ehrshare.fhir import UnknownRecordType
from ehrshare.hazmat import tipre
from ehrshare.hazmat.errors import DecryptionError
from ehrshare.hazmat.pairing import G2, GT, Scalar, pair
from ehrshare.session import AccessDenied, Session
from ehrshare.session.errors import RequestRejected
from ehrshare.storage import get_verified

DAY = dt.timedelta(days=1)


def _hop2_xs(capsule: tipre.VerifiedCapsule, reader: tipre.TypeSecretKey) -> list[GT]:
    """What the hop-2 reader learns by decrypting: the X of each re-key, innermost first."""
    layers = capsule.layers
    x = layers[-1].v * pair(-layers[-1].u, reader._d)
    xs = [x]
    for i in range(len(layers) - 2, 0, -1):
        h3 = tipre._h3(x, capsule.type_tag, layers[i].recipient_tag, layers[i + 1].recipient_tag)
        x = layers[i].v * pair(-h3 * layers[i].u, G2.generator())
        xs.append(x)
    return xs


def _steal_type_key(
    p: People, reader: Session, root_grant: str, ref: RecordRef
) -> tipre.TypeSecretKey:
    """The hop-2 reader plus the proxy holding rk(owner→hop 1) recover the owner's type key."""
    access = reader.chain.request_access(ref.record_id)
    assert access.allowed and len(access.chain) == 2
    assert access.record is not None
    hop2 = reader._reencrypt_along(access, access.record.capsule)
    capsule = tipre.Capsule.from_bytes(hop2).verify(owner=ref.owner, type_label=ref.label)
    _, x_root = _hop2_xs(capsule, reader._type_secret(reader._secret_key(), ref.label))
    rekey = p.consortium.proxies[access.chain[0].proxy]._verified_rekey(root_grant)
    h3 = tipre._h3(x_root, rekey.type_tag, rekey.delegator_tag, rekey.delegatee_tag)
    d = h3 * G2.generator() - rekey._k
    return tipre.TypeSecretKey(ref.owner, ref.label, Scalar.from_int(1), d)


def _opens(p: People, ref: RecordRef, key: tipre.TypeSecretKey) -> bool:
    record = p.alice.chain.get_record(ref.record_id)
    sealed = get_verified(p.alice.store, ref.cid, ref.sha256)
    try:
        crypto.decrypt_record(
            sealed,
            capsule=record.capsule,
            owner=ref.owner,
            type_label=ref.label,
            record_id=ref.record_id,
            receiving_sk=key,
        )
    except DecryptionError:
        return False
    return True


def test_a_revocation_shuts_the_collusion_out_of_later_records(people: People) -> None:
    p = people
    root = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=1)
    fwd = p.baker.forward(root, p.chen.ibe_id)
    old = p.alice.put_record(lab_observation(1.0))
    stolen = _steal_type_key(p, p.chen, root.grant_id, old)
    assert _opens(p, old, stolen)  # issue 19 §2: chen + baker's proxy hold alice's lab key

    p.alice.revoke(fwd)  # the patient cuts chen off: lab moves to type-key epoch 1
    assert p.alice.chain.get_type_key_epoch(p.alice.ibe_id, old.label).type_epoch == 1
    assert p.alice.get_grant(root.grant_id).type_epochs == (0, 1)  # re-keyed for epoch 1
    new = p.baker.put_record(lab_observation(2.0), patient=p.alice.ibe_id)
    assert p.alice.chain.get_record(new.record_id).type_epoch == 1

    # The stolen key opens what was created before the revocation, not what came after.
    assert _opens(p, old, stolen)
    assert not _opens(p, new, stolen)
    # The remaining grantee reads both; the owner too.
    for reader in (p.baker, p.alice):
        assert reader.read_record(old).model_dump()["valueQuantity"]["value"] == 1.0
        assert reader.read_record(new).model_dump()["valueQuantity"]["value"] == 2.0
    # The revoked grantee reads neither through the proxies.
    for ref in (old, new):
        with pytest.raises(AccessDenied, match=f"grant {fwd.grant_id} is revoked"):
            p.chen.read_record(ref)


def test_an_explicit_rotation_rekeys_the_grants_that_remain(people: People) -> None:
    p = people
    g = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY)
    other = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY, proxy="HospitalAMSP/proxy")
    first = p.alice.rotate_type_key("lab")
    assert (first.type, first.type_epoch, first.failed) == ("lab", 1, {})
    assert set(first.rekeyed) == {g.grant_id, other.grant_id}
    second = p.alice.rotate_type_key("lab")
    assert second.type_epoch == 2
    assert p.alice.get_grant(g.grant_id).type_epochs == (0, 1, 2)
    ref = p.alice.put_record(lab_observation(3.0))
    assert p.alice.chain.get_record(ref.record_id).type_epoch == 2
    for reader in (p.baker, p.chen, p.alice):
        assert reader.read_record(ref).model_dump()["valueQuantity"]["value"] == 3.0
    # A grant made after the rotations covers every epoch (one re-key each).
    late = p.alice.grant(p.adams.ibe_id, "lab", expires=DAY)
    assert late.type_epochs == (0, 1, 2)
    assert p.adams.read_record(ref).model_dump()["valueQuantity"]["value"] == 3.0


def _digest(p: People) -> tuple[str, int]:
    ledger = p.consortium.ledger
    return ledger.state_digest(), ledger.height()


def test_bad_rotations_are_refused_and_change_nothing(people: People) -> None:
    p = people
    before = _digest(p)
    with pytest.raises(UnknownRecordType, match="record type 'nosuch' is not configured"):
        p.alice.rotate_type_key("nosuch")
    with pytest.raises(RequestRejected, match="this needs role patient"):
        p.baker.rotate_type_key("lab")
    assert _digest(p) == before
    assert UnknownRecordType("x").exit_code == 6 and RequestRejected("f", "m").exit_code == 1


class _DownProxy:
    """A proxy that does not answer (its clients see ConnectionError)."""

    def public_key(self) -> bytes:
        raise ConnectionError("proxy is down")

    def store_rekey(self, grant_id: str, sealed_rekey: bytes) -> None:
        raise ConnectionError("proxy is down")

    def revoke(self, grant_id: str) -> None:
        raise ConnectionError("proxy is down")


def test_a_grant_whose_proxy_was_down_at_the_rotation_is_finished_by_repair(
    people: People,
) -> None:
    p = people
    keep = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY)
    working = p.alice.proxies
    p.alice.proxy = _DownProxy()  # type: ignore[assignment]
    done = p.alice.rotate_type_key("lab")
    assert done.type_epoch == 1 and done.rekeyed == ()
    assert "is not reachable" in done.failed[keep.grant_id]
    p.alice.proxies = working
    assert p.alice.get_grant(keep.grant_id).type_epochs == (0,)
    new = p.alice.put_record(lab_observation(4.0))  # the key is published: records go on
    with pytest.raises(AccessDenied, match="holds no re-key for type-key epoch 1"):
        p.baker.read_record(new)
    assert p.alice.repair_grant(keep).type_epochs == (0, 1)
    assert p.baker.read_record(new).model_dump()["valueQuantity"]["value"] == 4.0


class _Counting:
    """The session's contract handle, counting the functions called through it."""

    def __init__(self, inner: object) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name not in ("submit_transaction", "evaluate_transaction"):
            return attr

        def counted(function: str, *args: str) -> object:
            self.calls.append(function)
            return attr(function, *args)  # type: ignore[operator]

        return counted


@pytest.mark.parametrize("rotated", [False, True])
def test_a_put_reads_the_sealing_key_once(people: People, rotated: bool) -> None:
    """The epoch's answer carries the key it names: a put makes one read for it, not two."""
    p = people
    if rotated:
        p.alice.rotate_type_key("lab")
    counting = _Counting(p.alice.chain.contract)
    p.alice.chain.contract = counting  # type: ignore[assignment]
    ref = p.alice.put_record(lab_observation(1.0))
    assert counting.calls == ["GetTypeKeyEpoch", "RegisterRecord"]
    assert p.alice.read_record(ref) is not None


def test_the_owners_next_put_finishes_a_rotation_a_crash_left_without_its_key(
    people: People,
) -> None:
    """A revocation killed between its commit and the new epoch's key (revoke.after_commit)
    leaves the type with no key: a clinician's record for the patient is still refused (it
    cannot make the key), but the patient's own next put finishes the rotation and goes on."""
    p = people
    keep = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY)
    gone = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY)
    p.alice.chain.revoke_access(gone.grant_id)  # the revocation's commit, and nothing after it
    label = p.alice.labels.opaque("lab")
    state = p.alice.chain.get_type_key_epoch(p.alice.ibe_id, label)
    assert (state.type_epoch, state.key) == (1, "")
    before = _digest(p)
    with pytest.raises(RequestRejected, match=r"is being rotated \(epoch 1 has no key yet\)"):
        p.adams.put_record(lab_observation(2.0), patient=p.alice.ibe_id)
    assert _digest(p) == before

    ref = p.alice.put_record(lab_observation(5.0))
    assert p.alice.chain.get_record(ref.record_id).type_epoch == 1
    assert p.alice.chain.get_type_key_epoch(p.alice.ibe_id, label).key != ""
    assert p.alice.get_grant(keep.grant_id).type_epochs == (0, 1)
    assert p.baker.read_record(ref).model_dump()["valueQuantity"]["value"] == 5.0
    with pytest.raises(AccessDenied, match=f"grant {gone.grant_id} is revoked"):
        p.chen.read_record(ref)
    later = p.adams.put_record(lab_observation(6.0), patient=p.alice.ibe_id)
    assert p.alice.read_record(later).model_dump()["valueQuantity"]["value"] == 6.0
