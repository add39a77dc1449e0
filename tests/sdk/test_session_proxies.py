"""Sessions with one proxy per hospital: which proxy a grant names, reads that visit several
proxies in chain order, naming the grant to read under, and single-proxy profiles."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sdk_people import People

from ehrshare.demo import lab_observation
from ehrshare.profile import Profile, ProfileError
from ehrshare.session import AccessDenied, ProxyError, ProxyRoute, RequestRejected

DAY = dt.timedelta(days=1)
PA, PB, PC = (f"Hospital{h}MSP/proxy" for h in "ABC")


def _value(record: Any) -> Decimal:
    value: Decimal = record.valueQuantity.value
    return value


def _reports(people: People, record_id: str) -> list[tuple[str, int]]:
    trail = people.alice.audit(record=record_id).entries
    return [
        (e["detail"]["proxy"], e["detail"]["applied"])
        for e in trail
        if e["action"] == "ReportReencryption"
    ]


def test_init_runs_one_proxy_per_hospital(people: People) -> None:
    profile = people.consortium.profile
    assert [(p.name, p.msp_id, p.ibe_id) for p in profile.proxies] == [
        ("proxy-hospitala", "HospitalAMSP", PA),
        ("proxy-hospitalb", "HospitalBMSP", PB),
        ("proxy-hospitalc", "HospitalCMSP", PC),
    ]
    assert sorted(people.consortium.proxies) == [PA, PB, PC]
    # Each answers with its own key.
    keys = {px.public_key() for px in people.consortium.proxies.values()}
    assert len(keys) == 3
    assert [r.ibe_id for r in people.alice.proxies] == [PA, PB, PC]


def test_three_hops_through_three_hospital_proxies(people: People) -> None:
    p = people
    ref = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    g1 = p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=2)
    g2 = p.baker.forward(ref, p.chen.ibe_id, max_hops=1)
    g3 = p.chen.forward(g2, p.adams.ibe_id)
    assert (g1.proxy, g2.proxy, g3.proxy) == (PB, PC, PA)
    assert _value(p.adams.read_record(ref)) == Decimal("13.2")
    # Each proxy applied its own hop after the previous one reported its output on chain.
    assert _reports(p, ref.record_id) == [(PB, 1), (PC, 2), (PA, 3)]
    assert _value(p.chen.read_record(ref)) == Decimal("13.2")
    assert _reports(p, ref.record_id)[3:] == [(PB, 1), (PC, 2)]
    # Revoking the middle grant deletes its re-key at C's proxy and adams's at A's.
    p.baker.revoke(g2)
    held = p.consortium.proxies
    assert held[PB].holds(g1.grant_id)
    assert not held[PC].holds(g2.grant_id) and not held[PA].holds(g3.grant_id)
    with pytest.raises(AccessDenied, match=f"grant {g2.grant_id} is revoked"):
        p.adams.read_record(ref)
    assert _value(p.baker.read_record(ref)) == Decimal("13.2")


def test_a_grant_may_name_another_proxy_of_the_profile(people: People) -> None:
    p = people
    ref = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    via_b = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY, proxy=PB)
    assert via_b.proxy == PB
    assert p.consortium.proxies[PB].holds(via_b.grant_id)
    assert not p.consortium.proxies[PC].holds(via_b.grant_id)
    assert _value(p.chen.read_record(ref)) == Decimal("13.2")
    assert _reports(p, ref.record_id) == [(PB, 1)]
    before = (p.consortium.ledger.state_digest(), p.consortium.ledger.height())
    with pytest.raises(ProxyError, match="proxy HospitalZMSP/proxy is not in this profile"):
        p.alice.grant(p.chen.ibe_id, "lab", expires=DAY, proxy="HospitalZMSP/proxy")
    assert (p.consortium.ledger.state_digest(), p.consortium.ledger.height()) == before


class _Counting:
    """A proxy client that counts the re-encryption visits it passes on."""

    def __init__(self, inner: Any, visits: list[str], name: str) -> None:
        self._inner, self._visits, self._name = inner, visits, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def reencrypt(self, **kwargs: Any) -> bytes:
        self._visits.append(self._name)
        out: bytes = self._inner.reencrypt(**kwargs)
        return out


def test_consecutive_hops_at_one_proxy_are_one_visit(people: People) -> None:
    p = people
    ref = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=2)
    to_chen = p.baker.forward(ref, p.chen.ibe_id, max_hops=1, proxy=PB)  # B's proxy again
    p.chen.forward(to_chen, p.adams.ibe_id)
    visits: list[str] = []
    p.adams.proxies = tuple(
        ProxyRoute(r.ibe_id, r.msp_id, _Counting(r.client, visits, r.ibe_id))
        for r in p.adams.proxies
    )
    assert _value(p.adams.read_record(ref)) == Decimal("13.2")
    assert visits == [PB, PA]
    # B's proxy applied hops 1 and 2 in its one visit and reported once, with both applied.
    assert _reports(p, ref.record_id) == [(PB, 2), (PA, 3)]


def test_a_reader_with_two_grants_names_the_one_to_read_under(people: People) -> None:
    p = people
    ref = p.adams.put_record(lab_observation(), patient=p.alice.ibe_id)
    direct = p.alice.grant(p.chen.ibe_id, "lab", expires=DAY, proxy=PA)
    p.alice.grant(p.baker.ibe_id, "lab", expires=DAY, max_hops=1)
    forwarded = p.baker.forward(ref, p.chen.ibe_id)
    for grant, reports in ((forwarded, [(PB, 1), (PC, 2)]), (direct, [(PA, 1)])):
        before = len(_reports(p, ref.record_id))
        assert _value(p.chen.read_record(ref, grant=grant)) == Decimal("13.2")
        assert _reports(p, ref.record_id)[before:] == reports
    # Naming someone else's grant is refused by the chaincode and changes nothing.
    before_state = (p.consortium.ledger.state_digest(), p.consortium.ledger.height())
    with pytest.raises(RequestRejected, match=f"is not the grantee of grant {direct.grant_id}"):
        p.baker.read_record(ref, grant=direct.grant_id)
    assert (p.consortium.ledger.state_digest(), p.consortium.ledger.height()) == before_state


@pytest.mark.parametrize(
    ("proxies", "message"),
    [
        ([], "proxies must list at least one proxy"),
        (["x"], r"proxies\[0\] must be a mapping"),
        ([{"state": "s", "key": "k", "wallet": "w"}], r"proxies\[0\].name must be a non-empty"),
        (
            [{"name": "a", "id": "nope", "state": "s", "key": "k", "wallet": "w"}],
            r"proxies\[0\].id 'nope' is not of the form <msp id>/<enrollment id>",
        ),
        (
            [
                {"name": "a", "state": "s", "key": "k", "wallet": "w"},
                {"name": "a", "state": "t", "key": "l", "wallet": "v"},
            ],
            "must be distinct",
        ),
    ],
)
def test_bad_proxies_sections_are_named(tmp_path: Path, proxies: list[Any], message: str) -> None:
    data: dict[str, Any] = {
        "kgc": {"threshold": 2, "nodes": [{"index": i, "address": f"h:{i}", "tls_ca": "c"}
                                          for i in (1, 2)]},
        "proxies": proxies,
    }  # fmt: skip
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict(data, base=tmp_path)


@pytest.mark.parametrize("with_proxies", [False, True])
def test_a_single_proxy_section_is_refused(tmp_path: Path, with_proxies: bool) -> None:
    # Profiles list their proxies under proxies:; a single proxy: section never shipped.
    data: dict[str, Any] = {
        "kgc": {"threshold": 2, "nodes": [{"index": i, "address": f"h:{i}", "tls_ca": "c"}
                                          for i in (1, 2)]},
        "proxy": {"state": "s", "key": "k", "wallet": "w"},
    }  # fmt: skip
    if with_proxies:
        data["proxies"] = [{"name": "a", "state": "s", "key": "k", "wallet": "w"}]
    with pytest.raises(ProfileError, match="proxy is not a profile key; list every proxy under"):
        Profile.from_dict(data, base=tmp_path)
