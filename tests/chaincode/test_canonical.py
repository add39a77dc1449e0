"""Property tests of the pure parts: composite keys, canonical JSON, the audit chain."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from ehrshare_chaincode import canonical
from ehrshare_chaincode.auditlog import GENESIS_HASH, entry_hash, verify_entries
from ehrshare_chaincode.stub import ChaincodeError, create_composite_key, split_composite_key

_attr = st.text(
    alphabet=st.characters(blacklist_characters="\x00\U0010ffff", blacklist_categories=("Cs",)),
    max_size=12,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s and "\U0010ffff" not in s),
    st.lists(_attr, max_size=5),
)
def test_composite_key_round_trip(object_type: str, attrs: list[str]) -> None:
    key = create_composite_key(object_type, attrs)
    assert split_composite_key(key) == (object_type, attrs)


@given(st.lists(_attr, min_size=1, max_size=3), st.lists(_attr, min_size=1, max_size=3))
def test_partial_key_prefix_never_matches_a_sibling(a: list[str], b: list[str]) -> None:
    # Attribute boundaries are encoded, so ["ab"] is no prefix of ["abc"].
    ka = create_composite_key("t", a)
    kb = create_composite_key("t", b)
    if kb.startswith(ka):
        assert b[: len(a)] == a


def test_composite_key_refuses_reserved_characters() -> None:
    with pytest.raises(ChaincodeError, match="contains a reserved character"):
        create_composite_key("t", ["a\x00b"])


@given(_json)
def test_canonical_json_round_trips_and_is_order_independent(value: object) -> None:
    data = canonical.dumps(value)
    assert canonical.loads(data) == value
    if isinstance(value, dict):
        assert canonical.dumps(dict(reversed(list(value.items())))) == data


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_refused_both_ways(x: float) -> None:
    with pytest.raises(ChaincodeError):
        canonical.dumps({"x": x})
    with pytest.raises(ChaincodeError, match="contains a floating-point number"):
        canonical.loads(f'{{"x": {x!r}}}')


def _chain(n: int) -> list[dict[str, object]]:
    prev = GENESIS_HASH
    out = []
    for seq in range(1, n + 1):
        e: dict[str, object] = {
            "chain": "O/p",
            "seq": seq,
            "prev_hash": prev,
            "action": "a",
            "detail": {"i": seq},
        }
        e["hash"] = entry_hash(e)
        prev = str(e["hash"])
        out.append(e)
    return out


@given(st.integers(1, 12), st.data())
def test_any_single_change_to_a_chain_is_detected(n: int, data: st.DataObject) -> None:
    chain = _chain(n)
    head = {"seq": n, "hash": chain[-1]["hash"]}
    assert verify_entries("O/p", chain, head)["valid"]
    i = data.draw(st.integers(0, n - 1))
    field = data.draw(st.sampled_from(["seq", "prev_hash", "action", "detail", "hash", "chain"]))
    tampered = [dict(e) for e in chain]
    tampered[i][field] = data.draw(st.integers(100, 200)) if field == "seq" else "zz"
    result = verify_entries("O/p", tampered, head)
    assert not result["valid"]
    assert result["first_bad_seq"] == i + 1
